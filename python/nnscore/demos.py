"""`nnscore demo`: the phenomena of science.md §5, one function each.

Every demo returns a :class:`DemoResult`: a table of rows, the criteria with their measured
values and pass/fail, and the point sets of its figure.  Thresholds marked "calibrate" in
science.md are set here at the default seed and frozen.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DemoResult", "Criterion", "DEMOS", "run_demo"]


@dataclass
class Criterion:
    name: str
    value: float
    threshold: float
    passed: bool


@dataclass
class DemoResult:
    name: str
    description: str
    columns: list
    rows: list
    criteria: list = field(default_factory=list)
    panels: list = field(default_factory=list)  # for the PNG: list of [(points, colour, radius)]
    panel_titles: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "columns": self.columns,
            "rows": self.rows,
            "criteria": [c.__dict__ for c in self.criteria],
            "passed": self.passed,
        }


def _check(name, value, threshold, op) -> Criterion:
    ok = bool(value <= threshold) if op == "<=" else bool(value >= threshold)
    return Criterion(f"{name} {op} {threshold:g}", float(value), float(threshold), ok)


def _sample_stats(samples, train, manifold) -> dict:
    from . import metrics

    nearest = metrics.nearest_train(samples, train)
    dist = metrics.distance_to_manifold(samples, manifold)
    lateral = metrics.lateral_novelty(samples, train, manifold, nearest=nearest)
    return {
        "memorised %": 100 * metrics.memorization_fraction(samples, train, nearest=nearest),
        "median dist to M": dist["median"],
        "median lateral novelty": float(np.median(lateral)),
    }


def _gaps_covered(samples, manifold) -> float:
    """Fraction of the gaps between consecutive training angles that receive a sample (circle)."""
    train_angles = np.sort(np.mod(manifold.intrinsic_coords(manifold.points), 2 * np.pi))
    angles = np.mod(manifold.intrinsic_coords(samples), 2 * np.pi)
    edges = np.concatenate([train_angles, [train_angles[0] + 2 * np.pi]])
    # a sample counts for a gap when it lies in its middle half (not next to a training point)
    covered = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        a = lo + 0.25 * (hi - lo)
        b = lo + 0.75 * (hi - lo)
        wrapped = np.mod(angles - a, 2 * np.pi)
        covered += bool(np.any(wrapped <= b - a))
    return covered / (len(edges) - 1)


def _circle_panel(manifold, samples, colour):
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    curve = manifold.radius * np.stack([np.cos(t), np.sin(t)], 1)
    return [(curve, "grey", 0), (manifold.points, "black", 3), (samples, colour, 1)]  # samples on top


def demo_smoothing(n_train=12, h=0.3, n_samples=500, steps=100, mc=128, seed=0, progress=False) -> DemoResult:
    """Exact empirical score (memorises) vs the log-domain smoothed score (generalises along the
    circle) vs the KDE at the same bandwidth (leaves it): FPHDP F2/F3 on a circle.

    Thresholds (calibrated at seed 0, science.md §5 item 2): with 12 points on a circle even
    uniform samples have d1/d2 < 1/3 half of the time, so "memorised" is compared with uniform
    samples on the circle rather than with science.md's 10%; fidelity is compared with the KDE.
    """
    import nnscore as ns

    from . import sampling
    from .datasets.synthetic import Circle

    circle = Circle(n_train, ambient_dim=2, density="equispaced", rotation=None, rng=seed)
    train = circle.points
    exact = ns.EmpiricalScore(train)
    models = (
        ("exact", exact, "blue"),
        (f"smoothed h={h:g}", ns.SmoothedScore(exact, ns.GaussianKernel(h), n_samples=mc, rng=seed + 1), "orange"),
        (f"KDE h={h:g}", ns.KDEScore(exact, h), "red"),
    )
    uniform = circle.sample_uniform(10_000, rng=seed + 2)
    rows = [{"model": "uniform on the circle (reference)", **_sample_stats(uniform, train, circle),
             "gaps covered %": 100.0, "time s": None}]  # fmt: skip
    panels, stats = [], {}
    for label, model, colour in models:
        t0 = time.perf_counter()
        x = sampling.sample(model, n_samples, steps=steps, sampler="heun", sigma_max=10.0, sigma_min=1e-3,
                            rng=seed, progress=progress)  # fmt: skip
        elapsed = time.perf_counter() - t0
        st = _sample_stats(x, train, circle)
        st["gaps covered %"] = 100 * _gaps_covered(x, circle)
        stats[label] = st
        rows.append({"model": label, **st, "time s": elapsed})
        panels.append(_circle_panel(circle, x, colour))
    s_exact, s_smooth, s_kde = stats["exact"], stats[models[1][0]], stats[models[2][0]]
    criteria = [
        _check("exact: memorised %", s_exact["memorised %"], 99.0, ">="),
        _check("smoothed: memorised % - uniform's", s_smooth["memorised %"] - rows[0]["memorised %"], 0.0, "<="),
        _check("smoothed: median lateral novelty / uniform's",
               s_smooth["median lateral novelty"] / rows[0]["median lateral novelty"], 0.8, ">="),  # fmt: skip
        _check("smoothed: median dist to M / KDE's", s_smooth["median dist to M"] / s_kde["median dist to M"], 0.5, "<="),
        _check("smoothed: gaps between training points reached %", s_smooth["gaps covered %"], 100.0, ">="),
    ]
    return DemoResult(
        "smoothing",
        f"circle in R^2, N={n_train} equispaced training points, VE, Heun PF-ODE {steps} steps (sigma 10 -> 1e-3), "
        f"{n_samples} samples; smoothed: Gaussian kernel h={h:g}, {mc} antithetic MC draws per evaluation",
        ["model", "memorised %", "median dist to M", "median lateral novelty", "gaps covered %", "time s"],
        rows,
        criteria,
        panels,
        ["exact empirical score (memorises)", f"log-domain smoothed, h={h:g}", f"KDE, h={h:g} (leaves the circle)"],
    )


def demo_memorize(n_train=12, n_samples=500, steps=100, seed=0, progress=False) -> DemoResult:
    """The exact empirical score memorises: the bridge sampler and Heun return training points."""
    import nnscore as ns

    from . import sampling
    from . import metrics
    from .datasets.synthetic import Circle

    circle = Circle(n_train, ambient_dim=2, density="equispaced", rotation=None, rng=seed)
    train = circle.points
    model = ns.EmpiricalScore(train)
    rows, panels = [], []
    t0 = time.perf_counter()
    xb = sampling.sample(model, n_samples, steps=steps, sampler="exact_bridge", sigma_max=10.0, sigma_min=1e-3,
                            rng=seed, progress=progress)  # fmt: skip
    tb = time.perf_counter() - t0
    bitwise = float(np.mean((xb[:, None, :] == train[None, :, :]).all(-1).any(1)))
    t0 = time.perf_counter()
    xh = sampling.sample(model, n_samples, steps=steps, sampler="heun", sigma_max=10.0, sigma_min=1e-3,
                            rng=seed, progress=progress)  # fmt: skip
    th = time.perf_counter() - t0
    nearest = metrics.nearest_train(xh, train)
    mem = 100 * metrics.memorization_fraction(xh, train, nearest=nearest)
    rows.append({"sampler": "exact_bridge", "training points bit-for-bit %": 100 * bitwise, "memorised %": None,
                 "max d1": float(metrics.nearest_train(xb, train, k=1).d1.max()), "time s": tb})  # fmt: skip
    rows.append({"sampler": "heun", "training points bit-for-bit %": None, "memorised %": mem,
                 "max d1": float(nearest.d1.max()), "time s": th})  # fmt: skip
    panels = [_circle_panel(circle, xb, "green"), _circle_panel(circle, xh, "blue")]
    criteria = [
        _check("exact_bridge: training points bit-for-bit %", 100 * bitwise, 100.0, ">="),
        _check("heun: memorised % (d1/d2 < 1/3)", mem, 99.0, ">="),
        _check("heun: max d1 / (10 sigma_min)", float(nearest.d1.max()) / (10 * 1e-3), 1.0, "<="),
    ]
    return DemoResult(
        "memorize",
        f"circle in R^2, N={n_train} equispaced points, exact empirical score, {n_samples} samples, {steps} steps",
        ["sampler", "training points bit-for-bit %", "memorised %", "max d1", "time s"],
        rows,
        criteria,
        panels,
        ["exact bridge sampler", "Heun PF-ODE"],
    )


def demo_tangential(dim=50, n_sub=2, n_train=40, h=0.3, sigma=0.5, mc=64, seed=0, progress=False) -> DemoResult:
    """On flat data the smoothed score differs from the exact one only along the subspace."""
    import nnscore as ns

    from . import sampling

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, n_sub)))[0]  # (d, n) orthonormal columns
    offset = rng.standard_normal(dim)
    train = rng.standard_normal((n_train, n_sub)) @ basis.T + offset
    normal = np.eye(dim) - basis @ basis.T
    x = train[rng.integers(0, n_train, 64)] + sigma * rng.standard_normal((64, dim))
    exact = ns.EmpiricalScore(train)
    rows, worst = [], {}
    for estimator, antithetic in (("control_variate", False), ("control_variate", True), ("raw", True)):
        smoothed = ns.SmoothedScore(exact, ns.GaussianKernel(h), n_samples=mc, estimator=estimator,
                                    antithetic=antithetic, rng=seed)  # fmt: skip
        s = exact.score(x, sigma)
        sh = smoothed.score(x, sigma)
        rel_normal = float(np.max(np.linalg.norm((sh - s) @ normal, axis=1) / np.linalg.norm(s @ normal, axis=1)))
        rel_tangent = float(np.median(np.linalg.norm((sh - s) @ basis, axis=1) / np.linalg.norm(s @ basis, axis=1)))
        label = f"{estimator}{' + antithetic' if antithetic else ''}"
        worst[label] = rel_normal
        rows.append({"estimator": label, "max |normal change| / |normal score|": rel_normal,
                     "median |tangential change| / |tangential score|": rel_tangent})  # fmt: skip
    criteria = [_check(f"{k}: normal change", v, 1e-10, "<=") for k, v in worst.items()]
    criteria.append(_check("tangential change (median, control_variate)", rows[0][
        "median |tangential change| / |tangential score|"], 1e-3, ">="))  # fmt: skip
    return DemoResult(
        "tangential",
        f"{n_train} points on a random {n_sub}-dim affine subspace of R^{dim}, sigma={sigma}, h={h}, {mc} MC draws "
        "(FPHDP Prop. 3.1: smoothing acts only along the data manifold)",
        ["estimator", "max |normal change| / |normal score|", "median |tangential change| / |tangential score|"],
        rows,
        criteria,
    )


def demo_early_stop(dim=50, n_train=20, sigma_stop=0.05, h=0.3, n_samples=300, steps=60, mc=64, seed=0,
                    progress=False) -> DemoResult:  # fmt: skip
    """Early stopping adds isotropic noise (off the manifold); smoothing spreads along it."""
    import nnscore as ns

    from . import sampling
    from . import metrics

    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    train = np.outer(np.linspace(-1, 1, n_train), direction)

    class Line:
        def distance(self, x):
            return np.linalg.norm(x - np.outer(x @ direction, direction), axis=1)

    line = Line()
    exact = ns.EmpiricalScore(train)
    rows = []
    t0 = time.perf_counter()
    stopped = sampling.sample(exact, n_samples, steps=steps, sampler="euler_maruyama", sigma_max=10.0,
                                 sigma_min=sigma_stop, rng=seed, progress=progress, noise_last=True)  # fmt: skip
    t_stop = time.perf_counter() - t0
    smoothed = ns.SmoothedScore(exact, ns.GaussianKernel(h), n_samples=mc, rng=seed)
    t0 = time.perf_counter()
    smooth = sampling.sample(smoothed, n_samples, steps=steps, sampler="heun", sigma_max=10.0, sigma_min=1e-3,
                                rng=seed, progress=progress)  # fmt: skip
    t_smooth = time.perf_counter() - t0
    for label, x, t in (("early stop", stopped, t_stop), ("smoothed", smooth, t_smooth)):
        nearest = metrics.nearest_train(x, train, k=1)
        tangential = np.abs((x - train[nearest.idx[:, 0]]) @ direction)
        rows.append({"model": label, "median dist to M": float(np.median(line.distance(x))),
                     "median tangential offset": float(np.median(tangential)), "time s": t})  # fmt: skip
    expected = sigma_stop * np.sqrt(dim - 1)
    criteria = [
        _check("early stop: |median dist to M / (sigma_stop sqrt(d-1)) - 1|",
               abs(rows[0]["median dist to M"] / expected - 1), 0.05, "<="),  # fmt: skip
        _check("smoothed: median dist to M / (2e-3 sqrt(d))", rows[1]["median dist to M"] / (2e-3 * np.sqrt(dim)),
               1.0, "<="),  # fmt: skip
    ]
    return DemoResult(
        "early-stop",
        f"{n_train} points on a line in R^{dim}; early stopping at sigma={sigma_stop} (Euler-Maruyama) vs the smoothed "
        f"score h={h} (Heun to sigma=1e-3)",
        ["model", "median dist to M", "median tangential offset", "time s"],
        rows,
        criteria,
    )


DEMOS = {
    "smoothing": demo_smoothing,
    "memorize": demo_memorize,
    "tangential": demo_tangential,
    "early-stop": demo_early_stop,
}
DEFAULT_DEMO = "smoothing"


def run_demo(name: str = DEFAULT_DEMO, **kwargs) -> DemoResult:
    if name not in DEMOS:
        raise ValueError(f"name: unknown demo {name!r}; available: {', '.join(DEMOS)}")
    return DEMOS[name](**kwargs)
