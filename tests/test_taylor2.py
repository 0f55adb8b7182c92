"""The taylor2 smoothed score (science.md §2.1.4) and its third-moment pass.

* ``EmpiricalScore.third_moment``: every backend against an independent float64 NumPy
  oracle written here, over the whole noise range, d = 1, N = 1, duplicates, weights, far
  queries, float32 and float64.
* ``SmoothedScore(estimator="taylor2")``: O(h~^4) convergence to Gauss-Hermite quadrature (error
  ratio ~16 per halving of h, VE and VP), agreement with high-sample Monte Carlo in its regime,
  the [D] identities (N = 1 no-op, affine normal part unchanged), bad input.
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import nnscore as ns
from nnscore.scores.kernels import AnisotropicGaussianKernel


def third_moment_oracle(train, x, sigma, weights=None):
    """sum_i lambda_i ||x_i - D||^2 (x_i - D), plain float64 NumPy (VE, alpha = 1)."""
    xt = np.asarray(train, dtype=np.float64)
    q = np.asarray(x, dtype=np.float64)
    logits = -((q[:, None, :] - xt[None]) ** 2).sum(-1) / (2.0 * np.asarray(sigma, dtype=np.float64)[:, None] ** 2)
    if weights is not None:
        with np.errstate(divide="ignore"):
            logits = logits + np.log(np.asarray(weights, dtype=np.float64))[None]
    lam = np.exp(logits - logits.max(axis=1, keepdims=True))
    lam /= lam.sum(axis=1, keepdims=True)
    den = lam @ xt
    diff = xt[None] - den[:, None, :]
    return np.einsum("mn,mnd->md", lam * (diff**2).sum(-1), diff)


def _case(rng, n, d, m, dtype, duplicates=True, weighted=False):
    train = rng.normal(size=(n, d)).astype(dtype)
    if duplicates and n > 3:
        train[3] = train[2]
    x = train[rng.integers(0, n, m)] + 0.3 * rng.normal(size=(m, d))
    x[-1] += 6.0  # one query far from the data
    w = rng.uniform(0.1, 2.0, size=n) if weighted else None
    return train, x.astype(dtype), w


# Tolerances, in units of R^3 (R = max ||x_i - mean||): float64 is float64 rounding of the sums;
# float32 inputs follow the engine's float32 contract (the cpp kernel forms the terms of
# fast-path queries, whose logits are accurate in float32, in GEMM form: errors ~ u R^2 per term).
TOL_R3 = {np.float32: 2e-6, np.float64: 1e-11}

HOST_BACKENDS = [b for b in ns.available_backends() if b in ("cpp", "numba", "reference")]


@pytest.fixture(params=HOST_BACKENDS)
def backend(request) -> str:
    """The host backends (the third-moment pass is not implemented on the device backends)."""
    return request.param


def test_third_moment_refuses_device_backends():
    if "torch" not in ns.available_backends():
        pytest.skip("torch is not installed")
    model = ns.EmpiricalScore(np.random.default_rng(0).normal(size=(10, 3)), backend="torch")
    with pytest.raises(ValueError, match="backend: third_moment"):
        model.third_moment(np.zeros((2, 3)), 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d"), [(1, 3), (2, 1), (60, 1), (300, 17), (2000, 64), (1500, 300)])
@pytest.mark.parametrize("sigma", [1e-4, 0.05, 0.5, 2.0, 50.0])
def test_third_moment_matches_the_oracle(backend, rng, dtype, n, d, sigma):
    train, x, w = _case(rng, n, d, 12, dtype, weighted=n % 2 == 0)
    model = ns.EmpiricalScore(train, weights=w, backend=backend)
    res, third = model.third_moment(x, sigma)
    want = third_moment_oracle(train, x, np.full(len(x), sigma), w)
    radius = max(float(np.max(np.linalg.norm(train - train.astype(np.float64).mean(0), axis=1))), 1.0)
    assert third.dtype == np.float64 and third.shape == (len(x), d)
    assert np.all(np.isfinite(third))
    assert_allclose(third, want, rtol=0, atol=TOL_R3[dtype] * radius**3)
    # the first pass is evaluate() itself
    assert_allclose(res.denoised, model.evaluate(x, sigma).denoised, rtol=0, atol=0)


def test_third_moment_of_one_point_or_one_hot_posterior_is_zero(backend):
    rng = np.random.default_rng(0)
    # ||x_i - D|| is the rounding of D = y + v / z (~1e-16 R), so T ~ 1e-48 R^3, not 0
    one = ns.EmpiricalScore(rng.normal(size=(1, 4)), backend=backend)
    assert np.max(np.abs(one.third_moment(rng.normal(size=(3, 4)), 0.7)[1])) < 1e-40
    many = ns.EmpiricalScore(rng.normal(size=(50, 4)), backend=backend)
    # sigma so small every other weight underflows: the posterior is one point
    assert np.max(np.abs(many.third_moment(many.train[:5] + 1e-3, 1e-6)[1])) < 1e-40


def test_third_moment_empty_queries_and_shapes(backend):
    rng = np.random.default_rng(1)
    model = ns.EmpiricalScore(rng.normal(size=(20, 2, 3)), backend=backend)
    res, third = model.third_moment(np.zeros((0, 2, 3)), 0.5)
    assert third.shape == (0, 6) and res.denoised.shape == (0, 2, 3)
    res, third = model.third_moment(rng.normal(size=(4, 2, 3)), np.array([0.1, 0.5, 1.0, 2.0]))
    assert third.shape == (4, 6)


@pytest.mark.parametrize(("schedule", "t"), [("ve", 0.5), ("vp", 0.35)])
def test_taylor2_converges_as_h4_to_quadrature(schedule, t):
    # d = 2, Gauss-Hermite with 60 nodes per axis is exact to ~1e-13 for these h: the taylor2
    # error falls by ~16 per halving of h (O(h~^4)), the unsmoothed score's by ~4 (O(h~^2)).
    rng = np.random.default_rng(1)
    train = rng.normal(size=(30, 2))
    base = ns.EmpiricalScore(train, schedule=schedule, backend="reference")
    x = train[:5] + 0.2 * rng.normal(size=(5, 2))
    sch = ns.schedules.get_schedule(schedule)
    a = float(sch.alpha(t))
    x = a * x
    errs, errs_lp, errs_base = [], [], []
    for h in (0.1, 0.05, 0.025):
        h = h * a  # the same h~ = h / a in both schedules
        quad = ns.SmoothedScore(base, h, n_samples=60, mode="quadrature").evaluate(x, t)
        tay = ns.SmoothedScore(base, h, estimator="taylor2").evaluate(x, t)
        plain = base.evaluate(x, t)
        errs.append(np.max(np.abs(tay.score - quad.score)))
        errs_lp.append(np.max(np.abs(tay.log_density - quad.log_density)))
        errs_base.append(np.max(np.abs(plain.score - quad.score)))
        assert_allclose(tay.denoised, (x + float(sch.sigma(t)) ** 2 * tay.score) / a, rtol=1e-12, atol=1e-12)
    for e in (errs, errs_lp):
        ratios = np.array(e[:-1]) / np.array(e[1:])
        assert np.all((ratios > 12.0) & (ratios < 21.0)), ratios
    assert np.all((np.array(errs_base[:-1]) / np.array(errs_base[1:])) < 5.0)
    assert errs[-1] < 0.01 * errs_base[-1]


def test_taylor2_agrees_with_high_sample_monte_carlo_in_its_regime():
    # d = 16, h~ = sigma~ / 10: the O(h~^4) bias is far below the Monte-Carlo error of 8192
    # antithetic control-variate draws, so the two agree within 4 standard errors per query.
    rng = np.random.default_rng(2)
    train = rng.normal(size=(400, 16))
    base = ns.EmpiricalScore(train)
    x = train[:6] + 0.5 * rng.normal(size=(6, 16))
    sigma = 1.2
    mc = ns.SmoothedScore(base, sigma / 10, n_samples=8192, rng=5).evaluate(x, sigma)
    tay = ns.SmoothedScore(base, sigma / 10, estimator="taylor2").evaluate(x, sigma)
    plain = base.evaluate(x, sigma)
    gap = np.linalg.norm(tay.score - mc.score, axis=1)
    assert np.all(gap <= 4.0 * mc.mc_stderr), (gap, mc.mc_stderr)
    # ... and the correction is resolved: the unsmoothed score is many standard errors away
    assert np.all(np.linalg.norm(plain.score - mc.score, axis=1) > 10.0 * mc.mc_stderr)


def test_taylor2_backends_agree_within_the_engine_tolerance(backend):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(800, 24)).astype(np.float32)
    x = train[:10] + 0.3 * rng.normal(size=(10, 24)).astype(np.float32)
    radius = float(np.max(np.linalg.norm(train - train.mean(0), axis=1)))
    ref = ns.SmoothedScore(ns.EmpiricalScore(train, backend="reference"), lambda st: 0.3 * st, estimator="taylor2")
    got = ns.SmoothedScore(ns.EmpiricalScore(train, backend=backend), lambda st: 0.3 * st, estimator="taylor2")
    for sigma in (1e-3, 0.3, 1.0, 3.0, 30.0):
        a, b = got.evaluate(x, sigma), ref.evaluate(x, sigma)
        assert a.denoised.dtype == np.float32
        assert_allclose(a.denoised, b.denoised, rtol=0, atol=1e-5 * radius)
        assert_allclose(a.log_density, b.log_density, rtol=1e-6, atol=1e-5)


def test_taylor2_single_point_is_a_noop_and_affine_normal_part_is_unchanged():
    rng = np.random.default_rng(4)
    one = ns.EmpiricalScore(rng.normal(size=(1, 5)))
    x = rng.normal(size=(3, 5))
    assert_allclose(ns.SmoothedScore(one, 0.4, estimator="taylor2").evaluate(x, 0.6).score,
                    one.evaluate(x, 0.6).score, rtol=1e-14, atol=0)
    # affine manifold (FPHDP Prop. 3.1): T lies in the tangent space, so the normal part of the
    # taylor2 score is the unsmoothed normal part to roundoff
    d, k = 50, 2
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    u, a_mat = q[:, :k].T, q[:, k:].T
    b0 = rng.normal(size=d)
    train = b0 + rng.normal(size=(40, k)) @ u
    base = ns.EmpiricalScore(train)
    x = train[:5] + rng.normal(size=(5, d))
    tay = ns.SmoothedScore(base, 0.2, estimator="taylor2").evaluate(x, 0.5)
    plain = base.evaluate(x, 0.5)
    normal = tay.score @ a_mat.T
    assert_allclose(normal, plain.score @ a_mat.T, rtol=0, atol=1e-10 * np.max(np.abs(normal)))
    assert np.max(np.abs((tay.score - plain.score) @ u.T)) > 1e-3  # the tangential part moved


def test_taylor2_bad_input():
    rng = np.random.default_rng(5)
    base = ns.EmpiricalScore(rng.normal(size=(30, 3)))
    with pytest.raises(ValueError, match="estimator: 'taylor2'.*isotropic"):
        ns.SmoothedScore(base, AnisotropicGaussianKernel(cov=np.eye(3)), estimator="taylor2")
    knn = ns.KNNScore(rng.normal(size=(30, 3)).astype(np.float32))
    with pytest.raises(TypeError, match="base: estimator 'taylor2'"):
        ns.SmoothedScore(knn, 0.1, estimator="taylor2")
    with pytest.raises(ValueError, match="estimator"):
        ns.SmoothedScore(base, 0.1, estimator="taylor3")
    model = ns.SmoothedScore(base, 0.0, estimator="taylor2")  # h = 0: the base result
    assert_allclose(model.evaluate(base.train[:2], 0.3).score, base.evaluate(base.train[:2], 0.3).score)
    assert model.n_evaluations == 2
