"""Fill distance, coverage, score-error split, n_eff summary and PF-ODE log-likelihood."""
import dataclasses

import numpy as np
import pytest
from scipy.special import logsumexp

from nnscore import metrics
from nnscore.datasets import Circle
from nnscore.schedules import get_schedule
from nnscore.scores import EmpiricalScore, ScoreResult


def _circle(n, **kw):
    return Circle(n=n, rotation="identity", **kw)


# -- fill distance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_train", [12, 40])
def test_fill_distance_equispaced_circle(seed, n_train):
    m = _circle(n_train, density="equispaced", rng=seed)
    h = metrics.fill_distance(m.points, m, n_net=4096, rng=seed)
    # the farthest points of M are the arc midpoints: chord of half the angular spacing
    exact = 2.0 * np.sin(np.pi / (2 * n_train))
    # the net misses the true maximum by at most its covering radius (half its largest gap)
    net = m.sample_uniform(4096, rng=np.random.default_rng(seed))
    ang = np.sort(np.mod(m.intrinsic_coords(net).ravel(), 2 * np.pi))
    gap = np.max(np.diff(np.concatenate([ang, [ang[0] + 2 * np.pi]])))
    assert h <= exact + 1e-12
    assert exact - h <= gap / 2 + 1e-12
    # and the closed form within 1e-3 for a 4096-point net
    np.testing.assert_allclose(h, exact, atol=1e-3)


def test_fill_distance_bad_inputs():
    m = _circle(12, density="equispaced")
    with pytest.raises(ValueError, match="n_net"):
        metrics.fill_distance(m.points, m, n_net=0)
    with pytest.raises(ValueError, match="train"):
        metrics.fill_distance(np.ones(3), m)
    with pytest.raises(TypeError, match="manifold"):
        metrics.fill_distance(m.points, object())
    with pytest.raises(ValueError, match="manifold"):
        metrics.fill_distance(np.ones((4, 3)), m)


# -- coverage --------------------------------------------------------------------------------------


def test_coverage_data_law_vs_memorised(seed):
    rng = np.random.default_rng(seed)
    m = _circle(12, density="equispaced", rng=seed)
    reference = m.sample_uniform(100_000, rng=rng)
    good = m.sample_uniform(20_000, rng=rng) + 0.01 * rng.standard_normal((20_000, 2))
    c_good = metrics.coverage(good, m, reference, deltas=[0.2, 0.4], rng=seed)
    assert c_good.shape == (2,)
    assert np.all(c_good > 0.8) and np.all(c_good < 1.05)
    # samples collapsed onto the 12 training points: balls between them are empty at small delta
    memorised = m.points[rng.integers(0, 12, 20_000)] + 1e-4 * rng.standard_normal((20_000, 2))
    c_mem = metrics.coverage(memorised, m, reference, deltas=[0.05, 0.1], rng=seed)
    np.testing.assert_array_equal(c_mem, 0.0)
    # a sampler instead of reference points gives the same picture
    c_s = metrics.coverage(good, m, lambda n, g: m.sample_uniform(n, rng=g), deltas=0.3, rng=seed,
                           n_reference=50_000)
    assert 0.8 < c_s[0] < 1.05


def test_coverage_bad_inputs():
    m = _circle(12, density="equispaced")
    ref = m.sample_uniform(100, rng=0)
    with pytest.raises(ValueError, match="deltas"):
        metrics.coverage(ref, m, ref, deltas=[0.1, -1.0])
    with pytest.raises(ValueError, match="deltas"):
        metrics.coverage(ref, m, ref, deltas=[])
    with pytest.raises(ValueError, match="samples"):
        metrics.coverage(np.ones((3, 5)), m, ref, deltas=0.1)
    with pytest.raises(ValueError, match="data_sampler_or_reference"):
        metrics.coverage(ref, m, np.zeros((0, 2)), deltas=0.1)
    with pytest.raises(ValueError, match="n_net"):
        metrics.coverage(ref, m, ref, deltas=0.1, n_net=-3)
    with pytest.raises(TypeError, match="manifold"):
        metrics.coverage(ref, object(), ref, deltas=0.1)


# -- score-error split -----------------------------------------------------------------------------


