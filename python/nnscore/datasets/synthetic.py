"""Synthetic manifolds with exact oracles: projection, distance, tangent spaces, uniform sampling.

Every manifold M is defined in canonical coordinates ``m`` in R^p (p = :attr:`Manifold.embedding_dim`)
and lifted into R^d (d = ``ambient_dim`` >= p) by an orthonormal frame and an offset::

    x = Q [m; 0] + b,        P_M(x) = Q [P_0((Q^T (x - b))_{1:p}); 0] + b

``Q`` is a random rotation drawn from ``rng`` (``rotation="random"``, Haar on SO(d); the default
except for the bump images), the identity (``rotation=None`` or ``"identity"``) or a matrix of the
caller's; ``b`` is zero except for :class:`LinearSubspace`.  Only the first p columns of Q are ever
used by the oracles; :attr:`Manifold.rotation` completes them to a full (d, d) rotation on first
access.  The rotation and the points come from independent child streams of ``rng``, so one seed
gives the same canonical points whatever the rotation.

Manifolds (science.md section 4.0)
----------------------------------
=================  ===============================================  ===  =======================
class              canonical form                                   dim  projection
=================  ===============================================  ===  =======================
Circle             S^1(R) in R^2                                    1    closed form
Sphere(k)          S^k(R) in R^(k+1)                                k    closed form
FlatTorus(k)       (S^1(R/sqrt k))^k in R^(2k) (Clifford torus)     k    closed form
StandardTorus      torus of revolution (R0, r) in R^3               2    closed form
Ellipse(a, b)      (a cos t, b sin t)                               1    net + Newton
LimaBean           FPHDP's r = sin^3 + cos^3 bean                   1    net + Newton
WavyCircle(f, A)   R (1 + A sin(f t)) (cos t, sin t)                1    net + Newton
LinearSubspace     span(U) + b, samples on a cube                   dim  closed form
SwissRoll          (t cos t, h, t sin t) on [t0, t1] x [0, H]       2    net + Newton (spiral)
GaussianBumps      S x S images of a Gaussian bump on a circle      1    net + Newton
GaussianBumps2D    S x S images of a bump with centre in a square   2    net + projected Newton
=================  ===============================================  ===  =======================

Accuracy of the "net + Newton" projections: the squared distance to a net of 1024 curve points
(GEMM form, used only to pick candidates) selects the 3 best local minima; each is refined by a
bracketed (safeguarded) Newton iteration on ``(Phi(t) - z) . Phi'(t) = 0`` until the parameter
stops moving (|dt| <= 4e-16 max(1, |t|)), so the returned point is the exact nearest point to
~1e-13 relative accuracy.  The only failure mode is a point whose nearest point lies in a basin
that is not among the 3 best of the net, which needs 4 candidate distances tied to within about
(net spacing x max|Phi'|)^2 (conceivable near the centre of the wavy circle; never seen against a
10^5-point brute-force net).  Points on the medial axis have several nearest points; one of them
is returned.

Densities
---------
``density`` is a string (``"uniform"``, ``"equispaced"``, ``"gaussian"``) or a :class:`Density`:
:class:`Uniform` (w.r.t. Riemannian volume), :class:`Equispaced` (equal arc length, curves and
1-d subspaces), :class:`VonMises` (on the curve parameter / angle), :class:`VonMisesFisher`
(spheres), :class:`PiecewiseConstant` (on the angle of a closed curve), :class:`Gaussian`
(subspaces).  Each manifold's docstring lists the densities it accepts.

Exact population scores
-----------------------
:class:`Circle` and :class:`Sphere` with uniform or von Mises(-Fisher) data have closed-form noised
scores (science.md (2.7)): ``population_score``, ``population_log_density`` and
``population_denoiser``, in the VE (``x = x0 + sigma eps``) and VP (``x = sqrt(1 - sigma^2) x0 +
sigma eps``) parametrisations.  They use ``scipy.special.ive`` (imported lazily), a power series
for small arguments and Hankel's expansion for huge ones (scipy's ive is NaN from z ~ 2e9).
Other closed curves expose :meth:`Curve.quadrature`: weighted nodes whose empirical score equals the population score up to
an exponentially small error.

Everything here is float64 NumPy; ``rng`` is ``None | int | numpy.random.Generator``.
"""
from __future__ import annotations

import math

import numpy as np

from .._rng import check_rng
from .._validation import check_int as _int_arg, check_real as _real_arg

__all__ = [
    "check_rng",
    "Density",
    "Uniform",
    "Equispaced",
    "Gaussian",
    "VonMises",
    "VonMisesFisher",
    "PiecewiseConstant",
    "Manifold",
    "Curve",
    "Circle",
    "Sphere",
    "FlatTorus",
    "StandardTorus",
    "Ellipse",
    "LimaBean",
    "WavyCircle",
    "LinearSubspace",
    "SwissRoll",
    "GaussianBumps",
    "GaussianBumps2D",
]

_TWO_PI = 2.0 * math.pi
_DEFAULT_N = 1000


# ----------------------------------------------------------------------------------------------
# Argument helpers (every error names the argument)
# ----------------------------------------------------------------------------------------------


def _spawn(gen: np.random.Generator, k: int) -> list[np.random.Generator]:
    """k independent child generators (so that, e.g., the rotation never shifts the points)."""
    try:
        return list(gen.spawn(k))
    except (AttributeError, TypeError, ValueError):  # a bit generator without a SeedSequence
        seeds = gen.integers(0, 2**63 - 1, size=k)
        return [np.random.default_rng(int(s)) for s in seeds]


def _points_arg(x, dim: int, name: str = "x") -> np.ndarray:
    """(M, d) or (M, *shape) with prod(shape) = d -> (M, d) float64, finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected shape (M, {dim}) (one point is x[None]), got shape {arr.shape}")
    rows = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))
    if rows.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} coordinates per point (ambient_dim), got shape {arr.shape}")
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"{name}: contains NaN or inf; inputs must be finite")
    return rows


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ----------------------------------------------------------------------------------------------
# Densities
# ----------------------------------------------------------------------------------------------


class Density:
    """Base class of the training-point densities of a manifold."""

    name = ""

    def _params(self) -> tuple:
        return ()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        mine, theirs = self._params(), other._params()
        return all(
            a[0] == b[0] and np.array_equal(np.asarray(a[1]), np.asarray(b[1])) for a, b in zip(mine, theirs)
        )

    __hash__ = None


class Uniform(Density):
    """Uniform w.r.t. Riemannian volume (arc length for curves, area for surfaces)."""

    name = "uniform"


class Equispaced(Density):
    """Deterministic points: equal arc length along a curve starting at parameter 0, or a grid
    on the cube of a :class:`LinearSubspace`."""

    name = "equispaced"


class Gaussian(Density):
    """Standard normal coordinates times ``extent`` (only for :class:`LinearSubspace`)."""

    name = "gaussian"


class VonMises(Density):
    """Von Mises density ``exp(kappa cos(t - mu)) / (2 pi I0(kappa))`` on the curve parameter t
    (the polar angle for a circle); on a flat torus, on every angle independently.

    Parameters
    ----------
    kappa : float >= 0
        Concentration; 0 is uniform in t.
    mu : float, default 0
        Mean angle (radians).
    """

    name = "von-mises"

    def __init__(self, kappa, mu=0.0):
        self.kappa = _real_arg(kappa, "kappa", nonneg=True)
        self.mu = _real_arg(mu, "mu") % _TWO_PI

    def _params(self):
        return (("kappa", self.kappa), ("mu", self.mu))


class VonMisesFisher(Density):
    """Von Mises-Fisher density ``C_p(kappa) exp(kappa <mu, u>)`` on the unit sphere of the
    canonical coordinates (``u = m / radius``).

    Parameters
    ----------
    kappa : float >= 0
    mu : (p,) array, nonzero; normalised to unit length.
    """

    name = "von-mises-fisher"

    def __init__(self, kappa, mu):
        self.kappa = _real_arg(kappa, "kappa", nonneg=True)
        mu = np.asarray(mu, dtype=np.float64)
        if mu.ndim != 1 or mu.size < 2:
            raise ValueError(f"mu: expected a vector of length p >= 2, got shape {mu.shape}")
        norm = float(np.linalg.norm(mu))
        if not (math.isfinite(norm) and norm > 0.0):
            raise ValueError("mu: must be a finite nonzero vector")
        self.mu = _readonly(mu / norm)

    def _params(self):
        return (("kappa", self.kappa), ("mu", self.mu))


class PiecewiseConstant(Density):
    """Piecewise-constant density on the angle t in [0, 2 pi) of a closed curve.

    Parameters
    ----------
    values : (K,) array >= 0, not all zero
        Relative density on each piece (normalised internally).
    edges : (K + 1,) array, optional
        Increasing break points from 0 to 2 pi; default K equal pieces.
    """

    name = "piecewise"

    def __init__(self, values, edges=None):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or values.size < 1:
            raise ValueError(f"values: expected a non-empty 1-d array, got shape {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0) or not np.any(values > 0):
            raise ValueError("values: must be finite, >= 0 and not all zero")
        if edges is None:
            edges = np.linspace(0.0, _TWO_PI, values.size + 1)
        edges = np.asarray(edges, dtype=np.float64)
        if edges.shape != (values.size + 1,):
            raise ValueError(f"edges: expected shape ({values.size + 1},), got {edges.shape}")
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError("edges: must be finite and strictly increasing")
        if abs(edges[0]) > 1e-12 or abs(edges[-1] - _TWO_PI) > 1e-12:
            raise ValueError(f"edges: must run from 0 to 2*pi, got {edges[0]!r} .. {edges[-1]!r}")
        edges = edges.copy()
        edges[0], edges[-1] = 0.0, _TWO_PI
        widths = np.diff(edges)
        mass = float(np.sum(values * widths))
        self.values = _readonly(values / mass)  # now a probability density in t
        self.edges = _readonly(edges)

    def _params(self):
        return (("values", self.values), ("edges", self.edges))

    def pdf(self, t) -> np.ndarray:
        """Density at angles ``t`` (reduced mod 2 pi)."""
        t = np.mod(np.asarray(t, dtype=np.float64), _TWO_PI)
        idx = np.clip(np.searchsorted(self.edges, t, side="right") - 1, 0, self.values.size - 1)
        return self.values[idx]

    def sample(self, n: int, gen: np.random.Generator) -> np.ndarray:
        widths = np.diff(self.edges)
        probs = self.values * widths
        probs = probs / probs.sum()
        piece = gen.choice(probs.size, size=n, p=probs)
        return self.edges[piece] + gen.random(n) * widths[piece]


_DENSITY_NAMES = {"uniform": Uniform, "equispaced": Equispaced, "gaussian": Gaussian}


def _as_density(density) -> Density:
    if isinstance(density, Density):
        return density
    if isinstance(density, str):
        key = density.strip().lower()
        if key in _DENSITY_NAMES:
            return _DENSITY_NAMES[key]()
        raise ValueError(
            f"density: unknown density {density!r}; use one of {', '.join(_DENSITY_NAMES)} or a Density "
            "instance (VonMises, VonMisesFisher, PiecewiseConstant)"
        )
    raise TypeError(f"density: expected a string or a Density, got {type(density).__name__}")


# ----------------------------------------------------------------------------------------------
# Bessel-function helpers for the von Mises-Fisher closed forms
# ----------------------------------------------------------------------------------------------

_SERIES_Z = 1.0  # below: power series; above: scipy's ive (or Hankel's expansion when huge)
_HANKEL_Z = 1e8  # scipy.special.ive returns NaN from about z = 2.1e9 on


def _ive():
    try:
        from scipy.special import ive
    except ImportError as exc:  # pragma: no cover - scipy ships with every nnscore extra that needs it
        raise ImportError(
            "exact population scores need scipy (Bessel functions): pip install scipy "
            "(it comes with pip install 'nnscore[data]')"
        ) from exc
    return ive


def _series_log_s(nu: float, z: np.ndarray) -> np.ndarray:
    """log S_nu(z), S_nu(z) = sum_m (z^2/4)^m / (m! Gamma(m + nu + 1)) = I_nu(z) (2/z)^nu, z < 1."""
    q = 0.25 * z * z
    term = np.ones_like(z)
    total = np.ones_like(z)
    for m in range(1, 30):
        term = term * q / (m * (m + nu))
        total = total + term
    return np.log(total) - math.lgamma(nu + 1.0)


def _hankel_log_ive(nu: float, z: np.ndarray) -> np.ndarray:
    """log(I_nu(z) e^-z) by Hankel's asymptotic expansion (z >= 1e8 and z >> nu^2)."""
    mu4 = 4.0 * nu * nu
    term = np.ones_like(z)
    total = np.ones_like(z)
    for k in range(1, 8):
        term = -term * (mu4 - (2 * k - 1) ** 2) / (k * 8.0 * z)
        total = total + term
    return np.log(total) - 0.5 * np.log(_TWO_PI * z)


