"""Fidelity, novelty, fill distance, coverage and score errors along a manifold (science.md §4.7).

``manifold`` is an oracle object, e.g. those of ``nnscore.datasets``: ``distance(x) -> (M,)``
(and, for the circle uniformity, ``intrinsic_coords(x) -> (M,)`` angles); the fill distance
and coverage also use ``sample_uniform(n, rng) -> (n, d)`` and ``project(x) -> (M, d)``, the
score-error split ``tangent(x) -> (M, d, n)`` (orthonormal columns at P_M(x)).
"""
from __future__ import annotations

import numpy as np

from .._rng import check_rng
from .memorization import NearestTrain, _rows, nearest_train

__all__ = [
    "distance_to_manifold",
    "lateral_novelty",
    "uniformity_circle",
    "fill_distance",
    "coverage",
    "score_error_split",
    "n_eff_summary",
]

#: Entries of one distance block of the chunked ball counts (float64: 32 MiB).
_BLOCK_ENTRIES = 1 << 22


def _distance(manifold, x: np.ndarray) -> np.ndarray:
    if not hasattr(manifold, "distance"):
        raise TypeError(f"manifold: expected an object with a distance(x) method, got {type(manifold).__name__}")
    return np.asarray(manifold.distance(x), dtype=np.float64).reshape(x.shape[0])


def distance_to_manifold(samples, manifold) -> dict:
    """dist(x, M) per sample and its summary: ``{"values", "mean", "median", "q95"}``."""
    x = _rows(samples, "samples")
    dist = _distance(manifold, x)
    if dist.size == 0:
        return {"values": dist, "mean": float("nan"), "median": float("nan"), "q95": float("nan")}
    return {
        "values": dist,
        "mean": float(dist.mean()),
        "median": float(np.median(dist)),
        "q95": float(np.quantile(dist, 0.95)),
    }


def lateral_novelty(samples, train, manifold, nearest: NearestTrain | None = None) -> np.ndarray:
    """sqrt(d1^2 - dist(x, M)^2): novelty *along* the manifold (FPHDP App. G.2), clipped at 0."""
    x = _rows(samples, "samples")
    nt = nearest if nearest is not None else nearest_train(x, train, k=1)
    dist = _distance(manifold, x)
    return np.sqrt(np.maximum(nt.d1**2 - dist**2, 0.0))


def uniformity_circle(angles, n_bins: int = 32) -> dict:
    """Uniformity of angles on a circle (LSHH): histogram deviation vs its noise floor, KS, W1.

    Returns ``{"max_dev", "noise_floor", "ks", "w1"}``: ``max_dev`` is the largest absolute
    deviation of the normalised histogram (mean 1) from 1, ``noise_floor`` = 2 sqrt(n_bins / n);
    ``ks`` the Kolmogorov-Smirnov distance to the uniform law on [0, 2 pi); ``w1`` the circular
    1-Wasserstein distance to uniform (minimised over the cut point), in radians.
    """
    a = np.mod(np.asarray(angles, dtype=np.float64).ravel(), 2 * np.pi)
    n = a.size
    if n == 0:
        raise ValueError("angles: need at least one angle")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    hist, _ = np.histogram(a, bins=n_bins, range=(0.0, 2 * np.pi))
    dens = hist * n_bins / n
    u = np.sort(a) / (2 * np.pi)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    ks = float(max(np.max(ecdf_hi - u), np.max(u - ecdf_lo)))
    # Circular W1 on the unit-length circle: the integral of |F(t) - t - c| minimised over c
    # (c = the median of F(t) - t), by the midpoint rule on a grid finer than the samples.
    n_grid = max(4096, 4 * n)
    grid = (np.arange(n_grid) + 0.5) / n_grid
    diff = np.searchsorted(u, grid, side="right") / n - grid
    w1 = float(np.mean(np.abs(diff - np.median(diff))) * 2 * np.pi)
    return {
        "max_dev": float(np.max(np.abs(dens - 1.0))),
        "noise_floor": float(2.0 * np.sqrt(n_bins / n)),
        "ks": ks,
        "w1": w1,
    }


# -- fill distance, coverage ----------------------------------------------------------------------


def _oracle(manifold, method: str):
    fn = getattr(manifold, method, None)
    if not callable(fn):
        raise TypeError(f"manifold: expected an object with a {method}() method, got {type(manifold).__name__}")
    return fn


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _uniform_net(manifold, n_net: int, rng, dim: int | None = None) -> np.ndarray:
    net = np.asarray(_oracle(manifold, "sample_uniform")(n_net, check_rng(rng)), dtype=np.float64)
    net = net.reshape(net.shape[0], -1)
    if dim is not None and net.shape[1] != dim:
        raise ValueError(f"manifold: its points have dimension {net.shape[1]}, the data have {dim}")
    return net


