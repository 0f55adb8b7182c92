"""Smoothed score models: SmoothedScore, kernels, KDEScore, TemperedScore (science.md §2.0-2.3).

The [D] identities of science.md become exact tests (N = 1, affine manifolds, tangential
reduction, KDE and temperature closed forms); the Monte-Carlo machinery is tested for the
nominal coverage of its error bars and against Gauss-Hermite quadrature.
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore.scores.density import KDEScore, TemperedScore
from nnscore.scores.kernels import AnisotropicGaussianKernel, GaussianKernel
from nnscore.scores.smoothed import SmoothedScore

from conftest import ref_f64

SCHEDULES = [("ve", 0.6), ("vp", 0.4)]


def _coeffs(schedule: str, t: float) -> tuple[float, float]:
    sch = ns.schedules.get_schedule(schedule)
    return float(sch.alpha(t)), float(sch.sigma(t))


def _affine_setup(rng, n_train=30, k=2, d=50):
    """Points b0 + U^T c_i on a random k-dim affine subspace of R^d (float64)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    u = q[:, :k].T  # (k, d) tangent basis
    a_mat = q[:, k:].T  # (d - k, d) normal basis, row-orthonormal
    b0 = rng.normal(size=d)
    train = b0 + rng.normal(size=(n_train, k)) @ u
    return train, u, a_mat, a_mat @ b0


def _assert_close_scaled(actual, desired, rel):
    """|actual - desired| <= rel * max|desired| elementwise (scores: one scale per array)."""
    scale = max(float(np.max(np.abs(desired))), 1e-300)
    assert_allclose(actual, desired, rtol=0, atol=rel * scale)


# ----------------------------------------------------------------------------------------------
# [D] identities
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "t"), SCHEDULES)
@pytest.mark.parametrize("h", [0.05, 1.0, 7.0, "callable"])
@pytest.mark.parametrize(
    ("estimator", "antithetic"), [("control_variate", True), ("control_variate", False), ("raw", True)]
)
def test_single_point_smoothing_is_a_noop(schedule, t, h, estimator, antithetic):
    # N = 1: log p is quadratic, so s_h = s exactly (science.md §2.1.2.1); the control variate
    # has it sample by sample (D = x_1), raw needs the pairs to cancel the linear part.
    rng = np.random.default_rng(3)
    train = rng.normal(size=(1, 5))
    base = ns.EmpiricalScore(train, schedule=schedule)
    x = rng.normal(size=(4, 5)) * 2.0
    kern = GaussianKernel((lambda st: 2.0 * st) if h == "callable" else h)
    model = SmoothedScore(base, kern, n_samples=8, estimator=estimator, antithetic=antithetic, rng=0)
    got, ref = model.evaluate(x, t), base.evaluate(x, t)
    # Rounding is relative to the per-sample scores, ~ h / s^2 (not to the result).
    _, s = _coeffs(schedule, t)
    rel = 1e-10 * max(1.0, 10.0 * kern.bandwidth(np.array([1.0]))[0] / s)
    _assert_close_scaled(got.score, ref.score, rel)
    _assert_close_scaled(got.denoised, ref.denoised, 1e-10)
    # tr C = 0 for one point: the divergence -d/s^2 is constant, so its mean is exact.
    assert_allclose(got.divergence, ref.divergence, rtol=1e-12)


def test_single_point_quadrature_log_density_and_stein():
    # N = 1, d = 2: E log p(x + h xi) = log p(x) - h^2 d / (2 s^2) (quadratic, Gauss-Hermite
    # exact), and the Stein estimator is exact under quadrature for a quadratic log p.
    rng = np.random.default_rng(4)
    train = rng.normal(size=(1, 2))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(3, 2))
    s, h = 0.7, 0.4
    ref = base.evaluate(x, s)
    for estimator in ("control_variate", "stein"):
        model = SmoothedScore(base, GaussianKernel(h), n_samples=5, mode="quadrature", estimator=estimator)
        got = model.evaluate(x, s)
        _assert_close_scaled(got.score, ref.score, 1e-10)
        assert_allclose(got.log_density, ref.log_density - h * h * 2 / (2 * s * s), rtol=1e-12)
        assert got.mc_stderr is None
        assert got.error_bound is None