def _log_ive_large(nu: float, z: np.ndarray) -> np.ndarray:
    """log(I_nu(z) e^-z) for z >= _SERIES_Z."""
    out = np.empty_like(z)
    huge = z >= max(_HANKEL_Z, 100.0 * (nu + 1.0) ** 2)
    if np.any(~huge):
        out[~huge] = np.log(_ive()(nu, z[~huge]))
    if np.any(huge):
        out[huge] = _hankel_log_ive(nu, z[huge])
    return out


def _log_vmf_normaliser(p: int, kappa) -> np.ndarray:
    """log C_p(kappa), C_p = kappa^(p/2-1) / ((2 pi)^(p/2) I_(p/2-1)(kappa)): the vMF normaliser on
    the unit sphere S^(p-1); C_p(0) = 1/|S^(p-1)|."""
    kappa = np.asarray(kappa, dtype=np.float64)
    nu = 0.5 * p - 1.0
    out = np.empty_like(kappa)
    small = kappa < _SERIES_Z
    if np.any(small):
        out[small] = nu * math.log(2.0) - 0.5 * p * math.log(_TWO_PI) - _series_log_s(nu, kappa[small])
    if np.any(~small):
        k = kappa[~small]
        out[~small] = nu * np.log(k) - 0.5 * p * math.log(_TWO_PI) - _log_ive_large(nu, k) - k
    return out


def _bessel_ratio_over_z(p: int, z: np.ndarray) -> np.ndarray:
    """A_p(z) / z with A_p = I_(p/2) / I_(p/2-1); finite at z = 0 (value 1/p)."""
    nu = 0.5 * p - 1.0
    out = np.empty_like(z)
    small = z < _SERIES_Z
    if np.any(small):
        zs = z[small]
        out[small] = 0.5 * np.exp(_series_log_s(nu + 1.0, zs) - _series_log_s(nu, zs))
    if np.any(~small):
        zl = z[~small]
        out[~small] = np.exp(_log_ive_large(nu + 1.0, zl) - _log_ive_large(nu, zl)) / zl
    return out


def bessel_ratio(p: int, z) -> np.ndarray:
    """A_p(z) = I_(p/2)(z) / I_(p/2-1)(z): the mean resultant length of a vMF(kappa = z) on S^(p-1)."""
    z = np.asarray(z, dtype=np.float64)
    return z * _bessel_ratio_over_z(int(p), z.reshape(-1)).reshape(z.shape)


