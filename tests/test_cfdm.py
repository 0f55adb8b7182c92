"""sigma-CFDM (science.md §2.1.6): exact smoothed model, closed form, barycentres, kNN estimator."""
import numpy as np
import pytest

import nnscore as ns
from nnscore.demos import _moons
from nnscore.sampling import sample
from nnscore.scores.cfdm import CFDMScore

T_START = 0.95
# geometric grid in 1 - t from (1 - T)/T down to 1e-9, then the final step to t = 1
SAMPLE_KW = dict(steps=200, sampler="cfdm", grid="geometric", sigma_max=(1 - T_START) / T_START, sigma_min=1e-9,
                 start="data", progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def moons():
    return _moons(50, 0.05, np.random.default_rng(0))


@pytest.fixture(scope="module")
def cloud():
    g = np.random.default_rng(0)
    x = g.standard_normal((300, 3))
    z = 0.9 * x[:40] + 0.1 * g.standard_normal((40, 3))
    return x, z


@pytest.mark.parametrize("mode", ["fixed", "fresh"])
def test_exact_equals_smoothed_score(moons, mode):
    z = np.random.default_rng(1).standard_normal((9, 2))
    model = CFDMScore(moons, 0.4, 6, mode=mode, rng=3)
    ref = ns.SmoothedScore(ns.EmpiricalScore(moons, schedule="cfdm"), ns.GaussianKernel(0.4), n_samples=6, mode=mode,
                           antithetic=False, rng=3)  # fmt: skip
    for t in (0.3, np.linspace(0.5, 0.9, 9)):  # twice: fixed mode reuses its draws, fresh draws anew
        a, b = model.evaluate(z, t), ref.evaluate(z, t)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.denoised, b.denoised)
    assert model.schedule.name == "cfdm"


def test_sigma_zero_is_closed_form_cfdm(moons):
    z = np.random.default_rng(2).standard_normal((7, 2))
    t = 0.7
    res = CFDMScore(moons, 0.0, 4, rng=0).evaluate(z, t)
    # lambda_i ~ exp(-||z - t x_i||^2 / (2 (1 - t)^2)), D = sum lambda_i x_i
    d2 = ((z[:, None, :] - t * moons[None]) ** 2).sum(-1)
    logit = -d2 / (2 * (1 - t) ** 2)
    lam = np.exp(logit - logit.max(1, keepdims=True))
    lam /= lam.sum(1, keepdims=True)
    d = lam @ moons
    np.testing.assert_allclose(res.denoised, d, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.score, (t * d - z) / (1 - t) ** 2, rtol=1e-10, atol=1e-10)
    emp = ns.EmpiricalScore(moons, schedule="cfdm").evaluate(z, t)
    np.testing.assert_array_equal(res.score, emp.score)


def test_velocity_identity(moons):
    z = np.random.default_rng(3).standard_normal((5, 2))
    t = 0.6
    res = CFDMScore(moons, 0.4, 8, rng=1).evaluate(z, t)
    # v = (z + (1 - t) s)/t = (Dbar - z)/(1 - t)
    np.testing.assert_allclose((z + (1 - t) * res.score) / t, (res.denoised - z) / (1 - t), rtol=1e-10, atol=1e-10)


def test_fixed_mode_outputs_are_barycentres(moons):
    model = CFDMScore(moons, 0.4, 2, mode="fixed", rng=1)
    out = sample(model, 400, rng=0, **SAMPLE_KW)
    gap = np.linalg.norm(out - model.barycentres(out), axis=1)
    assert np.mean(gap <= 1e-3) >= 0.99
    # most are novel points (barycentres of distinct pairs), not training points
    nearest = ns.metrics.nearest_train(out, moons, k=1)
    assert np.mean(nearest.d1 > 1e-6) > 0.5


def test_unsmoothed_returns_training_points(moons):
    out = sample(CFDMScore(moons, 0.0, 1, rng=1), 400, rng=0, **SAMPLE_KW)
    nearest = ns.metrics.nearest_train(out, moons, k=1)
    assert nearest.d1.max() <= 1e-9
    assert np.unique(nearest.idx[:, 0]).size <= len(moons)
    assert np.unique(np.round(out, 6), axis=0).shape[0] <= len(moons)


def test_perturbations_are_the_draws(moons):
    model = CFDMScore(moons, 0.4, 3, rng=7)
    off = model.perturbations(5)
    z = np.random.default_rng(0).standard_normal((5, 2))
    t = 0.8
    emp = ns.EmpiricalScore(moons, schedule="cfdm")
    manual = np.mean([emp.denoise(z + off[j], t) for j in range(3)], axis=0)
    np.testing.assert_allclose(model.denoise(z, t), manual, rtol=0, atol=1e-12)
    knn = CFDMScore(moons, 0.4, 3, rng=7, k=50)
    np.testing.assert_array_equal(knn.perturbations(5), off)  # same seed, same eps
    with pytest.raises(ValueError, match="mode"):
        CFDMScore(moons, 0.4, 3, mode="fresh").perturbations(5)


@pytest.mark.parametrize("mode", ["fixed", "fresh"])
def test_knn_full_equals_exact(cloud, mode):
    x, z = cloud
    for t in (0.5, 0.85):
        ex = CFDMScore(x, 0.2, 8, mode=mode, rng=5).evaluate(z, t)
        kn = CFDMScore(x, 0.2, 8, mode=mode, rng=5, k=len(x), n_random=0).evaluate(z, t)
        np.testing.assert_allclose(kn.denoised, ex.denoised, rtol=0, atol=1e-12)
        np.testing.assert_allclose(kn.score, ex.score, rtol=1e-9, atol=1e-9)
        assert kn.path.shape == (len(z),) and set(kn.path) == {"knn-stochastic"}
        assert kn.log_density is None and kn.divergence is None and kn.n_eff is None
        np.testing.assert_allclose(kn.sigma, (1 - t) / t)