def test_score_error_split(seed):
    rng = np.random.default_rng(seed)
    m = Circle(n=10, ambient_dim=4, rng=seed)  # random rotation into R^4
    x = m.sample_uniform(200, rng=rng) + 0.1 * rng.standard_normal((200, 4))
    ref = rng.standard_normal((200, 4))
    est = ref + rng.standard_normal((200, 4))
    out = metrics.score_error_split(est, ref, x, m)
    np.testing.assert_allclose(out["tangential_values"] + out["normal_values"], out["total_values"], rtol=1e-12)
    np.testing.assert_allclose(out["tangential"] + out["normal"], out["total"], rtol=1e-12)
    np.testing.assert_allclose(out["total_values"], ((est - ref) ** 2).sum(1), rtol=1e-12)
    # a tangent error field: the normal part vanishes, the tangential part is all of it
    tan = m.tangent(x)[:, :, 0]
    coef = rng.standard_normal(200)
    out_t = metrics.score_error_split(ref + coef[:, None] * tan, ref, x, m)
    np.testing.assert_allclose(out_t["normal_values"], 0.0, atol=1e-24)
    np.testing.assert_allclose(out_t["tangential_values"], coef**2, rtol=1e-10)
    # a normal error field: the tangential part vanishes
    normal = x - m.project(x)
    out_n = metrics.score_error_split(ref + normal, ref, x, m)
    np.testing.assert_allclose(out_n["tangential_values"], 0.0, atol=1e-24)
    np.testing.assert_allclose(out_n["normal_values"], (normal**2).sum(1), rtol=1e-10)


def test_score_error_split_bad_inputs():
    m = _circle(10)
    x = m.sample_uniform(5, rng=0)
    with pytest.raises(ValueError, match="score_est"):
        metrics.score_error_split(np.ones((4, 2)), x, x, m)
    with pytest.raises(ValueError, match="score_ref"):
        metrics.score_error_split(x, np.ones((5, 3)), x, m)
    with pytest.raises(ValueError, match="x"):
        metrics.score_error_split(x, x, np.full((5, 2), np.nan), m)
    with pytest.raises(TypeError, match="manifold"):
        metrics.score_error_split(x, x, x, object())


# -- n_eff -----------------------------------------------------------------------------------------


def test_n_eff_summary(seed):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((64, 3))
    model = EmpiricalScore(train)
    res = model.evaluate(rng.standard_normal((300, 3)), 0.5)
    s = metrics.n_eff_summary(res)
    v = res.n_eff
    np.testing.assert_allclose(s["median"], np.median(v))
    np.testing.assert_allclose([s["min"], s["max"], s["mean"]], [v.min(), v.max(), v.mean()])
    np.testing.assert_allclose(s["quantiles"][0.25], np.quantile(v, 0.25))
    assert s["count"] == 300
    assert s["min"] >= 1.0
    assert s["min"] <= s["median"] <= s["max"] <= 64.0
    with pytest.raises(ValueError, match="result"):
        metrics.n_eff_summary(dataclasses.replace(res, n_eff=None))
    with pytest.raises(ValueError, match="quantiles"):
        metrics.n_eff_summary(res, quantiles=[1.5])
    with pytest.raises(TypeError, match="result"):
        metrics.n_eff_summary(object())


# -- PF-ODE log-likelihood -------------------------------------------------------------------------


class GaussianDataModel:
    """Data N(mu, v I) in R^d, VE schedule: every field in closed form."""

    def __init__(self, mu, v, fields=("posterior_variance",)):
        self.mu, self.v, self.fields = np.asarray(mu, float), float(v), fields
        self.schedule = get_schedule("ve")

    def log_p(self, x, sigma):
        var = self.v + sigma**2
        d = x.shape[1]
        return -0.5 * d * np.log(2 * np.pi * var) - 0.5 * ((x - self.mu) ** 2).sum(1) / var

    def evaluate(self, x, t):
        x = np.asarray(x, float)
        sig = float(t)
        d = x.shape[1]
        den = self.mu + self.v / (self.v + sig**2) * (x - self.mu)
        pv = np.full(x.shape[0], d * self.v * sig**2 / (self.v + sig**2))
        div = (pv / sig**2 - d) / sig**2
        return ScoreResult(
            denoised=den, score=(den - x) / sig**2, log_density=self.log_p(x, sig),
            divergence=div if "divergence" in self.fields else None,
            posterior_variance=pv if "posterior_variance" in self.fields else None,
            n_eff=None, top1=None, max_weight=None, sigma=np.full(x.shape[0], sig),
        )