def _noise_coefficients(sigma, schedule, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, s) per query for ``x = a x0 + s eps``; VE: a = 1, s = sigma; VP: a = sqrt(1 - sigma^2)."""
    if not isinstance(schedule, str):
        raise TypeError(f"schedule: expected 've' or 'vp', got {type(schedule).__name__}")
    key = schedule.strip().lower()
    if key not in ("ve", "vp"):
        raise ValueError(f"schedule: expected 've' or 'vp', got {schedule!r}")
    s = np.asarray(sigma)
    if s.dtype.kind not in "fiu":
        raise TypeError(f"sigma: expected real noise levels, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != m):
        raise ValueError(f"sigma: expected a scalar or shape ({m},), got shape {s.shape}")
    s = np.broadcast_to(s, (m,)).copy()
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("sigma: noise levels must be finite and > 0")
    if key == "ve":
        return np.ones(m), s
    if np.any(s >= 1.0):
        raise ValueError("sigma: the VP parametrisation needs 0 < sigma < 1")
    return np.sqrt((1.0 - s) * (1.0 + s)), s


# ----------------------------------------------------------------------------------------------
# Sampling helpers
# ----------------------------------------------------------------------------------------------


def _sample_sphere_uniform(n: int, p: int, gen: np.random.Generator) -> np.ndarray:
    g = gen.standard_normal((n, p))
    norm = np.linalg.norm(g, axis=1)
    bad = norm == 0.0
    while np.any(bad):  # probability zero, but never divide by it
        g[bad] = gen.standard_normal((int(bad.sum()), p))
        norm = np.linalg.norm(g, axis=1)
        bad = norm == 0.0
    return g / norm[:, None]


def _sample_vmf(n: int, kappa: float, mu: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """n unit vectors from vMF(kappa, mu) on S^(p-1): Wood (1994) rejection for the cosine."""
    p = mu.size
    if kappa == 0.0 or n == 0:
        return _sample_sphere_uniform(n, p, gen)
    if p == 2:
        t = gen.vonmises(math.atan2(mu[1], mu[0]), kappa, size=n)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    b = (p - 1.0) / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + (p - 1.0) ** 2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (p - 1.0) * math.log1p(-x0 * x0)
    w = np.empty(n)
    filled = 0
    while filled < n:
        m = max(2 * (n - filled), 64)
        z = gen.beta(0.5 * (p - 1.0), 0.5 * (p - 1.0), size=m)
        wc = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        log_u = np.log1p(-gen.random(m))  # log(1 - U), never log(0)
        ok = kappa * wc + (p - 1.0) * np.log1p(-x0 * wc) - c >= log_u
        take = wc[ok][: n - filled]
        w[filled : filled + take.size] = take
        filled += take.size
    w = np.clip(w, -1.0, 1.0)
    v = gen.standard_normal((n, p))
    v -= (v @ mu)[:, None] * mu[None, :]
    v /= np.linalg.norm(v, axis=1)[:, None]
    return w[:, None] * mu[None, :] + np.sqrt((1.0 - w) * (1.0 + w))[:, None] * v


# ----------------------------------------------------------------------------------------------
# Nearest point on a parametrised curve: dense net + bracketed Newton
# ----------------------------------------------------------------------------------------------


def _bracketed_newton(z, lo, hi, phi, dphi, ddphi, max_iter: int = 100):
    """Minimise g(t) = |Phi(t) - z|^2 / 2 over [lo, hi] (all (B,)), assuming one minimum there.

    Safeguarded Newton on f = g' = (Phi - z) . Phi': a bracket with f(lo) < 0 < f(hi) is kept,
    Newton steps that leave it are replaced by bisection.  Where f does not change sign the
    minimum is the endpoint.  Returns (t, g(t)).
    """

    def fg(t, zz):
        r = phi(t) - zz
        d1 = dphi(t)
        return np.einsum("bp,bp->b", r, d1), r, d1

    f_lo, _, _ = fg(lo, z)
    f_hi, _, _ = fg(hi, z)
    t = np.where(f_lo >= 0.0, lo, np.where(f_hi <= 0.0, hi, 0.5 * (lo + hi)))
    active = np.flatnonzero((f_lo < 0.0) & (f_hi > 0.0))
    lo_a, hi_a, t_a, z_a = lo[active], hi[active], t[active], z[active]
    for _ in range(max_iter):
        if active.size == 0:
            break
        f, r, d1 = fg(t_a, z_a)
        fp = np.einsum("bp,bp->b", d1, d1) + np.einsum("bp,bp->b", r, ddphi(t_a))
        lo_a = np.where(f < 0.0, t_a, lo_a)
        hi_a = np.where(f > 0.0, t_a, hi_a)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = t_a - f / fp
        bisect = ~(fp > 0.0) | ~(newton > lo_a) | ~(newton < hi_a)
        t_new = np.where(f == 0.0, t_a, np.where(bisect, 0.5 * (lo_a + hi_a), newton))
        tol = 4e-16 * np.maximum(1.0, np.abs(t_new))
        done = (np.abs(t_new - t_a) <= tol) | (hi_a - lo_a <= tol)
        t[active] = t_new
        keep = ~done
        active, lo_a, hi_a, t_a, z_a = active[keep], lo_a[keep], hi_a[keep], t_new[keep], z_a[keep]
    r = phi(t) - z
    return t, 0.5 * np.einsum("bp,bp->b", r, r)


def _nearest_parameter(z, phi, dphi, ddphi, t_net, phi_net, periodic: bool, t_lo: float, t_hi: float,
                       n_cand: int = 3) -> np.ndarray:
    """Parameter of the nearest curve point to each row of z (M, p)."""
    m = z.shape[0]
    k = t_net.size
    net_sq = np.einsum("kp,kp->k", phi_net, phi_net)
    net_t = np.ascontiguousarray(phi_net.T)  # see Manifold._basis_t
    h = t_net[1] - t_net[0]
    n_cand = min(n_cand, k)
    idx = np.empty((m, n_cand), dtype=np.int64)
    valid = np.empty((m, n_cand), dtype=bool)
    rows = max(1, (1 << 18) // k)  # candidate selection in cache-sized blocks
    for start in range(0, m, rows):
        zb = z[start : start + rows]
        d2 = net_sq[None, :] - 2.0 * (zb @ net_t)  # |z|^2 dropped: candidate selection only
        is_min = np.empty(d2.shape, dtype=bool)
        is_min[:, 1:-1] = (d2[:, 1:-1] <= d2[:, :-2]) & (d2[:, 1:-1] <= d2[:, 2:])
        if periodic:
            is_min[:, 0] = (d2[:, 0] <= d2[:, -1]) & (d2[:, 0] <= d2[:, 1])
            is_min[:, -1] = (d2[:, -1] <= d2[:, -2]) & (d2[:, -1] <= d2[:, 0])
        else:
            is_min[:, 0] = d2[:, 0] <= d2[:, 1]
            is_min[:, -1] = d2[:, -1] <= d2[:, -2]
        masked = np.where(is_min, d2, np.inf)
        ib = np.argpartition(masked, n_cand - 1, axis=1)[:, :n_cand]
        vb = np.isfinite(np.take_along_axis(masked, ib, axis=1))
        ib[:, 0] = np.argmin(d2, axis=1)  # the global net minimum is always a candidate
        vb[:, 0] = True
        idx[start : start + zb.shape[0]] = ib
        valid[start : start + zb.shape[0]] = vb
    valid = valid.reshape(-1)
    t0 = t_net[idx].reshape(-1)[valid]
    lo, hi = t0 - h, t0 + h
    if not periodic:
        lo, hi = np.maximum(lo, t_lo), np.minimum(hi, t_hi)
    t_all = np.zeros(m * n_cand)
    g_all = np.full(m * n_cand, np.inf)
    t_all[valid], g_all[valid] = _bracketed_newton(np.repeat(z, n_cand, axis=0)[valid], lo, hi, phi, dphi, ddphi)
    best = np.argmin(g_all.reshape(m, n_cand), axis=1)
    out = t_all.reshape(m, n_cand)[np.arange(m), best]
    if periodic:
        out = np.mod(out, _TWO_PI)
    return out


# 8-point Gauss-Legendre rule on [-1, 1] (arc-length increments inside one table cell)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


# ----------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------


class Manifold:
    """A compact (or boxed) submanifold of R^d with exact oracles.

    Attributes
    ----------
    points : (n, d) float64
        The training set, drawn from ``density`` at construction.
    density : Density
    ambient_dim : int
        d.
    intrinsic_dim : int
        Dimension of the manifold.
    embedding_dim : int
        p, dimension of the canonical coordinates (d >= p).
    basis : (d, p) float64, read-only
        The orthonormal frame Q[:, :p] of the embedding.
    offset : (d,) float64, read-only
        b (zero except for :class:`LinearSubspace`).

    Every method taking points accepts ``x`` of shape (M, d) (or (M, *shape) with d entries per
    point) and returns float64.
    """

    name = ""
    intrinsic_dim = 0
    embedding_dim = 0
    _densities: tuple = (Uniform,)

    # -- construction -------------------------------------------------------------------------

    def _setup(self, n, ambient_dim, density, rotation, rng, offset=None) -> None:
        n = _int_arg(n, "n", 1)
        p = self.embedding_dim
        d = p if ambient_dim is None else _int_arg(ambient_dim, "ambient_dim", 1)
        if d < p:
            raise ValueError(
                f"ambient_dim: must be >= {p} (the embedding dimension of {type(self).__name__}), got {d}"
            )
        self.ambient_dim = d
        self.density = self._check_density(_as_density(density))
        gen = check_rng(rng)
        rot_gen, pts_gen = _spawn(gen, 2)
        self._full_rotation = None
        self.basis = _readonly(self._make_basis(rotation, rot_gen))
        # A contiguous transpose: OpenBLAS can be ~100x slower on a transposed view with small p.
        self._basis_t = _readonly(np.ascontiguousarray(self.basis.T))
        if offset is None:
            self.offset = _readonly(np.zeros(d))
        else:
            off = np.asarray(offset, dtype=np.float64)
            if off.shape != (d,) or not np.all(np.isfinite(off)):
                raise ValueError(f"offset: expected a finite vector of shape ({d},), got shape {off.shape}")
            self.offset = _readonly(off.copy())
        self.points = self.sample(n, pts_gen)

    def _check_density(self, density: Density) -> Density:
        if not isinstance(density, self._densities):
            names = ", ".join(c.__name__ for c in self._densities)
            raise ValueError(f"density: {type(self).__name__} supports {names}; got {density!r}")
        if isinstance(density, VonMisesFisher) and density.mu.size != self.embedding_dim:
            raise ValueError(
                f"density: VonMisesFisher.mu must have length {self.embedding_dim} for {type(self).__name__}, "
                f"got {density.mu.size}"
            )
        return density

    def _make_basis(self, rotation, gen) -> np.ndarray:
        d, p = self.ambient_dim, self.embedding_dim
        if isinstance(rotation, str):
            key = rotation.strip().lower()
            if key == "identity":
                return np.eye(d)[:, :p].copy()
            if key != "random":
                raise ValueError(f"rotation: expected 'random', 'identity', None or an array, got {rotation!r}")
            q, r = np.linalg.qr(gen.standard_normal((d, p)))
            signs = np.sign(np.diag(r))
            signs[signs == 0] = 1.0
            q = q * signs[None, :]
            if d == p and np.linalg.det(q) < 0:
                q[:, 0] = -q[:, 0]
            return np.ascontiguousarray(q)
        if rotation is None:
            return np.eye(d)[:, :p].copy()
        q = np.asarray(rotation, dtype=np.float64)
        if q.ndim != 2 or q.shape[0] != d or q.shape[1] not in (p, d):
            raise ValueError(f"rotation: expected shape ({d}, {d}) or ({d}, {p}), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("rotation: must be finite")
        err = np.max(np.abs(q.T @ q - np.eye(q.shape[1])))
        if err > 1e-8:
            raise ValueError(f"rotation: columns must be orthonormal (max |Q^T Q - I| = {err:.2e})")
        if q.shape[1] == d:
            self._full_rotation = _readonly(q.copy())
        return np.ascontiguousarray(q[:, :p])

    # -- frame ----------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of training points."""
        return int(self.points.shape[0])

    @property
    def rotation(self) -> np.ndarray:
        """The (d, d) rotation Q whose first p columns are :attr:`basis` (completed lazily)."""
        if self._full_rotation is None:
            d, p = self.ambient_dim, self.embedding_dim
            if d == p:
                full = self.basis.copy()
            else:
                qc = np.linalg.qr(self.basis, mode="complete")[0]
                full = np.concatenate([self.basis, qc[:, p:]], axis=1)
                if np.linalg.det(full) < 0:
                    full[:, -1] = -full[:, -1]
            self._full_rotation = _readonly(full)
        return self._full_rotation

    def embed(self, m) -> np.ndarray:
        """Canonical coordinates (M, p) -> ambient points (M, d): ``Q [m; 0] + b``."""
        m = _points_arg(m, self.embedding_dim, "m")
        return m @ self._basis_t + self.offset

    def canonical(self, x) -> np.ndarray:
        """Ambient points (M, d) -> the canonical coordinates (M, p) of their component in the span."""
        x = _points_arg(x, self.ambient_dim)
        return (x - self.offset) @ self.basis

    # -- oracles --------------------------------------------------------------------------------

    def project(self, x) -> np.ndarray:
        """P_M(x): the nearest point of M, (M, d) float64."""
        x = _points_arg(x, self.ambient_dim)
        z = (x - self.offset) @ self.basis
        return self._project_canonical(z) @ self._basis_t + self.offset

    def distance(self, x) -> np.ndarray:
        """dist(x, M) = ||x - P_M(x)||, (M,) float64."""
        x = _points_arg(x, self.ambient_dim)
        return np.linalg.norm(x - self.project(x), axis=1)

    def tangent(self, x) -> np.ndarray:
        """Orthonormal basis of the tangent space at P_M(x): (M, d, intrinsic_dim) float64."""
        x = _points_arg(x, self.ambient_dim)
        t = self._tangent_canonical((x - self.offset) @ self.basis)
        return np.einsum("dp,mpk->mdk", self.basis, t)

    def intrinsic_coords(self, x) -> np.ndarray:
        """Intrinsic coordinates of P_M(x): (M, intrinsic_dim) float64 (see the class docstring)."""
        x = _points_arg(x, self.ambient_dim)
        return self._coords_canonical((x - self.offset) @ self.basis)

    def from_intrinsic(self, u) -> np.ndarray:
        """Points of M (M, d) from intrinsic coordinates (M, intrinsic_dim)."""
        u = _points_arg(u, self.intrinsic_dim, "u")
        return self._from_coords(u) @ self._basis_t + self.offset

    def sample(self, n, rng=None) -> np.ndarray:
        """n points (n, d) from the manifold's ``density`` (deterministic for ``Equispaced``)."""
        n = _int_arg(n, "n", 0)
        m = self._sample_canonical(n, check_rng(rng), self.density)
        return np.ascontiguousarray(m @ self._basis_t + self.offset)

    def sample_uniform(self, n, rng=None) -> np.ndarray:
        """n points (n, d) uniform w.r.t. the Riemannian volume of M."""
        n = _int_arg(n, "n", 0)
        m = self._sample_canonical(n, check_rng(rng), Uniform())
        return np.ascontiguousarray(m @ self._basis_t + self.offset)

    @property
    def volume(self) -> float:
        """Riemannian volume (length, area, ...) of M."""
        return float(self._volume())

    # -- subclass hooks -------------------------------------------------------------------------

    def _project_canonical(self, z):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define a projection")

    def _tangent_canonical(self, z):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define tangent spaces")

    def _coords_canonical(self, z):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define intrinsic coordinates")

    def _from_coords(self, u):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define a parametrisation")

    def _sample_canonical(self, n, gen, density):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define a sampler")

    def _volume(self):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define its volume")

    def _params(self) -> tuple:
        return ()

    def __repr__(self) -> str:
        parts = [f"n={self.n}"] + [f"{k}={v!r}" for k, v in self._params()]
        parts += [f"ambient_dim={self.ambient_dim}", f"density={self.density!r}"]
        return f"{type(self).__name__}({', '.join(parts)})"