def fill_distance(train, manifold, n_net: int = 4096, rng=None) -> float:
    """Fill distance h_N = max_{y in M} min_i ||y - x_i|| of a training set (science.md §4.7).

    The maximum runs over a net of ``n_net`` points drawn uniformly (Riemannian volume) on M;
    nearest training points come from :func:`nearest_train` (faiss, float64 recheck).

    Parameters
    ----------
    train : array-like, (N, d) or (N, *shape)
        Training points.
    manifold : oracle object with ``sample_uniform(n, rng)``
        The manifold M the training points sample.
    n_net : int, default 4096
        Size of the net on M.
    rng : None, int or numpy.random.Generator
        Draws the net.

    Returns
    -------
    float
        The estimate of h_N.  It never exceeds the true h_N, and falls short of it by at most
        the covering radius of the net (the largest distance from a point of M to the net).
        Expected h_N scales as (log N / N)^(1/n) for N uniform points on an n-manifold.
    """
    tr = _rows(train, "train")
    n_net = _positive_int(n_net, "n_net")
    net = _uniform_net(manifold, n_net, rng, tr.shape[1])
    return float(np.max(nearest_train(net, tr, k=1).d1))


def _ball_counts(centers: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """#{p : ||p - c|| <= radius} per centre, in blocks of centres (no centres x points matrix)."""
    counts = np.zeros(centers.shape[0], dtype=np.int64)
    if points.shape[0] == 0:
        return counts
    pn = np.einsum("ij,ij->i", points, points)
    block = max(1, _BLOCK_ENTRIES // points.shape[0])
    r2 = radius * radius
    for start in range(0, centers.shape[0], block):
        c = centers[start : start + block]
        d2 = np.einsum("ij,ij->i", c, c)[:, None] + pn[None, :] - 2.0 * (c @ points.T)
        counts[start : start + block] = np.count_nonzero(d2 <= r2, axis=1)
    return counts


def _greedy_net(candidates: np.ndarray, radius: float) -> np.ndarray:
    """A radius-separated subset of ``candidates`` within ``radius`` of every candidate."""
    remaining = candidates
    chosen = []
    while remaining.shape[0]:
        c = remaining[0]
        chosen.append(c)
        diff = remaining - c
        remaining = remaining[np.einsum("ij,ij->i", diff, diff) > radius * radius]
    return np.asarray(chosen)


def coverage(samples, manifold, data_sampler_or_reference, deltas, n_net: int = 4096, rng=None,
             n_reference: int = 100_000) -> np.ndarray:
    """SHH-style coverage c(delta) of generated samples (science.md §4.7, marked [R]: experimental).

    c(delta) = min_j mu_G(B(y_j, delta)) / mu_data(B(y_j, delta)), the minimum over a delta/2-net
    {y_j} of M, where mu_G is the empirical law of the P_M-projected samples and mu_data that of a
    large reference sample of the data law.  c ~ 1 when the samples cover M in proportion to the
    data; c = 0 when some delta-ball of M holds data mass but no sample (e.g. samples that
    collapse onto training points, at delta below half their spacing).

    This definition is a research ([R]) reconstruction of the coverage of the SHH paper, not a
    verified one: treat its values as experimental and compare them only across models.

    Parameters
    ----------
    samples : array-like, (M, d) or (M, *shape)
        Generated samples; they are projected onto M by ``manifold.project``.
    manifold : oracle object with ``project(x)`` and ``sample_uniform(n, rng)``
    data_sampler_or_reference : array-like (R, d), or callable ``(n, rng) -> (n, d)``
        Reference points of the data law (on M), or a sampler of it, which is called once for
        ``n_reference`` points.  Use many more reference points than net points per ball.
    deltas : float or sequence of float > 0
        Ball radii.
    n_net : int, default 4096
        Number of uniform points on M from which each delta/2-net is extracted greedily; the net
        is a delta/2-net of M up to the covering radius of these points.
    rng : None, int or numpy.random.Generator
        Draws the candidate points (and the reference sample when a sampler is given).
    n_reference : int, default 100000
        Reference sample size when ``data_sampler_or_reference`` is a callable.

    Returns
    -------
    (len(deltas),) float64 ndarray
        c(delta) per delta.  Net points whose ball holds no reference point are skipped (the ratio
        is undefined there); if every ball is empty, the value is NaN.  Empty ``samples`` give 0.
    """
    x = _rows(samples, "samples")
    gen = check_rng(rng)
    n_net = _positive_int(n_net, "n_net")
    delta_arr = np.atleast_1d(np.asarray(deltas, dtype=np.float64))
    if delta_arr.ndim != 1 or delta_arr.size == 0 or not np.all(np.isfinite(delta_arr) & (delta_arr > 0)):
        raise ValueError(f"deltas: expected one or more finite positive radii, got {deltas!r}")
    if callable(data_sampler_or_reference):
        n_reference = _positive_int(n_reference, "n_reference")
        ref_raw = data_sampler_or_reference(n_reference, gen)
    else:
        ref_raw = data_sampler_or_reference
    ref = _rows(ref_raw, "data_sampler_or_reference").astype(np.float64, copy=False)
    if ref.shape[0] == 0:
        raise ValueError("data_sampler_or_reference: the reference sample is empty")
    if x.shape[0] and x.shape[1] != ref.shape[1]:
        raise ValueError(f"samples: dimension {x.shape[1]} does not match the reference's {ref.shape[1]}")
    candidates = _uniform_net(manifold, n_net, gen, ref.shape[1])
    if x.shape[0] == 0:
        return np.zeros(delta_arr.size)
    proj = np.asarray(_oracle(manifold, "project")(x.astype(np.float64, copy=False)), dtype=np.float64)
    proj = proj.reshape(x.shape[0], -1)
    out = np.empty(delta_arr.size)
    for k, delta in enumerate(delta_arr):
        net = _greedy_net(candidates, 0.5 * delta)
        n_ref = _ball_counts(net, ref, delta)
        n_gen = _ball_counts(net, proj, delta)
        ok = n_ref > 0
        if not np.any(ok):
            out[k] = np.nan
            continue
        ratio = (n_gen[ok] / x.shape[0]) / (n_ref[ok] / ref.shape[0])
        out[k] = float(np.min(ratio))
    return out


# -- score errors, effective sample size -----------------------------------------------------------


def score_error_split(score_est, score_ref, x, manifold) -> dict:
    """Tangential and normal parts of a score error (science.md §4.7, score-error decomposition).

    With e = s_est(x) - s_ref(x) and T_x the orthogonal projector onto the tangent space of M at
    P_M(x): e_par = T_x e, e_perp = (I - T_x) e, so ||e||^2 = ||e_par||^2 + ||e_perp||^2.

    Parameters
    ----------
    score_est, score_ref : array-like, (M, d) or (M, *shape)
        Estimated and reference scores at the points ``x``.
    x : array-like, (M, d) or (M, *shape)
        Evaluation points (the tangent space is taken at their projections).
    manifold : oracle object with ``tangent(x) -> (M, d, n)`` (orthonormal columns)

    Returns
    -------
    dict
        ``"tangential"``, ``"normal"``, ``"total"``: mean squared norms E||e_par||^2,
        E||e_perp||^2, E||e||^2 (float; NaN for M = 0); ``"tangential_values"``,
        ``"normal_values"``, ``"total_values"``: the per-point squared norms, (M,) float64.
    """
    pts = _rows(x, "x").astype(np.float64, copy=False)
    est = _rows(score_est, "score_est").astype(np.float64, copy=False)
    ref = _rows(score_ref, "score_ref").astype(np.float64, copy=False)
    for name, arr in (("score_est", est), ("score_ref", ref)):
        if arr.shape != pts.shape:
            raise ValueError(f"{name}: expected shape {pts.shape} to match x, got {arr.shape}")
    e = est - ref
    basis = np.asarray(_oracle(manifold, "tangent")(pts), dtype=np.float64)
    if basis.ndim != 3 or basis.shape[:2] != pts.shape:
        raise ValueError(f"manifold: tangent(x) returned shape {basis.shape}, expected ({pts.shape[0]}, "
                         f"{pts.shape[1]}, n)")
    coef = np.einsum("mdk,md->mk", basis, e)
    e_par = np.einsum("mdk,mk->md", basis, coef)
    e_perp = e - e_par
    par = np.einsum("ij,ij->i", e_par, e_par)
    perp = np.einsum("ij,ij->i", e_perp, e_perp)
    total = np.einsum("ij,ij->i", e, e)

    def _mean(v):
        return float(v.mean()) if v.size else float("nan")

    return {
        "tangential": _mean(par),
        "normal": _mean(perp),
        "total": _mean(total),
        "tangential_values": par,
        "normal_values": perp,
        "total_values": total,
    }


def n_eff_summary(result, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    """Summary of the effective number of training points n_eff = 1 / sum_i lambda_i^2.

    Parameters
    ----------
    result : ScoreResult (or any object with an ``n_eff`` array)
    quantiles : sequence of float in [0, 1]

    Returns
    -------
    dict
        ``"median"``, ``"min"``, ``"max"``, ``"mean"`` (floats), ``"quantiles"``
        ({q: value}) and ``"count"`` (number of queries).

    Raises
    ------
    ValueError
        If ``result.n_eff`` is None (the model does not compute it) or empty.
    """
    if not hasattr(result, "n_eff"):
        raise TypeError(f"result: expected a ScoreResult, got {type(result).__name__}")
    if result.n_eff is None:
        raise ValueError("result: n_eff is None (this score model does not compute the effective sample size)")
    v = np.asarray(result.n_eff, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("result: n_eff is empty (no queries)")
    q = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    if q.ndim != 1 or not np.all((q >= 0) & (q <= 1)):
        raise ValueError(f"quantiles: expected values in [0, 1], got {quantiles!r}")
    qv = np.quantile(v, q) if q.size else np.zeros(0)
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "quantiles": {float(a): float(b) for a, b in zip(q, qv)},
        "count": int(v.size),
    }
