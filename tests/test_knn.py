"""KNNScore: certified truncation bounds (science.md §3), paths, sampler cache, index persistence.

The oracle is ``EmpiricalScore(..., backend="reference")`` (float64, difference form, the full
(M, N) logit matrix), evaluated in query chunks.  Every soundness check is

    err <= error_bound * (1 + 1e-9) + 1e-13 * scale

where ``scale`` is the magnitude of the compared quantity's float64 rounding (both the oracle
and the model round ``D = y + v / z`` relative to ``|y|`` and the data offset), in the units of
``tol_kind``: ``R + |y - c| + |c|`` for the denoiser (divided by R for denoiser_rel, by a sigma~^2
for the score) and ``1 + |log p| + d |log s|`` for the log-density.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import nnscore as ns  # noqa: E402
from nnscore import schedules  # noqa: E402
from nnscore.index import TrainingIndex  # noqa: E402
from nnscore.exceptions import PrecisionWarning  # noqa: E402
from nnscore.scores import knn as knn_module  # noqa: E402
from nnscore.scores.knn import KNN_PATHS, KNNSamplerCache, KNNScore  # noqa: E402

# Tolerances below float64's resolution warn (test_unresolvable_tol_warns checks that); the
# soundness tests sweep into that regime on purpose and check the rows it concerns instead.
pytestmark = pytest.mark.filterwarnings("ignore::nnscore.exceptions.PrecisionWarning")

TOL_KINDS = ("denoiser_rel", "denoiser_abs", "score", "log_density", "posterior_variance")
EPS32 = float(np.finfo(np.float32).eps)
REL_NOISE = 1e-9
ABS_NOISE = 1e-13


# ---------------------------------------------------------------------------------------------
# data, queries, oracle
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def clustered(n, d, seed, n_clusters=10, spread=0.02, offset=2.0, n_dup=None):
    """Mixture of tight clusters (offset from the origin) with duplicated rows (read-only)."""
    rng = np.random.default_rng([seed, n, d, 7])
    centers = rng.normal(size=(n_clusters, d))
    lab = rng.integers(0, n_clusters, size=n)
    x = centers[lab] + spread * rng.normal(size=(n, d)) + offset
    n_dup = max(2, n // 20) if n_dup is None else n_dup
    x[n - n_dup :] = x[:n_dup]  # exact duplicates
    x.setflags(write=False)
    return x


def radius(x):
    c = x.mean(axis=0)
    return float(np.sqrt(np.max(np.sum((x - c) ** 2, axis=1))))


def mixed_queries(x, m, seed):
    """Queries exactly on training points (incl. duplicates), near points, between clusters, far away."""
    rng = np.random.default_rng([seed, 11, x.shape[1]])
    n, d = x.shape
    c, R = x.mean(axis=0), radius(x)
    k = m // 5
    on = x[np.concatenate([[0, n - 1], rng.integers(0, n, k - 2)])]  # rows 0 and n-1 are duplicates
    near = x[rng.integers(0, n, k)] + 1e-3 * rng.normal(size=(k, d)) / math.sqrt(d)
    mid = 0.5 * (x[rng.integers(0, n, k)] + x[rng.integers(0, n, k)])
    far_dir = rng.normal(size=(k, d))
    far = c + 10.0 * R * far_dir / np.linalg.norm(far_dir, axis=1, keepdims=True)
    rest = m - 4 * k
    noisy = x[rng.integers(0, n, rest)] + 0.1 * rng.normal(size=(rest, d))
    return np.ascontiguousarray(np.concatenate([on, near, mid, far, noisy]))


def sigma_grid(x, n_sig=12):
    """log-spaced sigma~ from 1e-4 to 10 x the data radius."""
    return np.geomspace(1e-4, 10.0 * radius(x), n_sig)


def cross(q, sig):
    """Every (query, sigma) pair: rows repeat the queries, sigma varies slowest."""
    return np.tile(q, (sig.size, 1)), np.repeat(sig, q.shape[0])


def oracle(train, x, t, weights=None, schedule="ve"):
    """float64 reference result, chunked so the (M, N, d) difference array stays small."""
    model = ns.EmpiricalScore(train, weights=weights, schedule=schedule, backend="reference")
    n, d = train.shape
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))
    step = max(1, (1 << 22) // (n * d))
    outs = [model.evaluate(x[s : s + step], t[s : s + step]) for s in range(0, x.shape[0], step)]
    return {
        "denoised": np.concatenate([o.denoised.reshape(o.denoised.shape[0], -1) for o in outs]),
        "score": np.concatenate([o.score.reshape(o.score.shape[0], -1) for o in outs]),
        "log_density": np.concatenate([o.log_density for o in outs]),
        "posterior_variance": np.concatenate([o.posterior_variance for o in outs]),
        "sigma": np.concatenate([o.sigma for o in outs]),
    }


def errors_and_scale(res, ref, x, train, tol_kind, schedule="ve", t=None, score_from_d=True):
    """(true error, float64 noise scale) per query, in tol_kind units."""
    x64 = x.reshape(x.shape[0], -1).astype(np.float64)
    tr = train.reshape(train.shape[0], -1).astype(np.float64)
    c = tr.mean(axis=0)
    R = radius(tr)
    D = res.denoised.reshape(x.shape[0], -1).astype(np.float64)
    dD = np.linalg.norm(D - ref["denoised"], axis=1)
    sched = schedules.get_schedule(schedule)
    a = np.broadcast_to(np.asarray(sched.alpha(np.asarray(t)), dtype=np.float64), (x.shape[0],))
    s = np.broadcast_to(np.asarray(sched.sigma(np.asarray(t)), dtype=np.float64), (x.shape[0],))
    st = s / a
    y = x64 / a[:, None]
    dscale = R + np.linalg.norm(y - c, axis=1) + np.linalg.norm(c)
    if tol_kind == "denoiser_abs":
        return dD, dscale
    if tol_kind == "denoiser_rel":
        return dD / R, dscale / R
    if tol_kind == "score":
        # the score error is ||Delta D|| / (a st^2) exactly; measure it on the score itself too
        ds = np.linalg.norm(res.score.reshape(x.shape[0], -1).astype(np.float64) - ref["score"], axis=1)
        return (np.maximum(ds, dD / (a * st * st)) if score_from_d else ds), dscale / (a * st * st)
    if tol_kind == "posterior_variance":
        # tr C = sum lambda ||x - D||^2: float64 noise of the second moment about the query
        pv = np.abs(res.posterior_variance - ref["posterior_variance"])
        return pv, (R + np.linalg.norm(y - c, axis=1)) ** 2
    lp = np.abs(res.log_density - ref["log_density"])
    return lp, 1.0 + np.abs(ref["log_density"]) + x64.shape[1] * np.abs(np.log(s))


def assert_sound(res, ref, x, train, tol_kind, tol=None, schedule="ve", t=None, what="", finite=True):
    err, scale = errors_and_scale(res, ref, x, train, tol_kind, schedule, t)
    bound = np.asarray(res.error_bound, dtype=np.float64)
    assert bound.shape == err.shape
    assert not np.any(np.isnan(bound)) and np.all(bound >= 0), f"{what}: NaN/negative bound"
    if finite:
        assert np.all(np.isfinite(bound)), f"{what}: infinite bound"
    allow = bound * (1.0 + REL_NOISE) + ABS_NOISE * scale
    bad = np.flatnonzero(~(err <= allow))
    assert bad.size == 0, (
        f"{what}: {bad.size}/{err.size} certificate violations ({tol_kind}); first: row {bad[0]} "
        f"path={res.path[bad[0]]} err={err[bad[0]]:.3e} bound={bound[bad[0]]:.3e} sigma={res.sigma[bad[0]]:.3e}"
    )
    if tol is not None:
        resolved = bound <= tol * (1.0 + REL_NOISE)
        bad = np.flatnonzero(resolved & ~(err <= tol * (1.0 + REL_NOISE) + ABS_NOISE * scale))
        assert bad.size == 0, (
            f"{what}: {bad.size}/{err.size} queries over tol={tol} ({tol_kind}); first: row {bad[0]} "
            f"path={res.path[bad[0]]} err={err[bad[0]]:.3e} bound={bound[bad[0]]:.3e}"
        )
        # A certified path meets tol by construction; a row whose bound exceeds tol is one where
        # tol is below float64's resolution: it must be on the exact path (and the call warns,
        # see test_unresolvable_tol_warns).
        over = np.flatnonzero(~(bound <= tol * (1.0 + REL_NOISE)))
        assert np.all(res.path[over] == "exact"), f"{what}: certified row with bound > tol"
    assert set(np.unique(res.path)) <= set(KNN_PATHS)
    return err, bound


def test_unresolvable_tol_warns(seed):
    x = clustered(500, 16, seed)
    far = x[:5] + 50.0 * radius(x)
    with pytest.warns(PrecisionWarning, match="below what float64 resolves"):
        res = KNNScore(x, tol=1e-12, tol_kind="log_density").evaluate(far, 1e-4)
    assert np.all(res.path == "exact") and np.all(res.error_bound > 1e-12)


def tol_for(kind, x):
    """A tolerance that certifies moderately often at small sigma (per tol_kind units)."""
    return {"denoiser_rel": 1e-4, "denoiser_abs": 1e-4 * radius(x), "score": 1e-1, "log_density": 1e-6,
            "posterior_variance": 1e-4 * radius(x) ** 2}[kind]


@functools.lru_cache(maxsize=None)
def _soundness_case(d, kind, seed):
    n = {2: 2000, 64: 1500, 784: 400}[d]
    x = clustered(n, d, seed)
    q = mixed_queries(x, 40 if d < 784 else 25, seed)
    xq, sig = cross(q, sigma_grid(x))
    ref = oracle(x, xq, sig)
    nlist = 8 if n < 1000 else 16
    index = TrainingIndex(x, kind=kind, nlist=nlist if kind == "ivf" else None, nprobe=2 if kind == "ivf" else None,
                          rng=seed)
    return x, xq, sig, ref, index


# ---------------------------------------------------------------------------------------------
# 1. soundness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tol_scale", [1e3, 1.0, 1e-3], ids=["loose", "tol", "tight"])
@pytest.mark.parametrize("tol_kind", TOL_KINDS)
@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("d", [2, 64, 784])
def test_certificate_soundness(d, kind, tol_kind, tol_scale, seed):
    x, xq, sig, ref, index = _soundness_case(d, kind, seed)
    tol = tol_for(tol_kind, x) * tol_scale
    model = KNNScore(index, tol=tol, tol_kind=tol_kind, k_max=64)
    res = model.evaluate(xq, sig)
    assert_sound(res, ref, xq, x, tol_kind, tol=tol, t=sig, what=f"d={d} {kind}")
    paths = set(np.unique(res.path))
    # both the certified path and the dense fallback are exercised by the sigma sweep
    assert ("knn" if kind == "flat" else "ivf-certified") in paths, paths
    if tol_scale <= 1.0:
        assert "exact" in paths, paths
    assert np.all(res.k_used[res.path == "exact"] == x.shape[0])
    assert np.all((res.k_used >= 1) & (res.k_used <= x.shape[0]))


def test_float32_training_data(seed):
    """float32: the certificate holds before the final cast; allow float32 eps x |value| for it."""
    x64 = clustered(1500, 16, seed)
    x = x64.astype(np.float32)
    q = mixed_queries(x.astype(np.float64), 40, seed).astype(np.float32)
    xq, sig = cross(q, sigma_grid(x64, 8))
    ref = oracle(x.astype(np.float64), xq.astype(np.float64), sig)
    for tol_kind in TOL_KINDS:
        tol = tol_for(tol_kind, x64)
        res = KNNScore(x, tol=tol, tol_kind=tol_kind, k_max=64).evaluate(xq, sig)
        assert res.denoised.dtype == np.float32
        err, scale = errors_and_scale(res, ref, xq, x, tol_kind, t=sig, score_from_d=False)
        # the cast of D (or of the score) to float32: eps32 |value| in tol_kind units
        D_mag = np.linalg.norm(ref["denoised"], axis=1)
        cast = {"denoiser_abs": D_mag, "denoiser_rel": D_mag / radius(x64),
                "score": np.linalg.norm(ref["score"], axis=1), "log_density": 0.0 * D_mag,
                "posterior_variance": 0.0 * D_mag}[tol_kind] * EPS32  # tr C is float64
        bad = np.flatnonzero(~(err <= res.error_bound * (1 + REL_NOISE) + cast + ABS_NOISE * scale))
        assert bad.size == 0, (tol_kind, res.path[bad[0]], err[bad[0]], res.error_bound[bad[0]], cast[bad[0]])
        assert "knn" in set(res.path)


# ---------------------------------------------------------------------------------------------
# 2. explicit k, tol=None
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_k_equals_n_is_exact(tol_kind, seed):
    x = clustered(300, 5, seed)
    q = mixed_queries(x, 20, seed)
    xq, sig = cross(q, sigma_grid(x, 6))
    ref = oracle(x, xq, sig)
    res = KNNScore(x, k=x.shape[0], tol=None, tol_kind=tol_kind).evaluate(xq, sig)
    assert np.all(res.path == "knn") and np.all(res.k_used == x.shape[0])
    err, scale = errors_and_scale(res, ref, xq, x, tol_kind, t=sig)
    # float64 difference form on both sides: ~1e-12 of the quantity's scale
    assert np.all(err <= 1e-12 * scale)
    assert_sound(res, ref, xq, x, tol_kind, t=sig, what="k=N")


@pytest.mark.parametrize("k", [1, 3, 40])
@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_int_k_without_tol_reports_sound_bound(k, tol_kind, seed):
    x = clustered(800, 8, seed)
    q = mixed_queries(x, 30, seed)
    xq, sig = cross(q, sigma_grid(x, 8))
    ref = oracle(x, xq, sig)
    res = KNNScore(x, k=k, tol=None, tol_kind=tol_kind).evaluate(xq, sig)
    assert np.all(res.path == "knn") and np.all(res.k_used == k)
    assert_sound(res, ref, xq, x, tol_kind, t=sig, what=f"k={k}")


@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_ivf_without_tol_scans_nprobe_cells(tol_kind, seed):
    x = clustered(1200, 8, seed)
    index = TrainingIndex(x, kind="ivf", nlist=12, nprobe=3, rng=seed)
    q = mixed_queries(x, 30, seed)
    xq, sig = cross(q, sigma_grid(x, 8))
    ref = oracle(x, xq, sig)
    res = KNNScore(index, tol=None, tol_kind=tol_kind).evaluate(xq, sig)
    assert np.all(res.path == "ivf-certified")
    sizes = np.diff(index.cell_offsets)
    assert np.all(res.k_used <= np.sort(sizes)[-3:].sum())
    assert_sound(res, ref, xq, x, tol_kind, t=sig, what="ivf tol=None", finite=tol_kind != "log_density")


# ---------------------------------------------------------------------------------------------
# 3. paths, fallback, pilot
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_paths_small_and_large_sigma(kind, seed):
    x = clustered(1000, 8, seed)
    R = radius(x)
    # nlist 40: cells of ~25 rows, so two cells stay under the IVF scan budget (N / 8)
    index = TrainingIndex(x, kind=kind, nlist=40 if kind == "ivf" else None, rng=seed)
    q = x[np.random.default_rng(seed).integers(0, 1000, 20)] + 1e-4
    small = KNNScore(index).evaluate(q, 1e-3)
    assert np.all(small.path == ("knn" if kind == "flat" else "ivf-certified"))
    assert np.all(small.k_used < x.shape[0])
    large = KNNScore(index).evaluate(q, 10.0 * R)
    assert np.all(large.path == "exact") and np.all(large.k_used == x.shape[0])
    for res, s in ((small, 1e-3), (large, 10.0 * R)):
        assert_sound(res, oracle(x, q, s), q, x, "denoiser_rel", tol=1e-4, t=np.full(20, s), what=kind)
    with pytest.raises(ValueError, match="fallback"):
        KNNScore(index, fallback="error").evaluate(q, 10.0 * R)
    # the certifiable queries of a fallback="error" model still evaluate
    assert np.all(KNNScore(index, fallback="error").evaluate(q, 1e-3).path == small.path)


@pytest.mark.parametrize("order", ["hard-first", "easy-first", "mixed"])
def test_flat_pilot_batch_is_correct(order, seed):
    """Single sigma, > 32 rows: the 16-row pilot decides early; every row stays correct."""
    x = clustered(1500, 8, seed)
    R = radius(x)
    rng = np.random.default_rng([seed, 3])
    easy = x[rng.integers(0, 1500, 40)] + 1e-5 * rng.normal(size=(40, 8))
    hard = x.mean(0) + 0.5 * R * rng.normal(size=(40, 8)) / math.sqrt(8)  # between clusters
    q = {"hard-first": np.concatenate([hard, easy]), "easy-first": np.concatenate([easy, hard]),
         "mixed": np.concatenate([easy, hard])[rng.permutation(80)]}[order]
    sigma = 0.05
    ref = oracle(x, q, sigma)
    for tol_kind in TOL_KINDS:
        tol = tol_for(tol_kind, x)
        res = KNNScore(x, tol=tol, tol_kind=tol_kind, k_max=32).evaluate(q, sigma)
        assert_sound(res, ref, q, x, tol_kind, tol=tol, t=np.full(80, sigma), what=order)
        # the same rows one at a time (no pilot) agree to float64 rounding
        single = KNNScore(x, tol=tol, tol_kind=tol_kind, k_max=32).evaluate(q[:16], np.full(16, sigma))
        np.testing.assert_allclose(res.denoised[:16], single.denoised, rtol=0, atol=2 * tol * R)
    if order == "hard-first":
        assert np.all(KNNScore(x, k_max=32).evaluate(q, sigma).path[40:] == "exact")


# ---------------------------------------------------------------------------------------------
# 4. weights, schedules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_nonuniform_weights_soundness(kind, tol_kind, seed):
    x = clustered(1000, 6, seed)
    rng = np.random.default_rng([seed, 5])
    w = rng.uniform(0.0, 1.0, size=1000) ** 3
    w /= w.max()  # max weight 1 (test_weight_scale_invariance_of_certificate covers max > 1)
    w[rng.choice(1000, 100, replace=False)] = 0.0
    w[:3] = 0.0  # includes duplicated rows (their copies keep their weight)
    index = TrainingIndex(x, kind=kind, nlist=10 if kind == "ivf" else None, nprobe=2 if kind == "ivf" else None,
                          rng=seed)
    q = mixed_queries(x, 30, seed)
    q[:3] = x[:3]  # exactly on zero-weight rows
    xq, sig = cross(q, sigma_grid(x, 10))
    ref = oracle(x, xq, sig, weights=w)
    tol = tol_for(tol_kind, x)
    res = KNNScore(index, tol=tol, tol_kind=tol_kind, weights=w, k_max=64).evaluate(xq, sig)
    assert_sound(res, ref, xq, x, tol_kind, tol=tol, t=sig, what=f"weighted {kind}")
    assert "exact" in set(res.path) and len(set(res.path)) > 1
    # a zero-weight row is never the top posterior point
    assert np.all(w[res.top1] > 0)


@pytest.mark.parametrize("schedule", ["vp", "edm"])
@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_schedules_soundness(schedule, tol_kind, seed):
    x = clustered(1000, 6, seed)
    sched = schedules.get_schedule(schedule)
    lo, hi = sched.sigma_tilde(sched.grid(4)[-2]), sched.sigma_tilde(sched.grid(4)[0])
    st = np.geomspace(max(lo, 1e-3), min(hi, 10 * radius(x)), 8)
    t = np.asarray(sched.t_from_sigma_tilde(st), dtype=np.float64)
    q = mixed_queries(x, 30, seed)
    xq, tq = cross(q, t)
    a = np.asarray(sched.alpha(tq), dtype=np.float64)
    xq = xq * a[:, None]  # schedule coordinates x = a y
    ref = oracle(x, xq, tq, schedule=schedule)
    tol = tol_for(tol_kind, x)
    res = KNNScore(x, tol=tol, tol_kind=tol_kind, schedule=schedule, k_max=64).evaluate(xq, tq)
    np.testing.assert_allclose(res.sigma, ref["sigma"], rtol=1e-14)
    assert_sound(res, ref, xq, x, tol_kind, tol=tol, schedule=schedule, t=tq, what=schedule)
    assert "knn" in set(res.path)


# ---------------------------------------------------------------------------------------------
# regressions: weight scale, log-density overflow, k = N warnings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_weight_scale_invariance_of_certificate(kind, seed):
    x = clustered(1000, 6, seed)
    w0 = np.random.default_rng([seed, 5]).uniform(0.5, 1.0, size=1000)
    q = mixed_queries(x, 30, seed)
    xq, sig = cross(q, sigma_grid(x, 10))
    ref = oracle(x, xq, sig, weights=w0)
    tol = 0.3 * radius(x)  # loose: certified paths at large sigma
    res = KNNScore(x, tol=tol, tol_kind="denoiser_abs", weights=1000.0 * w0, k_max=64, index_kind=kind,
                   rng=seed).evaluate(xq, sig)
    assert_sound(res, ref, xq, x, "denoiser_abs", tol=tol, t=sig, what="weights x1000")


def test_log_density_bound_is_finite(seed):
    x = clustered(800, 8, seed)
    q = 0.5 * (x[:20] + x[20:40])
    res = KNNScore(x, k=1, tol=None, tol_kind="log_density").evaluate(q, 1e-4)
    assert np.all(np.isfinite(res.error_bound))


def test_k_equals_n_emits_no_warning(seed):
    x = clustered(300, 5, seed)
    KNNScore(x, k=x.shape[0], tol=None).evaluate(x[:4] + 0.01, 0.1)


# ---------------------------------------------------------------------------------------------
# 5. sampler cache
# ---------------------------------------------------------------------------------------------


def test_sampler_cache_heun_matches_plain_model(seed):
    x = clustered(1500, 4, seed)
    R = radius(x)
    tol = 1e-6
    model = KNNScore(x, tol=tol)
    cache = model.sampler_cache()
    assert isinstance(cache, KNNSamplerCache)
    ts = model.schedule.grid(12, sigma_min=1e-3, sigma_max=2.0 * R)
    x0 = x[np.random.default_rng(seed).integers(0, 1500, 48)] + 0.5 * np.random.default_rng(seed + 1).normal(size=(48, 4))
    out_cache = ns.sampling.heun(cache, x0, ts)
    out_plain = ns.sampling.heun(model, x0, ts)
    out_exact = ns.sampling.heun(ns.EmpiricalScore(x, backend="reference"), x0, ts)
    # each denoiser call is within tol R; ~24 calls through a contracting ODE: 1e3 tol R is generous
    np.testing.assert_allclose(out_cache, out_plain, rtol=0, atol=1e3 * tol * R)
    np.testing.assert_allclose(out_cache, out_exact, rtol=0, atol=1e3 * tol * R)
    assert cache.stats["cached"] > 0
    assert cache.stats["calls"] == 23 and cache.stats["queries"] == 23 * 48
    assert cache.stats["cached"] + cache.stats["searched"] + cache.stats["exact"] == cache.stats["queries"]


@pytest.mark.parametrize("tol_kind", TOL_KINDS)
def test_sampler_cache_moving_queries_sound(tol_kind, seed):
    x = clustered(1500, 8, seed)
    R = radius(x)
    rng = np.random.default_rng([seed, 9])
    tol = tol_for(tol_kind, x) * 10
    model = KNNScore(x, tol=tol, tol_kind=tol_kind, k_max=64)
    cache = model.sampler_cache()
    y = x[rng.integers(0, 1500, 32)] + 0.01 * rng.normal(size=(32, 8))
    direction = rng.normal(size=(32, 8)) * 1e-3 * R
    n_cached = 0
    for step, sigma in enumerate(np.geomspace(0.05, 0.01, 10)):
        q = y + step * direction
        res = cache.evaluate(q, sigma)
        hit = res.path == "knn-cached"
        n_cached += int(hit.sum())
        if step == 0:
            assert not hit.any()
        ref = oracle(x, q, sigma)
        assert_sound(res, ref, q, x, tol_kind, tol=tol, t=np.full(32, sigma), what=f"step {step}")
    assert n_cached > 0 and cache.stats["cached"] == n_cached
    # a different batch size starts afresh: no cached rows
    res = cache.evaluate(y[:5] + 9 * direction[:5], 0.01)
    assert not np.any(res.path == "knn-cached")
    cache.reset()
    res = cache.evaluate(y[:5] + 9 * direction[:5], 0.01)
    assert not np.any(res.path == "knn-cached")


def test_sampler_cache_ivf_is_sound(seed):
    x = clustered(1500, 8, seed)
    index = TrainingIndex(x, kind="ivf", nlist=40, rng=seed)
    cache = KNNScore(index, tol=1e-4).sampler_cache()
    rng = np.random.default_rng([seed, 4])
    y = x[rng.integers(0, 1500, 24)] + 0.01 * rng.normal(size=(24, 8))
    for step, sigma in enumerate(np.geomspace(0.05, 0.01, 5)):
        q = y + step * 1e-3
        res = cache.evaluate(q, sigma)
        assert_sound(res, oracle(x, q, sigma), q, x, "denoiser_rel", tol=1e-4, t=np.full(24, sigma))
    assert cache.stats["searched"] > 0


# ---------------------------------------------------------------------------------------------
# 6. save / load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip_same_results(tmp_path, kind, seed):
    x = clustered(1000, 8, seed)
    index = TrainingIndex(x, kind=kind, nlist=20 if kind == "ivf" else None, nprobe=3 if kind == "ivf" else None,
                          rng=seed)
    index.save(tmp_path / kind)
    loaded = TrainingIndex.load(tmp_path / kind)
    assert loaded.kind == kind and loaded.n == 1000 and loaded.d == 8
    q = mixed_queries(x, 30, seed)
    xq, sig = cross(q, sigma_grid(x, 6))
    for tol in (1e-4, None):
        kw = {"k": 16} if (tol is None and kind == "flat") else {}
        a = KNNScore(index, tol=tol, **kw).evaluate(xq, sig)
        b = KNNScore(loaded, tol=tol, **kw).evaluate(xq, sig)
        for name in ("denoised", "score", "log_density", "error_bound", "k_used", "top1"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert list(a.path) == list(b.path)
    if kind == "ivf":
        np.testing.assert_array_equal(index.cell_lower_bounds(xq), loaded.cell_lower_bounds(xq))


# ---------------------------------------------------------------------------------------------
# 7. bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"k": 301}, ValueError, "k"),
    ({"k": 0}, ValueError, "k"),
    ({"k": -1}, ValueError, "k"),
    ({"k": 1.5}, TypeError, "k"),
    ({"k": "x"}, ValueError, "k"),
    ({"k": True}, TypeError, "k"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"tol": -1e-3}, ValueError, "tol"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"tol": float("inf")}, ValueError, "tol"),
    ({"tol": None}, ValueError, "tol"),  # k="auto" on a flat index
    ({"tol_kind": "relative"}, ValueError, "tol_kind"),
    ({"fallback": "approx"}, ValueError, "fallback"),
    ({"k_max": 0}, ValueError, "k_max"),
    ({"k_max": 2.5}, TypeError, "k_max"),
], ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__)
def test_bad_constructor_arguments(kwargs, exc, name):
    x = clustered(300, 3, 0)
    with pytest.raises(exc, match=rf"^{name}\b"):
        KNNScore(x, **kwargs)


def test_bad_queries_and_foreign_index():
    x = clustered(300, 3, 0)
    model = KNNScore(x)
    for bad in (np.array([[np.nan, 0.0, 0.0]]), np.array([[np.inf, 0.0, 0.0]]), np.zeros((2, 4)), np.zeros(3)):
        with pytest.raises(ValueError, match=r"^x\b"):
            model.evaluate(bad, 0.1)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x[:2], -1.0)
    other = clustered(300, 3, 1).astype(np.float32)
    for fidx in (faiss.IndexFlatL2(3),):
        fidx.add(other)
        with pytest.raises(ValueError, match=r"^index\b"):
            TrainingIndex.from_faiss(fidx, x)
    # a faiss index built on the same rows is accepted and gives the same certified results
    own = faiss.IndexFlatL2(3)
    own.add(x.astype(np.float32))
    wrapped = TrainingIndex.from_faiss(own, x)
    q = x[:10] + 0.01
    a, b = KNNScore(wrapped).evaluate(q, 0.05), KNNScore(x).evaluate(q, 0.05)
    assert_sound(a, oracle(x, q, 0.05), q, x, "denoiser_rel", tol=1e-4, t=np.full(10, 0.05))
    np.testing.assert_allclose(a.denoised, b.denoised, rtol=0, atol=2e-4 * radius(x))


# ---------------------------------------------------------------------------------------------
# 8. cell_lower_bounds
# ---------------------------------------------------------------------------------------------


def _check_cell_bounds(index, x, q):
    low = index.cell_lower_bounds(q)
    nlist = index.nlist
    assert low.shape == (q.shape[0], nlist) and np.all(low >= 0)
    off, order = index.cell_offsets, index.cell_order
    assert np.array_equal(np.sort(order), np.arange(x.shape[0]))
    n_tight = 0
    for c in range(nlist):
        rows = order[off[c] : off[c + 1]]
        if rows.size == 0:
            assert np.all(np.isinf(low[:, c]))
            continue
        diff = x[rows][None, :, :] - q[:, None, :]  # float64 difference form
        d2 = np.einsum("mnd,mnd->mn", diff, diff).min(axis=1)
        bad = np.flatnonzero(~(d2 >= low[:, c]))
        assert bad.size == 0, f"cell {c}: query {bad[0]} has a row at {d2[bad[0]]!r} < bound {low[bad[0], c]!r}"
        n_tight += int(np.sum(low[:, c] > 0.5 * d2))
    return low, n_tight


@pytest.mark.parametrize("d", [2, 16, 64])
def test_cell_lower_bounds_sound(d, seed):
    x = clustered(1200, d, seed)
    index = TrainingIndex(x, kind="ivf", nlist=24, rng=seed)
    q = mixed_queries(x, 60, seed)
    q = np.concatenate([q, x[:5], x.mean(0)[None], x.mean(0)[None] + 1e3 * radius(x)])
    _, n_tight = _check_cell_bounds(index, x, q)
    assert n_tight > 0  # the bounds are not trivially 0
    with pytest.raises(ValueError, match="cell_lower_bounds"):
        TrainingIndex(x, kind="flat").cell_lower_bounds(q)


def test_cell_lower_bounds_non_flat_quantizer(seed):
    """An IVF whose quantizer is HNSW: no bisector bound (slack inf), the ball bound is still sound."""
    x = clustered(1000, 8, seed)
    x32 = x.astype(np.float32)
    quantizer = faiss.IndexHNSWFlat(8, 16)
    ivf = faiss.IndexIVFFlat(quantizer, 8, 16, faiss.METRIC_L2)
    try:
        ivf.train(x32)
        ivf.add(x32)
        index = TrainingIndex.from_faiss(ivf, x32.astype(np.float64))  # float64 rows, same float32 copy
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on the faiss build
        pytest.skip(f"cannot build an IVF with an HNSW quantizer here: {exc}")
    assert index.kind == "ivf" and np.all(np.isinf(index._cell_slack))
    xf = x32.astype(np.float64)
    q = np.concatenate([mixed_queries(xf, 40, seed), xf[:5]])
    low, _ = _check_cell_bounds(index, xf, q)
    # ball bound only: max(0, |y - mu_c| - R_c)^2 (up to rounding)
    cent = index._centroids
    dist = np.linalg.norm(q[:, None, :] - index.center - cent[None], axis=2)
    ball = np.maximum(0.0, dist - index._radii[None, :]) ** 2
    assert np.all(low <= ball * (1 + 1e-9) + 1e-12)
    res = KNNScore(index, tol=1e-4).evaluate(q, 0.05)
    assert_sound(res, oracle(xf, q, 0.05), q, xf, "denoiser_rel", tol=1e-4, t=np.full(q.shape[0], 0.05))


def test_cell_lower_bounds_nearest_centroid(seed):
    """``nearest=`` receives each query's nearest centroid, from the compiled bounds and from the
    NumPy path (which takes over past _GRAM_MAX_NLIST cells) alike."""
    from nnscore.index import faiss_index

    x = clustered(1500, 16, seed)
    index = TrainingIndex(x, kind="ivf", nlist=32, rng=seed)
    q = np.concatenate([mixed_queries(x, 50, seed), x[:10]])
    expect = np.argmin(index.centroid_sq_distances(q), axis=1)
    got = np.full(q.shape[0], -1, dtype=np.int64)
    low = index.cell_lower_bounds(q, nearest=got)
    assert np.array_equal(got, expect)
    old = faiss_index._GRAM_MAX_NLIST
    faiss_index._GRAM_MAX_NLIST = 1  # force the NumPy path
    try:
        got_np = np.full(q.shape[0], -1, dtype=np.int64)
        low_np = index.cell_lower_bounds(q, nearest=got_np)
    finally:
        faiss_index._GRAM_MAX_NLIST = old
    assert np.array_equal(got_np, expect)
    # The same bounds: the compiled path's 1/(2 nu) is float32 rounded down (relative 6e-8).
    finite = np.isfinite(low_np)
    assert np.array_equal(finite, np.isfinite(low)) and np.any(low[finite] > 0)
    np.testing.assert_allclose(low[finite], low_np[finite], rtol=1e-6, atol=1e-12 * float(low_np[finite].max()))


def test_marked_rows_compiled_and_numpy(seed):
    """KNNScore's row count of marked cells: the compiled kernel and the NumPy fallback agree."""
    from nnscore import backends as nb
    from nnscore.scores import knn as knn_mod

    rng = np.random.default_rng([seed, 61])
    marked = (rng.uniform(size=(37, 1001)) < 0.02).astype(np.uint8)
    marked[0] = 0
    marked[1] = 1
    cell_rows = rng.integers(0, 5000, size=1001).astype(np.int64)
    expect = marked.astype(np.int64) @ cell_rows
    assert np.array_equal(knn_mod._marked_rows(marked, cell_rows, 2), expect)
    has_core = nb.HAS_CORE
    nb.HAS_CORE = False
    try:
        assert np.array_equal(knn_mod._marked_rows(marked, cell_rows, 1), expect)
    finally:
        nb.HAS_CORE = has_core