# ----------------------------------------------------------------------------------------------
# Population scores of spheres with vMF / uniform data
# ----------------------------------------------------------------------------------------------


class _VMFPopulation:
    """Closed-form noised score / log-density / denoiser for vMF or uniform data on a sphere of
    radius R spanning the p canonical coordinates (science.md (2.7))."""

    radius: float

    def _vmf_params(self) -> tuple[float, np.ndarray]:
        p = self.embedding_dim
        dens = self.density
        if isinstance(dens, Uniform):
            return 0.0, np.eye(p)[0]
        if isinstance(dens, VonMisesFisher):
            return dens.kappa, dens.mu
        if isinstance(dens, VonMises) and p == 2:
            return dens.kappa, np.array([math.cos(dens.mu), math.sin(dens.mu)])
        raise ValueError(
            f"density: exact population scores need a uniform or von Mises(-Fisher) density, got {dens!r}"
        )

    def _population_ve(self, x, sigma, schedule):
        """Shared set-up: y = x/a, sigma~ = s/a, the canonical w and everything the formulas need."""
        x = _points_arg(x, self.ambient_dim)
        m = x.shape[0]
        a, s = _noise_coefficients(sigma, schedule, m)
        st = s / a
        y = x / a[:, None]
        z = y @ self.basis
        kappa0, mu0 = self._vmf_params()
        r = self.radius
        w = (r / (st * st))[:, None] * z + kappa0 * mu0[None, :]
        wn = np.linalg.norm(w, axis=1)
        return x, a, s, st, y, z, kappa0, w, wn

    def population_denoiser(self, x, sigma, schedule="ve") -> np.ndarray:
        """E[x0 | x] for the noised population (M, d): ``R A_p(|w|) w/|w|`` embedded."""
        _, _, _, _, _, _, _, w, wn = self._population_ve(x, sigma, schedule)
        coef = self.radius * _bessel_ratio_over_z(self.embedding_dim, wn)
        return (coef[:, None] * w) @ self._basis_t

    def population_score(self, x, sigma, schedule="ve") -> np.ndarray:
        """Exact grad_x log p(x) of the noised population, (M, d) float64.

        Parameters
        ----------
        x : (M, d) array
        sigma : float or (M,) array, > 0
            Noise standard deviation s.
        schedule : {"ve", "vp"}
            ``"ve"``: x = x0 + sigma eps.  ``"vp"``: x = sqrt(1 - sigma^2) x0 + sigma eps
            (0 < sigma < 1); at time t of ``nnscore.schedules.VP`` pass ``sigma = VP().sigma(t)``.
        """
        x, a, s, st, y, z, kappa0, w, wn = self._population_ve(x, sigma, schedule)
        coef = self.radius * _bessel_ratio_over_z(self.embedding_dim, wn)
        d_hat = (coef[:, None] * w) @ self._basis_t
        return (a[:, None] * d_hat - x) / (s * s)[:, None]

    def population_log_density(self, x, sigma, schedule="ve") -> np.ndarray:
        """Exact log p(x) of the noised population, (M,) float64 (arguments as in
        :meth:`population_score`)."""
        x, a, s, st, y, z, kappa0, w, wn = self._population_ve(x, sigma, schedule)
        p, d, r = self.embedding_dim, self.ambient_dim, self.radius
        nu = 0.5 * p - 1.0
        st2 = st * st
        out = -0.5 * d * np.log(_TWO_PI * st2) + _log_vmf_normaliser(p, np.array([kappa0]))[0]
        large = wn >= _SERIES_Z
        res = np.empty(wn.shape)
        if np.any(~large):
            yn2 = np.einsum("md,md->m", y[~large], y[~large])
            res[~large] = -(yn2 + r * r) / (2.0 * st2[~large]) - _log_vmf_normaliser(p, wn[~large])
        if np.any(large):
            # -(|y|^2 + R^2)/(2 st^2) + |w| rearranged without the O(R^2/st^2) cancellation.
            yl, zl, wl, s2 = y[large], z[large], wn[large], st2[large]
            zn = np.linalg.norm(zl, axis=1)
            perp = yl - zl @ self._basis_t
            perp2 = np.einsum("md,md->m", perp, perp)
            rz = r * zn / s2
            cross = 2.0 * (r / s2) * kappa0 * (zl @ self._vmf_params()[1]) + kappa0 * kappa0
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = np.where(wl + rz > 0, cross / (wl + rz), 0.0)
            quad = -((zn - r) ** 2 + perp2) / (2.0 * s2) + delta
            res[large] = quad - nu * np.log(wl) + 0.5 * p * math.log(_TWO_PI) + _log_ive_large(nu, wl)
        return out + res - d * np.log(a)


# ----------------------------------------------------------------------------------------------
# Curves
# ----------------------------------------------------------------------------------------------