@pytest.mark.parametrize(("schedule", "t"), SCHEDULES)
def test_affine_manifold_normal_part_is_exact(schedule, t):
    # FPHDP Prop. 3.1: A s_h(x) = -(A x - a b)/s^2 for any centred kernel; the control-variate
    # form has it for every single sample, the raw form through the antithetic pairs.
    rng = np.random.default_rng(5)
    train, _, a_mat, b = _affine_setup(rng)
    base = ns.EmpiricalScore(train, schedule=schedule)
    a, s = _coeffs(schedule, t)
    x = a * train[:6] + 0.8 * rng.normal(size=(6, 50))
    expected = -(x @ a_mat.T - a * b) / s**2
    cov = rng.normal(size=(50, 50))
    kernels = [
        GaussianKernel(0.7),
        GaussianKernel(lambda st: 1.5 * st),
        AnisotropicGaussianKernel(cov=0.1 * cov @ cov.T),
        AnisotropicGaussianKernel(basis=np.linalg.qr(rng.normal(size=(50, 3)))[0].T, h_parallel=1.0, h_normal=0.2),
    ]
    cases = [
        ("control_variate", 1, False),
        ("control_variate", 16, False),
        ("control_variate", 16, True),
        ("raw", 16, True),
    ]
    for kern in kernels:
        for estimator, n, anti in cases:
            model = SmoothedScore(base, kern, n_samples=n, estimator=estimator, antithetic=anti, rng=1)
            got = model.evaluate(x, t).score.reshape(6, 50) @ a_mat.T
            _assert_close_scaled(got, expected, 1e-10)
    # The identity is not vacuous: the raw estimator without pairs misses it by O(h/s^2).
    raw = SmoothedScore(base, GaussianKernel(0.7), n_samples=16, estimator="raw", antithetic=False, rng=1)
    err = np.abs(raw.evaluate(x, t).score.reshape(6, 50) @ a_mat.T - expected).max()
    assert err > 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize(("schedule", "t"), SCHEDULES)
def test_tangent_kernel_reproduces_tangential_smoothing(schedule, t):
    # Affine data: isotropic smoothing in R^50 = smoothing along the k = 2 tangent directions
    # (Prop. 3.1), which is the 2-d smoothing of the projected data (science.md §2.1.2.3).
    rng = np.random.default_rng(6)
    train, u, a_mat, b = _affine_setup(rng, n_train=25)
    base = ns.EmpiricalScore(train, schedule=schedule)
    a, s = _coeffs(schedule, t)
    h = 0.5
    x = a * train[:4] + 0.5 * rng.normal(size=(4, 50))
    tangent = SmoothedScore(
        base, AnisotropicGaussianKernel(basis=u, h_parallel=h, h_normal=0.0), n_samples=30, mode="quadrature"
    ).evaluate(x, t)
    reduced = SmoothedScore(
        ns.EmpiricalScore(train @ u.T, schedule=schedule), GaussianKernel(h), n_samples=30, mode="quadrature"
    ).evaluate(x @ u.T, t)
    # Same latent nodes on both sides: equal to rounding.
    _assert_close_scaled(tangent.score @ u.T, reduced.score, 1e-10)
    _assert_close_scaled(tangent.score @ a_mat.T, -(x @ a_mat.T - a * b) / s**2, 1e-10)
    # The isotropic kernel in all 50 dimensions agrees within its Monte-Carlo error: the error
    # lies in the 2 tangent directions (chi^2_2 > 16 has probability 3e-4).
    iso = SmoothedScore(base, GaussianKernel(h), n_samples=20000, rng=2).evaluate(x, t)
    err = np.linalg.norm(iso.score - tangent.score, axis=1)
    assert np.all(err <= 4.0 * iso.mc_stderr), (err, iso.mc_stderr)


# ----------------------------------------------------------------------------------------------
# Monte-Carlo error bars and quadrature
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("estimator", ["control_variate", "raw", "stein"])
def test_error_bars_cover_at_nominal_rate(antithetic, estimator):
    # d = 1, so |err| / stderr is ~ |N(0,1)| (t with 31-63 dof): |err| <= 2 stderr in ~95% of
    # 200 independent estimates (200 copies of one query: draws are independent per query).
    rng = np.random.default_rng(7)
    train = rng.normal(size=(8, 1))
    base = ns.EmpiricalScore(train)
    s, h = 0.4, 0.5
    x = np.full((200, 1), 0.3)
    truth = SmoothedScore(base, GaussianKernel(h), n_samples=200, mode="quadrature").evaluate(x[:1], s).score[0, 0]
    model = SmoothedScore(base, GaussianKernel(h), n_samples=64, estimator=estimator, antithetic=antithetic, rng=11)
    res = model.evaluate(x, s)
    err = np.abs(res.score[:, 0] - truth)
    frac = float(np.mean(err <= 2.0 * res.mc_stderr))
    assert 0.9 <= frac <= 0.99, frac
    # The McDiarmid bound (delta = 0.05) is conservative; it needs the D_u in conv(X), which
    # raw samples without pairs are not (their score carries the unbounded xi/s^2 term).
    if estimator == "stein" or (estimator == "raw" and not antithetic):
        assert res.error_bound is None
    else:
        assert float(np.mean(err <= res.error_bound)) >= 0.95
    assert np.all(res.mc_stderr > 0)


