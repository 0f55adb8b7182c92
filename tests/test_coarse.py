"""CoarseScore and HybridScore (science.md §2.6, [R]): formulas, projections, switching, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import nnscore as ns
from nnscore import schedules


def _circle(seed, n=64):
    return ns.datasets.manifold("circle", n=n, rng=seed)


@pytest.mark.parametrize("schedule", ["ve", "vp", "edm"])
def test_coarse_score_is_the_projection_term(schedule, seed):
    circle = _circle(seed)
    model = ns.CoarseScore(circle, 2, schedule=schedule)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, 2))
    sched = schedules.get_schedule(schedule)
    t = float(sched.t_from_sigma_tilde(0.3))
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    res = model.evaluate(x, t)
    proj = circle.project(x / a)
    np.testing.assert_allclose(res.denoised, proj, rtol=0, atol=1e-14)
    np.testing.assert_allclose(res.score, (a * proj - x) / s**2, rtol=1e-13, atol=1e-13)
    assert res.log_density is None and res.divergence is None and np.all(res.path == "coarse")


def test_local_pca_projection_is_exact_on_a_subspace(seed):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0]  # a 2-plane through an offset in R^10
    offset = rng.normal(size=10)
    train = offset + rng.normal(size=(300, 2)) @ basis.T
    model = ns.CoarseScore.from_local_pca(train, dim=2, k_neighbors=16)
    y = offset + rng.normal(size=(12, 2)) @ basis.T
    normal = rng.normal(size=(12, 10))
    normal -= normal @ basis @ basis.T
    res = model.evaluate(y + 0.1 * normal, 0.2)
    np.testing.assert_allclose(res.denoised, y, rtol=0, atol=1e-10)


def test_denoiser_projection_matches_the_base(seed):
    circle = _circle(seed, n=40)
    base = ns.EmpiricalScore(circle.points)
    model = ns.CoarseScore.from_denoiser(base, h_p=0.2)
    x = np.random.default_rng(seed).normal(size=(7, 2))
    np.testing.assert_allclose(model.evaluate(x, 0.05).denoised, base.denoise(x, 0.2), rtol=0, atol=1e-14)


def test_hybrid_switches_at_sigma_c(seed):
    circle = _circle(seed)
    exact = ns.EmpiricalScore(circle.points)
    coarse = ns.CoarseScore(circle, 2)
    hybrid = ns.HybridScore(exact, coarse, sigma_c=0.1)
    x = np.random.default_rng(seed).normal(size=(6, 2))
    t = np.array([0.5, 0.2, 0.1, 0.09, 0.01, 1e-3])
    res = hybrid.evaluate(x, t)
    high = t >= 0.1
    assert list(res.path) == ["high" if h else "low" for h in high]
    np.testing.assert_array_equal(res.denoised[high], exact.evaluate(x[high], t[high]).denoised)
    np.testing.assert_array_equal(res.denoised[~high], coarse.evaluate(x[~high], t[~high]).denoised)


def test_bad_input():
    circle = _circle(0)
    with pytest.raises(TypeError, match="projection"):
        ns.CoarseScore(3.0, 2)
    with pytest.raises(ValueError, match="projection"):
        ns.CoarseScore(lambda y: y[:, :1], 2).evaluate(np.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError, match="sigma_c"):
        ns.HybridScore(ns.EmpiricalScore(circle.points), ns.CoarseScore(circle, 2), sigma_c=0.0)
    with pytest.raises(ValueError, match="low"):
        ns.HybridScore(ns.EmpiricalScore(circle.points), ns.CoarseScore(circle, 2, schedule="vp"), sigma_c=0.1)
    with pytest.raises(ValueError, match="k_neighbors"):
        ns.CoarseScore.from_local_pca(circle.points, dim=1, k_neighbors=1)
    with pytest.raises(ValueError, match="dim"):
        ns.CoarseScore.from_local_pca(circle.points, dim=2, k_neighbors=8)
    with pytest.raises(ValueError, match="h_p"):
        ns.CoarseScore.from_denoiser(ns.EmpiricalScore(circle.points), h_p=-1.0)