def test_ivf_first_probe_is_nearest_centroid_cell(monkeypatch):
    """The first cell an IVF query scans is the one its nearest centroid owns, where its near
    neighbours are, not the first of the cells whose lower bound is 0: at small sigma a query
    that starts in a cell without its neighbours finds a tiny S_K, and every cell of small lower
    bound then looks necessary (5e4 patches, sigma = 1e-4: 12% of the queries started elsewhere,
    and the 90th percentile of rows scanned was 3225 instead of 522)."""
    x = np.ascontiguousarray(ns.datasets.image_patches(n=20000, rng=0))
    index = TrainingIndex(x, kind="ivf", rng=0)
    rng = np.random.default_rng(0)
    q = x[:256] + (1e-4 * rng.standard_normal((256, 64))).astype(np.float32)
    model = KNNScore(index, tol=1e-4)
    first = {}  # per block of queries (the pilot, then the rest): the cell scanned first
    scan = knn_module.key_scan_partials

    def spy(backend, cells, y, sigma, cell, *args):
        first.setdefault(y.shape[0], cell.copy())
        return scan(backend, cells, y, sigma, cell, *args)

    monkeypatch.setattr(knn_module, "key_scan_partials", spy)
    res = model.evaluate(q, 1e-4)
    cells = np.concatenate(list(first.values()))  # blocks in query order
    d2 = index.centroid_sq_distances(q)
    assert cells.shape[0] == q.shape[0]
    assert np.array_equal(cells, np.argmin(d2, axis=1))
    # guard: on this data the smallest lower bound does point elsewhere for some queries
    assert np.any(np.argmin(index.cell_lower_bounds(q), axis=1) != np.argmin(d2, axis=1))
    assert np.all(res.path == "ivf-certified")
    ref = oracle(x.astype(np.float64), q.astype(np.float64), 1e-4)
    assert_sound(res, ref, q, x, "denoiser_rel", tol=1e-4, t=np.full(q.shape[0], 1e-4))


