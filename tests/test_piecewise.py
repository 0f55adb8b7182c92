"""CHEN's smoothed piecewise-linear empirical score (science.md §2.4): formula (2.2), the flow map
(2.3), the endpoint law (2.4), the d-dimensional split and argument checking."""
from math import erf, sqrt

import numpy as np
import pytest

import nnscore as ns
from nnscore import sampling
from nnscore.scores.piecewise import PiecewiseLinearScore

TWO = np.array([[-1.0], [1.0]])


def spl_esf(x, t, delta):
    """(2.2) verbatim: CHEN's t is the variance."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= delta - 1, -(x + 1) / t, np.where(x >= 1 - delta, -(x - 1) / t, delta / (1 - delta) * x / t))


def Phi(z):
    return np.array([0.5 * (1 + erf(float(v) / sqrt(2))) for v in np.ravel(z)]).reshape(np.shape(z))


def score_1d(model, x, t_chen):
    """Score of ``model`` (VE) at CHEN time ``t_chen`` (nnscore's t is sigma = sqrt(t_chen))."""
    return model.score(np.asarray(x, dtype=np.float64)[:, None], np.sqrt(t_chen))[:, 0]


@pytest.mark.parametrize("kappa,t", [(1.0, 0.25), (0.5, 0.01), (2.0, 0.1), (1.0, 1e-6)])
def test_reduces_to_2_2(kappa, t):
    model = PiecewiseLinearScore(TWO, kappa)
    delta = kappa * np.sqrt(t)
    assert delta <= 1
    x = np.concatenate([np.linspace(-3, 3, 1001), [delta - 1, 1 - delta, 0.0, -1.0, 1.0]])
    got = score_1d(model, x, t)
    ref = spl_esf(x, t, delta)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 / t)
    # points in reverse order and as a 1-D array describe the same model
    np.testing.assert_allclose(score_1d(PiecewiseLinearScore([1.0, -1.0], kappa), x, t), ref, rtol=1e-12,
                               atol=1e-12 / t)  # fmt: skip


def test_large_delta_is_pl_esf():
    model = PiecewiseLinearScore(TWO, 4.0)  # kappa sqrt(t) = 2 > 1: window = half-gap
    x = np.array([-2.0, -0.3, 0.0, 0.4, 1.5])
    np.testing.assert_allclose(score_1d(model, x, 0.25), (np.sign(x) - x) / 0.25, rtol=1e-12)


@pytest.mark.parametrize("t", [0.25, 0.04, 1e-4])
def test_continuous_at_both_kinks(t):
    kappa = 1.0
    delta = kappa * np.sqrt(t)
    model = PiecewiseLinearScore(TWO, kappa)
    for kink in (delta - 1, 1 - delta):
        eps = 1e-9
        left, at, right = score_1d(model, np.array([kink - eps, kink, kink + eps]), t)
        slope = max(1.0, delta / (1 - delta)) / t  # largest |ds/dx| near the kink
        assert abs(left - at) <= 4 * slope * eps + 1e-9 * abs(at)
        assert abs(right - at) <= 4 * slope * eps + 1e-9 * abs(at)
        assert at == pytest.approx(-delta / t if kink < 0 else delta / t, rel=1e-12)


def test_n_point_extension_continuous_and_windows():
    pts = np.arange(5.0)[:, None] * 0.5  # half-gap g = 0.25
    model = PiecewiseLinearScore(pts, 1.0)
    sigma = 0.1  # w = 0.1 < g
    x = np.linspace(-0.5, 2.5, 30001)
    s = model.score(x[:, None], sigma)[:, 0]
    # continuity: no jumps bigger than the steepest slope times the spacing
    steep = max(1.0, 0.1 / 0.15) / sigma**2
    assert np.max(np.abs(np.diff(s))) <= 1.01 * steep * (x[1] - x[0])
    # exact ESF-like windows around every point, ramps through the gap midpoints
    for yk in pts[:, 0]:
        q = np.array([yk - 0.09, yk, yk + 0.09])
        np.testing.assert_allclose(model.score(q[:, None], sigma)[:, 0], (yk - q) / sigma**2, rtol=1e-12, atol=1e-9)
    mids = pts[:-1, 0] + 0.25
    np.testing.assert_allclose(model.score(mids[:, None], sigma)[:, 0], 0.0, atol=1e-9)
    q = mids + 0.05
    np.testing.assert_allclose(model.score(q[:, None], sigma)[:, 0], (0.1 / 0.15) * 0.05 / sigma**2, rtol=1e-9)