class Curve(Manifold):
    """A closed curve t -> Phi(t), t in [0, 2 pi), in the canonical plane (or R^p).

    Intrinsic coordinate: the parameter t in [0, 2 pi) (the polar angle for :class:`Circle`);
    :meth:`arc_length` gives the arc-length position in [0, length).  Densities: ``Uniform``
    (arc length), ``Equispaced`` (equal arc length from t = 0), ``VonMises`` and
    ``PiecewiseConstant`` (on t).  Arc length uses a spectrally integrated table of |Phi'| on
    4096 nodes refined by 8-point Gauss-Legendre inside a cell (relative error ~1e-14);
    uniform samples invert it by Newton's method.
    """

    intrinsic_dim = 1
    _densities = (Uniform, Equispaced, VonMises, PiecewiseConstant)
    _net_size = 1024  # projection net (candidate basins)
    _arc_size = 4096  # arc-length table

    # subclasses: _phi, _dphi, _ddphi (t (K,) -> (K, p))

    def _phi(self, t):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define Phi")

    def _dphi(self, t):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define Phi'")

    def _ddphi(self, t):  # pragma: no cover - abstract
        raise AttributeError(f"{type(self).__name__} does not define Phi''")

    def _speed(self, t):
        return np.linalg.norm(self._dphi(t), axis=1)

    # -- nets and tables (lazy) -----------------------------------------------------------------

    def _net(self):
        if getattr(self, "_net_cache", None) is None:
            t = np.arange(self._net_size) * (_TWO_PI / self._net_size)
            self._net_cache = (t, self._phi(t))
        return self._net_cache

    def _arc_table(self):
        if getattr(self, "_arc_cache", None) is None:
            k = self._arc_size
            t = np.arange(k) * (_TWO_PI / k)
            v = self._speed(t)
            coef = np.fft.fft(v) / k
            freq = np.fft.fftfreq(k, d=1.0 / k)
            anti = np.zeros(k, dtype=complex)
            nz = (freq != 0) & (np.abs(freq) < k // 2)
            anti[nz] = coef[nz] / (1j * freq[nz])
            periodic_part = np.real(np.fft.ifft(anti) * k)
            table = coef[0].real * t + periodic_part - periodic_part[0]
            self._arc_cache = (t, table, float(coef[0].real * _TWO_PI), float(v.max()))
        return self._arc_cache

    @property
    def length(self) -> float:
        """Total arc length."""
        return self._arc_table()[2]

    def _volume(self):
        return self.length

    def _max_speed(self) -> float:
        return self._arc_table()[3]

    def _arc_of_param(self, t):
        t = np.mod(np.asarray(t, dtype=np.float64), _TWO_PI)
        nodes, table, _, _ = self._arc_table()
        h = nodes[1] - nodes[0]
        j = np.clip(np.floor(t / h).astype(np.int64), 0, nodes.size - 1)
        t0 = nodes[j]
        half = 0.5 * (t - t0)
        pts = t0[:, None] + half[:, None] * (_GL_X[None, :] + 1.0)
        speeds = self._speed(pts.reshape(-1)).reshape(pts.shape)
        return table[j] + half * (speeds @ _GL_W)

    def _param_of_arc(self, s):
        nodes, table, length, _ = self._arc_table()
        s = np.mod(np.asarray(s, dtype=np.float64), length)
        h = nodes[1] - nodes[0]
        j = np.clip(np.searchsorted(table, s, side="right") - 1, 0, nodes.size - 1)
        lo = nodes[j]
        hi = lo + h
        t = lo + (s - table[j]) / self._speed(lo)
        t = np.clip(t, lo, hi)
        for _ in range(6):
            t = np.clip(t - (self._arc_of_param(t) - s) / self._speed(t), lo, hi)
        return np.mod(t, _TWO_PI)

    # -- projection -----------------------------------------------------------------------------

    def _param_of(self, z):
        t_net, phi_net = self._net()
        return _nearest_parameter(z, self._phi, self._dphi, self._ddphi, t_net, phi_net, True, 0.0, _TWO_PI)

    def _project_canonical(self, z):
        return self._phi(self._param_of(z))

    def _tangent_canonical(self, z):
        v = self._dphi(self._param_of(z))
        return (v / np.linalg.norm(v, axis=1)[:, None])[:, :, None]

    def _coords_canonical(self, z):
        return self._param_of(z)[:, None]

    def _from_coords(self, u):
        return self._phi(np.mod(u[:, 0], _TWO_PI))

    def arc_length(self, x) -> np.ndarray:
        """Arc-length position of P_M(x) from t = 0, in [0, length): (M,) float64."""
        x = _points_arg(x, self.ambient_dim)
        return np.mod(self._arc_of_param(self._param_of((x - self.offset) @ self.basis)), self.length)

    # -- sampling -------------------------------------------------------------------------------

    def _sample_params(self, n, gen, density):
        if isinstance(density, Uniform):
            return self._param_of_arc(gen.random(n) * self.length)
        if isinstance(density, Equispaced):
            return self._param_of_arc(np.arange(n) * (self.length / max(n, 1)))
        if isinstance(density, VonMises):
            return np.mod(gen.vonmises(density.mu, density.kappa, size=n), _TWO_PI)
        return density.sample(n, gen)

    def _sample_canonical(self, n, gen, density):
        return self._phi(self._sample_params(n, gen, density))

    def _param_density(self, t, density):
        """Density of the parameter t w.r.t. dt (up to a constant)."""
        if isinstance(density, Uniform):
            return self._speed(t)
        if isinstance(density, VonMises):
            return np.exp(density.kappa * (np.cos(t - density.mu) - 1.0))
        if isinstance(density, PiecewiseConstant):
            return density.pdf(t)
        raise ValueError(f"density: quadrature needs a continuous density, got {density!r}")

    def quadrature(self, n_nodes=None, *, sigma=None) -> tuple[np.ndarray, np.ndarray]:
        """Weighted nodes whose empirical measure integrates the population (science.md 2.5.4).

        Periodic trapezoid in t: nodes Phi(t_j), t_j = 2 pi j / K, weights proportional to the
        density of t at t_j.  With spacing <= sigma / (3 max|Phi'|) the weighted empirical score
        at noise sigma equals the population score up to an exponentially small error (for a
        piecewise-constant density only algebraically).

        Parameters
        ----------
        n_nodes : int, optional
            K; default from ``sigma``: ceil(6 pi max|Phi'| / sigma), at least 64.
        sigma : float, optional
            Smallest noise level the nodes must resolve.

        Returns
        -------
        nodes : (K, d) float64
        weights : (K,) float64, summing to 1
        """
        if n_nodes is None:
            if sigma is None:
                raise ValueError("n_nodes: give n_nodes or sigma")
            sigma = _real_arg(sigma, "sigma", positive=True)
            n_nodes = max(64, int(math.ceil(3.0 * _TWO_PI * self._max_speed() / sigma)))
        n_nodes = _int_arg(n_nodes, "n_nodes", 1)
        t = np.arange(n_nodes) * (_TWO_PI / n_nodes)
        w = self._param_density(t, self.density)
        nodes = self._phi(t) @ self._basis_t + self.offset
        return nodes, w / w.sum()


class Circle(_VMFPopulation, Curve):
    """Circle S^1(R) in the canonical plane.

    Intrinsic coordinate: the polar angle in [0, 2 pi).  Densities: uniform, equispaced,
    ``VonMises(kappa, mu)``, ``VonMisesFisher(kappa, mu2)``, ``PiecewiseConstant``.  Exact
    population scores for uniform and von Mises data.

    Parameters
    ----------
    n : int >= 1, default 1000
    radius : float > 0, default 1
    ambient_dim : int >= 2, default 2
    density : str or Density, default "uniform"
    rotation : "random" (default), "identity"/None, or a (d, d) / (d, 2) orthonormal array
    rng : None, int or Generator
    """

    name = "circle"
    embedding_dim = 2
    _densities = (Uniform, Equispaced, VonMises, VonMisesFisher, PiecewiseConstant)

    def __init__(self, n=_DEFAULT_N, radius=1.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.radius = _real_arg(radius, "radius", positive=True)
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("radius", self.radius),)

    def _phi(self, t):
        return self.radius * np.stack([np.cos(t), np.sin(t)], axis=1)

    def _dphi(self, t):
        return self.radius * np.stack([-np.sin(t), np.cos(t)], axis=1)

    def _ddphi(self, t):
        return -self._phi(t)

    @property
    def length(self) -> float:
        return _TWO_PI * self.radius

    def _max_speed(self):
        return self.radius

    def _arc_of_param(self, t):
        return self.radius * np.mod(np.asarray(t, dtype=np.float64), _TWO_PI)

    def _param_of_arc(self, s):
        return np.mod(np.asarray(s, dtype=np.float64) / self.radius, _TWO_PI)

    def _param_of(self, z):
        return np.mod(np.arctan2(z[:, 1], z[:, 0]), _TWO_PI)

    def _sample_params(self, n, gen, density):
        if isinstance(density, VonMisesFisher):
            u = _sample_vmf(n, density.kappa, density.mu, gen)
            return np.mod(np.arctan2(u[:, 1], u[:, 0]), _TWO_PI)
        return super()._sample_params(n, gen, density)

    def _param_density(self, t, density):
        if isinstance(density, VonMisesFisher):
            return np.exp(density.kappa * (np.cos(t) * density.mu[0] + np.sin(t) * density.mu[1] - 1.0))
        return super()._param_density(t, density)


class Ellipse(Curve):
    """Ellipse (a cos t, b sin t).  Parameters as :class:`Circle` with semi-axes ``a``, ``b`` > 0
    (defaults 1 and 2, LSHH's example).  ``VonMises`` acts on t, not on the polar angle."""

    name = "ellipse"
    embedding_dim = 2

    def __init__(self, n=_DEFAULT_N, a=1.0, b=2.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.a = _real_arg(a, "a", positive=True)
        self.b = _real_arg(b, "b", positive=True)
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("a", self.a), ("b", self.b))

    def _phi(self, t):
        return np.stack([self.a * np.cos(t), self.b * np.sin(t)], axis=1)

    def _dphi(self, t):
        return np.stack([-self.a * np.sin(t), self.b * np.cos(t)], axis=1)

    def _ddphi(self, t):
        return -self._phi(t)


class LimaBean(Curve):
    """FPHDP's lima bean: with s = t/2 + pi/2, Phi(t) = scale r(s) (cos s, sin s),
    r(s) = sin^3 s + cos^3 s (one period of an analytic closed curve through the origin).

    FPHDP additionally rotates the bean by pi/4 or pi/2; here the rotation is the embedding's.
    """

    name = "lima-bean"
    embedding_dim = 2

    def __init__(self, n=_DEFAULT_N, scale=1.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.scale = _real_arg(scale, "scale", positive=True)
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("scale", self.scale),)

    @staticmethod
    def _polar(t):
        s = 0.5 * t + 0.5 * math.pi
        sn, cs = np.sin(s), np.cos(s)
        r = sn**3 + cs**3
        r1 = 3.0 * sn * cs * (sn - cs)
        r2 = 6.0 * sn * cs * (sn + cs) - 3.0 * (sn**3 + cs**3)
        return sn, cs, r, r1, r2

    def _phi(self, t):
        sn, cs, r, _, _ = self._polar(t)
        return self.scale * np.stack([r * cs, r * sn], axis=1)

    def _dphi(self, t):
        sn, cs, r, r1, _ = self._polar(t)
        return 0.5 * self.scale * np.stack([r1 * cs - r * sn, r1 * sn + r * cs], axis=1)

    def _ddphi(self, t):
        sn, cs, r, r1, r2 = self._polar(t)
        return 0.25 * self.scale * np.stack(
            [r2 * cs - 2.0 * r1 * sn - r * cs, r2 * sn + 2.0 * r1 * cs - r * sn], axis=1
        )


class WavyCircle(Curve):
    """FPHDP's wavy circle radius (1 + A sin(f t)) (cos t, sin t) with integer f >= 1 and
    0 <= A < 1 (defaults f = 8, A = 0.13)."""

    name = "wavy-circle"
    embedding_dim = 2

    def __init__(self, n=_DEFAULT_N, f=8, A=0.13, radius=1.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.f = _int_arg(f, "f", 1)
        self.A = _real_arg(A, "A", nonneg=True)
        if self.A >= 1.0:
            raise ValueError(f"A: must be < 1 (the radius must stay positive), got {self.A}")
        self.radius = _real_arg(radius, "radius", positive=True)
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("f", self.f), ("A", self.A), ("radius", self.radius))

    def _rho(self, t):
        ft = self.f * t
        r0 = self.radius
        return (r0 * (1.0 + self.A * np.sin(ft)), r0 * self.A * self.f * np.cos(ft),
                -r0 * self.A * self.f**2 * np.sin(ft))

    def _phi(self, t):
        r, _, _ = self._rho(t)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)

    def _dphi(self, t):
        r, r1, _ = self._rho(t)
        c, s = np.cos(t), np.sin(t)
        return np.stack([r1 * c - r * s, r1 * s + r * c], axis=1)

    def _ddphi(self, t):
        r, r1, r2 = self._rho(t)
        c, s = np.cos(t), np.sin(t)
        return np.stack([r2 * c - 2.0 * r1 * s - r * c, r2 * s + 2.0 * r1 * c - r * s], axis=1)