def test_knn_close_to_exact_and_consistent(cloud):
    x, z = cloud
    # moderate k at t = 0.8: ||D_knn - D_exact|| <= 0.02 (max) and <= 0.005 (mean over queries)
    ex = CFDMScore(x, 0.2, 16, rng=5).evaluate(z, 0.8)
    kn = CFDMScore(x, 0.2, 16, rng=5, k=20).evaluate(z, 0.8)
    err = np.linalg.norm(kn.denoised - ex.denoised, axis=1)
    assert err.max() <= 0.02 and err.mean() <= 0.005
    # consistency at t = 0.5 (broad posteriors): the mean error falls as k grows, 0 at k = N - L
    ex = CFDMScore(x, 0.2, 16, rng=5).evaluate(z, 0.5)
    errs = []
    for k in (5, 20, 50, 100, 150):
        kn = CFDMScore(x, 0.2, 16, rng=5, k=k).evaluate(z, 0.5)
        errs.append(np.linalg.norm(kn.denoised - ex.denoised, axis=1).mean())
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] <= 1e-12  # k = 150, L = 150 = N - k: every point, weight 1


def test_knn_stratified_tail_many_draws_near_exact(cloud):
    x, z = cloud
    # k = 50 of N = 300 and L = 100 tail samples, 400 fresh draws averaged: near the exact value
    ex = CFDMScore(x, 0.0, 1, rng=0).evaluate(z[:3], 0.5).denoised
    model = CFDMScore(x, 0.0, 400, mode="fresh", rng=1, k=50, n_random=100)
    est = model.evaluate(z[:3], 0.5)
    err = np.linalg.norm(est.denoised - ex, axis=1)
    assert np.all(err <= 0.02), err  # measured <= 0.0041
    assert np.all(np.isfinite(est.mc_stderr))


def test_knn_fixed_is_deterministic_fresh_is_not(cloud):
    x, z = cloud
    fixed = CFDMScore(x, 0.2, 4, mode="fixed", rng=2, k=10)
    np.testing.assert_array_equal(fixed.evaluate(z, 0.5).score, fixed.evaluate(z, 0.5).score)
    fresh = CFDMScore(x, 0.2, 4, mode="fresh", rng=2, k=10)
    assert not np.array_equal(fresh.evaluate(z, 0.5).score, fresh.evaluate(z, 0.5).score)
    again = CFDMScore(x, 0.2, 4, mode="fresh", rng=2, k=10)
    np.testing.assert_array_equal(CFDMScore(x, 0.2, 4, mode="fresh", rng=2, k=10).evaluate(z, 0.5).score,
                                  again.evaluate(z, 0.5).score)  # fmt: skip


def test_knn_sampler_matches_exact_barycentres(moons):
    exact = CFDMScore(moons, 0.4, 2, rng=1)
    knn = CFDMScore(moons, 0.4, 2, rng=1, k=10)
    xe = sample(exact, 200, rng=0, **SAMPLE_KW)
    xk = sample(knn, 200, rng=0, **SAMPLE_KW)
    assert np.mean(np.linalg.norm(xk - knn.barycentres(xk), axis=1) <= 1e-3) >= 0.97
    assert np.mean(np.linalg.norm(xk - xe, axis=1) <= 1e-3) >= 0.9


def test_inputs_empirical_model_and_faiss_index(cloud):
    faiss = pytest.importorskip("faiss")
    x, z = cloud
    ref = CFDMScore(x, 0.2, 4, rng=3, k=30).evaluate(z, 0.7)
    index = faiss.IndexFlatL2(3)
    index.add(x.astype(np.float32))
    from_index = CFDMScore(index, 0.2, 4, rng=3, k=30)
    np.testing.assert_allclose(from_index.evaluate(z, 0.7).denoised, ref.denoised, rtol=0, atol=1e-6)
    from_model = CFDMScore(ns.EmpiricalScore(x), 0.2, 4, rng=3, k=30)
    np.testing.assert_array_equal(from_model.evaluate(z, 0.7).denoised, ref.denoised)
    assert from_model.schedule.name == "cfdm" and "CFDMScore" in repr(from_model)


def test_validation(moons):
    with pytest.raises(ValueError, match="sigma"):
        CFDMScore(moons, -0.1, 2)
    with pytest.raises(ValueError, match="n_samples"):
        CFDMScore(moons, 0.4, 0)
    with pytest.raises(ValueError, match="k"):
        CFDMScore(moons, 0.4, 2, k=51)
    with pytest.raises(ValueError, match="k"):
        CFDMScore(moons, 0.4, 2, k=0)
    with pytest.raises(ValueError, match="mode"):
        CFDMScore(moons, 0.4, 2, mode="quadrature")
    with pytest.raises(ValueError, match="n_random"):
        CFDMScore(moons, 0.4, 2, k=40, n_random=11)
    with pytest.raises(ValueError, match="n_random"):
        CFDMScore(moons, 0.4, 2, k=40, n_random=-1)
    with pytest.raises(TypeError, match="sigma"):
        CFDMScore(moons, "0.4", 2)
    with pytest.raises(ValueError, match="t"):
        CFDMScore(moons, 0.4, 2).evaluate(moons[:3], 1.0)