def test_normal_component_and_denoiser_consistency():
    rng = np.random.default_rng(0)
    d = 5
    e = rng.standard_normal(d)
    e /= np.linalg.norm(e)
    c = rng.standard_normal(d)
    pts = c + np.arange(4.0)[:, None] * 0.7 * e  # n = 4, equally spaced, in R^5
    model = PiecewiseLinearScore(pts[::-1], 1.3)
    x = c + rng.standard_normal((200, d)) * 2.0
    sigma = rng.uniform(0.05, 1.0, 200)
    res = model.evaluate(x, sigma)
    t = sigma**2
    xc = x - c
    u = xc @ e
    x_perp = xc - u[:, None] * e
    s_perp = res.score - (res.score @ e)[:, None] * e
    np.testing.assert_allclose(s_perp, -x_perp / t[:, None], rtol=1e-10, atol=1e-10)
    # tangential part = the 1-D model on the line coordinate
    m1 = PiecewiseLinearScore((np.arange(4.0) * 0.7)[:, None], 1.3)
    np.testing.assert_allclose(res.score @ e, m1.score(u[:, None], sigma)[:, 0], rtol=1e-10, atol=1e-8)
    # D = (x + s^2 score)/a, on the line; fields the model cannot compute are None
    np.testing.assert_allclose(res.denoised, x + t[:, None] * res.score, rtol=1e-10, atol=1e-10)
    dc = res.denoised - c
    np.testing.assert_allclose(dc - (dc @ e)[:, None] * e, 0.0, atol=1e-10)
    for field in ("log_density", "divergence", "posterior_variance", "n_eff", "top1", "max_weight"):
        assert getattr(res, field) is None
    np.testing.assert_allclose(res.sigma, sigma)
    # another schedule: D is the same function of the VE coordinates, score = (a D - x)/s^2
    vp = PiecewiseLinearScore(pts, 1.3, schedule="vp")
    tv = np.full(200, 0.3)
    a, s = vp.schedule.alpha(tv), vp.schedule.sigma(tv)
    rv = vp.evaluate(x * a[:, None], tv)
    ref = model.evaluate(x, s / a)
    np.testing.assert_allclose(rv.denoised, ref.denoised, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rv.score, (a[:, None] * rv.denoised - x * a[:, None]) / (s * s)[:, None], rtol=1e-9)


def test_dtype_and_shapes():
    model = PiecewiseLinearScore(TWO.astype(np.float32), 1.0)
    r = model.evaluate(np.zeros((3, 1), np.float32), 0.5)
    assert r.denoised.dtype == np.float32 and r.score.shape == (3, 1)
    assert model.evaluate(np.zeros((0, 1)), 0.5).score.shape == (0, 1)
    assert model(np.array([[0.2]]), 0.5).shape == (1, 1)


def test_flow_map_2_3():
    """Integrate x' = -s/2 in CHEN's t with Heun; compare with x/(1 - delta_t)."""
    kappa, t0, t1 = 1.0, 0.25, 1e-4
    model = PiecewiseLinearScore(TWO, kappa)
    x0 = np.linspace(-1.8, 1.8, 37) + 0.013
    ts = np.geomspace(t0, t1, 4001)
    x = x0.copy()
    for ta, tb in zip(ts[:-1], ts[1:]):
        h = tb - ta
        k1 = -0.5 * score_1d(model, x, ta)
        k2 = -0.5 * score_1d(model, x + h * k1, tb)
        x = x + 0.5 * h * (k1 + k2)
    d0, d1 = kappa * np.sqrt(t0), kappa * np.sqrt(t1)
    middle = np.abs(x0) < 1 - d0
    assert middle.sum() >= 8 and (~middle).sum() >= 8
    # middle region: x/(1 - delta_t) is invariant; the limit is x0/(1 - delta0)
    np.testing.assert_allclose(x[middle] / (1 - d1), x0[middle] / (1 - d0), rtol=1e-6)
    # windows: x - sgn(x) shrinks like sqrt(t); the limit is sgn(x0)
    sg = np.sign(x0[~middle])
    np.testing.assert_allclose(x[~middle] - sg, (x0[~middle] - sg) * np.sqrt(t1 / t0), rtol=1e-5, atol=1e-9)


def _endpoints_pl(kappa, t0, n, seed, steps=20):
    rng = np.random.default_rng(seed)
    s0 = np.sqrt(t0)
    x0 = np.where(rng.random(n) < 0.5, -1.0, 1.0) + s0 * rng.standard_normal(n)
    ts = ns.schedules.VE().grid(steps, kind="geometric", sigma_min=1e-3, sigma_max=s0)
    return x0, sampling.heun(PiecewiseLinearScore(TWO, kappa), x0[:, None], ts, progress=False)[:, 0], ts