class GaussianBumps(Curve):
    """Image manifold of FPHDP: Phi(t) is the size x size image (flattened row-major) of
    exp(-|p - c(t)|^2 / (2 width^2)) on the pixel grid linspace(-1, 1, size)^2, with centre
    c(t) = radius (cos t, sin t).

    Values lie in (0, 1].  Unlike FPHDP's code the image is not divided by its maximum pixel,
    which would make the curve only piecewise smooth.  Default rotation: the identity (pixels
    stay pixels).  Defaults: size 16, width 0.2, radius 0.5 (science.md 4.0; FPHDP used 64 x 64).
    """

    name = "bumps"

    def __init__(self, n=_DEFAULT_N, size=16, width=0.2, radius=0.5, *, ambient_dim=None,
                 density="uniform", rotation=None, rng=None):
        self.size = _int_arg(size, "size", 2)
        self.width = _real_arg(width, "width", positive=True)
        self.radius = _real_arg(radius, "radius", positive=True)
        self.embedding_dim = self.size * self.size
        self._grid = np.linspace(-1.0, 1.0, self.size)
        self._setup(n, ambient_dim, density, rotation, rng)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def _params(self):
        return (("size", self.size), ("width", self.width), ("radius", self.radius))

    def _profiles(self, c):
        """g, g', g'' of exp(-(grid - c)^2 / (2 w^2)) w.r.t. c: each (K, size)."""
        u = self._grid[None, :] - c[:, None]
        iw2 = 1.0 / (self.width * self.width)
        g = np.exp(-0.5 * u * u * iw2)
        g1 = g * u * iw2
        g2 = g * (u * u * iw2 - 1.0) * iw2
        return g, g1, g2

    def _outer(self, gy, gx):
        return (gy[:, :, None] * gx[:, None, :]).reshape(gy.shape[0], gy.shape[1] * gx.shape[1])

    def _phi(self, t):
        gx, _, _ = self._profiles(self.radius * np.cos(t))
        gy, _, _ = self._profiles(self.radius * np.sin(t))
        return self._outer(gy, gx)

    def _dphi(self, t):
        cx1, cy1 = -self.radius * np.sin(t), self.radius * np.cos(t)
        gx, gx1, _ = self._profiles(self.radius * np.cos(t))
        gy, gy1, _ = self._profiles(self.radius * np.sin(t))
        return self._outer(gy, gx1 * cx1[:, None]) + self._outer(gy1 * cy1[:, None], gx)

    def _ddphi(self, t):
        cx1, cy1 = -self.radius * np.sin(t), self.radius * np.cos(t)
        cx2, cy2 = -self.radius * np.cos(t), -self.radius * np.sin(t)
        gx, gx1, gx2 = self._profiles(self.radius * np.cos(t))
        gy, gy1, gy2 = self._profiles(self.radius * np.sin(t))
        return (
            self._outer(gy, gx2 * (cx1 * cx1)[:, None] + gx1 * cx2[:, None])
            + 2.0 * self._outer(gy1 * cy1[:, None], gx1 * cx1[:, None])
            + self._outer(gy2 * (cy1 * cy1)[:, None] + gy1 * cy2[:, None], gx)
        )


# ----------------------------------------------------------------------------------------------
# Spheres and tori
# ----------------------------------------------------------------------------------------------


class Sphere(_VMFPopulation, Manifold):
    """Sphere S^k(R) in R^(k+1).

    Intrinsic coordinates: hyperspherical angles (phi_1, ..., phi_k) of the canonical point,
    phi_i = atan2(|u_(i+1:)|, u_i) in [0, pi] for i < k (the first measured from canonical axis
    1) and phi_k = atan2(u_(k+1), u_k) in [0, 2 pi).  Densities: uniform, ``VonMisesFisher``
    (and ``VonMises`` when k = 1).  Exact population scores.

    Parameters
    ----------
    n : int >= 1, default 1000
    k : int >= 1, default 2
    radius : float > 0, default 1
    ambient_dim : int >= k + 1, default k + 1
    density, rotation, rng : as :class:`Circle`
    """

    name = "sphere"
    _densities = (Uniform, VonMisesFisher, VonMises)

    def __init__(self, n=_DEFAULT_N, k=2, radius=1.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.k = _int_arg(k, "k", 1)
        self.intrinsic_dim = self.k
        self.embedding_dim = self.k + 1
        self.radius = _real_arg(radius, "radius", positive=True)
        if isinstance(density, VonMises) and self.k != 1:
            raise ValueError("density: VonMises needs k = 1; use VonMisesFisher(kappa, mu) on S^k")
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("k", self.k), ("radius", self.radius))

    def _volume(self):
        p = self.k + 1
        return self.radius**self.k * 2.0 * math.pi ** (0.5 * p) / math.gamma(0.5 * p)

    @staticmethod
    def _unit(z):
        norm = np.linalg.norm(z, axis=1)
        u = np.zeros_like(z)
        ok = norm > 0
        u[ok] = z[ok] / norm[ok, None]
        u[~ok, 0] = 1.0  # the centre: every point is nearest; pick the first axis
        return u

    def _project_canonical(self, z):
        return self.radius * self._unit(z)

    def _tangent_canonical(self, z):
        u = self._unit(z)
        p = u.shape[1]
        sign = np.where(u[:, 0] >= 0, 1.0, -1.0)
        w = u.copy()
        w[:, 0] += sign
        w2 = np.einsum("mp,mp->m", w, w)
        # Householder H = I - 2 w w^T / |w|^2 maps e_1 to -sign u; its other columns span u-perp.
        h = np.eye(p)[None, :, 1:] - 2.0 * w[:, :, None] * w[:, None, 1:] / w2[:, None, None]
        return h

    def _coords_canonical(self, z):
        u = self._unit(z)
        k = self.k
        out = np.empty((u.shape[0], k))
        tail = np.sqrt(np.cumsum((u * u)[:, ::-1], axis=1)[:, ::-1])  # |u_(i:)|
        for i in range(k - 1):
            out[:, i] = np.arctan2(tail[:, i + 1], u[:, i])
        out[:, k - 1] = np.mod(np.arctan2(u[:, k], u[:, k - 1]), _TWO_PI)
        return out

    def _from_coords(self, ang):
        m, k = ang.shape
        out = np.empty((m, k + 1))
        prod = np.ones(m)
        for i in range(k):
            out[:, i] = prod * np.cos(ang[:, i])
            prod = prod * np.sin(ang[:, i])
        out[:, k] = prod
        return self.radius * out

    def _sample_canonical(self, n, gen, density):
        if isinstance(density, VonMisesFisher):
            u = _sample_vmf(n, density.kappa, density.mu, gen)
        elif isinstance(density, VonMises):
            t = gen.vonmises(density.mu, density.kappa, size=n)
            u = np.stack([np.cos(t), np.sin(t)], axis=1)
        else:
            u = _sample_sphere_uniform(n, self.k + 1, gen)
        return self.radius * u