# ---------------------------------------------------------------------------------------------
# smoothed scores over a KNNScore base
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tol_kind", ["denoiser_rel", "score"])
def test_smoothed_knn_base_folds_certificates(tol_kind, seed):
    """Same fixed draws over the exact and the kNN base: the two smoothed scores differ by at most
    the folded certificate term (a / s^2) mean_m B(y_m), which the kNN error_bound includes."""
    x = clustered(2000, 8, seed)
    q = x[:12] + 0.02 * radius(x)
    knn = KNNScore(x, tol=1e-3 if tol_kind == "denoiser_rel" else 10.0, tol_kind=tol_kind, k_max=32)
    kernel = ns.GaussianKernel(0.05 * radius(x))
    sm_knn = ns.SmoothedScore(knn, kernel, n_samples=16, mode="fixed", rng=seed)
    sm_ex = ns.SmoothedScore(ns.EmpiricalScore(x, backend="reference"), kernel, n_samples=16, mode="fixed", rng=seed)
    sigma = 0.05 * radius(x)
    a, b = sm_knn.evaluate(q, sigma), sm_ex.evaluate(q, sigma)
    diff = np.linalg.norm(a.score - b.score, axis=1)
    folded = a.error_bound - b.error_bound  # the base-certificate term alone (same McDiarmid part)
    assert np.all(folded >= 0)
    assert np.all(diff <= folded * (1 + 1e-9) + 1e-9 * np.linalg.norm(b.score, axis=1))


