"""EmpiricalScore parity: every backend against the independent float64 oracle (conftest.ref_f64).

Tolerances follow the precision of the inputs: for float32 inputs the oracle runs on the very
same float32 values widened exactly to float64, so every difference is the backend's own
rounding.  Denoisers are compared rather than scores (the score divides D - x by sigma^2 and
would only amplify the same error).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore import backends as nb
from nnscore import schedules
from nnscore.partials import finalize_partial

from conftest import data_radius, nn_spacing, ref_f64

DTYPES = [np.float32, np.float64]
EPS64 = np.finfo(np.float64).eps
U32 = np.finfo(np.float32).eps / 2
SIGMA_FACTORS = [1e-4, 1e-2, 1.0, 10.0, 1e2, 1e3]
FIELDS = ("denoised", "score", "log_density", "divergence", "posterior_variance", "n_eff", "top1",
          "max_weight", "sigma")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _flat(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def assert_within(actual, desired, tol, what=""):
    """|actual - desired| <= tol elementwise (tol may be an array); NaN never passes."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    err = np.abs(actual - desired)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), err.shape)
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {err.size} entries off, worst error {np.nanmax(err[bad]):.3e} "
        f"vs tolerance {tol[bad][np.argmax(err[bad])]:.3e}; actual {actual[bad][:3]} desired {desired[bad][:3]}"
    )


def _logit_range(ref) -> np.ndarray:
    """Largest |logit| among the terms that carry weight (lambda > 1e-30), per query."""
    lam, logits = ref["lam"], ref["logits"]
    return np.max(np.where(lam > 1e-30, np.abs(logits), 0.0), axis=1)


def _top1_ok(top1, logits, tol) -> np.ndarray:
    """top1[j] is within ``tol`` (absolute, in logit units) of the largest logit of query j."""
    rows = np.arange(logits.shape[0])
    lmax = logits.max(axis=1)
    return logits[rows, top1] >= lmax - tol


def assert_matches_oracle(res, ref, x, dtype, R, *, check_moments=True, what=""):
    """D, log p, top1, n_eff and max_weight of ``res`` against the oracle ``ref``."""
    dtype = np.dtype(dtype)
    m = res.log_density.shape[0]
    if m == 0:
        return
    D = _flat(res.denoised)
    D_ref = ref["denoised"]
    y = _flat(x)  # VE queries (alpha = 1)
    err_D = np.linalg.norm(D - D_ref, axis=1)
    norm_D = np.linalg.norm(D_ref, axis=1)
    # Logits are conditioned by their size: any float64 evaluation of l_i = -|y - x_i|^2/(2s^2)
    # carries ~eps64 |l_i| of rounding, which moves D by up to 2 R times that (only visible when
    # several points share the weight at huge |l|, e.g. exact midpoints at tiny sigma).
    logit_term = 2 * R * 16 * EPS64 * _logit_range(ref)
    if dtype == np.float32:
        # Spec: 1e-5 R (a float32 GEMM-form logit error e moves D by <= 2 e R, and the cpp
        # kernel keeps e ~ 1e-6; float32 tile sums add a few 1e-7 R); plus the final rounding
        # of D to the float32 output, u32 |D|.
        tol_D = 1e-5 * R + 2 * U32 * norm_D + logit_term
    else:
        # 1e-10 R, plus the cancellation in D = y + v/z: v is accumulated relative to the query
        # (nnscore.partials), so rounding scales with |y - D| (huge when sigma >> R); 100 eps
        # covers the float64 sums over up to 3000 terms.
        tol_D = 1e-10 * R + 100 * EPS64 * (np.linalg.norm(y - D_ref, axis=1) + norm_D) + logit_term
    bad = err_D > tol_D
    assert not bad.any(), (
        f"{what}: denoiser error {err_D[bad].max():.3e} > tol {tol_D[bad].min():.3e} (R={R:.3g}) "
        f"at queries {np.flatnonzero(bad)[:5]}"
    )

    lp, lp_ref = res.log_density, ref["log_density"]
    d = D.shape[1]
    if dtype == np.float32:
        # Spec: 1e-6 relative + 1e-5 absolute: float32 GEMM-form logit errors (~1e-6) and
        # float32 per-tile sums of the weights (relative ~1e-7 each).
        tol_lp = 1e-6 * np.abs(lp_ref) + 1e-5
    else:
        # rtol 1e-12 of the two float64 summands, log-sum-exp and the Gaussian normaliser
        # -d/2 log(2 pi s^2), which may cancel; 1e-12 absolute for log p near 0.
        norm = 0.5 * d * np.abs(np.log(2 * np.pi * np.asarray(ref["sigma_tilde"]) ** 2))
        tol_lp = 1e-12 * (np.abs(lp_ref) + norm) + 1e-12
    err_lp = np.abs(lp - lp_ref)
    bad = ~(err_lp <= tol_lp)
    assert not bad.any(), (
        f"{what}: log-density error {err_lp[bad].max():.3e} > tol {tol_lp[bad].min():.3e} "
        f"at queries {np.flatnonzero(bad)[:5]}"
    )

    # top1 up to ties: float32 GEMM-form logits may be off by ~1e-6 (1e-5 = the absolute log p
    # tolerance, i.e. the logit accuracy the spec asks for); float64 logits are exact to
    # ~1e-13 absolute, so only true distance ties (1e-12 relative) remain.
    logits = ref["logits"]
    lmax = logits.max(axis=1)
    tie_tol = 1e-5 if dtype == np.float32 else 1e-12 * np.maximum(1.0, np.abs(lmax))
    ok = _top1_ok(res.top1, logits, tie_tol)
    assert ok.all(), f"{what}: top1 {res.top1[~ok][:5]} is not a (near-)argmax of the logits"

    if check_moments:
        # float32: relative weight errors are the logit errors (~1e-6), so rtol 1e-4 is loose;
        # float64: 1e-9 (logits exact to ~1e-13 absolute; sums in float64).
        # Plus the logit conditioning (a weight moves by <= its size times the logit error).
        rtol = (1e-4 if dtype == np.float32 else 1e-9) + 4 * 16 * EPS64 * _logit_range(ref)
        assert_within(res.max_weight, ref["max_weight"], rtol * ref["max_weight"], f"{what}: max_weight")
        assert_within(res.n_eff, ref["n_eff"], rtol * ref["n_eff"], f"{what}: n_eff")
    assert np.all(np.isfinite(res.divergence)), what
    assert np.all(np.isfinite(res.posterior_variance)), what