class FlatTorus(Manifold):
    """Flat (Clifford) torus: k circles of radius R/sqrt(k) in orthogonal coordinate pairs of
    R^(2k), so that every point has norm R (default k = 2: the Clifford torus in R^4).

    Intrinsic coordinates: the k angles in [0, 2 pi).  Densities: uniform, ``VonMises`` (the
    same von Mises on every angle, independently).
    """

    name = "flat-torus"
    _densities = (Uniform, VonMises)

    def __init__(self, n=_DEFAULT_N, k=2, radius=1.0, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.k = _int_arg(k, "k", 1)
        self.intrinsic_dim = self.k
        self.embedding_dim = 2 * self.k
        self.radius = _real_arg(radius, "radius", positive=True)
        self._setup(n, ambient_dim, density, rotation, rng)

    @property
    def circle_radius(self) -> float:
        return self.radius / math.sqrt(self.k)

    def _params(self):
        return (("k", self.k), ("radius", self.radius))

    def _volume(self):
        return (_TWO_PI * self.circle_radius) ** self.k

    def _angles(self, z):
        pairs = z.reshape(z.shape[0], self.k, 2)
        return np.mod(np.arctan2(pairs[:, :, 1], pairs[:, :, 0]), _TWO_PI)

    def _from_coords(self, ang):
        out = np.stack([np.cos(ang), np.sin(ang)], axis=2) * self.circle_radius
        return out.reshape(ang.shape[0], 2 * self.k)

    def _project_canonical(self, z):
        return self._from_coords(self._angles(z))

    def _tangent_canonical(self, z):
        ang = self._angles(z)
        m, k = ang.shape
        t = np.zeros((m, 2 * k, k))
        idx = np.arange(k)
        t[:, 2 * idx, idx] = -np.sin(ang)
        t[:, 2 * idx + 1, idx] = np.cos(ang)
        return t

    def _coords_canonical(self, z):
        return self._angles(z)

    def _sample_canonical(self, n, gen, density):
        if isinstance(density, VonMises):
            ang = np.mod(gen.vonmises(density.mu, density.kappa, size=(n, self.k)), _TWO_PI)
        else:
            ang = gen.random((n, self.k)) * _TWO_PI
        return self._from_coords(ang)


class StandardTorus(Manifold):
    """Torus of revolution ((R0 + r cos v) cos u, (R0 + r cos v) sin u, r sin v) in R^3,
    R0 > r > 0 (defaults 1 and 0.4).

    Intrinsic coordinates: (u, v) in [0, 2 pi)^2.  Uniform samples by rejection with acceptance
    (R0 + r cos v) / (R0 + r).  Density: uniform only.
    """

    name = "torus"
    intrinsic_dim = 2
    embedding_dim = 3

    def __init__(self, n=_DEFAULT_N, R0=1.0, r=0.4, *, ambient_dim=None, density="uniform",
                 rotation="random", rng=None):
        self.R0 = _real_arg(R0, "R0", positive=True)
        self.r = _real_arg(r, "r", positive=True)
        if not self.r < self.R0:
            raise ValueError(f"r: must be < R0 (a ring torus), got r={self.r}, R0={self.R0}")
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("R0", self.R0), ("r", self.r))

    def _volume(self):
        return 4.0 * math.pi**2 * self.R0 * self.r

    def _uv(self, z):
        u = np.arctan2(z[:, 1], z[:, 0])
        rho = np.hypot(z[:, 0], z[:, 1])
        v = np.arctan2(z[:, 2], rho - self.R0)  # atan2(0, 0) = 0: the core circle maps to v = 0
        return np.mod(u, _TWO_PI), np.mod(v, _TWO_PI)

    def _from_coords(self, uv):
        u, v = uv[:, 0], uv[:, 1]
        ring = self.R0 + self.r * np.cos(v)
        return np.stack([ring * np.cos(u), ring * np.sin(u), self.r * np.sin(v)], axis=1)

    def _project_canonical(self, z):
        u, v = self._uv(z)
        return self._from_coords(np.stack([u, v], axis=1))

    def _tangent_canonical(self, z):
        u, v = self._uv(z)
        zero = np.zeros_like(u)
        eu = np.stack([-np.sin(u), np.cos(u), zero], axis=1)
        ev = np.stack([-np.sin(v) * np.cos(u), -np.sin(v) * np.sin(u), np.cos(v)], axis=1)
        return np.stack([eu, ev], axis=2)

    def _coords_canonical(self, z):
        u, v = self._uv(z)
        return np.stack([u, v], axis=1)

    def _sample_canonical(self, n, gen, density):
        v = np.empty(n)
        filled = 0
        while filled < n:
            m = max(2 * (n - filled), 64)
            cand = gen.random(m) * _TWO_PI
            keep = gen.random(m) * (self.R0 + self.r) < self.R0 + self.r * np.cos(cand)
            take = cand[keep][: n - filled]
            v[filled : filled + take.size] = take
            filled += take.size
        u = gen.random(n) * _TWO_PI
        return self._from_coords(np.stack([u, v], axis=1))


# ----------------------------------------------------------------------------------------------
# Subspaces, swiss roll, 2-d bumps
# ----------------------------------------------------------------------------------------------


class LinearSubspace(Manifold):
    """Affine subspace span(U) + b of dimension ``dim``; U = the embedding frame, b = ``offset``.

    Samples live on the cube [-extent, extent]^dim of the subspace coordinates (``Uniform``;
    :attr:`volume` is that cube's), are ``Gaussian`` with standard deviation ``extent``, or
    ``Equispaced`` on a grid (n must be a perfect dim-th power; for dim = 1, linspace(-extent,
    extent, n): CHEN's equally spaced line points).  Intrinsic coordinates: U^T (x - b).
    ``ambient_dim`` defaults to dim + 1 (a subspace equal to the whole space is legal but
    pointless); ``offset`` is a (d,) vector, default 0.
    """

    name = "subspace"
    _densities = (Uniform, Gaussian, Equispaced)

    def __init__(self, n=_DEFAULT_N, dim=1, extent=1.0, *, ambient_dim=None, offset=None,
                 density="uniform", rotation="random", rng=None):
        self.dim = _int_arg(dim, "dim", 1)
        self.intrinsic_dim = self.dim
        self.embedding_dim = self.dim
        self.extent = _real_arg(extent, "extent", positive=True)
        if ambient_dim is None:
            ambient_dim = self.dim + 1
        self._setup(n, ambient_dim, density, rotation, rng, offset=offset)

    def _params(self):
        return (("dim", self.dim), ("extent", self.extent))

    def _volume(self):
        return (2.0 * self.extent) ** self.dim

    def _project_canonical(self, z):
        return z

    def _tangent_canonical(self, z):
        return np.broadcast_to(np.eye(self.dim), (z.shape[0], self.dim, self.dim)).copy()

    def _coords_canonical(self, z):
        return z.copy()

    def _from_coords(self, u):
        return u

    def _sample_canonical(self, n, gen, density):
        if isinstance(density, Gaussian):
            return self.extent * gen.standard_normal((n, self.dim))
        if isinstance(density, Equispaced):
            side = int(round(n ** (1.0 / self.dim))) if n else 0
            if side**self.dim != n:
                raise ValueError(f"n: an equispaced grid in {self.dim} dimensions needs a perfect power, got {n}")
            axis = np.linspace(-self.extent, self.extent, side)
            grids = np.meshgrid(*([axis] * self.dim), indexing="ij")
            return np.stack([g.reshape(-1) for g in grids], axis=1)
        return self.extent * (2.0 * gen.random((n, self.dim)) - 1.0)


def _spiral_arc(t):
    """Arc length of (t cos t, t sin t) from 0: (t sqrt(1 + t^2) + asinh t) / 2."""
    return 0.5 * (t * np.sqrt(1.0 + t * t) + np.arcsinh(t))


class SwissRoll(Manifold):
    """Swiss roll (t cos t, h, t sin t), t in [t_min, t_max], h in [0, height] (scikit-learn's
    layout: defaults 1.5 pi, 4.5 pi, 21).  A surface with boundary.

    Intrinsic coordinates: (t, h).  ``Uniform`` is uniform in area (arc length of the spiral
    times height), not scikit-learn's uniform-in-t.  Projection: nearest point of the spiral in
    the (x, z) plane (net + bracketed Newton, endpoints included), with h clipped to
    [0, height]; off-boundary points project onto the boundary, where x - P(x) need not be
    normal to the tangent plane.
    """

    name = "swiss-roll"
    intrinsic_dim = 2
    embedding_dim = 3
    _net_size = 1024

    def __init__(self, n=_DEFAULT_N, t_min=1.5 * math.pi, t_max=4.5 * math.pi, height=21.0, *,
                 ambient_dim=None, density="uniform", rotation="random", rng=None):
        self.t_min = _real_arg(t_min, "t_min", nonneg=True)
        self.t_max = _real_arg(t_max, "t_max", positive=True)
        if not self.t_max > self.t_min:
            raise ValueError(f"t_max: must be > t_min, got t_min={self.t_min}, t_max={self.t_max}")
        self.height = _real_arg(height, "height", positive=True)
        t = np.linspace(self.t_min, self.t_max, self._net_size)
        self._spiral_net = (t, self._c(t))
        self._setup(n, ambient_dim, density, rotation, rng)

    def _params(self):
        return (("t_min", self.t_min), ("t_max", self.t_max), ("height", self.height))

    def _volume(self):
        return float(_spiral_arc(self.t_max) - _spiral_arc(self.t_min)) * self.height

    @staticmethod
    def _c(t):
        return np.stack([t * np.cos(t), t * np.sin(t)], axis=1)

    @staticmethod
    def _dc(t):
        return np.stack([np.cos(t) - t * np.sin(t), np.sin(t) + t * np.cos(t)], axis=1)

    @staticmethod
    def _ddc(t):
        return np.stack([-2.0 * np.sin(t) - t * np.cos(t), 2.0 * np.cos(t) - t * np.sin(t)], axis=1)

    def _th(self, z):
        t_net, c_net = self._spiral_net
        t = _nearest_parameter(z[:, [0, 2]], self._c, self._dc, self._ddc, t_net, c_net, False,
                               self.t_min, self.t_max)
        return np.clip(t, self.t_min, self.t_max), np.clip(z[:, 1], 0.0, self.height)

    def _from_coords(self, th):
        t, h = th[:, 0], th[:, 1]
        return np.stack([t * np.cos(t), h, t * np.sin(t)], axis=1)

    def _project_canonical(self, z):
        return self._from_coords(np.stack(self._th(z), axis=1))

    def _tangent_canonical(self, z):
        t, _ = self._th(z)
        dc = self._dc(t)
        dc /= np.linalg.norm(dc, axis=1)[:, None]
        zero = np.zeros_like(t)
        et = np.stack([dc[:, 0], zero, dc[:, 1]], axis=1)
        eh = np.stack([zero, np.ones_like(t), zero], axis=1)
        return np.stack([et, eh], axis=2)

    def _coords_canonical(self, z):
        return np.stack(self._th(z), axis=1)

    def _t_of_arc(self, s):
        t = np.sqrt(np.maximum(2.0 * s, self.t_min**2))  # s ~ t^2/2
        for _ in range(50):
            step = (_spiral_arc(t) - s) / np.sqrt(1.0 + t * t)
            t = np.clip(t - step, self.t_min, self.t_max)
            if np.all(np.abs(step) <= 1e-14 * np.maximum(1.0, t)):
                break
        return t

    def _sample_canonical(self, n, gen, density):
        s0, s1 = _spiral_arc(self.t_min), _spiral_arc(self.t_max)
        t = self._t_of_arc(s0 + gen.random(n) * (s1 - s0))
        h = gen.random(n) * self.height
        return self._from_coords(np.stack([t, h], axis=1))