@pytest.mark.parametrize("antithetic", [True, False])
def test_stderr_and_bound_formulas(antithetic):
    # Recompute the estimator from the documented draws: z = default_rng(seed).standard_normal
    # ((n/2 or n, M, d)); units = pair means (antithetic) or samples; VP so that a != 1.
    rng = np.random.default_rng(22)
    train = rng.normal(size=(12, 3))
    base = ns.EmpiricalScore(train, schedule="vp")
    a, s = _coeffs("vp", 0.5)
    x = rng.normal(size=(4, 3))
    n, h = 10, 0.3
    res = SmoothedScore(base, GaussianKernel(h), n_samples=n, antithetic=antithetic, rng=5).evaluate(x, 0.5)
    z = np.random.default_rng(5).standard_normal((n // 2 if antithetic else n, 4, 3))
    off = np.concatenate([h * z, -h * z]) if antithetic else h * z
    dens = base.evaluate((x[None] + off).reshape(-1, 3), 0.5).denoised.reshape(n, 4, 3)
    units = 0.5 * (dens[: n // 2] + dens[n // 2 :]) if antithetic else dens
    n_u = units.shape[0]
    d_h = units.mean(axis=0)
    assert_allclose(res.denoised, d_h, rtol=1e-12, atol=1e-13)
    assert_allclose(res.score, (a * d_h - x) / s**2, rtol=1e-10, atol=1e-10 * np.abs(res.score).max())
    tr_cov = np.sum(np.var(units, axis=0, ddof=1), axis=1)
    assert_allclose(res.mc_stderr, (a / s**2) * np.sqrt(tr_cov / n_u), rtol=1e-10)
    diam = 2.0 * np.max(np.linalg.norm(train - train.mean(axis=0), axis=1))
    bound = (a / s**2) * diam * (1.0 + np.sqrt(2.0 * np.log(20.0))) / np.sqrt(n_u)
    assert_allclose(res.error_bound, bound, rtol=1e-10)


def test_quadrature_equals_monte_carlo_in_the_limit():
    rng = np.random.default_rng(8)
    train = rng.normal(size=(20, 2))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(4, 2))
    s, h = 0.3, 0.4
    quad = SmoothedScore(base, GaussianKernel(h), n_samples=40, mode="quadrature").evaluate(x, s)
    mc = SmoothedScore(base, GaussianKernel(h), n_samples=200_000, rng=9).evaluate(x, s)
    err = np.linalg.norm(quad.score - mc.score, axis=1)
    assert np.all(err <= 4.0 * mc.mc_stderr), (err, mc.mc_stderr)  # chi^2_2 > 16: p = 3e-4
    assert np.all(mc.mc_stderr < 0.01 * np.linalg.norm(quad.score, axis=1))
    # Smoothed log-density and divergence are MC means too (no stderr reported): loose check.
    assert_allclose(mc.log_density, quad.log_density, atol=5e-3 * np.abs(quad.log_density).max())
    assert_allclose(mc.divergence, quad.divergence, atol=5e-2 * np.abs(quad.divergence).max())


def test_stein_estimator_agrees_with_control_variate():
    rng = np.random.default_rng(10)
    train = rng.normal(size=(15, 3))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(3, 3))
    s, h = 0.5, 0.3
    quad = SmoothedScore(base, GaussianKernel(h), n_samples=20, mode="quadrature").evaluate(x, s)
    for antithetic in (True, False):
        stein = SmoothedScore(base, GaussianKernel(h), n_samples=20000, estimator="stein", antithetic=antithetic, rng=3)
        res = stein.evaluate(x, s)
        err = np.linalg.norm(res.score - quad.score, axis=1)
        assert np.all(err <= 5.0 * res.mc_stderr), (err, res.mc_stderr)  # chi^2_3 > 25: p = 1e-5
        assert res.error_bound is None
    # Stein under quadrature (d = 3 <= 3) is a deterministic cross-check of the same integral.
    squad = SmoothedScore(base, GaussianKernel(h), n_samples=20, mode="quadrature", estimator="stein").evaluate(x, s)
    _assert_close_scaled(squad.score, quad.score, 1e-6)


def test_callable_bandwidth_per_query():
    # h(sigma~) = 0.5 sigma~ with one t per query equals the constant kernel of each row.
    rng = np.random.default_rng(12)
    train = rng.normal(size=(10, 2))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(3, 2))
    t = np.array([0.2, 0.6, 1.5])
    got = SmoothedScore(base, GaussianKernel(lambda st: 0.5 * st), n_samples=12, mode="quadrature").evaluate(x, t)
    for i in range(3):
        row_model = SmoothedScore(base, GaussianKernel(0.5 * t[i]), n_samples=12, mode="quadrature")
        row = row_model.evaluate(x[i : i + 1], t[i])
        _assert_close_scaled(got.score[i : i + 1], row.score, 1e-12)
        assert_allclose(got.log_density[i], row.log_density[0], rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# Randomness modes, zero bandwidth, batching
# ----------------------------------------------------------------------------------------------


def test_fixed_mode_is_deterministic_and_fresh_is_seeded():
    rng = np.random.default_rng(13)
    train = rng.normal(size=(12, 3))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(5, 3))
    fixed = SmoothedScore(base, GaussianKernel(0.3), n_samples=16, mode="fixed", rng=0)
    r1, r2 = fixed.evaluate(x, 0.4), fixed.evaluate(x, 0.4)
    assert_array_equal(r1.score, r2.score)
    assert_array_equal(r1.mc_stderr, r2.mc_stderr)
    fixed.evaluate(x[:2], 0.4)  # another batch size draws its own set ...
    assert_array_equal(fixed.evaluate(x, 0.4).score, r1.score)  # ... and leaves this one alone
    # The cached draws are reused at other times too (one deterministic field along a path).
    r3, r4 = fixed.evaluate(x, 0.9), fixed.evaluate(x, 0.9)
    assert_array_equal(r3.score, r4.score)

    fresh = SmoothedScore(base, GaussianKernel(0.3), n_samples=16, mode="fresh", rng=0)
    f1, f2 = fresh.evaluate(x, 0.4), fresh.evaluate(x, 0.4)
    assert np.max(np.abs(f1.score - f2.score)) > 1e-6
    again = SmoothedScore(base, GaussianKernel(0.3), n_samples=16, mode="fresh", rng=0)
    assert_array_equal(again.evaluate(x, 0.4).score, f1.score)
    assert_array_equal(again.evaluate(x, 0.4).score, f2.score)
    # The first fixed draw and the first fresh draw from one seed coincide.
    assert_array_equal(f1.score, r1.score)


@pytest.mark.parametrize(
    "kernel",
    [GaussianKernel(0.0), GaussianKernel(lambda st: 0.0 * st), AnisotropicGaussianKernel(cov=np.zeros((3, 3)))],
    ids=["h0", "callable0", "cov0"],
)
def test_zero_bandwidth_returns_the_base_result(kernel):
    rng = np.random.default_rng(14)
    train = rng.normal(size=(9, 3))
    base = ns.EmpiricalScore(train)
    x = rng.normal(size=(4, 3))
    ref = base.evaluate(x, 0.3)
    for mode in ("fresh", "quadrature"):
        got = SmoothedScore(base, kernel, n_samples=4, mode=mode).evaluate(x, 0.3)
        for field in ("denoised", "score", "log_density", "divergence", "posterior_variance", "n_eff", "top1"):
            assert_array_equal(getattr(got, field), getattr(ref, field))
        assert_array_equal(got.mc_stderr, np.zeros(4))


def test_one_stacked_base_call_with_trailing_shape():
    rng = np.random.default_rng(15)
    train = rng.normal(size=(7, 2, 3))
    base = ns.EmpiricalScore(train)
    calls = []
    original = base.evaluate

    def spy(x, t):
        calls.append((np.shape(x), np.shape(t)))
        return original(x, t)

    base.evaluate = spy
    x = rng.normal(size=(4, 2, 3))
    t = np.array([0.2, 0.3, 0.4, 0.5])
    res = SmoothedScore(base, GaussianKernel(0.2), n_samples=6, rng=0).evaluate(x, t)
    assert calls == [((24, 2, 3), (24,))]
    assert res.score.shape == (4, 2, 3)
    assert res.denoised.shape == (4, 2, 3)
    assert res.log_density.shape == (4,)
    calls.clear()
    SmoothedScore(base, GaussianKernel(0.2), n_samples=6, estimator="stein", rng=0).evaluate(x, 0.3)
    assert calls == [((28, 2, 3), ())]  # + the M queries themselves (Stein baseline)
    for field in ("posterior_variance", "n_eff", "top1", "max_weight", "path"):
        assert getattr(res, field) is None


def test_dtypes_and_empty_batch():
    rng = np.random.default_rng(16)
    train = rng.normal(size=(9, 3))
    base = ns.EmpiricalScore(train)
    model = SmoothedScore(base, GaussianKernel(0.2), n_samples=4, rng=0)
    res32 = model.evaluate(rng.normal(size=(2, 3)).astype(np.float32), 0.5)
    assert res32.score.dtype == np.float32
    assert res32.denoised.dtype == np.float32
    assert res32.log_density.dtype == np.float64
    empty = model.evaluate(np.zeros((0, 3)), 0.5)
    assert empty.score.shape == (0, 3)
    assert empty.mc_stderr.shape == (0,)
    # The callable model interface returns the smoothed denoiser.
    x = rng.normal(size=(2, 3))
    fixed = SmoothedScore(base, GaussianKernel(0.2), n_samples=4, mode="fixed", rng=0)
    assert_array_equal(fixed(x, 0.5), fixed.evaluate(x, 0.5).denoised)


def test_anisotropic_covariances():
    basis = np.array([[1.0, 0.0, 0.0]])
    k = AnisotropicGaussianKernel(basis=basis, h_parallel=2.0, h_normal=0.5)
    assert_allclose(k.covariance(3), np.diag([4.0, 0.25, 0.25]), rtol=1e-14)
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert_allclose(AnisotropicGaussianKernel(cov=cov).covariance(3), cov, atol=1e-14)
    assert_allclose(GaussianKernel(lambda st: 2 * st).covariance(2, sigma_tilde=0.5), np.eye(2), rtol=1e-15)


# ----------------------------------------------------------------------------------------------
# Density-domain baselines
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "t"), SCHEDULES)
@pytest.mark.parametrize("h", [0.3, "callable"])
def test_kde_is_the_empirical_model_at_inflated_noise(schedule, t, h):
    rng = np.random.default_rng(17)
    train = rng.normal(size=(20, 4))
    base = ns.EmpiricalScore(train, schedule=schedule)
    a, s = _coeffs(schedule, t)
    x = a * train[:5] + s * rng.normal(size=(5, 4))
    hh = 0.3 if h == 0.3 else 0.5 * (s / a)
    kde = KDEScore(base, h if h == 0.3 else (lambda st: 0.5 * st)).evaluate(x, t)
    st_in = np.sqrt((s / a) ** 2 + (hh / a) ** 2)
    # The same y = x/a evaluated by a VE model at sigma~', converted to x-coordinates.
    ve = ns.EmpiricalScore(train).evaluate(x / a, st_in)
    d = x.shape[1]
    assert_allclose(kde.score, ve.score / a, rtol=1e-12, atol=1e-12 * np.abs(ve.score).max() / a)
    assert_allclose(kde.log_density, ve.log_density - d * np.log(a), rtol=1e-12)
    assert_allclose(kde.divergence, ve.divergence / a**2, rtol=1e-12)
    assert_allclose(kde.posterior_variance, ve.posterior_variance, rtol=1e-12, atol=1e-14)
    assert_allclose(kde.n_eff, ve.n_eff, rtol=1e-12)
    assert_array_equal(kde.top1, ve.top1)
    assert_allclose(kde.sigma, s / a, rtol=1e-15)
    # denoised is the sampler-consistent one: score = (a D - x)/s^2 at the query's own s.
    assert_allclose((a * kde.denoised - x) / s**2, kde.score, rtol=1e-9, atol=1e-10 * np.abs(kde.score).max())
    # And the independent float64 oracle of the mixture sum_i N(a x_i, (s^2 + h^2) I).
    ref = ref_f64(train, x, sigma=np.sqrt(s**2 + hh**2), alpha=a)
    assert_allclose(kde.score, ref["score"], rtol=1e-10, atol=1e-10 * np.abs(ref["score"]).max())
    assert_allclose(kde.log_density, ref["log_density"], rtol=1e-12)


