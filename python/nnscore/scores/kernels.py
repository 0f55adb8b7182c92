"""Smoothing kernels for :class:`~nnscore.scores.smoothed.SmoothedScore` (science.md §2.0-2.2).

A kernel is the law of a location-independent perturbation ``x -> x + xi_h`` applied in the
schedule's x-coordinates at time t (science.md §2.0: "the kernel acts in x-space at time t with
bandwidth h(t)"; in VE-normalised coordinates the bandwidth is h(t)/a_t).

* :class:`GaussianKernel` ``N(0, h^2 I)``; ``h`` is a constant or a callable of the VE noise
  level sigma~ (e.g. ``lambda st: 0.5 * st``, CHEN's window proportional to sigma~).
* :class:`AnisotropicGaussianKernel` ``N(0, Sigma)``, with ``Sigma`` given densely (``cov``) or
  as ``h_parallel^2 P + h_normal^2 (I - P)`` for the projector ``P = B^T B`` onto the span of
  orthonormal rows ``B`` (the "geometric bias" knob of FPHDP §2.3; with ``h_normal = 0`` the
  affine tangent kernel ``Y = x + P xi`` of science.md §2.2, exact for affine manifolds).

Every kernel is written as ``xi_h = F(sigma~) z`` with ``z ~ N(0, I_r)`` in a latent space of
dimension ``r`` (the rank of the kernel): ``r = d`` for the isotropic kernel, the rank of ``cov``,
or ``k`` for a tangent kernel with ``h_normal = 0``.  Monte-Carlo modes draw ``z``; the
"quadrature" mode of ``SmoothedScore`` puts Gauss-Hermite product nodes on ``z`` (``r <= 3``).

Nothing here is experimental: all kernels are [V]/[D] items of science.md.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Kernel", "GaussianKernel", "AnisotropicGaussianKernel"]


# ----------------------------------------------------------------------------------------------
# Bandwidth helpers (shared with density.py)
# ----------------------------------------------------------------------------------------------


def check_bandwidth(h, name: str = "h"):
    """``h`` as a finite float >= 0, or the callable itself (checked when it is evaluated)."""
    if callable(h):
        return h
    if isinstance(h, bool) or not isinstance(h, numbers.Real):
        raise TypeError(f"{name}: expected a real number >= 0 or a callable of sigma~, got {h!r}")
    value = float(h)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    if value < 0.0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def eval_bandwidth(h, sigma_tilde: np.ndarray, name: str = "h") -> np.ndarray:
    """Per-query bandwidth (M,) float64 of a constant or callable ``h`` at ``sigma_tilde`` (M,)."""
    n = sigma_tilde.shape[0]
    if not callable(h):
        return np.full(n, float(h))
    out = np.asarray(h(np.array(sigma_tilde, dtype=np.float64, copy=True)))
    if out.dtype.kind not in "fiu":
        raise TypeError(f"{name}: the bandwidth callable must return real numbers, got dtype {out.dtype}")
    try:
        out = np.broadcast_to(out.astype(np.float64), (n,)).copy()
    except ValueError:
        raise ValueError(
            f"{name}: the bandwidth callable must return a scalar or shape ({n},) for sigma~ of "
            f"shape ({n},), got shape {out.shape}"
        ) from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: the bandwidth callable returned a non-finite value")
    if np.any(out < 0.0):
        raise ValueError(f"{name}: the bandwidth callable returned a negative value ({out[out < 0.0][0]!r})")
    return out


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


class Kernel:
    """Base class of the location-independent Gaussian smoothing kernels.

    Subclasses implement :meth:`_bind`, which checks the kernel against the data dimension and
    returns a :class:`BoundKernel`.
    """

    def _bind(self, dim: int) -> "BoundKernel":  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not implement _bind")

    def covariance(self, dim: int, sigma_tilde: float = 1.0) -> np.ndarray:
        """The (dim, dim) float64 covariance ``Sigma`` of the perturbation at noise ``sigma_tilde``."""
        bound = self._bind(int(dim))
        f = bound.factor(np.array([float(sigma_tilde)]))
        return f @ f.T


class BoundKernel:
    """A kernel checked against a data dimension ``dim`` (internal to the smoothed models).

    Attributes
    ----------
    dim : int
    rank : int
        Latent dimension r: perturbations are ``F z`` with ``z ~ N(0, I_r)``.
    static_zero : bool
        True when every perturbation is exactly 0 (h = 0): smoothing is the identity.
    """

    dim: int
    rank: int
    static_zero: bool = False

    def scales(self, sigma_tilde: np.ndarray) -> np.ndarray:
        """Per-query scalar bandwidth multiplier (M,); 1 for kernels without time dependence."""
        return np.ones(sigma_tilde.shape[0])

    def offsets(self, z: np.ndarray, scale: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Perturbations (n, M, dim) float64 from latent draws ``z`` (n, M or 1, r)."""
        raise TypeError

    def stein_directions(self, z: np.ndarray, scale: np.ndarray) -> np.ndarray:  # pragma: no cover
        """``Sigma^{-1} xi`` (n, M, dim) for the perturbations ``xi = offsets(z, scale)``."""
        raise TypeError

    @property
    def invertible(self) -> bool:
        return False

    def factor(self, sigma_tilde: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """F (dim, r) at the first entry of ``sigma_tilde`` (for :meth:`Kernel.covariance`)."""
        raise TypeError


class GaussianKernel(Kernel):
    """Isotropic Gaussian kernel ``N(0, h^2 I)`` in x-space at time t (science.md §2.1).

    Parameters
    ----------
    h : float >= 0, or callable
        Bandwidth in x-units.  A callable receives the VE noise levels sigma~ = s/a as a float64
        array (M,) and returns a scalar or (M,) array of bandwidths >= 0 (e.g.
        ``lambda st: 0.5 * st``).  ``h = 0`` makes smoothing the identity.

    Examples
    --------
    >>> import nnscore as ns
    >>> k = ns.GaussianKernel(0.1)
    >>> k_sched = ns.GaussianKernel(lambda st: 0.5 * st)
    """

    def __init__(self, h):
        self.h = check_bandwidth(h, "h")

    def bandwidth(self, sigma_tilde) -> np.ndarray:
        """Bandwidth h (M,) float64 at the VE noise levels ``sigma_tilde`` (M,)."""
        st = np.atleast_1d(np.asarray(sigma_tilde, dtype=np.float64))
        return eval_bandwidth(self.h, st, "h")

    def _bind(self, dim: int) -> "BoundKernel":
        return _BoundIsotropic(self.h, dim)

    def __repr__(self) -> str:
        return f"GaussianKernel(h={self.h!r})"


class _BoundIsotropic(BoundKernel):
    def __init__(self, h, dim: int):
        self.h = h
        self.dim = dim
        self.static_zero = (not callable(h)) and h == 0.0
        self.rank = 0 if self.static_zero else dim

    def scales(self, sigma_tilde):
        return eval_bandwidth(self.h, sigma_tilde, "h")

    def offsets(self, z, scale):
        return z * scale[None, :, None]

    @property
    def invertible(self) -> bool:
        return not self.static_zero

    def stein_directions(self, z, scale):
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(scale > 0.0, 1.0 / np.where(scale > 0.0, scale, 1.0), 0.0)
        return z * inv[None, :, None]

    def factor(self, sigma_tilde):
        return float(self.scales(sigma_tilde)[0]) * np.eye(self.dim)


class AnisotropicGaussianKernel(Kernel):
    """Anisotropic Gaussian kernel ``N(0, Sigma)`` in x-space, constant in time (science.md §2.2).

    Give either ``cov`` or ``basis`` (with ``h_parallel`` and optionally ``h_normal``):

    * ``cov`` (d, d): symmetric positive semi-definite (eigenvalues >= -1e-12 max|eig|; small
      negative ones are clipped to 0).  Directions with eigenvalue <= 1e-12 max eig are dropped,
      so a rank-deficient ``cov`` smooths only along its range.
    * ``basis`` (k, d) with orthonormal rows (``B B^T = I_k`` to 1e-8), spanning a subspace with
      projector ``P = B^T B``: ``Sigma = h_parallel^2 P + h_normal^2 (I - P)``.  ``h_normal``
      defaults to 0, the tangent kernel ``Y = x + P xi`` (rank k).

    The data dimension d is checked when the kernel is given to a model.

    Parameters
    ----------
    cov : array-like (d, d), optional
    basis : array-like (k, d), optional
    h_parallel, h_normal : float >= 0, optional (``basis`` form only)
    """

    def __init__(self, cov=None, basis=None, h_parallel=None, h_normal=None):
        if (cov is None) == (basis is None):
            raise ValueError("cov: give exactly one of cov or basis (with h_parallel, h_normal)")
        self.cov = None
        self.basis = None
        self.h_parallel = None
        self.h_normal = None
        if cov is not None:
            if h_parallel is not None or h_normal is not None:
                raise ValueError("h_parallel: only used with basis=..., not with cov=...")
            c = _real_matrix(cov, "cov")
            if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
                raise ValueError(f"cov: expected a square (d, d) matrix, got shape {c.shape}")
            scale = float(np.max(np.abs(c))) if c.size else 0.0
            if np.max(np.abs(c - c.T)) > 1e-12 * max(scale, np.finfo(np.float64).tiny):
                raise ValueError("cov: must be symmetric (|cov - cov^T| > 1e-12 max|cov|)")
            c = 0.5 * (c + c.T)
            evals, evecs = np.linalg.eigh(c)
            top = float(np.max(np.abs(evals)))
            if evals.min() < -1e-12 * top:
                raise ValueError(
                    f"cov: must be positive semi-definite, smallest eigenvalue {evals.min()!r} "
                    f"< -1e-12 * max|eig| ({top!r})"
                )
            keep = evals > 1e-12 * top
            self.cov = c
            # F = V_+ sqrt(L_+) (d, r): xi = F z; Sigma^{-1} xi = V_+ L_+^{-1/2} z when r = d.
            self._f = evecs[:, keep] * np.sqrt(evals[keep])[None, :]
            self._g = evecs[:, keep] / np.sqrt(evals[keep])[None, :]
        else:
            b = _real_matrix(basis, "basis")
            if b.ndim == 1:
                b = b[None, :]
            if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] == 0:
                raise ValueError(f"basis: expected shape (k, d) with k >= 1, got {b.shape}")
            if b.shape[0] > b.shape[1]:
                raise ValueError(f"basis: needs k <= d orthonormal rows, got shape {b.shape}")
            gram_err = float(np.max(np.abs(b @ b.T - np.eye(b.shape[0]))))
            if gram_err > 1e-8:
                raise ValueError(f"basis: rows must be orthonormal (max |B B^T - I| = {gram_err:.3g} > 1e-8)")
            if h_parallel is None:
                raise ValueError("h_parallel: required with basis=...")
            self.basis = b
            hp = check_bandwidth(h_parallel, "h_parallel")
            hn = check_bandwidth(0.0 if h_normal is None else h_normal, "h_normal")
            if callable(hp):
                raise TypeError("h_parallel: must be a number (time-dependent anisotropic kernels are not supported)")
            if callable(hn):
                raise TypeError("h_normal: must be a number (time-dependent anisotropic kernels are not supported)")
            self.h_parallel, self.h_normal = hp, hn

    @property
    def data_dim(self) -> int:
        return int(self.cov.shape[0] if self.cov is not None else self.basis.shape[1])

    def _bind(self, dim: int) -> "BoundKernel":
        name = "cov" if self.cov is not None else "basis"
        if self.data_dim != dim:
            raise ValueError(
                f"{name}: the kernel is {self.data_dim}-dimensional but the data have d = {dim} coordinates"
            )
        if self.cov is not None:
            return _BoundFactor(self._f, self._g if self._f.shape[1] == dim else None)
        return _BoundBasis(self.basis, self.h_parallel, self.h_normal)

    def __repr__(self) -> str:
        if self.cov is not None:
            return f"AnisotropicGaussianKernel(cov=<{self.cov.shape[0]}x{self.cov.shape[1]}>)"
        return (
            f"AnisotropicGaussianKernel(basis=<{self.basis.shape[0]}x{self.basis.shape[1]}>, "
            f"h_parallel={self.h_parallel!r}, h_normal={self.h_normal!r})"
        )