class GaussianBumps2D(Manifold):
    """2-d image manifold: the size x size image of a Gaussian bump (as :class:`GaussianBumps`)
    whose centre c ranges over the square [-extent, extent]^2 (default 0.5).  A surface with
    boundary.

    Intrinsic coordinates: the centre (cx, cy).  Projection: the best 3 centres of a 48 x 48
    net, refined by projected Newton on the box (box constraints handled by freezing a
    coordinate at a bound whose gradient points outward; backtracking line search), to
    ~1e-12 in c.  Uniform samples: rejection on the area element sqrt(det J^T J), bounded by
    1.05 x its maximum on a 65 x 65 grid (the bound is raised and sampling restarted in the
    unlikely event a proposal exceeds it).
    """

    name = "bumps-2d"
    intrinsic_dim = 2
    _net_side = 48

    def __init__(self, n=_DEFAULT_N, size=16, width=0.2, extent=0.5, *, ambient_dim=None,
                 density="uniform", rotation=None, rng=None):
        self.size = _int_arg(size, "size", 2)
        self.width = _real_arg(width, "width", positive=True)
        self.extent = _real_arg(extent, "extent", positive=True)
        self.embedding_dim = self.size * self.size
        self._grid = np.linspace(-1.0, 1.0, self.size)
        self._net_cache = None
        self._area_cache = None
        self._setup(n, ambient_dim, density, rotation, rng)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def _params(self):
        return (("size", self.size), ("width", self.width), ("extent", self.extent))

    _profiles = GaussianBumps._profiles
    _outer = GaussianBumps._outer

    def _phi_c(self, c):
        gx, _, _ = self._profiles(c[:, 0])
        gy, _, _ = self._profiles(c[:, 1])
        return self._outer(gy, gx)

    def _jac(self, c):
        gx, gx1, gx2 = self._profiles(c[:, 0])
        gy, gy1, gy2 = self._profiles(c[:, 1])
        j = np.stack([self._outer(gy, gx1), self._outer(gy1, gx)], axis=2)  # (M, p, 2)
        hxx, hxy, hyy = self._outer(gy, gx2), self._outer(gy1, gx1), self._outer(gy2, gx)
        return j, (hxx, hxy, hyy)

    def _net(self):
        if self._net_cache is None:
            axis = np.linspace(-self.extent, self.extent, self._net_side)
            cx, cy = np.meshgrid(axis, axis, indexing="ij")
            c = np.stack([cx.reshape(-1), cy.reshape(-1)], axis=1)
            self._net_cache = (c, self._phi_c(c))
        return self._net_cache

    def _refine(self, z, c):
        e = self.extent
        r = self._phi_c(c) - z
        g_val = 0.5 * np.einsum("mp,mp->m", r, r)
        for _ in range(40):
            j, (hxx, hxy, hyy) = self._jac(c)
            grad = np.einsum("mpk,mp->mk", j, r)
            h = np.einsum("mpk,mpl->mkl", j, j)
            h[:, 0, 0] += np.einsum("mp,mp->m", r, hxx)
            h[:, 0, 1] += np.einsum("mp,mp->m", r, hxy)
            h[:, 1, 0] += np.einsum("mp,mp->m", r, hxy)
            h[:, 1, 1] += np.einsum("mp,mp->m", r, hyy)
            # Freeze coordinates at a bound whose descent direction leaves the box.
            frozen = ((c <= -e) & (grad > 0)) | ((c >= e) & (grad < 0))
            grad = np.where(frozen, 0.0, grad)
            h[:, 0, 1] = np.where(frozen[:, 0] | frozen[:, 1], 0.0, h[:, 0, 1])
            h[:, 1, 0] = h[:, 0, 1]
            for k in range(2):
                h[:, k, k] = np.where(frozen[:, k], 1.0, h[:, k, k])
            det = h[:, 0, 0] * h[:, 1, 1] - h[:, 0, 1] ** 2
            pd = (h[:, 0, 0] > 0) & (det > 0)
            gn = np.einsum("mpk,mpl->mkl", j, j)  # Gauss-Newton fallback where H is not PD
            gn[:, 0, 1] = np.where(frozen[:, 0] | frozen[:, 1], 0.0, gn[:, 0, 1])
            gn[:, 1, 0] = gn[:, 0, 1]
            for k in range(2):
                gn[:, k, k] = np.where(frozen[:, k], 1.0, gn[:, k, k])
            hh = np.where(pd[:, None, None], h, gn)
            step = -np.linalg.solve(hh, grad[:, :, None])[:, :, 0]
            done = np.zeros(c.shape[0], dtype=bool)
            lam = np.ones(c.shape[0])
            new_c = c
            for _ in range(30):  # backtracking: accept the first non-increasing step
                trial = np.clip(c + lam[:, None] * step, -e, e)
                rt = self._phi_c(trial) - z
                gt = 0.5 * np.einsum("mp,mp->m", rt, rt)
                # Tiny steps are taken unconditionally: there Newton converges quadratically and
                # g itself cannot resolve the decrease (rounding in |r|^2).
                tiny = np.max(np.abs(lam[:, None] * step), axis=1) <= 1e-7
                ok = ((gt <= g_val) | tiny) & ~done
                new_c = np.where(ok[:, None], trial, new_c)
                r = np.where(ok[:, None], rt, r)
                g_val = np.where(ok, gt, g_val)
                done |= ok
                lam = np.where(done, lam, 0.5 * lam)
                if np.all(done):
                    break
            moved = np.max(np.abs(new_c - c)) if c.size else 0.0
            c = new_c
            if moved <= 1e-14:
                break
        return c, g_val

    def _centre(self, z):
        c_net, phi_net = self._net()
        out = np.empty((z.shape[0], 2))
        net_sq = np.einsum("kp,kp->k", phi_net, phi_net)
        net_t = np.ascontiguousarray(phi_net.T)
        n_cand = 3
        rows = max(1, (1 << 21) // c_net.shape[0])
        for start in range(0, z.shape[0], rows):
            zb = z[start : start + rows]
            b = zb.shape[0]
            d2 = net_sq[None, :] - 2.0 * (zb @ net_t)
            idx = np.argpartition(d2, n_cand - 1, axis=1)[:, :n_cand]
            c0 = c_net[idx.reshape(-1)]
            c, g = self._refine(np.repeat(zb, n_cand, axis=0), c0)
            best = np.argmin(g.reshape(b, n_cand), axis=1)
            out[start : start + b] = c.reshape(b, n_cand, 2)[np.arange(b), best]
        return out

    def _project_canonical(self, z):
        return self._phi_c(self._centre(z))

    def _tangent_canonical(self, z):
        j, _ = self._jac(self._centre(z))
        q, _ = np.linalg.qr(j)
        return q

    def _coords_canonical(self, z):
        return self._centre(z)

    def _from_coords(self, c):
        return self._phi_c(c)

    def _area_element(self, c):
        j, _ = self._jac(c)
        g = np.einsum("mpk,mpl->mkl", j, j)
        return np.sqrt(np.maximum(g[:, 0, 0] * g[:, 1, 1] - g[:, 0, 1] ** 2, 0.0))

    def _area(self):
        if self._area_cache is None:
            x, w = np.polynomial.legendre.leggauss(32)
            cx, cy = np.meshgrid(x * self.extent, x * self.extent, indexing="ij")
            c = np.stack([cx.reshape(-1), cy.reshape(-1)], axis=1)
            vals = self._area_element(c).reshape(32, 32)
            axis = np.linspace(-self.extent, self.extent, 65)
            gx, gy = np.meshgrid(axis, axis, indexing="ij")
            grid_max = float(self._area_element(np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)).max())
            self._area_cache = (float(w @ vals @ w) * self.extent**2, 1.05 * grid_max)
        return self._area_cache

    def _volume(self):
        return self._area()[0]

    def _sample_canonical(self, n, gen, density):
        bound = self._area()[1]
        e = self.extent
        while True:
            out = np.empty((n, 2))
            filled = 0
            raised = False
            while filled < n:
                m = max(2 * (n - filled), 64)
                c = (2.0 * gen.random((m, 2)) - 1.0) * e
                a = self._area_element(c)
                if np.any(a > bound):
                    bound = 1.05 * float(a.max())
                    raised = True
                    break
                keep = gen.random(m) * bound < a
                take = c[keep][: n - filled]
                out[filled : filled + take.shape[0]] = take
                filled += take.shape[0]
            if not raised:
                break
        return self._phi_c(out)