def test_endpoint_law_2_4():
    kappa, t0, n = 1.0, 0.25, 40_000
    x0, y, _ = _endpoints_pl(kappa, t0, n, seed=0)
    d0 = kappa * np.sqrt(t0)
    a = 0.5 * (Phi(kappa) + Phi(kappa - 2 / np.sqrt(t0)))
    interior_mass = 1 - 2 * a  # science.md's worked example: about 0.157
    assert interior_mass == pytest.approx(0.157, abs=5e-4)

    def z(measured, p):
        return abs(measured - p) / np.sqrt(p * (1 - p) / n)

    tol = 1e-6
    assert z(np.mean(np.abs(y - 1) <= tol), a) <= 3
    assert z(np.mean(np.abs(y + 1) <= tol), a) <= 3
    interior = np.abs(y) < 1 - tol
    assert z(np.mean(interior), 1 - 2 * a) <= 3
    edges = np.linspace(-1, 1, 9)

    def cdf(x):
        return 0.5 * (Phi((x + 1) / np.sqrt(t0)) + Phi((x - 1) / np.sqrt(t0)))

    pred = np.diff(cdf((1 - d0) * edges))
    assert pred.sum() == pytest.approx(1 - 2 * a, rel=1e-12)
    counts = np.histogram(y[interior], bins=edges)[0] / n
    for c, p in zip(counts, pred):
        assert z(c, p) <= 3
    # U-shaped density: centre/edge ratio phi(2)/[(phi(1) + phi(3))/2] ~ 0.44 (science.md)
    dens = lambda v: np.exp(-((v + 1) ** 2) / (2 * t0)) + np.exp(-((v - 1) ** 2) / (2 * t0))  # noqa: E731
    assert dens(0.0) / dens(1 - d0) == pytest.approx(0.44, abs=0.01)


def test_exact_esf_has_no_interior_mass():
    """The exact ESF x_hat = tanh(x/t): every endpoint is an atom at +-1."""
    rng = np.random.default_rng(1)
    n, t0 = 20_000, 0.25
    x0 = np.where(rng.random(n) < 0.5, -1.0, 1.0) + np.sqrt(t0) * rng.standard_normal(n)
    sig = np.append(np.geomspace(np.sqrt(t0), 1e-3, 41), 0.0)
    y = x0.copy()
    for s, s_next in zip(sig[:-1], sig[1:]):  # Heun on dy/dsigma = (y - D)/sigma, D = tanh(y/sigma^2)
        d = np.tanh(y / s**2)
        y_e = y + (s_next - s) * (y - d) / s
        if s_next == 0:
            y = y_e
            continue
        y = y + 0.5 * (s_next - s) * ((y - d) / s + (y_e - np.tanh(y_e / s_next**2)) / s_next)
    assert np.mean(np.abs(y) < 1 - 1e-6) == 0.0
    assert np.all(np.sign(y) == np.sign(x0))
    # the same with the library's EmpiricalScore of the two points
    ts = ns.schedules.VE().grid(40, kind="geometric", sigma_min=1e-3, sigma_max=np.sqrt(t0))
    ye = sampling.heun(ns.EmpiricalScore(TWO), x0[:5000, None], ts, progress=False)[:, 0]
    assert np.mean(np.abs(ye) < 1 - 1e-6) == 0.0


@pytest.mark.parametrize(
    "points,kappa,exc,arg",
    [
        ([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1]], 1.0, ValueError, "points_on_line"),  # not collinear
        ([[0.0], [1.0], [3.0]], 1.0, ValueError, "points_on_line"),  # not equally spaced
        ([[1.0]], 1.0, ValueError, "points_on_line"),  # n < 2
        ([[1.0], [1.0]], 1.0, ValueError, "points_on_line"),  # coincide
        ([[0.0], [1.0], [1.0]], 1.0, ValueError, "points_on_line"),  # two coincide
        (np.zeros((2, 2, 2)), 1.0, ValueError, "points_on_line"),
        ([[0.0], [np.nan]], 1.0, ValueError, "points_on_line"),
        ([["a"], ["b"]], 1.0, TypeError, "points_on_line"),
        ([[0.0], [1.0]], 0.0, ValueError, "kappa"),
        ([[0.0], [1.0]], -1.0, ValueError, "kappa"),
        ([[0.0], [1.0]], float("inf"), ValueError, "kappa"),
        ([[0.0], [1.0]], float("nan"), ValueError, "kappa"),
        ([[0.0], [1.0]], True, TypeError, "kappa"),
        ([[0.0], [1.0]], "1", TypeError, "kappa"),
    ],
)
def test_bad_inputs(points, kappa, exc, arg):
    with pytest.raises(exc, match=arg):
        PiecewiseLinearScore(points, kappa)


def test_bad_queries_and_schedule():
    model = PiecewiseLinearScore(TWO, 1.0)
    with pytest.raises(ValueError, match="x"):
        model.evaluate(np.zeros((3, 2)), 0.5)
    with pytest.raises(ValueError, match="t"):
        model.evaluate(np.zeros((3, 1)), -1.0)
    with pytest.raises(ValueError, match="schedule"):
        PiecewiseLinearScore(TWO, 1.0, schedule="nope")