def test_kde_with_zero_bandwidth_is_the_base_model():
    rng = np.random.default_rng(18)
    train = rng.normal(size=(10, 3))
    base = ns.EmpiricalScore(train, schedule="vp")
    x = rng.normal(size=(4, 3))
    got, ref = KDEScore(base, 0.0).evaluate(x, 0.3), base.evaluate(x, 0.3)
    for field in ("denoised", "score", "log_density", "divergence", "posterior_variance", "sigma"):
        assert_array_equal(getattr(got, field), getattr(ref, field))


@pytest.mark.parametrize(("schedule", "t"), SCHEDULES)
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_tempered_score_identity(schedule, t, tau):
    # tau * grad log p(x; sqrt(tau) s) at the same a (science.md §2.3).
    rng = np.random.default_rng(19)
    train = rng.normal(size=(20, 4))
    base = ns.EmpiricalScore(train, schedule=schedule)
    a, s = _coeffs(schedule, t)
    x = a * train[:5] + s * rng.normal(size=(5, 4))
    got = TemperedScore(base, tau).evaluate(x, t)
    ref = ref_f64(train, x, sigma=np.sqrt(tau) * s, alpha=a)
    assert_allclose(got.score, tau * ref["score"], rtol=1e-10, atol=1e-10 * tau * np.abs(ref["score"]).max())
    assert_allclose(got.denoised, ref["denoised"], rtol=1e-10, atol=1e-10)
    assert_allclose(got.log_density, tau * ref["log_density"], rtol=1e-12)
    assert_allclose(got.divergence, tau * ref["divergence"], rtol=1e-10)
    assert_allclose((a * got.denoised - x) / s**2, got.score, rtol=1e-9, atol=1e-10 * np.abs(got.score).max())
    if schedule == "ve":  # and against the library itself at sqrt(tau) sigma
        lib = base.evaluate(x, np.sqrt(tau) * t)
        assert_allclose(got.score, tau * lib.score, rtol=1e-10, atol=1e-10 * tau * np.abs(lib.score).max())
    if tau == 1.0:
        assert_array_equal(got.score, base.evaluate(x, t).score)