@pytest.mark.parametrize("fields", [("posterior_variance",), ("divergence",), ()])
def test_log_likelihood_gaussian_data(seed, fields):
    rng = np.random.default_rng(seed)
    model = GaussianDataModel([0.5, -1.0, 2.0], 0.3, fields)
    x0 = model.mu + rng.standard_normal((20, 3))
    exact = model.log_p(x0, 1e-3)
    # Heun discretisation error: ~0.03 at 200 steps, ~7e-3 at 400 (second order)
    ll = metrics.log_likelihood(model, x0, sigma_min=1e-3, sigma_max=20.0, steps=400, rng=seed)
    np.testing.assert_allclose(ll, exact, atol=1.5e-2)
    # the Gaussian prior N(0, sigma_max^2 I) costs O(||y||^2 / sigma_max^2)
    llg = metrics.log_likelihood(model, x0, sigma_min=1e-3, sigma_max=1e3, steps=400, prior="gaussian", rng=seed)
    np.testing.assert_allclose(llg, exact, rtol=5e-3, atol=1e-2)


def test_log_likelihood_two_points_closed_form():
    train = np.array([[-1.0, 0.0], [1.0, 0.0]])
    model = EmpiricalScore(train)
    rng = np.random.default_rng(1)
    x0 = 1.2 * rng.standard_normal((30, 2))
    sigma = 0.1

    def log_p(x, s):
        sq = ((x[:, None, :] - train[None]) ** 2).sum(-1)
        return logsumexp(-sq / (2 * s * s), axis=1) - np.log(2) - np.log(2 * np.pi * s * s)

    ll = metrics.log_likelihood(model, x0, sigma_min=sigma, sigma_max=10.0, steps=400)
    np.testing.assert_allclose(ll, log_p(x0, sigma), rtol=5e-3, atol=1e-2)


def test_log_likelihood_matches_empirical_log_density(seed):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((50, 3))
    model = EmpiricalScore(train)
    sigma_min = 1e-3
    # typical points of p_{sigma_min}: training points plus sigma_min noise
    x0 = train[rng.integers(0, 50, 20)] + sigma_min * rng.standard_normal((20, 3))
    exact = model.log_density(x0, sigma_min)
    errs = []
    for steps in (100, 200):
        ll = metrics.log_likelihood(model, x0, sigma_min=sigma_min, sigma_max=10.0, steps=steps)
        errs.append(np.max(np.abs(ll - exact)))
    # measured: max error 0.13 (100 steps), 0.035 (200 steps); Heun is second order (ratio ~4)
    assert errs[1] < 0.4 * errs[0]
    assert errs[1] < 5e-2
    # at a moderate sigma_min even points far from the data are exact to 1e-3
    x1 = 1.5 * rng.standard_normal((20, 3))
    ll = metrics.log_likelihood(model, x1, sigma_min=0.2, sigma_max=10.0, steps=400)
    np.testing.assert_allclose(ll, model.log_density(x1, 0.2), rtol=5e-3, atol=1e-2)


def test_log_likelihood_vp_schedule(seed):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((30, 2))
    ve = EmpiricalScore(train)
    vp = EmpiricalScore(train, schedule="vp")
    x0 = 1.2 * rng.standard_normal((10, 2))
    ll_ve = metrics.log_likelihood(ve, x0, sigma_min=0.2, sigma_max=5.0, steps=100)
    ll_vp = metrics.log_likelihood(vp, x0, sigma_min=0.2, sigma_max=5.0, steps=100)
    # the VE variable y = x / a has the same law under every schedule
    np.testing.assert_allclose(ll_vp, ll_ve, rtol=1e-9, atol=1e-9)
    t = vp.schedule.t_from_sigma_tilde(0.2)
    a = vp.schedule.alpha(t)
    np.testing.assert_allclose(ll_vp, vp.log_density(a * x0, t) + 2 * np.log(a), rtol=5e-3, atol=3e-2)


def test_log_likelihood_bad_inputs():
    model = EmpiricalScore(np.eye(3))
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="sigma_min"):
        metrics.log_likelihood(model, x, sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_max"):
        metrics.log_likelihood(model, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="steps"):
        metrics.log_likelihood(model, x, steps=0)
    with pytest.raises(ValueError, match="prior"):
        metrics.log_likelihood(model, x, prior="flat")
    with pytest.raises(ValueError, match="x0"):
        metrics.log_likelihood(model, np.zeros(3))
    with pytest.raises(ValueError, match="x0"):
        metrics.log_likelihood(model, np.full((2, 3), np.inf))
    with pytest.raises(TypeError, match="model"):
        metrics.log_likelihood(object(), x)
    with pytest.raises(ValueError, match="sigma_max"):
        metrics.log_likelihood(EmpiricalScore(np.eye(3), schedule="vp"), x, sigma_max=1e6)
    assert metrics.log_likelihood(model, np.zeros((0, 3)), steps=3).shape == (0,)