def _real_matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite")
    return arr


class _BoundFactor(BoundKernel):
    """xi = F z with a fixed factor F (d, r); ``g`` = F^{-T} (d, d) when F is invertible."""

    def __init__(self, f: np.ndarray, g: np.ndarray | None):
        self.f = f
        self.g = g
        self.dim, self.rank = f.shape
        self.static_zero = self.rank == 0

    def offsets(self, z, scale):
        out = z @ self.f.T
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    @property
    def invertible(self) -> bool:
        return self.g is not None

    def stein_directions(self, z, scale):
        out = z @ self.g.T
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    def factor(self, sigma_tilde):
        return self.f


class _BoundBasis(BoundKernel):
    """Sigma^{1/2} = h_par P + h_norm (I - P), P = B^T B, applied in O(k d) per draw."""

    def __init__(self, basis: np.ndarray, h_par: float, h_norm: float):
        self.b = basis
        self.h_par, self.h_norm = h_par, h_norm
        k, self.dim = basis.shape
        self.tangent_only = h_norm == 0.0
        self.static_zero = h_par == 0.0 and h_norm == 0.0
        self.rank = 0 if self.static_zero else (k if self.tangent_only else self.dim)

    def offsets(self, z, scale):
        if self.tangent_only:  # z (n, M, k): xi = h_par B^T z
            out = self.h_par * (z @ self.b)
        else:  # z (n, M, d): xi = h_norm z + (h_par - h_norm) P z
            out = self.h_norm * z + (self.h_par - self.h_norm) * ((z @ self.b.T) @ self.b)
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    @property
    def invertible(self) -> bool:
        return self.h_par > 0.0 and self.h_norm > 0.0

    def stein_directions(self, z, scale):
        # Sigma^{-1} xi = Sigma^{-1/2} z = z / h_norm + (1/h_par - 1/h_norm) P z.
        out = z / self.h_norm + (1.0 / self.h_par - 1.0 / self.h_norm) * ((z @ self.b.T) @ self.b)
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    def factor(self, sigma_tilde):
        p = self.b.T @ self.b
        full = self.h_par * p + self.h_norm * (np.eye(self.dim) - p)
        if self.tangent_only:
            return self.h_par * self.b.T
        return full