def test_image_shaped_training_data_keeps_its_shape(seed):
    x = clustered(600, 16, seed).reshape(600, 4, 4)
    model = KNNScore(x, tol=1e-4)
    q = x[:3] + 0.01
    res = model.evaluate(q, 0.05)
    assert res.denoised.shape == (3, 4, 4) and res.score.shape == (3, 4, 4)
    flat = model.evaluate(q.reshape(3, 16), 0.05)
    np.testing.assert_array_equal(flat.denoised.reshape(3, 4, 4), res.denoised)


def test_hnsw_is_flagged_uncertified(seed):
    x = clustered(1500, 8, seed)
    index = TrainingIndex(x, kind="hnsw", rng=seed)
    q = x[:20] + 0.01 * radius(x)
    res = KNNScore(index, tol=1e-4).evaluate(q, 0.01 * radius(x))
    assert np.all(res.path == "uncertified") and np.all(np.isnan(res.error_bound))
    ref = oracle(x, q, np.full(20, 0.01 * radius(x)))
    # no certificate, but on this small clustered set HNSW finds the true neighbours
    assert np.max(np.linalg.norm(res.denoised - ref["denoised"], axis=1)) <= 1e-6 * radius(x)


def test_scan_nlist_and_knnscore_default_cells():
    """KNNScore(train) builds scan_nlist(N) = sqrt(N)/2 cells (scans), TrainingIndex keeps 4 sqrt(N)."""
    from nnscore.index import scan_nlist

    assert [scan_nlist(n) for n in (1, 3, 4, 100, 10_000, 10**6)] == [1, 1, 1, 5, 50, 500]
    x = np.random.default_rng(5).standard_normal((12_000, 4)).astype(np.float32)
    model = KNNScore(x, tol=1e-4)
    assert model.index.kind == "ivf" and model.index.nlist == scan_nlist(12_000) == 55
    assert KNNScore(x[:5_000], tol=1e-4).index.kind == "flat"  # auto: flat below 10 000 rows
    assert TrainingIndex(x, kind="ivf").nlist == round(4 * math.sqrt(12_000))
    assert TrainingIndex(x, kind="ivf", nlist="scan").nlist == 55
    assert TrainingIndex(x[:5_000], nlist="scan").kind == "flat"  # "scan" only sizes IVF indexes
    with pytest.raises((TypeError, ValueError), match="nlist"):
        TrainingIndex(x, kind="ivf", nlist="many")
    y = x[:40] + 0.01
    res = model.evaluate(y, 0.01)
    exact = ns.EmpiricalScore(x).evaluate(y, 0.01)
    # faiss's k-means (hence the partition) depends on the thread count: a query may fall back
    assert set(res.path) <= {"ivf-certified", "exact"} and np.any(res.path == "ivf-certified")
    # denoiser_rel: the bound is on ||D - D_exact|| / R; 1e-6 |D| covers the dense engine's float32 result
    err = np.linalg.norm(res.denoised.astype(np.float64) - exact.denoised, axis=1) / model.data.radius
    slack = 1e-6 * np.linalg.norm(exact.denoised, axis=1) / model.data.radius
    assert np.all(err <= res.error_bound * (1 + 1e-9) + slack)