def _make_train(rng, n, d, dtype, offset=0.0):
    return (rng.standard_normal((n, d)) + offset).astype(dtype)


def _queries(rng, train, kind, m, sigma):
    """Queries of one kind: noisy copies, exact training points or far away (100 R)."""
    n, d = train.shape
    idx = rng.integers(0, n, size=m)
    x0 = train[idx].astype(np.float64)
    if kind == "noisy":
        sig = np.broadcast_to(sigma, (m,))[:, None]
        x = x0 + sig * rng.standard_normal((m, d))
    elif kind == "on_train":
        x = x0
    elif kind == "far":
        R = max(data_radius(train), 1.0)
        u = rng.standard_normal((m, d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        x = train.astype(np.float64).mean(axis=0) + 100.0 * R * u
    else:  # pragma: no cover
        raise ValueError(kind)
    return x.astype(train.dtype)


# (d, N, M): every d and N of the grid; M * N * d kept below ~2e6 (the oracle forms (M, N, d)).
CASES = [
    (1, 1, 7), (1, 2, 70), (1, 3000, 70), (2, 50, 70), (2, 3000, 70), (3, 50, 7), (3, 3000, 70),
    (16, 1, 1), (16, 2, 7), (16, 50, 70), (16, 3000, 40), (64, 2, 7), (64, 50, 70), (64, 3000, 7),
    (784, 2, 1), (784, 50, 7), (3072, 1, 7), (3072, 50, 7),
]  # M = 0 (empty queries) is tested in test_bad_input.py::test_empty_queries


# ---------------------------------------------------------------------------------------------
# parity on the grid
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n,m", CASES, ids=[f"d{d}-N{n}-M{m}" for d, n, m in CASES])
def test_parity_grid(backend, dtype, d, n, m, seed):
    rng = np.random.default_rng([seed, d, n, m])
    train = _make_train(rng, n, d, dtype)
    model = ns.EmpiricalScore(train, backend=backend)
    R = data_radius(train)
    s = nn_spacing(train)
    for f in SIGMA_FACTORS:
        sigma = f * s
        for kind in ("noisy", "on_train", "far"):
            x = _queries(rng, train, kind, m, sigma)
            res = model.evaluate(x, sigma)
            assert res.denoised.shape == (m, d) and res.denoised.dtype == dtype
            assert res.log_density.shape == (m,)
            ref = ref_f64(train, x, sigma)
            assert_matches_oracle(res, ref, x, dtype, R, what=f"{backend} sigma={f:g}s {kind}")
    # Per-query t: every query its own noise level, spanning the whole grid.
    sig = s * np.asarray(SIGMA_FACTORS)[rng.integers(0, len(SIGMA_FACTORS), size=m)]
    x = _queries(rng, train, "noisy", m, sig)
    res = model.evaluate(x, sig)
    assert_array_equal(res.sigma, sig)
    assert_matches_oracle(res, ref_f64(train, x, sig), x, dtype, R, what=f"{backend} per-query t")


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_difference_form_logits_small_d(dtype, d, seed):
    """d <= 4, sigma well below the data radius: the cpp kernel's difference-form logits.

    Near queries keep them (no float64 recompute: n_exact = 0); queries a few sigma-widths away
    from the data fail the a-posteriori rounding check and are redone with float64 candidates
    (n_exact > 0).  Both, with offset data, weights and duplicates, match the oracle at the
    tolerances of test_parity_grid.  At d = 5 the GEMM-form modes run as before.
    """
    rng = np.random.default_rng([seed, 23, d])
    n = 1500
    centres = rng.standard_normal((6, d)) * 4.0
    train = (centres[rng.integers(0, 6, size=n)] + 0.3 * rng.standard_normal((n, d)) + 20.0).astype(dtype)
    train[-50:] = train[:50]  # exact duplicates
    weights = rng.uniform(0.2, 3.0, size=n)
    weights[::97] = 0.0
    model = ns.EmpiricalScore(train, weights=weights, backend="cpp", n_threads=2)
    R = data_radius(train)
    u = np.finfo(dtype).eps / 2
    # sigma / R from ~1e-2 (float32; GEMM-form error est ~u (R / sigma)^2 above the fast-path
    # tolerance, below the 1e-2 cap) up to where the GEMM form is the fast path again.
    n_keep = n_redo = 0
    for f in ([0.01, 0.03, 0.1] if dtype == np.float32 else [3e-5, 1e-3, 0.01]):
        sigma = f * R
        near = (train[rng.integers(0, n, size=40)] + sigma * rng.standard_normal((40, d))).astype(dtype)
        direction = rng.standard_normal((10, d))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        off = (train.astype(np.float64).mean(axis=0) + 1.5 * R * direction).astype(dtype)  # >> sigma away
        x = np.concatenate([near, off])
        res = model.evaluate(x, sigma)
        ref = ref_f64(train, x, sigma, weights=weights)
        assert_matches_oracle(res, ref, x, dtype, R, what=f"d={d} sigma={f:g}R")
        # Which queries may keep the difference form: GEMM-form error estimate in
        # [fast_tol, 1e-2], and the check on the posterior mean of half the squared distance
        # (computed here from the oracle's weights), with a factor-2 margin either way.
        fast_tol = nb.FAST_TOL[np.dtype(dtype)]
        est = u * (np.linalg.norm(x - train.mean(0), axis=1) * R + R * R) / sigma**2
        half_d2 = ((x.astype(np.float64)[:, None, :] - train.astype(np.float64)[None]) ** 2).sum(-1) / (2 * sigma**2)
        log_pi = np.log(weights[weights > 0] / weights.sum())
        bound = (d + 6) * u * (ref["lam"] * half_d2).sum(1) + 2 * u * np.abs(log_pi).max()
        eligible = (est >= fast_tol) & (est <= 1e-2) & (d <= 4)
        keep, redo = eligible & (bound <= 0.5 * fast_tol), eligible & (bound >= 2 * fast_tol)
        # Every compiled SIMD level: the same paths, and D within the tolerance of
        # assert_matches_oracle.
        D_ref = ref["denoised"]
        x64 = x.astype(np.float64)
        logit_term = 2 * R * 16 * EPS64 * _logit_range(ref)
        if dtype == np.float32:
            tol_D = 1e-5 * R + 2 * U32 * np.linalg.norm(D_ref, axis=1) + logit_term
        else:
            tol_D = 1e-10 * R + 100 * EPS64 * (np.linalg.norm(x64 - D_ref, axis=1) + np.linalg.norm(D_ref, axis=1))
            tol_D = tol_D + logit_term
        for level in _simd_levels():
            what = f"level {nb.SIMD_LEVELS[level]} sigma={f:g}R"
            diag = {}
            got = finalize_partial(nb.partials_dense("cpp", x, np.full(len(x), sigma), model.data, 2, level=level,
                                                     diagnostics=diag))
            err = np.linalg.norm(x64 + got.delta - D_ref, axis=1)
            assert (err <= tol_D).all(), f"{what}: D error {err.max():.3e}"
            assert (diag["n_exact"][keep] == 0).all(), f"{what}: kept queries recomputed"
            assert (diag["n_exact"][redo] > 0).all(), f"{what}: failed queries not redone"
            assert (diag["n_exact"][(est >= fast_tol) & ~eligible] > 0).all(), what
        n_keep += keep.sum()
        n_redo += redo[40:].sum()
    if d <= 4:  # both branches were exercised
        assert n_keep >= 40 and n_redo >= 10, (n_keep, n_redo)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_parity_offset_data_and_weights(backend, dtype, seed):
    """Data far from the origin (offset 50 per coordinate, ~25 R) with non-uniform weights, some zero."""
    rng = np.random.default_rng([seed, 11])
    n, d, m = 400, 8, 30
    train = _make_train(rng, n, d, dtype, offset=50.0)
    w = rng.uniform(0.0, 3.0, size=n)
    w[rng.choice(n, 40, replace=False)] = 0.0
    model = ns.EmpiricalScore(train, weights=w, backend=backend)
    R = data_radius(train)
    s = nn_spacing(train)
    for f in SIGMA_FACTORS:
        for kind in ("noisy", "on_train", "far"):
            x = _queries(rng, train, kind, m, f * s)
            res = model.evaluate(x, f * s)
            ref = ref_f64(train, x, f * s, weights=w)
            assert_matches_oracle(res, ref, x, dtype, R, what=f"weighted sigma={f:g}s {kind}")
            # A zero-weight point has no posterior mass: it is never the top1.
            assert np.all(w[res.top1] > 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_duplicates_and_ties(backend, dtype, seed):
    rng = np.random.default_rng([seed, 12])
    d = 5
    base = rng.standard_normal((30, d))
    # Every point appears twice (at indices i and i + 30), and a symmetric pair p +- e with p
    # far from the rest of the data.
    e = np.zeros(d)
    e[0] = 0.5
    p = np.full(d, 6.0)  # |p| ~ 13: > 8 away from every base point, much more than |e|
    train = np.concatenate([base, base, (p + e)[None], (p - e)[None]]).astype(dtype)
    R = data_radius(train)
    s = nn_spacing(train)
    model = ns.EmpiricalScore(train, backend=backend)
    on = train[rng.integers(0, 60, size=10)]
    # Midpoints: exactly equidistant from the pair (p +- e), and of pairs of base points.
    mid = np.concatenate([p[None], 0.5 * (base[:5] + base[5:10])]).astype(dtype)
    for f in SIGMA_FACTORS:
        for x in (on, mid):
            res = model.evaluate(x, f * s)
            ref = ref_f64(train, x, f * s)
            assert_matches_oracle(res, ref, x, dtype, R, what=f"ties sigma={f:g}s")
    # The midpoint p of p +- e at small sigma: posterior split evenly between the two, D = p.
    res = model.evaluate(p[None].astype(dtype), 1e-2 * s)
    assert res.top1[0] in (60, 61)
    assert_allclose(res.max_weight, 0.5, rtol=1e-6)  # exact tie: two equal weights
    assert_allclose(res.denoised[0], p, atol=1e-5 * R if dtype == np.float32 else 1e-12 * R)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n", [(1, 50), (3, 500), (64, 200), (784, 20)])
def test_tiny_noise_is_nearest_neighbour(backend, dtype, d, n, seed):
    """sigma~ = 1e-8 s: every logit but the largest underflows; D is the nearest neighbour."""
    rng = np.random.default_rng([seed, 13, d])
    train = _make_train(rng, n, d, dtype)
    s = nn_spacing(train)
    sigma = 1e-8 * s
    model = ns.EmpiricalScore(train, backend=backend)
    for kind in ("noisy", "on_train", "far"):
        x = _queries(rng, train, kind, 9, sigma)
        res = model.evaluate(x, sigma)
        for name in FIELDS:
            assert np.all(np.isfinite(getattr(res, name))), (kind, name)
        x64, t64 = _flat(x), _flat(train)
        sq = np.einsum("mnd,mnd->mn", t64[None] - x64[:, None], t64[None] - x64[:, None])
        nn = np.argmin(sq, axis=1)
        # D = y + (x_nn - y) in float64, then rounded to the query dtype: a few ulps of |x_nn|.
        scale = np.abs(t64[nn]) + np.abs(x64)
        atol = (4 * U32 if dtype == np.float32 else 4 * EPS64) * scale
        assert np.all(np.abs(_flat(res.denoised) - t64[nn]) <= atol), kind
        assert_array_equal(res.top1, nn)
        assert_allclose(res.max_weight, 1.0, rtol=1e-12)  # other weights are exp(-huge) = 0
        assert_allclose(res.n_eff, 1.0, rtol=1e-12)
        ref = ref_f64(train, x, sigma)
        # log p is about -||x - x_nn||^2 / (2 sigma^2), up to ~1e20: relative accuracy.
        assert_allclose(res.log_density, ref["log_density"],
                        rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_far_queries_tiny_sigma_many_tiles(backend, dtype):
    """Queries ~100 R from the data at sigma ~ 1e-7 R, N spanning several kernel tiles.

    The logits are ~1e18 in magnitude; the posterior is still one-hot on the nearest point.
    """
    train = np.random.default_rng(0).standard_normal((3000, 1)).astype(dtype)
    x = np.array([[-350.0], [-200.0], [350.0]], dtype=dtype)
    model = ns.EmpiricalScore(train, backend=backend)
    t64 = train.astype(np.float64)
    nn = np.argmin(np.abs(t64[:, 0][None, :] - x.astype(np.float64)), axis=1)
    for sigma in (1e-6, 1e-7, 4e-8, 1e-8):
        res = model.evaluate(x, sigma)
        assert_array_equal(res.top1, nn, err_msg=f"sigma={sigma}")
        # D = y + (x_nn - y) in float64, rounded to the query dtype: a few ulps of |y| + |x_nn|.
        ulp = 4 * (U32 if dtype == np.float32 else EPS64)
        assert_within(res.denoised[:, 0], t64[nn, 0], ulp * (np.abs(x[:, 0]) + np.abs(t64[nn, 0])), f"sigma={sigma}")
        ref = ref_f64(train, x, sigma)
        assert_allclose(res.log_density, ref["log_density"], rtol=1e-12, err_msg=f"sigma={sigma}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("weighted", [False, True])
def test_huge_noise_is_weighted_mean(backend, dtype, weighted, seed):
    """sigma~ = 1e8 s: the posterior is the prior, D is the (weighted) mean of the data."""
    rng = np.random.default_rng([seed, 14, weighted])
    n, d = 300, 6
    train = _make_train(rng, n, d, dtype, offset=2.0)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    s = nn_spacing(train)
    sigma = 1e8 * s
    model = ns.EmpiricalScore(train, weights=w, backend=backend)
    x = _queries(rng, train, "on_train", 12, sigma)
    res = model.evaluate(x, sigma)
    t64 = _flat(train)
    wn = np.ones(n) / n if w is None else w / w.sum()
    mean = wn @ t64
    R = data_radius(train)
    # |D - mean| ~ Cov (y - mean) / sigma^2 ~ R^3 / sigma^2 (negligible) + D's own rounding.
    atol = 1e-5 * R + 2 * U32 * np.linalg.norm(mean) if dtype == np.float32 else 1e-10 * R
    assert np.all(np.linalg.norm(_flat(res.denoised) - mean, axis=1) <= atol)
    # Weights are flat: n_eff is the prior's effective size, max_weight the largest prior weight.
    assert_allclose(res.n_eff, 1.0 / np.sum(wn * wn), rtol=1e-4)
    assert_allclose(res.max_weight, wn.max(), rtol=1e-4)
    for name in FIELDS:
        assert np.all(np.isfinite(getattr(res, name))), name
    assert_matches_oracle(res, ref_f64(train, x, sigma, weights=w), x, dtype, R, what="huge sigma")


# ---------------------------------------------------------------------------------------------
# posterior variance and divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n", [(2, 50), (16, 200), (64, 50)])
def test_posterior_variance(backend, dtype, d, n, seed):
    """posterior_variance = tr Cov[x0 | xt] against the oracle, absolute tolerance in R^2."""
    rng = np.random.default_rng([seed, 15, d])
    train = _make_train(rng, n, d, dtype)
    R = data_radius(train)
    s = nn_spacing(train)
    model = ns.EmpiricalScore(train, backend=backend)
    for f in SIGMA_FACTORS:
        x = _queries(rng, train, "noisy", 16, f * s)
        res = model.evaluate(x, f * s)
        ref = ref_f64(train, x, f * s)
        dist2 = np.sum((_flat(x) - ref["denoised"]) ** 2, axis=1)
        # tr C = q/z - |v/z|^2 with q, v about the query (nnscore.partials): even float64 sums
        # lose ~eps64 |y - D|^2 to cancellation, so that term is allowed on top of the spec's
        # 1e-6 R^2 (float32) / 1e-10 R^2 (float64).
        atol = (1e-6 if dtype == np.float32 else 1e-10) * R**2 + 64 * EPS64 * dist2
        err = np.abs(res.posterior_variance - ref["posterior_variance"])
        bad = err > atol
        assert not bad.any(), (
            f"sigma={f:g}s: |trC - trC_ref| = {err[bad].max():.3e} > {atol[bad].min():.3e} "
            f"(R^2 = {R**2:.3g}; values {res.posterior_variance[bad][:3]} vs "
            f"{ref['posterior_variance'][bad][:3]})"
        )
        # The divergence (tr C / s^2 - d) / s^2 inherits that error divided by s^4, plus the
        # rounding of the difference, relative to its scale d / s^2.
        s2 = (f * s) ** 2
        assert_allclose(res.divergence, ref["divergence"], rtol=1e-9,
                        atol=atol.max() / s2**2 + 1e-9 * d / s2, err_msg=f"sigma={f:g}s")


@pytest.mark.parametrize("factor", [0.5, 1.0, 3.0])
def test_divergence_is_trace_of_score_jacobian(backend, factor, seed):
    """Central finite differences of the score (float64, moderate sigma) give its divergence."""
    rng = np.random.default_rng([seed, 16])
    n, d, m = 40, 3, 5
    train = rng.standard_normal((n, d))
    sigma = factor * nn_spacing(train)
    model = ns.EmpiricalScore(train, backend=backend)
    x = train[:m] + sigma * rng.standard_normal((m, d))
    h = 1e-4 * sigma
    # O(h^2) truncation (relative (h/sigma)^2 ~ 1e-8) and O(eps |score| / h) rounding.
    plus = np.repeat(x, d, axis=0) + h * np.tile(np.eye(d), (m, 1))
    minus = np.repeat(x, d, axis=0) - h * np.tile(np.eye(d), (m, 1))
    sp = model.score(plus, sigma).reshape(m, d, d)
    sm = model.score(minus, sigma).reshape(m, d, d)
    fd = np.einsum("mkk->m", (sp - sm) / (2 * h))
    div = model.evaluate(x, sigma).divergence
    assert_allclose(div, fd, rtol=1e-5, atol=1e-6 * d / sigma**2)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------

INTERIOR_T = {
    "ve": [0.05, 0.7, 4.0],
    "edm": [0.05, 0.7, 4.0],
    "vp": [0.05, 0.3, 0.8],
    "vp-linear": [0.05, 0.3, 0.8],
    "vp-cosine": [0.05, 0.3, 0.8],
    "flow": [0.05, 0.3, 0.8],
    "cfdm": [0.2, 0.6, 0.95],
}


def test_schedule_table_is_covered():
    assert set(INTERIOR_T) == set(schedules.SCHEDULE_NAMES)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(INTERIOR_T))
def test_every_schedule_vs_general_oracle(backend, name, dtype, seed):
    rng = np.random.default_rng([seed, 17, len(name)])
    n, d, m = 60, 4, 12
    train = _make_train(rng, n, d, dtype)
    R = data_radius(train)
    sched = schedules.get_schedule(name)
    model = ns.EmpiricalScore(train, schedule=name, backend=backend)
    t_all = np.asarray(INTERIOR_T[name])
    for t in [*t_all, t_all[rng.integers(0, len(t_all), size=m)]]:
        a = np.broadcast_to(np.asarray(sched.alpha(np.asarray(t)), dtype=np.float64), (m,))
        sg = np.broadcast_to(np.asarray(sched.sigma(np.asarray(t)), dtype=np.float64), (m,))
        x0 = train[rng.integers(0, n, size=m)].astype(np.float64)
        x = (a[:, None] * x0 + sg[:, None] * rng.standard_normal((m, d))).astype(dtype)
        res = model.evaluate(x, t)
        ref = ref_f64(train, x, sg, alpha=a)  # logits ||x - a x_i||^2 / (2 s^2), x-coordinates
        st = sg / a
        assert_allclose(res.sigma, st, rtol=1e-14)
        D, D_ref = _flat(res.denoised), ref["denoised"]
        x64 = _flat(x)
        y = x64 / a[:, None]
        if dtype == np.float32:
            # The library rounds y = x / a to float32 (its compute dtype): that perturbs the
            # logits by up to |y - x_i| u32 |y| / st^2 (= dl), moving D by <= 2 R dl and log p
            # by dl; on top of the 1e-5 R / 1e-6 rel + 1e-5 of the VE parity test.
            far = np.sqrt(np.max(np.sum((y[:, None] - _flat(train)[None]) ** 2, -1), axis=1))
            dl = 2 * far * U32 * np.linalg.norm(y, axis=1) / st**2
            tol_D = 1e-5 * R + 2 * R * dl + 2 * U32 * np.linalg.norm(D_ref, axis=1)
            tol_lp = 1e-6 * np.abs(ref["log_density"]) + 1e-5 + dl
        else:
            # float64: the division x / a and the D - y cancellation, a few eps of |y| and |D|.
            tol_D = 1e-10 * R + 100 * EPS64 * (np.linalg.norm(y - D_ref, axis=1) + np.linalg.norm(y, axis=1))
            tol_lp = 1e-11 * (np.abs(ref["log_density"]) + d * np.abs(np.log(sg)) + 1.0)
        assert_within(np.linalg.norm(D - D_ref, axis=1), 0.0, tol_D, f"{name} t={t}: denoiser")
        assert_within(res.log_density, ref["log_density"], tol_lp, f"{name} t={t}: log p")
        # Divergence (a^2 tr C / s^2 - d) / s^2, relative to its scale d / s^2: float32 carries
        # the y-rounding above through tr C; float64 only rounding.
        rtol_div = 1e-3 if dtype == np.float32 else 1e-8
        assert_within(res.divergence, ref["divergence"], rtol_div * d / sg**2, f"{name} t={t}: divergence")
        # score = (a D - x) / s^2 (consistency of the conversion, in float64 from D).
        if dtype == np.float64:
            score_ref = (a[:, None] * D_ref - x64) / (sg**2)[:, None]
            assert_within(_flat(res.score), score_ref, 1e-8 * np.max(np.abs(score_ref)), f"{name} t={t}: score")


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, API consistency
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_dtype", DTYPES, ids=["train32", "train64"])
@pytest.mark.parametrize("query_dtype", DTYPES, ids=["x32", "x64"])
def test_shapes_and_dtypes(backend, train_dtype, query_dtype, seed):
    rng = np.random.default_rng([seed, 18])
    train = rng.standard_normal((20, 4, 4)).astype(train_dtype)
    model = ns.EmpiricalScore(train, backend=backend)
    assert model.shape == (4, 4) and model.dim == 16 and model.n_train == 20
    x = (train[:6] + 0.3 * rng.standard_normal((6, 4, 4))).astype(query_dtype)
    for xin in (x, x.reshape(6, 16)):
        res = model.evaluate(xin, 0.7)
        assert res.denoised.shape == (6, 4, 4) and res.score.shape == (6, 4, 4)
        assert res.denoised.dtype == query_dtype and res.score.dtype == query_dtype
        for name in ("log_density", "divergence", "posterior_variance", "n_eff", "max_weight", "sigma"):
            arr = getattr(res, name)
            assert arr.shape == (6,) and arr.dtype == np.float64, name
        assert res.top1.shape == (6,) and res.top1.dtype == np.int64
        assert res.backend == backend
        # Values: the oracle on the values the model computes with (queries in the train dtype).
        xc = xin.reshape(6, 16).astype(train_dtype)
        ref = ref_f64(train, xc, 0.7)
        # float32 anywhere: 1e-5 R (spec); all float64: 1e-10 R.
        tol = 1e-5 if np.float32 in (train_dtype, query_dtype) else 1e-10
        R = data_radius(train)
        assert np.all(np.linalg.norm(_flat(res.denoised) - ref["denoised"], axis=1)
                      <= tol * R + 2 * U32 * np.linalg.norm(ref["denoised"], axis=1))
    # The convenience methods are views of evaluate.
    res = model.evaluate(x, 0.7)
    assert_array_equal(model.denoise(x, 0.7), res.denoised)
    assert_array_equal(model(x, 0.7), res.denoised)
    assert_array_equal(model.score(x, 0.7), res.score)
    assert_array_equal(model.log_density(x, 0.7), res.log_density)


def test_auto_backend_is_fastest_available():
    model = ns.EmpiricalScore(np.zeros((3, 2)))
    assert model.backend == ns.available_backends()[0]
    assert "reference" in ns.available_backends()


# ---------------------------------------------------------------------------------------------
# SIMD levels, threads, determinism
# ---------------------------------------------------------------------------------------------


def _simd_levels() -> list[int]:
    if not ns.HAS_CORE:
        return []
    return list(range(int(nb._core.build_info()["simd_detected_index"]) + 1))


def _assert_every_level_matches(points, y, sigma, data, dtype, label, weights=None, cond=0.0):
    """The cpp kernel at every SIMD level, on 1 and 2 threads, against the reference backend:
    1e-5 R (float32) or 1e-10 R + 100 eps |D - y| (float64) on D, as test_parity_grid, plus
    2 R ``cond`` (the logit conditioning, 16 eps max |logit|); the log-sum-exp; n_eff and
    max_weight to 1e-4 / 1e-9 relative plus 4 ``cond``; top1 a near-argmax where it differs
    from the reference's."""
    R = data.radius
    ref = finalize_partial(nb.partials_dense("reference", y, sigma, data, 1))
    if dtype == np.float32:
        tol, tol_lse = 1e-5 * R, 1e-6 * np.abs(ref.lse) + 1e-5
    else:
        tol = 1e-10 * R + 100 * EPS64 * np.linalg.norm(ref.delta, axis=1)
        tol_lse = 1e-12 * np.abs(ref.lse) + 1e-12
    rtol = (1e-4 if dtype == np.float32 else 1e-9) + 4 * cond
    for level in _simd_levels():
        for n_threads in (1, 2):
            got = finalize_partial(nb.partials_dense("cpp", y, sigma, data, n_threads, level=level))
            what = f"level={nb.SIMD_LEVELS[level]} threads={n_threads} {label}"
            err = np.linalg.norm(got.delta - ref.delta, axis=1)
            assert np.all(err <= tol + 2 * R * cond), f"{what}: denoiser error {err.max():.3e}"
            assert np.all(np.abs(got.lse - ref.lse) <= tol_lse), f"{what}: log-sum-exp"
            assert_within(got.n_eff, ref.n_eff, rtol * ref.n_eff, f"{what}: n_eff")
            assert_within(got.max_weight, ref.max_weight, rtol * ref.max_weight, f"{what}: max_weight")
            diff = got.top1 != ref.top1
            if diff.any():  # only near-ties may differ
                logits = ref_f64(points, y[diff], sigma[diff], weights=weights)["logits"]
                tie = 1e-5 if dtype == np.float32 else 1e-12 * np.abs(logits.max(axis=1))
                assert _top1_ok(got.top1[diff], logits, tie).all(), what


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 3, 5, 16, 17, 33, 64, 100])
def test_cpp_every_simd_level_matches_reference(dtype, d, seed):
    rng = np.random.default_rng([seed, 19, d])
    n, m = 1100, 37  # > 2 tiles of 512 with a ragged end; > 1 query block of 32
    points = (rng.standard_normal((n, d)) + 1.0).astype(dtype)
    data = nb.TrainingData.prepare(points)
    R = data.radius
    s = nn_spacing(points)
    y = (points[rng.integers(0, n, size=m)] + s * rng.standard_normal((m, d))).astype(dtype)
    y[-3:] = points.astype(np.float64).mean(axis=0) + 100 * R  # far away: selection path
    for f in (1e-3, 0.3, 3.0, 1e3):  # exact (difference-form) path at small sigma, GEMM form at large
        sigma = f * s * (1.0 + rng.uniform(size=m))
        _assert_every_level_matches(points, y, sigma, data, dtype, f"sigma={f}s")


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cpp_deep_tiles_match_reference(dtype, seed):
    """Large d with GEMM-form sums takes deep tiles (dense_kernel.inc): the logits are packed in
    sub-tiles of fewer rows than the tile that the weights and the sums span, and the sums run
    in column chunks.  At d = 1600 a sub-tile has at most 240 rows for any wide-tile budget
    (256 KiB to 1.5 MiB), so every SIMD level takes them; n = 1100 leaves ragged tiles and
    sub-tiles, m = 37 a partial query block.  Queries near the data at medium and large sigma
    (GEMM-form sums, some with a float64-recomputed set) share blocks with far ones (selection
    path), with and without weights (some zero)."""
    rng = np.random.default_rng([seed, 29])
    n, m, d = 1100, 37, 1600
    points = (rng.standard_normal((n, d)) + 1.0).astype(dtype)
    weights = rng.uniform(0.5, 2.0, size=n)
    weights[rng.integers(0, n, size=20)] = 0.0
    s = nn_spacing(points)
    R = data_radius(points)
    y = (points[rng.integers(0, n, size=m)] + 0.3 * s * rng.standard_normal((m, d))).astype(dtype)
    y[[4, 20, 36]] = points.astype(np.float64).mean(axis=0) + 100 * R  # far away: selection path
    for w in (None, weights):
        data = nb.TrainingData.prepare(points, weights=w)
        for f in (0.3, 1.0, 30.0):
            sigma = f * s * (1.0 + rng.uniform(size=m))
            _assert_every_level_matches(points, y, sigma, data, dtype, f"sigma={f}s weighted={w is not None}",
                                        weights=w)


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d", [24, 130])
def test_cpp_partial_query_blocks(dtype, d, seed):
    """A query block that does not fill the register block (12 queries with AVX-512, 4 below)
    runs a narrower one, padded (dense_kernel.inc, with_block_width): every remainder from 1 to
    13 queries, on the fast, mixed and selection paths, narrow (d = 24) and wide rows (d = 130).
    The deep-tile sums take partial blocks in test_cpp_deep_tiles_match_reference (m = 37: blocks
    of 37, or 32 and 5 on two threads)."""
    rng = np.random.default_rng([seed, 31, d])
    n = 700
    points = (rng.standard_normal((n, d)) + 1.0).astype(dtype)
    data = nb.TrainingData.prepare(points)
    s = nn_spacing(points)
    for m in range(1, 14):
        y = (points[rng.integers(0, n, size=m)] + 0.5 * s * rng.standard_normal((m, d))).astype(dtype)
        for f in (1e-2, 1.0, 30.0):
            sigma = f * s * (1.0 + rng.uniform(size=m))
            _assert_every_level_matches(points, y, sigma, data, dtype, f"m={m} sigma={f}s")


@pytest.mark.parametrize("chunk_rows", [1, 7, 16384])
def test_row_repeats_flags(chunk_rows):
    """TrainingData.row_repeats (and CellSortedData's) mark exactly the rows equal to the row
    before them, across the chunks of the preparing pass; None when there are none."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((12, 3)).astype(np.float32)
    points = np.repeat(base, [1, 3, 1, 1, 9, 2, 1, 1, 5, 1, 1, 2], axis=0)
    points[5] = -0.0  # a zero row equal by value to a +0.0 one
    points[6] = 0.0
    expect = np.concatenate([[False], np.all(points[1:] == points[:-1], axis=1)])
    data = nb.TrainingData.prepare(points, chunk_rows=chunk_rows)
    assert data.row_repeats is not None and np.array_equal(data.row_repeats.astype(bool), expect)
    assert nb.TrainingData.prepare(base, chunk_rows=chunk_rows).row_repeats is None
    offsets = np.array([0, 4, 4, 20, points.shape[0]], dtype=np.int64)
    cells = nb.CellSortedData.build(points, None, offsets, chunk_rows=chunk_rows)
    assert np.array_equal(cells.row_repeats.astype(bool), expect)


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d", [5, 64])  # d > 4: small sigma takes the float64 recompute
def test_cpp_adjacent_duplicate_runs(dtype, d, seed):
    """The exact (float64) recompute takes one distance per run of identical adjacent rows.

    Runs of up to 1200 copies (longer than a 512-row tile, so some straddle tile boundaries),
    runs broken by a different prior weight or by a -0.0/+0.0 sign, a zero-weight copy; queries
    on the duplicated points (every copy within the exact cut), near them and far away, at
    small sigma (exact path), medium and large sigma, and midpoints of consecutive distinct points
    (two runs tie there: a run must end where the point changes); every SIMD level and 1 or 2
    threads, with and without weights: D, log p, n_eff, max_weight and top1 as the float64
    reference."""
    rng = np.random.default_rng([seed, 23, d])
    base = rng.standard_normal((40, d)) + 1.0
    base[7] = 0.0  # a zero row: its copies alternate -0.0 and +0.0 below
    counts = rng.integers(1, 60, size=40)
    counts[[3, 7, 21]] = [1200, 900, 700]
    points = np.repeat(base, counts, axis=0).astype(dtype)
    z0 = int(np.sum(counts[:7]))
    points[z0 : z0 + 900 : 2, 0] = -0.0  # same value, other bits: a new run, same terms
    n = points.shape[0]
    weights = np.ones(n)
    w3 = int(np.sum(counts[:3]))
    weights[w3 + 100 : w3 + 200] = 2.5  # the middle of the long run 3 weighs more
    weights[w3 + 500] = 0.0  # one copy without mass
    s = nn_spacing(base.astype(dtype))
    R = data_radius(points)
    on = points[[w3, w3 + 150, z0, z0 + 1, int(np.sum(counts[:21])) + 3]]
    near = on + 0.01 * s * rng.standard_normal(on.shape)
    mid = 0.5 * (base[[2, 3, 20]] + base[[3, 4, 21]])  # the last copy of one point, the first of the next
    y = np.concatenate([on, near, mid, [points.astype(np.float64).mean(axis=0) + 50 * R]]).astype(dtype)
    m = y.shape[0]
    for w in (None, weights):
        data = nb.TrainingData.prepare(points, weights=w)
        for f in (1e-4, 1e-2, 0.3, 3.0):
            sigma = f * s * (1.0 + rng.uniform(size=m))
            # float64 logits of size |l| carry ~eps |l| of rounding (midpoints at tiny sigma: the
            # two runs' weights move by that much), as in assert_matches_oracle.
            cond = 16 * EPS64 * _logit_range(ref_f64(points, y, sigma, weights=w))
            label = f"sigma={f}s weighted={w is not None}"
            _assert_every_level_matches(points, y, sigma, data, dtype, label, weights=w, cond=cond)
            if w is not None:  # a copy without mass is never the top1
                got = finalize_partial(nb.partials_dense("cpp", y, sigma, data, 2))
                assert np.all(weights[got.top1] > 0), label


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("m", [1, 5, 100])
def test_thread_count_agreement(backend, dtype, m, seed):
    """n_threads=1 and 2 agree; with few queries the training set is split across threads."""
    rng = np.random.default_rng([seed, 20, m])
    n, d = 12000, 8  # N / 4096 >= 2: the cpp kernel splits N when queries are few
    train = _make_train(rng, n, d, dtype)
    x = _queries(rng, train, "noisy", m, 0.5)
    r1 = ns.EmpiricalScore(train, backend=backend, n_threads=1).evaluate(x, 0.5)
    r2 = ns.EmpiricalScore(train, backend=backend, n_threads=2).evaluate(x, 0.5)
    R = data_radius(train)
    if dtype == np.float64:
        # Only the order of the float64 merges differs: rtol 1e-12.
        assert_allclose(r1.denoised, r2.denoised, rtol=1e-12, atol=1e-12 * R)
        assert_allclose(r1.log_density, r2.log_density, rtol=1e-12)
        assert_allclose(r1.posterior_variance, r2.posterior_variance, rtol=1e-10, atol=1e-12 * R**2)
        assert_allclose(r1.n_eff, r2.n_eff, rtol=1e-12)
    else:
        # float32 tiles change with the split: each is within the parity tolerance.
        assert_allclose(r1.denoised, r2.denoised, rtol=0, atol=2e-5 * R)
        assert_allclose(r1.log_density, r2.log_density, rtol=2e-6, atol=2e-5)
    assert_array_equal(r1.top1, r2.top1)


def test_repeated_calls_bitwise_identical(backend, seed):
    rng = np.random.default_rng([seed, 21])
    for dtype in DTYPES:
        train = _make_train(rng, 5000, 12, dtype)
        x = _queries(rng, train, "noisy", 3, 0.3)
        model = ns.EmpiricalScore(train, backend=backend, n_threads=2)
        a = model.evaluate(x, 0.3)
        b = model.evaluate(x, 0.3)
        for name in FIELDS:
            assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_concurrent_evaluate_matches_serial(backend, seed):
    rng = np.random.default_rng([seed, 22])
    train = _make_train(rng, 4000, 16, np.float32)
    model = ns.EmpiricalScore(train, backend=backend, n_threads=2)
    inputs = [(_queries(rng, train, "noisy", 20, 0.5 * (k + 1)), 0.5 * (k + 1)) for k in range(8)]
    serial = [model.evaluate(x, t) for x, t in inputs]
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(4)

    def work(worker):
        try:
            barrier.wait()
            for rep in range(2):
                for k in range(worker, len(inputs), 4):
                    results[(k, rep)] = model.evaluate(*inputs[k])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(results) == 2 * len(inputs)
    for (k, _), res in results.items():
        for name in FIELDS:
            assert_array_equal(getattr(res, name), getattr(serial[k], name), err_msg=f"{k} {name}")
