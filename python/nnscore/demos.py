"""`nnscore demo`: the phenomena of science.md §5, one function each.

Every demo returns a :class:`DemoResult`: a table of rows, the criteria with their measured
values and pass/fail, and the point sets of its figure.  Thresholds marked "calibrate" in
science.md are set here at the default seed and frozen.
"""
from __future__ import annotations

import math
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
    """Exact score memorises; log-domain smoothing generalises along the circle; the KDE leaves it.

    Exact empirical score (memorises) vs the log-domain smoothed score (generalises along the
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


def _curve_panel(manifold, train, samples, colour, rng=0):
    curve = manifold.sample_uniform(1500, rng=rng)
    return [(curve, "grey", 0), (train, "black", 3), (samples, colour, 1)]  # samples on top


def _loglog_slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)[0])


def demo_kde_vs_score(n_train=50, hs=(0.02, 0.04, 0.07, 0.1), kde_hs=(0.01, 0.02, 0.04, 0.07, 0.1, 0.15),
                      n_samples=400, steps=80, mc=64, seed=0, progress=False) -> DemoResult:  # fmt: skip
    """Score smoothing stays on the lima bean; the KDE at matched lateral novelty leaves it (FPHDP F2).

    Each bandwidth gives one point (median lateral novelty, median dist to M); KDE's curve is
    interpolated (linearly in novelty, its bandwidths extended to 0.01 and 0.15 so that it covers
    the score's novelties) at the score's median lateral novelty, and the criterion is the smallest
    ratio dist-to-M(KDE) / dist-to-M(score) over the matched bandwidths.  Threshold: science.md's 3
    (§5 item 3), which holds at seed 0 (the ratio is smallest at the largest h, where the smoothed
    score's samples start to cut the bean's concave side).
    """
    import nnscore as ns

    from . import sampling
    from .datasets.synthetic import LimaBean

    bean = LimaBean(n_train, ambient_dim=2, density="uniform", rotation=None, rng=seed)
    train = bean.points
    exact = ns.EmpiricalScore(train)
    curves = {"score": [], "KDE": []}
    samples, rows = {}, []
    jobs = [("score", h) for h in hs] + [("KDE", h) for h in kde_hs]
    for i, (kind, h) in enumerate(jobs):
        if kind == "score":
            model = ns.SmoothedScore(exact, ns.GaussianKernel(h), n_samples=mc, rng=seed + 1 + i)
        else:
            model = ns.KDEScore(exact, h)
        t0 = time.perf_counter()
        x = sampling.sample(model, n_samples, steps=steps, sampler="heun", sigma_max=10.0, sigma_min=1e-3,
                            rng=seed, progress=progress)  # fmt: skip
        elapsed = time.perf_counter() - t0
        st = _sample_stats(x, train, bean)
        curves[kind].append((st["median lateral novelty"], st["median dist to M"]))
        samples[(kind, h)] = x
        rows.append({"model": f"{kind} h={h:g}", **st, "KDE dist to M at matched novelty": None,
                     "ratio KDE / score": None, "time s": elapsed})  # fmt: skip
    kde = np.array(sorted(curves["KDE"]))
    ratios = []
    for row, (nov, dist) in zip(rows, curves["score"]):
        if kde[0, 0] <= nov <= kde[-1, 0]:
            kde_dist = float(np.interp(nov, kde[:, 0], kde[:, 1]))
            row["KDE dist to M at matched novelty"] = kde_dist
            row["ratio KDE / score"] = kde_dist / dist
            ratios.append(kde_dist / dist)
    criteria = [
        _check("bandwidths of the smoothed score matched by the KDE's novelty range", len(ratios), len(hs) - 1, ">="),
        _check("min over matched h of median dist-to-M(KDE) / dist-to-M(score)", min(ratios, default=0.0), 3.0, ">="),
    ]
    h_fig = hs[len(hs) // 2]
    panels = [_curve_panel(bean, train, samples[("score", h_fig)], "orange", seed),
              _curve_panel(bean, train, samples[("KDE", h_fig)], "red", seed)]  # fmt: skip
    return DemoResult(
        "kde-vs-score",
        f"lima bean in R^2, N={n_train} uniform training points, VE, Heun PF-ODE {steps} steps (sigma 10 -> 1e-3), "
        f"{n_samples} samples per bandwidth; smoothed: Gaussian kernel, {mc} antithetic MC draws per evaluation",
        ["model", "memorised %", "median dist to M", "median lateral novelty", "KDE dist to M at matched novelty",
         "ratio KDE / score", "time s"],  # fmt: skip
        rows,
        criteria,
        panels,
        [f"log-domain smoothed, h={h_fig:g} (stays on the bean)", f"KDE, h={h_fig:g} (leaves it)"],
    )


def demo_rate_separation(kappa=4.0, offset=0.05, n_train=64, n_sigma=9, mc=4096, seed=0, progress=False) -> DemoResult:
    """Exact score: normal part ~ sigma^-2, tangential O(1); the empirical one's tangential part ~ sigma^-2 too.

    Part 1 (science.md §5 item 5, LSHH Thm 3.1): the exact population score (2.7) of von Mises
    (kappa) data on the unit circle, at 16 angles offset by ``offset`` along the normal, for
    sigma in [1e-3, 1e-2]: log-log slopes of the median |s_normal| (-2 +- 0.05) and |s_tangential|
    (0 +- 0.05), and of sup over a tube grid (|offset| <= 0.05) of |sigma^2 s + (x - P x)| (2 +- 0.1).

    Part 2: the exact *empirical* score of N equispaced points (fill distance h_N = half a gap
    ~ 0.049 > sigma) at the quarter-gap points, where |s_tan| = (gap/4)/sigma^2: slope -2 +- 0.05.
    Gaussian log-domain smoothing with h = h_N (``mc`` antithetic draws, control variate) removes
    the sawtooth: the exact smoothed value is ~ exp(-2 pi^2 h^2/gap^2) gap/sigma^2, tiny.  What a
    Monte-Carlo estimate returns below the fill distance is its noise, ~ gap/(sqrt(12 mc) sigma^2):
    still proportional to sigma^-2 (a quadrature does no better on this discontinuous-in-the-limit
    integrand), so science.md's "back to O(1)" holds only at the top of the range.  Criteria
    (calibrated at seed 0): smoothed/empirical median |s_tan| <= 0.05 at every sigma (measured
    0.023), and smoothed median |s_tan| at sigma = 1e-2 <= 10 (O(1); measured 4.1).
    """
    import nnscore as ns

    from .datasets.synthetic import Circle, VonMises

    sigmas = np.geomspace(1e-3, 1e-2, n_sigma)
    circle = Circle(16, ambient_dim=2, density=VonMises(kappa), rotation=None, rng=seed)
    theta = np.linspace(0.0, 2 * np.pi, 16, endpoint=False) + 0.3  # generic angles (not the symmetry axis)
    e_r = np.stack([np.cos(theta), np.sin(theta)], 1)
    e_t = np.stack([-np.sin(theta), np.cos(theta)], 1)
    x = (1.0 + offset) * e_r
    tube = ((1.0 + np.linspace(-0.05, 0.05, 11))[:, None, None] * e_r[None]).reshape(-1, 2)
    tube_proj = tube / np.linalg.norm(tube, axis=1, keepdims=True)

    equi = Circle(n_train, ambient_dim=2, density="equispaced", rotation=None, rng=seed)
    gap = 2 * np.pi / n_train
    h_fill = 2 * np.sin(gap / 4)  # largest distance from the circle to the nearest training point
    angles = np.sort(np.mod(equi.intrinsic_coords(equi.points)[:, 0], 2 * np.pi)) + gap / 4
    xq = np.stack([np.cos(angles), np.sin(angles)], 1)
    tq = np.stack([-np.sin(angles), np.cos(angles)], 1)
    empirical = ns.EmpiricalScore(equi.points)
    smoothed = ns.SmoothedScore(empirical, ns.GaussianKernel(h_fill), n_samples=mc, rng=seed + 1)

    rows, cols = [], {k: [] for k in ("normal", "tangential", "tube", "emp", "smooth")}
    for sigma in sigmas:
        s = circle.population_score(x, sigma)
        st = circle.population_score(tube, sigma)
        cols["normal"].append(float(np.median(np.abs(np.sum(s * e_r, 1)))))
        cols["tangential"].append(float(np.median(np.abs(np.sum(s * e_t, 1)))))
        cols["tube"].append(float(np.max(np.linalg.norm(sigma**2 * st + (tube - tube_proj), axis=1))))
        cols["emp"].append(float(np.median(np.abs(np.sum(empirical.score(xq, sigma) * tq, 1)))))
        cols["smooth"].append(float(np.median(np.abs(np.sum(smoothed.score(xq, sigma) * tq, 1)))))
        rows.append({"sigma": float(sigma), "exact |s_normal|": cols["normal"][-1],
                     "exact |s_tan|": cols["tangential"][-1], "sup tube |sigma^2 s + (x - Px)|": cols["tube"][-1],
                     "empirical |s_tan| (quarter gap)": cols["emp"][-1],
                     f"smoothed h={h_fill:.3g} |s_tan|": cols["smooth"][-1]})  # fmt: skip
    slopes = {k: _loglog_slope(sigmas, v) for k, v in cols.items()}
    rows.append({"sigma": "log-log slope", "exact |s_normal|": slopes["normal"], "exact |s_tan|": slopes["tangential"],
                 "sup tube |sigma^2 s + (x - Px)|": slopes["tube"], "empirical |s_tan| (quarter gap)": slopes["emp"],
                 f"smoothed h={h_fill:.3g} |s_tan|": slopes["smooth"]})  # fmt: skip
    ratio = max(b / a for a, b in zip(cols["emp"], cols["smooth"]))
    criteria = [
        _check("exact: |slope(|s_normal|) + 2|", abs(slopes["normal"] + 2.0), 0.05, "<="),
        _check("exact: |slope(|s_tan|)|", abs(slopes["tangential"]), 0.05, "<="),
        _check("exact: |slope(sup tube |sigma^2 s + (x - Px)|) - 2|", abs(slopes["tube"] - 2.0), 0.1, "<="),
        _check(f"empirical N={n_train}: |slope(|s_tan|) + 2|", abs(slopes["emp"] + 2.0), 0.05, "<="),
        _check("smoothed / empirical median |s_tan| (max over sigma)", ratio, 0.05, "<="),
        _check("smoothed median |s_tan| at sigma=1e-2", cols["smooth"][-1], 10.0, "<="),
    ]
    return DemoResult(
        "rate-separation",
        f"exact score of von Mises(kappa={kappa:g}) data on the unit circle at offset r={offset:g}, sigma in [1e-3, 1e-2] "
        f"({n_sigma} levels); empirical score of N={n_train} equispaced points at the quarter-gap points "
        f"(h_N={h_fill:.3g}); smoothed: Gaussian h=h_N, {mc} antithetic MC draws",
        ["sigma", "exact |s_normal|", "exact |s_tan|", "sup tube |sigma^2 s + (x - Px)|", "empirical |s_tan| (quarter gap)",
         f"smoothed h={h_fill:.3g} |s_tan|"],  # fmt: skip
        rows,
        criteria,
    )


def demo_tempered(kappa=1.0, sigma=0.01, n_chains=2000, n_steps=1000, h=0.5, n_bins=16, seed=0,
                  progress=False) -> DemoResult:  # fmt: skip
    """Tempered-score Langevin (alpha=1) is uniform on the circle from von Mises data; alpha=0 is not (LSHH).

    LSHH (science.md §5 item 9, §4.3 L1) with the exact population score in place of a learned one:
    von Mises(kappa=1) data on the unit circle, represented by the periodic-trapezoid quadrature
    nodes with weights (spacing = sigma, so the weighted empirical score equals the population
    score to ~1e-8 relative).  Each chain anneals from sigma=10 to sigma=0.01 (Euler-Maruyama, 40
    steps), then runs ``n_steps`` TS-Langevin steps ``y <- y + h (D(y) - y) + sqrt(2 h sigma^(2-alpha)) z``.
    Budget (2 cores, ~6 s): 2000 chains, 1000 steps at h=0.5 (LSHH: 10^4 chains, 10^4 steps at
    h=0.1), which mixes alpha=1 along the circle (angular variance 2 h sigma n_steps = 10 rad^2).
    alpha=0 starts from the same annealed law p_sigma ~ von Mises and keeps it.
    Criteria: the arc-length histogram's max deviation from uniform (16 bins) <= the noise floor
    2 sqrt(n_bins / n) for alpha=1 (science.md; note even exactly uniform samples exceed this floor
    about half the time, since it is ~2 standard deviations for the max of 16 bins) and >= 3x the
    floor for alpha=0 (von Mises(1) deviates by e/I0(1) - 1 = 1.15).
    """
    import nnscore as ns

    from . import metrics
    from . import sampling
    from .datasets.synthetic import Circle, VonMises

    circle = Circle(16, ambient_dim=2, density=VonMises(kappa), rotation=None, rng=seed)
    nodes, weights = circle.quadrature(n_nodes=int(np.ceil(2 * np.pi / sigma)))
    model = ns.EmpiricalScore(nodes, weights=weights)
    rows, panels, stats = [], [], {}
    for alpha, colour in ((1.0, "orange"), (0.0, "blue")):
        t0 = time.perf_counter()
        x = sampling.sample(model, n_chains, steps=40, sampler="tempered_langevin", sigma_max=10.0, sigma_min=sigma,
                            rng=seed, progress=progress, sigma=sigma, alpha=alpha, h=h, n_steps=n_steps)  # fmt: skip
        elapsed = time.perf_counter() - t0
        u = metrics.uniformity_circle(circle.intrinsic_coords(x)[:, 0], n_bins=n_bins)
        stats[alpha] = u
        rows.append({"sampler": f"TS Langevin alpha={alpha:g}", "max histogram deviation": u["max_dev"],
                     "noise floor": u["noise_floor"], "KS": u["ks"], "W1": u["w1"],
                     "median dist to M": float(np.median(circle.distance(x))), "time s": elapsed})  # fmt: skip
        panels.append(_circle_panel(circle, x, colour))
    for p in panels:
        p[1] = (nodes[:: max(1, len(nodes) // 64)], "black", 2)  # a few quadrature nodes in place of training points
    criteria = [
        _check("alpha=1: max histogram deviation / noise floor", stats[1.0]["max_dev"] / stats[1.0]["noise_floor"],
               1.0, "<="),  # fmt: skip
        _check("alpha=0: max histogram deviation / noise floor", stats[0.0]["max_dev"] / stats[0.0]["noise_floor"],
               3.0, ">="),  # fmt: skip
    ]
    return DemoResult(
        "tempered",
        f"von Mises(kappa={kappa:g}) data on the unit circle (exact score by {len(nodes)} weighted quadrature nodes); "
        f"TS Langevin at sigma={sigma:g}, {n_chains} chains, {n_steps} steps, h={h:g}; {n_bins}-bin arc-length histogram",
        ["sampler", "max histogram deviation", "noise floor", "KS", "W1", "median dist to M", "time s"],
        rows,
        criteria,
        panels,
        ["TS Langevin alpha=1 (uniform)", "plain Langevin alpha=0 (von Mises)"],
    )


def demo_geometric_bias(n_train=30, hs=(0.1, 0.25, 1.0), n_samples=400, steps=80, mc=64, seed=0,
                        progress=False) -> DemoResult:  # fmt: skip
    """Isotropic smoothing of a wavy circle: waves (small h) -> base circle (medium h) -> collapse (FPHDP F4).

    WavyCircle(f=8, A=0.13), N=30 equispaced points; Gaussian log-domain smoothing at each h.
    Metrics: mean distance of the samples to the wavy curve and to its base (unit) circle, and
    their mean radius.  Thresholds calibrated at seed 0 (measured: h=0.1 wavy/circle 0.57;
    h=0.25 circle/wavy 0.64, mean radius 0.95; h=1 mean radius 0.06): h=0.1 closer to the wavy curve (ratio <= 0.75),
    h=0.25 closer to the circle (ratio <= 0.8) with mean radius >= 0.85, h=1 mean radius <= 0.25.
    """
    import nnscore as ns

    from . import sampling
    from .datasets.synthetic import Circle, WavyCircle

    wavy = WavyCircle(n_train, ambient_dim=2, density="equispaced", rotation=None, rng=seed)
    base = Circle(1, ambient_dim=2, density="uniform", rotation=None, rng=seed)
    train = wavy.points
    exact = ns.EmpiricalScore(train)
    rows, panels, stats = [], [], {}
    for i, (h, colour) in enumerate(zip(hs, ("blue", "orange", "red"))):
        model = ns.SmoothedScore(exact, ns.GaussianKernel(h), n_samples=mc, rng=seed + 1 + i)
        t0 = time.perf_counter()
        x = sampling.sample(model, n_samples, steps=steps, sampler="heun", sigma_max=10.0, sigma_min=1e-3,
                            rng=seed, progress=progress)  # fmt: skip
        elapsed = time.perf_counter() - t0
        st = {"mean dist to wavy curve": float(wavy.distance(x).mean()),
              "mean dist to base circle": float(base.distance(x).mean()),
              "mean radius": float(np.linalg.norm(x, axis=1).mean())}  # fmt: skip
        stats[h] = st
        rows.append({"h": h, **st, "time s": elapsed})
        panels.append(_curve_panel(wavy, train, x, colour, seed))
    small, mid, large = (stats[h] for h in hs)
    criteria = [
        _check(f"h={hs[0]:g}: dist to wavy / dist to circle", small["mean dist to wavy curve"]
               / small["mean dist to base circle"], 0.75, "<="),  # fmt: skip
        _check(f"h={hs[1]:g}: dist to circle / dist to wavy", mid["mean dist to base circle"]
               / mid["mean dist to wavy curve"], 0.8, "<="),  # fmt: skip
        _check(f"h={hs[1]:g}: mean radius", mid["mean radius"], 0.85, ">="),
        _check(f"h={hs[2]:g}: mean radius (collapse)", large["mean radius"], 0.25, "<="),
    ]
    return DemoResult(
        "geometric-bias",
        f"wavy circle (f=8, A=0.13) in R^2, N={n_train} equispaced points, Gaussian log-domain smoothing h in "
        f"{{{', '.join(f'{h:g}' for h in hs)}}}, Heun PF-ODE {steps} steps, {n_samples} samples, {mc} MC draws",
        ["h", "mean dist to wavy curve", "mean dist to base circle", "mean radius", "time s"],
        rows,
        criteria,
        panels,
        [f"h={h:g}" for h in hs],
    )


def _normal_cdf(z) -> np.ndarray:
    from math import erf, sqrt

    return np.array([0.5 * (1.0 + erf(float(v) / sqrt(2.0))) for v in np.ravel(z)]).reshape(np.shape(z))


def demo_chen(kappa=1.0, t0=0.25, n_samples=200_000, n_bins=10, steps=40, seed=0, progress=False) -> DemoResult:
    """CHEN: the smoothed piecewise-linear score interpolates between two points; the exact one does not.

    science.md §5 item 7 / §4.2 C1: training points y = +-1 in d = 1, VE with CHEN's variance
    time t = sigma^2 (nnscore's VE t is sigma).  ``n_samples`` starts x ~ p_t0 = (N(-1, t0) +
    N(1, t0))/2 are carried to t = 0 by the probability-flow ODE (x' = -s/2 in t, i.e.
    dx/dsigma = (x - D)/sigma; Heun, ``steps`` geometric steps from sigma = sqrt(t0) to 1e-3 then
    to 0) under (a) the smoothed PL-ESF (2.2) with delta_t = kappa sqrt(t) and (b) the exact ESF
    (tanh form, EmpiricalScore).  Prediction (2.4): atoms a = [Phi(kappa) + Phi(kappa - 2/sqrt(t0))]/2
    at each of +-1 and the density (1 - delta0) p_t0((1 - delta0) y) on (-1, 1), delta0 =
    kappa sqrt(t0) (kappa = 1, t0 = 0.25: interior mass 0.157).  Criteria: atom masses, the
    interior mass and each of ``n_bins`` interior histogram bins within 3 binomial MC standard
    errors of (2.4); every smoothed endpoint within 1e-9 of the flow map (2.3); the exact ESF puts
    no mass in the interior (|y| < 1 - 1e-6).
    """
    import nnscore as ns

    from . import sampling
    from .scores.piecewise import PiecewiseLinearScore

    delta0 = kappa * np.sqrt(t0)
    if not 0.0 < delta0 < 1.0:
        raise ValueError(f"kappa: the demo needs delta0 = kappa sqrt(t0) in (0, 1), got {delta0:g}")
    rng = np.random.default_rng(seed)
    s0 = float(np.sqrt(t0))
    x0 = np.where(rng.random(n_samples) < 0.5, -1.0, 1.0) + s0 * rng.standard_normal(n_samples)
    train = np.array([[-1.0], [1.0]])
    ts = ns.schedules.VE().grid(steps, kind="geometric", sigma_min=1e-3, sigma_max=s0)
    models = (("smoothed PL-ESF", PiecewiseLinearScore(train, kappa), "orange"),
              ("exact ESF", ns.EmpiricalScore(train), "blue"))  # fmt: skip
    ends, times = {}, {}
    for label, model, _ in models:
        t_start = time.perf_counter()
        ends[label] = sampling.heun(model, x0[:, None], ts, progress=progress)[:, 0]
        times[label] = time.perf_counter() - t_start

    tol = 1e-6
    a_pred = 0.5 * float(np.sum(_normal_cdf(np.array([kappa, kappa - 2.0 / s0]))))
    edges = np.linspace(-1.0, 1.0, n_bins + 1)

    def mixture_cdf(x):  # CDF of p_t0
        return 0.5 * (_normal_cdf((x + 1.0) / s0) + _normal_cdf((x - 1.0) / s0))

    bin_pred = np.diff(mixture_cdf((1.0 - delta0) * edges))  # endpoint y = x0/(1 - delta0) in the middle region
    rows, zs = [], {"atoms": [], "interior": [], "bins": []}

    def add(label, key, measured, predicted):
        se = float(np.sqrt(max(predicted * (1.0 - predicted), 1e-300) / n_samples))
        z = (measured - predicted) / se
        zs[key].append(abs(z))
        rows.append({"quantity": label, "measured": measured, "predicted (2.4)": predicted, "MC s.e.": se, "z": z})

    y = ends["smoothed PL-ESF"]
    interior = np.abs(y) < 1.0 - tol
    add("smoothed: atom at -1", "atoms", float(np.mean(np.abs(y + 1.0) <= tol)), a_pred)
    add("smoothed: atom at +1", "atoms", float(np.mean(np.abs(y - 1.0) <= tol)), a_pred)
    add("smoothed: interior mass", "interior", float(np.mean(interior)), 1.0 - 2.0 * a_pred)
    counts = np.histogram(y[interior], bins=edges)[0] / n_samples
    for lo, hi, c, p in zip(edges[:-1], edges[1:], counts, bin_pred):
        add(f"smoothed: interior bin [{lo:+.1f}, {hi:+.1f})", "bins", float(c), float(p))
    flow_map = np.where(np.abs(x0) < 1.0 - delta0, x0 / (1.0 - delta0), np.sign(x0))
    flow_err = float(np.max(np.abs(y - flow_map)))
    ye = ends["exact ESF"]
    esf_interior = float(np.mean(np.abs(ye) < 1.0 - tol))
    rows.append({"quantity": "smoothed: max |endpoint - flow map (2.3)|", "measured": flow_err,
                 "predicted (2.4)": 0.0, "MC s.e.": None, "z": None})  # fmt: skip
    rows.append({"quantity": "exact ESF: atom at +1", "measured": float(np.mean(np.abs(ye - 1.0) <= tol)),
                 "predicted (2.4)": 0.5, "MC s.e.": float(np.sqrt(0.25 / n_samples)), "z": None})  # fmt: skip
    rows.append({"quantity": "exact ESF: interior mass", "measured": esf_interior, "predicted (2.4)": 0.0,
                 "MC s.e.": None, "z": None})  # fmt: skip
    for label, _, _ in models:
        rows.append({"quantity": f"{label}: time s", "measured": times[label], "predicted (2.4)": None,
                     "MC s.e.": None, "z": None})  # fmt: skip
    criteria = [
        _check("smoothed: max |z| of the two atom masses", max(zs["atoms"]), 3.0, "<="),
        _check("smoothed: |z| of the interior mass", max(zs["interior"]), 3.0, "<="),
        _check(f"smoothed: max |z| over {n_bins} interior histogram bins", max(zs["bins"]), 3.0, "<="),
        _check("smoothed: max |endpoint - flow map (2.3)|", flow_err, 1e-9, "<="),
        _check("exact ESF: interior mass", esf_interior, 0.0, "<="),
    ]
    sub = slice(0, min(n_samples, 4000))
    panels = [[(np.stack([x0[sub], ends[label][sub]], 1), colour, 1)] for label, _, colour in models]
    return DemoResult(
        "chen",
        f"CHEN interpolation law: y = +-1 (d = 1), VE with t = sigma^2, kappa={kappa:g}, t0={t0:g} (delta0={delta0:g}); "
        f"{n_samples} starts from p_t0, Heun PF-ODE {steps} steps (sigma {s0:g} -> 1e-3 -> 0); "
        f"smoothed PL-ESF (2.2) vs exact ESF; prediction (2.4): atoms {a_pred:.5f} each, interior {1 - 2 * a_pred:.5f}",
        ["quantity", "measured", "predicted (2.4)", "MC s.e.", "z"],
        rows,
        criteria,
        panels,
        ["smoothed PL-ESF: (start x0, endpoint)", "exact ESF: (start x0, endpoint)"],
    )


def _moons(n, noise, rng):
    """Two interleaving half circles (numpy only): the first ceil(n/2) points on the upper arc."""
    n1 = (n + 1) // 2
    n2 = n - n1
    a1 = np.pi * rng.random(n1)
    a2 = np.pi * rng.random(n2)
    upper = np.stack([np.cos(a1), np.sin(a1)], 1)
    lower = np.stack([1.0 - np.cos(a2), 0.5 - np.sin(a2)], 1)
    return np.concatenate([upper, lower]) + noise * rng.standard_normal((n, 2))


def _distinct_outputs(x, train, tol=1e-9) -> int:
    """Upper bound on the distinct rows of ``x``: training points hit (within tol) + all other rows."""
    from . import metrics

    nearest = metrics.nearest_train(x, train, k=1)
    on_train = nearest.d1 <= tol
    return int(np.unique(nearest.idx[on_train, 0]).size + np.count_nonzero(~on_train))


def demo_cfdm(toy="moons", n_train=50, sigma=0.4, n_draws=2, mode="fixed", n_samples=1000, steps=200, t_start=0.95,
              sigma_min=1e-9, seed=0, progress=False) -> DemoResult:  # fmt: skip
    """sigma-CFDM with fixed draws returns barycentres of M-tuples of training points (science.md §2.1.6).

    Moons toy (two half circles + 0.05 noise), N=50; CFDM schedule (a = t, s = 1 - t), exact start
    z_T ~ rho_T at T = t_start, Euler on dz/dt = (Dbar - z)/(1 - t) to t = 1 on a geometric grid
    in 1 - t (sigma~ from (1 - T)/T down to ``sigma_min``, then the final step to t = 1).  The field
    contracts by the factor (1 - t'), so reaching 1 - t ~ 1e-9 lets trajectories settle in their
    fixed points (a uniform grid in t stops at 1 - t = 1/(20 steps) before the last jump and leaves
    about 20% of them between cells at 200 steps).  Criteria: >= 99% of the sigma-CFDM samples
    satisfy z = (1/M) sum_m x_NN(z + sigma eps_m) within 1e-3 (their own fixed draws); the
    unsmoothed model returns at most N distinct points.
    """
    from . import metrics, sampling
    from .scores.cfdm import CFDMScore

    if toy != "moons":
        raise ValueError(f"toy: only 'moons' is available, got {toy!r}")
    train = _moons(n_train, 0.05, np.random.default_rng(seed))
    sigma_max = (1.0 - t_start) / t_start
    kw = dict(steps=steps, sampler="cfdm", grid="geometric", sigma_max=sigma_max, sigma_min=sigma_min, rng=seed,
              start="data", progress=progress)  # fmt: skip
    rows = []
    model = CFDMScore(train, sigma, n_draws, mode=mode, rng=seed + 1)
    t0 = time.perf_counter()
    xs = sampling.sample(model, n_samples, **kw)
    ts = time.perf_counter() - t0
    gap = np.linalg.norm(xs - model.barycentres(xs), axis=1) if mode == "fixed" else None
    consistent = 100 * float(np.mean(gap <= 1e-3)) if gap is not None else float("nan")
    novel = 100 * float(np.mean(metrics.nearest_train(xs, train, k=1).d1 > 1e-6))
    rows.append({"model": f"sigma-CFDM sigma={sigma:g} M={n_draws} ({mode})", "barycentre self-consistent %":
                 consistent, "distinct outputs": _distinct_outputs(xs, train), "novel (not training) %": novel,
                 "time s": ts})  # fmt: skip
    plain = CFDMScore(train, 0.0, 1, rng=seed + 1)
    t0 = time.perf_counter()
    xu = sampling.sample(plain, n_samples, **kw)
    tu = time.perf_counter() - t0
    distinct_plain = _distinct_outputs(xu, train)
    novel_plain = 100 * float(np.mean(metrics.nearest_train(xu, train, k=1).d1 > 1e-6))
    rows.append({"model": "unsmoothed CFDM (sigma=0)", "barycentre self-consistent %": None,
                 "distinct outputs": distinct_plain, "novel (not training) %": novel_plain, "time s": tu})  # fmt: skip
    criteria = [_check("unsmoothed: distinct outputs", distinct_plain, n_train, "<=")]
    if gap is not None:
        criteria.insert(0, _check("sigma-CFDM: barycentre self-consistent % (within 1e-3)", consistent, 99.0, ">="))
    panels = [[(train, "black", 3)], [(train, "black", 3), (xs, "red", 1)], [(train, "black", 3), (xu, "blue", 1)]]
    return DemoResult(
        "cfdm",
        f"{toy} toy in R^2, N={n_train}, CFDM schedule, exact start at t={t_start:g}, Euler {steps} steps to t=1 "
        f"(geometric in 1-t down to {sigma_min:g}), {n_samples} samples, sigma={sigma:g}, M={n_draws}, mode={mode}",
        ["model", "barycentre self-consistent %", "distinct outputs", "novel (not training) %", "time s"],
        rows,
        criteria,
        panels,
        ["training points", f"sigma-CFDM (sigma={sigma:g}, M={n_draws})", "unsmoothed CFDM"],
    )


def demo_knn_certificate(n_train=100_000, dim=64, sphere_dim=3, n_queries=2000, n_sigma=5, tol=1e-4, seed=0,
                         progress=False) -> DemoResult:  # fmt: skip
    """Certified kNN truncation (science.md §3, §5 item 11): zero violations, tol always met.

    N points uniform on a ``sphere_dim``-sphere of radius 1 embedded in R^dim (float64), an IVF
    :class:`~nnscore.TrainingIndex`, :class:`~nnscore.KNNScore` with ``tol`` on ||D - D_K||/R.
    Queries: random training points plus N(0, sigma^2 I) noise, ``n_queries`` per sigma, sigma
    geometric from 1e-3 to 0.1 (x the radius): n_queries x n_sigma (query, sigma) cases.  The
    float64 reference is the dense engine on float64 data (its own error, ~1e-13 R, is allowed
    for).  Criteria: no true error above its certified bound; every query within tol (fallbacks
    counted).  Also reported: the median bound / true-error ratio on certified queries and the
    speed-up over the dense engine in the same run.
    """
    from .datasets import manifold
    from .index import TrainingIndex
    from .scores.empirical import EmpiricalScore
    from .scores.knn import KNNScore

    rng = np.random.default_rng(seed)
    train = np.ascontiguousarray(manifold("sphere", n=n_train, k=sphere_dim, ambient_dim=dim, rng=seed).points)
    t0 = time.perf_counter()
    index = TrainingIndex(train, kind="ivf", rng=seed)
    model = KNNScore(index, tol=tol, tol_kind="denoiser_rel")
    t_build = time.perf_counter() - t0
    dense = EmpiricalScore(train)
    R = dense.data.radius
    rows, n_viol, n_over, ratios, total = [], 0, 0, [], 0
    for sigma in np.geomspace(1e-3, 0.1, n_sigma):
        y = train[rng.integers(0, n_train, n_queries)] + sigma * rng.standard_normal((n_queries, dim))
        t0 = time.perf_counter()
        res = model.evaluate(y, sigma)
        t_knn = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = dense.evaluate(y, sigma)
        t_dense = time.perf_counter() - t0
        err = np.linalg.norm(res.denoised - ref.denoised, axis=1) / R
        slack = 1e-12  # the dense float64 reference's own error (relative to R)
        viol = int(np.sum(err > res.error_bound + slack))
        over = int(np.sum(err > tol + slack))
        cert = res.path == "ivf-certified"
        pos = cert & (err > slack)
        if pos.any():
            ratios.append(res.error_bound[pos] / err[pos])
        n_viol += viol
        n_over += over
        total += n_queries
        rows.append({"sigma": float(sigma), "certified %": 100 * float(np.mean(cert)),
                     "rows/query (median)": float(np.median(res.k_used)), "max bound": float(np.max(res.error_bound)),
                     "max true err": float(np.max(err)), "violations": viol, "over tol": over,
                     "knn s": t_knn, "dense s": t_dense, "speed-up": t_dense / t_knn})  # fmt: skip
    ratio = float(np.median(np.concatenate(ratios))) if ratios else float("nan")
    criteria = [_check("certificate violations", n_viol, 0, "<="), _check("queries over tol", n_over, 0, "<=")]
    return DemoResult(
        "knn-certificate",
        f"{total} (query, sigma) cases: N={n_train} points on a {sphere_dim}-sphere in R^{dim}, IVF index "
        f"(nlist {index.nlist}, built in {t_build:.1f} s), KNNScore tol={tol:g} on ||D - D_K||/R; median "
        f"bound/true-error ratio on certified queries: {ratio:.3g}",
        ["sigma", "certified %", "rows/query (median)", "max bound", "max true err", "violations", "over tol",
         "knn s", "dense s", "speed-up"],
        rows,
        criteria,
    )


def demo_nnse(data="clusters", n_train=5000, dim=64, n_queries=64, n_samples=256, k=64, repeats=20, seed=0,
              progress=False) -> DemoResult:  # fmt: skip
    """NNSE (Niedoba et al.) self-normalised importance sampling vs STF, against the exact denoiser.

    ``data``: "clusters" (N points around 20 centres in R^dim, default: no extra needed) or
    "digits" (scikit-learn's 8x8 digits in [0, 1], needs ``pip install '.[data]'``).  Queries:
    training points plus noise on a sigma grid (x the data radius R); per sigma, ``repeats``
    independent SNIS estimates (:class:`~nnscore.ImportanceSampledScore`, n_samples draws, k
    neighbours) and STF estimates (SNIS with a uniform batch of n_samples rows).  Reported per
    sigma: median over queries of the bias ||mean D_hat - D||/R and of the RMS error /R, and the
    largest chi^2(p||q) / (T_bar_k / S_K) (computed exactly over all N).  Criteria: SNIS bias <= 1e-3
    at the smallest sigma; SNIS RMS <= STF RMS (+ 3 MC standard errors) at every sigma; chi^2 <=
    T_bar_k / S_K for every query.
    """
    from .datasets import load
    from .scores.empirical import EmpiricalScore
    from .scores.stochastic import ImportanceSampledScore

    rng = np.random.default_rng(seed)
    if data == "clusters":
        centres = rng.standard_normal((20, dim))
        train = centres[rng.integers(0, 20, n_train)] + 0.15 * rng.standard_normal((n_train, dim))
    elif data == "digits":
        train = load("digits", rng=seed) / 16.0
    else:
        raise ValueError(f"data: expected 'clusters' or 'digits', got {data!r}")
    train = np.ascontiguousarray(train, dtype=np.float64)
    n, d = train.shape
    exact = EmpiricalScore(train)
    R = exact.data.radius
    snis = ImportanceSampledScore(train, n_samples=n_samples, k=k, rng=seed)
    rows, worst_chi, ok_stf = [], 0.0, True
    sigmas = R * np.array([0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    bias_small = None
    for sigma in sigmas:
        y = train[rng.integers(0, n, n_queries)] + sigma * rng.standard_normal((n_queries, d))
        d_ref = exact.evaluate(y, sigma).denoised
        est_snis = np.stack([snis.evaluate(y, sigma).denoised for _ in range(repeats)])
        est_stf = np.stack([_stf_denoise(train, y, sigma, n_samples, rng) for _ in range(repeats)])
        stats = {}
        for name, est in (("snis", est_snis), ("stf", est_stf)):
            bias = np.linalg.norm(est.mean(axis=0) - d_ref, axis=1) / R
            rms = np.sqrt(np.mean(np.sum((est - d_ref) ** 2, axis=2), axis=0)) / R
            stats[name] = (float(np.median(bias)), float(np.median(rms)), rms)
        # MC error of the median RMS: the spread of per-query RMS over sqrt(repeats)
        mc = float(np.std(stats["stf"][2]) + np.std(stats["snis"][2])) / math.sqrt(repeats)
        ok_stf &= stats["snis"][1] <= stats["stf"][1] + 3.0 * mc
        chi_ratio = _nnse_chi2_ratio(train, y, sigma, k)
        worst_chi = max(worst_chi, chi_ratio)
        if bias_small is None:
            bias_small = stats["snis"][0]
        rows.append({"sigma/R": float(sigma / R), "SNIS bias/R": stats["snis"][0], "SNIS rms/R": stats["snis"][1],
                     "STF bias/R": stats["stf"][0], "STF rms/R": stats["stf"][1],
                     "max chi2/(T/S_K)": chi_ratio})  # fmt: skip
    criteria = [
        _check("SNIS bias/R at the smallest sigma", bias_small, 1e-3, "<="),
        _check("SNIS rms <= STF rms + 3 MC se at every sigma (1 = yes)", float(ok_stf), 1.0, ">="),
        _check("max chi2 / (T_bar_k / S_K)", worst_chi, 1.0 + 1e-9, "<="),  # + rounding
    ]
    return DemoResult(
        "nnse",
        f"{data}: N={n}, d={d}; {n_queries} noised training points per sigma, {repeats} repeats; SNIS "
        f"(k={k}, n={n_samples}) vs STF (uniform batch of {n_samples}); errors relative to R={R:.3g}",
        ["sigma/R", "SNIS bias/R", "SNIS rms/R", "STF bias/R", "STF rms/R", "max chi2/(T/S_K)"],
        rows,
        criteria,
    )


def _stf_denoise(train, y, sigma, n_samples, rng):
    """STF: self-normalised weights over a uniform reference batch (one batch per query)."""
    idx = rng.integers(0, train.shape[0], (y.shape[0], n_samples))
    diff = train[idx] - y[:, None, :]
    logits = -0.5 * np.einsum("mkd,mkd->mk", diff, diff) / sigma**2
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y + np.einsum("mk,mkd->md", w, diff) / w.sum(axis=1, keepdims=True)


def _nnse_chi2_ratio(train, y, sigma, k) -> float:
    """max over queries of chi^2(p || q) / (T_bar_k / S_K) for the NNSE proposal, exactly (all N)."""
    worst = 0.0
    for row in y:
        l = -0.5 * np.sum((train - row) ** 2, axis=1) / sigma**2
        order = np.argsort(-l, kind="stable")
        inside, lbar = order[:k], l[order[k - 1]]
        m = l.max()
        z = np.sum(np.exp(l - m))
        s_k = np.sum(np.exp(l[inside] - m))
        tail_bar = (train.shape[0] - k) * math.exp(lbar - m)
        mask = np.ones(train.shape[0], dtype=bool)
        mask[inside] = False
        # chi^2 = sum p^2 / q - 1 = (Z_q / Z^2)(S_K + A) - 1 with A = sum_out e^{2l - lbar}; with
        # Z = S_K + T and Z_q = S_K + T_bar this is [S_K (A + T_bar - 2T) + T_bar A - T^2] / Z^2,
        # formed from the small terms directly (no cancellation against 1).
        t_out = np.sum(np.exp(l[mask] - m))
        a_out = np.sum(np.exp(2.0 * (l[mask] - m) - (lbar - m)))
        chi2 = (s_k * (a_out + tail_bar - 2.0 * t_out) + tail_bar * a_out - t_out * t_out) / (z * z)
        if tail_bar > 1e-300 * s_k:
            worst = max(worst, chi2 / (tail_bar / s_k))
    return worst


def demo_coverage(n_train=256, n_samples=8000, steps=200, sigma_c_rel=2.0, seed=0, progress=False) -> DemoResult:
    """Coverage beats fill distance (science.md §2.6, §5 item 12; [R]: a reconstruction of SHH).

    N training points on the unit circle with a piecewise-constant density (weights 1:3:1:3 on
    four arcs); reverse SDE (Euler-Maruyama, ``steps`` Karras steps) from the exact empirical score,
    and from the hybrid: exact down to sigma_c = ``sigma_c_rel`` x the fill distance h_N, then the
    coarse score of the oracle projection (:class:`~nnscore.CoarseScore`).  Coverage c(delta)
    (``metrics.coverage``, experimental) at delta = h_N/4, h_N/2, h_N against the data law.
    Criteria (calibrated at seed 0): the hybrid's c(h_N/4) > 0.2 where the empirical model's is 0
    (it returns training points), both stay on M (q95 distance <= 1e-6).
    """
    from . import metrics
    from .datasets import manifold
    from .datasets.synthetic import PiecewiseConstant
    from .sampling import sample
    from .scores.coarse import CoarseScore, HybridScore
    from .scores.empirical import EmpiricalScore

    circle = manifold("circle", n=n_train, density=PiecewiseConstant([1.0, 3.0, 1.0, 3.0]), rng=seed)
    train = circle.points
    h_n = metrics.fill_distance(train, circle, rng=seed)
    exact = EmpiricalScore(train)
    hybrid = HybridScore(exact, CoarseScore(circle, train.shape[1]), sigma_c=sigma_c_rel * h_n)
    deltas = [h_n / 8, h_n / 4, h_n / 2, h_n]
    # science.md §4.4 S1: fill distance h_N ~ (log N / N)^(1/n), slope -1/n = -1 on a circle
    n_grid = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    fills = [metrics.fill_distance(manifold("circle", n=m, density=PiecewiseConstant([1.0, 3.0, 1.0, 3.0]),
                                            rng=seed + m).points, circle, rng=seed) for m in n_grid]  # fmt: skip
    slope = _loglog_slope(np.asarray(n_grid, dtype=np.float64), np.asarray(fills))
    rows, cov, panels = [], {}, [[(train, "black", 3)]]
    for name, model, colour in (("exact empirical", exact, "blue"), ("hybrid (coarse below sigma_c)", hybrid, "red")):
        t0 = time.perf_counter()
        xs = sample(model, n_samples, steps=steps, sampler="euler_maruyama", rng=seed + 1, sigma_min=1e-4,
                    progress=progress)  # fmt: skip
        elapsed = time.perf_counter() - t0
        c = metrics.coverage(xs, circle, lambda n, rng: circle.sample(n, rng), deltas, rng=seed)
        q95 = float(np.quantile(circle.distance(xs), 0.95))
        cov[name] = (c, q95)
        rows.append({"model": name, "c(h_N/8)": float(c[0]), "c(h_N/4)": float(c[1]), "c(h_N/2)": float(c[2]),
                     "c(h_N)": float(c[3]), "q95 dist to M": q95, "time s": elapsed})  # fmt: skip
        panels.append([(train, "black", 3), (xs[:2000], colour, 1)])
    c_hyb, q_hyb = cov["hybrid (coarse below sigma_c)"]
    c_emp, q_emp = cov["exact empirical"]
    criteria = [
        _check("hybrid c(h_N/4) (calibrated)", c_hyb[1], 0.2, ">="),
        _check("empirical c(h_N/4)", c_emp[1], 0.0, "<="),
        _check("hybrid q95 distance to M", q_hyb, 1e-6, "<="),
        _check("fill-distance slope vs N, N=32..4096 (expected -1 + log factor; calibrated)", slope, -0.7, "<="),
        _check("fill-distance slope vs N (lower end)", slope, -1.2, ">="),
    ]
    return DemoResult(
        "coverage",
        f"circle, N={n_train} (piecewise density 1:3:1:3), fill distance h_N={h_n:.3g}; reverse SDE "
        f"{steps} steps, {n_samples} samples; hybrid switches to the oracle coarse score below "
        f"sigma_c={sigma_c_rel:g} h_N; coverage is experimental ([R]); fill distance h_N vs N (32..4096) "
        f"slope {slope:.3f}",
        ["model", "c(h_N/8)", "c(h_N/4)", "c(h_N/2)", "c(h_N)", "q95 dist to M", "time s"],
        rows,
        criteria,
        panels,
        ["training points", "exact empirical", "hybrid"],
    )


DEMOS = {
    "smoothing": demo_smoothing,
    "cfdm": demo_cfdm,
    "memorize": demo_memorize,
    "tangential": demo_tangential,
    "early-stop": demo_early_stop,
    "kde-vs-score": demo_kde_vs_score,
    "rate-separation": demo_rate_separation,
    "tempered": demo_tempered,
    "geometric-bias": demo_geometric_bias,
    "chen": demo_chen,
    "knn-certificate": demo_knn_certificate,
    "nnse": demo_nnse,
    "coverage": demo_coverage,
}
DEFAULT_DEMO = "smoothing"


def run_demo(name: str = DEFAULT_DEMO, **kwargs) -> DemoResult:
    if name not in DEMOS:
        raise ValueError(f"name: unknown demo {name!r}; available: {', '.join(DEMOS)}")
    return DEMOS[name](**kwargs)