def test_smoothing_a_density_baseline():
    # The models compose: smoothing a KDE (no train attribute: no McDiarmid bound).
    rng = np.random.default_rng(20)
    train = rng.normal(size=(10, 2))
    kde = KDEScore(ns.EmpiricalScore(train), 0.2)
    res = SmoothedScore(kde, GaussianKernel(0.1), n_samples=8, rng=0).evaluate(rng.normal(size=(3, 2)), 0.5)
    assert res.error_bound is None
    assert np.all(np.isfinite(res.score))


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


def _bad_cases():
    base = ns.EmpiricalScore(np.random.default_rng(0).normal(size=(5, 3)))
    base2 = ns.EmpiricalScore(np.random.default_rng(0).normal(size=(5, 2)))
    ok_basis = np.eye(3)[:1]
    return [
        (lambda: GaussianKernel(-0.1), ValueError, r"^h\b"),
        (lambda: GaussianKernel(float("nan")), ValueError, r"^h\b"),
        (lambda: GaussianKernel(float("inf")), ValueError, r"^h\b"),
        (lambda: GaussianKernel("0.1"), TypeError, r"^h\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), n_samples=0), ValueError, r"^n_samples\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), n_samples=2.5), TypeError, r"^n_samples\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), n_samples=3), ValueError, r"^n_samples\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), mode="qmc"), ValueError, r"^mode\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), estimator="taylor"), ValueError, r"^estimator\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), antithetic="yes"), TypeError, r"^antithetic\b"),
        (lambda: SmoothedScore(base, GaussianKernel(0.1), rng="seed"), TypeError, r"^rng\b"),
        (lambda: SmoothedScore(base, "wide"), TypeError, r"^kernel\b"),
        (lambda: SmoothedScore(object(), GaussianKernel(0.1)), TypeError, r"^base\b"),
        (lambda: SmoothedScore(base, -1.0), ValueError, r"^h\b"),
        (lambda: SmoothedScore(ns.EmpiricalScore(np.zeros((3, 4))), GaussianKernel(0.1), mode="quadrature"),
         ValueError, r"^mode\b"),
        (lambda: SmoothedScore(base, AnisotropicGaussianKernel(basis=ok_basis, h_parallel=1.0), estimator="stein"),
         ValueError, r"^estimator\b"),
        (lambda: AnisotropicGaussianKernel(cov=np.array([[1.0, 0.5], [0.0, 1.0]])), ValueError, r"^cov\b.*symmetric"),
        (lambda: AnisotropicGaussianKernel(cov=np.diag([1.0, -1e-3])), ValueError, r"^cov\b.*semi-definite"),
        (lambda: AnisotropicGaussianKernel(cov=np.ones((2, 3))), ValueError, r"^cov\b"),
        (lambda: AnisotropicGaussianKernel(cov=np.full((2, 2), np.nan)), ValueError, r"^cov\b"),
        (lambda: AnisotropicGaussianKernel(), ValueError, r"^cov\b"),
        (lambda: AnisotropicGaussianKernel(cov=np.eye(2), basis=np.eye(2)), ValueError, r"^cov\b"),
        (lambda: SmoothedScore(base2, AnisotropicGaussianKernel(cov=np.eye(3))), ValueError, r"^cov\b.*d = 2"),
        (lambda: SmoothedScore(base2, AnisotropicGaussianKernel(basis=ok_basis, h_parallel=1.0)), ValueError,
         r"^basis\b"),
        (lambda: AnisotropicGaussianKernel(basis=np.array([[1.0, 1.0, 0.0]]), h_parallel=1.0), ValueError,
         r"^basis\b.*orthonormal"),
        (lambda: AnisotropicGaussianKernel(basis=np.eye(3)[:2]), ValueError, r"^h_parallel\b"),
        (lambda: AnisotropicGaussianKernel(basis=ok_basis, h_parallel=1.0, h_normal=-1.0), ValueError, r"^h_normal\b"),
        (lambda: AnisotropicGaussianKernel(basis=np.ones((4, 3)) / 2, h_parallel=1.0), ValueError, r"^basis\b"),
        (lambda: KDEScore(base, -0.1), ValueError, r"^h\b"),
        (lambda: KDEScore(object(), 0.1), TypeError, r"^base\b"),
        (lambda: KDEScore(SmoothedScore(base, 0.1), 0.1), TypeError, r"^base\b"),
        (lambda: TemperedScore(base, 0.5), ValueError, r"^tau\b"),
        (lambda: TemperedScore(base, 0.0), ValueError, r"^tau\b"),
        (lambda: TemperedScore(base, float("inf")), ValueError, r"^tau\b"),
        (lambda: TemperedScore(base, "2"), TypeError, r"^tau\b"),
        (lambda: TemperedScore(object(), 2.0), TypeError, r"^base\b"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_raise_naming_the_argument(case):
    make, exc, pattern = _bad_cases()[case]
    with pytest.raises(exc, match=pattern):
        make()


def test_bad_bandwidth_callable_and_queries():
    rng = np.random.default_rng(21)
    base = ns.EmpiricalScore(rng.normal(size=(5, 3)))
    x = rng.normal(size=(2, 3))
    with pytest.raises(ValueError, match=r"^h\b.*negative"):
        SmoothedScore(base, GaussianKernel(lambda st: -st), n_samples=4).evaluate(x, 0.5)
    with pytest.raises(ValueError, match=r"^h\b.*shape"):
        SmoothedScore(base, GaussianKernel(lambda st: np.ones(5)), n_samples=4).evaluate(x, 0.5)
    with pytest.raises(ValueError, match=r"^h\b.*non-finite"):
        KDEScore(base, lambda st: np.nan * st).evaluate(x, 0.5)
    with pytest.raises(ValueError, match=r"^x\b"):
        SmoothedScore(base, 0.1, n_samples=4).evaluate(rng.normal(size=(2, 4)), 0.5)
    with pytest.raises(ValueError, match=r"^x\b.*NaN"):
        SmoothedScore(base, 0.1, n_samples=4).evaluate(np.full((2, 3), np.nan), 0.5)
    with pytest.raises(ValueError, match=r"^t\b"):
        SmoothedScore(base, 0.1, n_samples=4).evaluate(x, -1.0)
    with pytest.raises(ValueError, match=r"^t\b"):
        TemperedScore(base, 2.0).evaluate(x, np.ones(3))
