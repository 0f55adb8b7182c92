"""Location-dependent smoothing kernels: TangentKernel (experimental) and ManifoldKernel (oracle).

science.md §2.2 items 2-3; the smoothed field is the score-smoothing E_{Y ~ k_x} grad log p(Y).
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore.scores.kernels import KernelContext

D, N_DIM = 20, 2


@pytest.fixture(scope="module")
def subspace():
    """N = 300 points on a random 2-dim affine subspace of R^20, and its orthonormal frame."""
    gen = np.random.default_rng(0)
    q, _ = np.linalg.qr(gen.standard_normal((D, N_DIM)))
    offset = gen.standard_normal(D)
    coords = gen.uniform(-2.0, 2.0, (300, N_DIM))
    train = coords @ q.T + offset
    return train, q, offset


def _normal(v, q):
    return v - (v @ q) @ q.T


def test_exports_and_repr():
    assert ns.TangentKernel is ns.scores.TangentKernel and "TangentKernel" in ns.__all__
    assert ns.ManifoldKernel is ns.scores.ManifoldKernel and "ManifoldKernel" in ns.__all__
    assert repr(ns.TangentKernel(0.1, 2, k_neighbors=8)) == "TangentKernel(h=0.1, dim=2, k_neighbors=8)"
    assert repr(ns.ManifoldKernel(0.2, lambda p: p)).startswith("ManifoldKernel(h=0.2, projection=")


def test_tangent_offsets_lie_in_the_tangent_space(subspace):
    train, q, offset = subspace
    bound = ns.TangentKernel(0.5, N_DIM, k_neighbors=16)._bind(D, KernelContext(ns.EmpiricalScore(train)))
    gen = np.random.default_rng(1)
    for alpha in (1.0, 0.7):
        x = alpha * train[:25] + 0.3 * gen.standard_normal((25, D))  # off the manifold too
        z = gen.standard_normal((6, 25, N_DIM))
        off = bound.offsets(z, np.full(25, 0.5), x, np.full(25, alpha))
        assert off.shape == (6, 25, D)
        assert np.max(np.abs(_normal(off, q))) < 1e-8
        # the frames are orthonormal: |offset| = h |z|
        assert_allclose(np.linalg.norm(off, axis=2), 0.5 * np.linalg.norm(z, axis=2), rtol=1e-10)


@pytest.mark.parametrize("schedule", ["ve", "vp"])
def test_tangent_smoothing_keeps_the_normal_score(subspace, schedule):
    """FPHDP Prop. 3.1: on an affine manifold tangent smoothing leaves the normal part unchanged."""
    train, q, _ = subspace
    base = ns.EmpiricalScore(train, schedule=schedule)
    gen = np.random.default_rng(2)
    t = 0.4 if schedule == "ve" else 0.3
    alpha = float(base.schedule.alpha(t))
    x = alpha * train[gen.integers(0, 300, 12)] + 0.2 * gen.standard_normal((12, D))
    ref = base.evaluate(x, t)
    for mode, n in (("fresh", 32), ("quadrature", 5)):
        sm = ns.SmoothedScore(base, ns.TangentKernel(0.3, N_DIM, k_neighbors=12), n_samples=n, mode=mode, rng=3)
        res = sm.evaluate(x, t)
        assert np.max(np.abs(_normal(res.score, q) - _normal(ref.score, q))) < 1e-8 * max(1.0, np.abs(ref.score).max())
        assert np.max(np.abs(res.score - ref.score)) > 1e-3  # it does smooth along the manifold
        assert res.divergence is None
        if mode == "fresh":
            assert res.error_bound is not None and np.all(np.isfinite(res.mc_stderr))


def test_tangent_raw_and_fixed_modes(subspace):
    train, _, _ = subspace
    base = ns.EmpiricalScore(train)
    x = train[:8] + 0.1
    k = ns.TangentKernel(0.2, N_DIM, k_neighbors=10)
    cv = ns.SmoothedScore(base, k, n_samples=16, mode="fixed", rng=4).evaluate(x, 0.5)
    raw = ns.SmoothedScore(base, k, n_samples=16, mode="fixed", estimator="raw", rng=4).evaluate(x, 0.5)
    assert_allclose(raw.score, cv.score, rtol=1e-9, atol=1e-9)  # antithetic: the linear part cancels
    fixed = ns.SmoothedScore(base, k, n_samples=16, mode="fixed", rng=5)
    assert_array_equal(fixed.evaluate(x, 0.5).score, fixed.evaluate(x, 0.5).score)


def test_tangent_zero_bandwidth_is_the_base(subspace):
    train, _, _ = subspace
    base = ns.EmpiricalScore(train)
    x = train[:5] + 0.05
    res = ns.SmoothedScore(base, ns.TangentKernel(0.0, N_DIM), n_samples=8, rng=0).evaluate(x, 0.3)
    ref = base.evaluate(x, 0.3)
    assert_array_equal(res.score, ref.score)
    assert_array_equal(res.denoised, ref.denoised)


def test_tangent_bad_input(subspace):
    train, _, _ = subspace
    base = ns.EmpiricalScore(train)
    with pytest.raises(ValueError, match="h"):
        ns.TangentKernel(-0.1, 2)
    with pytest.raises(ValueError, match="dim"):
        ns.TangentKernel(0.1, 0)
    with pytest.raises(ValueError, match="k_neighbors"):
        ns.TangentKernel(0.1, 3, k_neighbors=2)
    with pytest.raises(ValueError, match="k_neighbors"):
        ns.TangentKernel(0.1, 3, k_neighbors=3)
    with pytest.raises(TypeError, match="dim"):
        ns.TangentKernel(0.1, 2.5)
    with pytest.raises(ValueError, match="dim"):
        ns.SmoothedScore(base, ns.TangentKernel(0.1, D + 1, k_neighbors=40))
    with pytest.raises(ValueError, match="estimator"):
        ns.SmoothedScore(base, ns.TangentKernel(0.1, 2), estimator="stein")
    with pytest.raises(ValueError, match="mode"):
        ns.SmoothedScore(base, ns.TangentKernel(0.1, 4, k_neighbors=8), mode="quadrature", n_samples=3)
    with pytest.raises(ValueError, match="kernel"):  # a base without a training set
        ns.SmoothedScore(ns.PiecewiseLinearScore(np.array([[0.0, 0.0], [1.0, 1.0]]), 0.1),
                         ns.TangentKernel(0.1, 1, k_neighbors=2))
    with pytest.raises(TypeError):
        ns.TangentKernel(0.1, 2).covariance(D)


def _circle_projection(p):
    return p / np.linalg.norm(p, axis=1, keepdims=True)


@pytest.mark.parametrize("proj", ["callable", "manifold"])
def test_manifold_offsets_are_the_translated_projection(proj):
    circle = ns.datasets.manifold("circle", 64, rng=0, rotation="identity") if proj == "manifold" else None
    projection = circle if circle is not None else _circle_projection
    pi = circle.project if circle is not None else _circle_projection
    gen = np.random.default_rng(6)
    ang = gen.uniform(0, 2 * np.pi, 10)
    radius = 1.0 if circle is None else circle.radius
    x = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)  # points on the manifold
    bound = ns.ManifoldKernel(0.3, projection)._bind(2)
    z = gen.standard_normal((4, 10, 2))
    off = bound.offsets(z, np.full(10, 0.3), x, np.ones(10))
    px = pi(x)
    want = pi((px[None] + 0.3 * z).reshape(-1, 2)).reshape(4, 10, 2) - px[None]
    assert_array_equal(off, want)
    assert_allclose(np.linalg.norm(x[None] + off, axis=2), radius, rtol=1e-12)  # Y stays on the circle
    # off the manifold: Y moves along the translated copy, here for a circle Y = x + (moved - Pi(x))
    x2 = 1.5 * x
    off2 = bound.offsets(z, np.full(10, 0.3), x2, np.ones(10))
    assert_allclose(off2, want, rtol=1e-12, atol=1e-12)


def test_manifold_raw_smoothing_is_seeded_and_validated():
    gen = np.random.default_rng(7)
    ang = gen.uniform(0, 2 * np.pi, 50)
    train = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    base = ns.EmpiricalScore(train)
    x = 1.1 * train[:6]
    k = ns.ManifoldKernel(0.4, _circle_projection)
    for anti, n in ((True, 64), (False, 33)):
        a = ns.SmoothedScore(base, k, n_samples=n, estimator="raw", antithetic=anti, rng=11).evaluate(x, 0.2)
        b = ns.SmoothedScore(base, k, n_samples=n, estimator="raw", antithetic=anti, rng=11).evaluate(x, 0.2)
        assert_array_equal(a.score, b.score)
        assert np.all(np.isfinite(a.score)) and np.all(np.isfinite(a.mc_stderr)) and np.all(a.mc_stderr > 0)
        assert a.error_bound is None and a.divergence is None
        assert np.max(np.abs(a.score - base.evaluate(x, 0.2).score)) > 1e-3
    zero = ns.SmoothedScore(base, ns.ManifoldKernel(0.0, _circle_projection), estimator="raw", rng=0)
    assert_array_equal(zero.evaluate(x, 0.2).score, base.evaluate(x, 0.2).score)
    for kw, name in ((dict(estimator="control_variate"), "estimator"), (dict(estimator="stein"), "estimator"),
                     (dict(estimator="raw", mode="quadrature", n_samples=3), "mode")):
        with pytest.raises(ValueError, match=name):
            ns.SmoothedScore(base, k, **kw)
    with pytest.raises(TypeError, match="projection"):
        ns.ManifoldKernel(0.1, 3.0)
    with pytest.raises(ValueError, match="h"):
        ns.ManifoldKernel(-1.0, _circle_projection)
    with pytest.raises(ValueError, match="projection"):
        ns.SmoothedScore(base, ns.ManifoldKernel(0.1, lambda p: p[:, :1]), estimator="raw", n_samples=2).evaluate(x, 0.2)


def test_tangent_faiss_neighbours_match_exact(subspace, monkeypatch):
    """Above TANGENT_EXACT_MAX_TRAIN the neighbour search is a faiss flat index: same frames here."""
    from nnscore.scores import kernels

    train, q, _ = subspace
    ctx = KernelContext(ns.EmpiricalScore(train))
    x = train[:7] + 0.01
    exact = ns.TangentKernel(0.5, N_DIM, k_neighbors=10)._bind(D, ctx)
    monkeypatch.setattr(kernels, "TANGENT_EXACT_MAX_TRAIN", 10)
    approx = ns.TangentKernel(0.5, N_DIM, k_neighbors=10)._bind(D, ctx)
    assert_array_equal(np.sort(approx.neighbors(x), axis=1), np.sort(exact.neighbors(x), axis=1))
    proj = lambda u: np.einsum("mdr,mer->mde", u, u)  # noqa: E731
    assert_allclose(proj(approx.frames(x)), proj(exact.frames(x)), atol=1e-10)
    assert_allclose(proj(exact.frames(x)), np.broadcast_to(q @ q.T, (7, D, D)), atol=1e-10)


# ----------------------------------------------------------------------------------------------
# "log-density smoothing" (science.md §2.2): grad_x E log p(Y(x)) by the reparameterisation gradient
# ----------------------------------------------------------------------------------------------


def _sphere(radius=1.3):
    def project(p):
        return radius * p / np.linalg.norm(p, axis=1, keepdims=True)

    def jacobian(p):
        n = np.linalg.norm(p, axis=1)
        u = p / n[:, None]
        return radius * (np.eye(p.shape[1])[None] - u[:, :, None] * u[:, None, :]) / n[:, None, None]

    return project, jacobian


@pytest.mark.parametrize("analytic", [False, True])
@pytest.mark.parametrize(("schedule", "t"), [("ve", 0.2), ("vp", 0.3)])
def test_log_density_smoothing_is_the_gradient_of_the_smoothed_log_density(analytic, schedule, t):
    # With "fixed" draws F(x) = mean_j log p(Y(x, z_j)) is a deterministic smooth function and
    # its gradient must be the "log_density" field with the same draws: checked against central
    # differences of F.  The score-smoothing field differs from it by far more than the check's
    # tolerance (the kernel's Jacobian is not the identity off the manifold).
    rng = np.random.default_rng(11)
    project, jacobian = _sphere()
    train = project(rng.normal(size=(40, 3)))
    base = ns.EmpiricalScore(train, schedule=schedule)
    kernel = ns.ManifoldKernel(0.35, project, jacobian=jacobian if analytic else None)
    kwargs = dict(n_samples=32, mode="fixed", estimator="raw", rng=4)
    ld = ns.SmoothedScore(base, kernel, smoothing="log_density", **kwargs)
    sm = ns.SmoothedScore(base, kernel, **kwargs)
    for x in (np.array([[1.5, 0.4, -0.2]]), np.array([[0.3, -0.9, 0.6]])):
        grad = ld.evaluate(x, t).score[0]
        step = 1e-5
        fd = np.array([
            (ld.evaluate(x + step * e, t).log_density[0] - ld.evaluate(x - step * e, t).log_density[0]) / (2 * step)
            for e in np.eye(3)[:, None, :]
        ])
        scale = np.linalg.norm(fd)
        assert np.linalg.norm(grad - fd) <= 1e-6 * scale, (grad, fd)
        assert np.linalg.norm(sm.evaluate(x, t).score[0] - fd) > 1e-3 * scale
        # the field carries the usual Monte-Carlo error bar and the Tweedie-form denoiser
        res = ld.evaluate(x, t)
        assert res.mc_stderr is not None and np.all(np.isfinite(res.mc_stderr))


def test_log_density_smoothing_equals_score_smoothing_for_location_free_and_tangent_kernels(subspace):
    rng = np.random.default_rng(12)
    train = rng.normal(size=(60, 4))
    base = ns.EmpiricalScore(train)
    x = train[:5] + 0.3 * rng.normal(size=(5, 4))
    for kernel, estimator in [(0.3, "control_variate"), (ns.GaussianKernel(0.3), "raw"),
                              (ns.AnisotropicGaussianKernel(cov=np.diag([0.1, 0.2, 0.3, 0.4])), "raw")]:
        a = ns.SmoothedScore(base, kernel, n_samples=16, estimator=estimator, rng=3, smoothing="log_density")
        b = ns.SmoothedScore(base, kernel, n_samples=16, estimator=estimator, rng=3)
        assert_array_equal(a.evaluate(x, 0.5).score, b.evaluate(x, 0.5).score)
    train, _, _ = subspace
    tb = ns.EmpiricalScore(train)
    q = train[:4] + 0.1
    a = ns.SmoothedScore(tb, ns.TangentKernel(0.2, dim=2, k_neighbors=12), n_samples=8, estimator="raw", rng=1,
                         smoothing="log_density")
    b = ns.SmoothedScore(tb, ns.TangentKernel(0.2, dim=2, k_neighbors=12), n_samples=8, estimator="raw", rng=1)
    assert_array_equal(a.evaluate(q, 0.4).score, b.evaluate(q, 0.4).score)


def test_log_density_smoothing_bad_input():
    rng = np.random.default_rng(13)
    project, _ = _sphere()
    base = ns.EmpiricalScore(project(rng.normal(size=(10, 3))))
    with pytest.raises(ValueError, match="smoothing"):
        ns.SmoothedScore(base, 0.1, smoothing="density")
    with pytest.raises(TypeError, match="jacobian"):
        ns.ManifoldKernel(0.1, project, jacobian=np.eye(3))
    bad = ns.ManifoldKernel(0.1, project, jacobian=lambda p: np.zeros((p.shape[0], 3)))
    model = ns.SmoothedScore(base, bad, n_samples=4, estimator="raw", smoothing="log_density", rng=0)
    with pytest.raises(ValueError, match="jacobian: must map"):
        model.evaluate(np.ones((2, 3)), 0.3)
