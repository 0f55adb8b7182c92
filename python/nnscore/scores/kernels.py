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

Location-dependent kernels (science.md §2.2 items 2-3) receive the query rows as well:
:meth:`BoundKernel.offsets` is called as ``offsets(z, scale, x, alpha)`` with ``x`` (M, d) the
query rows in the schedule's x-coordinates (the coordinates the offsets are added to) and
``alpha`` (M,) the schedule's a_t of each query; the location-independent kernels ignore both.
Kernels that need the training set get it at binding time: :meth:`Kernel._bind` receives a
:class:`KernelContext` (the smoothed model's base model, whose ``train`` rows are fetched
lazily).  With a location-dependent kernel ``SmoothedScore`` computes the "score-smoothing"
field ``E_{Y ~ k_x} grad log p_t(Y)`` (what FPHDP's code does) by default, or with
``smoothing="log_density"`` the gradient of the smoothed log-density ``grad_x E log p_t(Y(x))`` by
the reparameterisation gradient ``E[(dY/dx)^T grad log p_t(Y)]`` (:meth:`BoundKernel.offsets_vjp`;
the two coincide for location-independent kernels and, almost everywhere, for the tangent kernel,
whose frames are constant between changes of the neighbour set).

* :class:`TangentKernel` (experimental, [R] library extension): ``Y = x + U_x U_x^T h xi`` with
  ``U_x`` the top principal directions of the ``k_neighbors`` training points nearest to x/a.
* :class:`ManifoldKernel` (oracle, [Vc] FPHDP ``get_manifold_translated_smoothed_fn``):
  ``Y = x + Pi(Pi(x) + h xi) - Pi(x)`` for a known projection Pi onto the data manifold.

The location-independent kernels are [V]/[D] items of science.md; the two location-dependent
ones are labelled above.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "Kernel",
    "KernelContext",
    "GaussianKernel",
    "AnisotropicGaussianKernel",
    "TangentKernel",
    "ManifoldKernel",
]


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


class KernelContext:
    """What a smoothed model tells a kernel when binding it (:meth:`Kernel._bind`).

    Parameters
    ----------
    base : score model or None
        The model being smoothed.  :attr:`train` is its ``train`` rows (N, d), fetched on first
        use, or None when the base has no ``train`` attribute.
    """

    def __init__(self, base=None):
        self.base = base
        self._train = None
        self._fetched = False

    @property
    def train(self):
        if not self._fetched:
            tr = getattr(self.base, "train", None) if self.base is not None else None
            if tr is not None:
                tr = np.asarray(tr)
                tr = tr.reshape(tr.shape[0], -1)
            self._train = tr
            self._fetched = True
        return self._train


class Kernel:
    """Base class of the smoothing kernels.

    Subclasses implement :meth:`_bind`, which checks the kernel against the data dimension (and,
    for kernels that need it, the :class:`KernelContext`: the base model's training set) and
    returns a :class:`BoundKernel`.
    """

    def _bind(self, dim: int, context: "KernelContext | None" = None) -> "BoundKernel":  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not implement _bind")

    def covariance(self, dim: int, sigma_tilde: float = 1.0) -> np.ndarray:
        """The (dim, dim) float64 covariance ``Sigma`` of the perturbation at noise ``sigma_tilde``
        (location-independent kernels only)."""
        if getattr(self, "location_dependent", False):
            raise TypeError(f"{type(self).__name__} is location-dependent: it has no single covariance")
        bound = self._bind(int(dim))
        f = bound.factor(np.array([float(sigma_tilde)]))
        return f @ f.T


class BoundKernel:
    """A kernel checked against a data dimension ``dim`` (internal to the smoothed models).

    Attributes
    ----------
    dim : int
    rank : int
        Latent dimension r: perturbations are ``F z`` (``F_x z`` for a location-dependent
        kernel) with ``z ~ N(0, I_r)``.
    static_zero : bool
        True when every perturbation is exactly 0 (h = 0): smoothing is the identity.
    location_dependent : bool
        True when the perturbation law depends on the query x (science.md §2.2 items 2-3).
    zero_mean : bool
        True when every offset is an odd, linear function of z (``offsets(-z) = -offsets(z)``,
        so E offset = 0): the control-variate estimator, Gauss-Hermite quadrature and the
        McDiarmid bound are valid.  False for :class:`ManifoldKernel` (only "raw" applies).
    """

    dim: int
    rank: int
    static_zero: bool = False
    location_dependent: bool = False
    zero_mean: bool = True

    def scales(self, sigma_tilde: np.ndarray) -> np.ndarray:
        """Per-query scalar bandwidth multiplier (M,); 1 for kernels without time dependence."""
        return np.ones(sigma_tilde.shape[0])

    def offsets(self, z: np.ndarray, scale: np.ndarray, x=None, alpha=None) -> np.ndarray:  # pragma: no cover
        """Perturbations (n, M, dim) float64 from latent draws ``z`` (n, M or 1, r).

        ``x`` (M, dim) float64: the query rows in the schedule's x-coordinates (the offsets are
        added to them); ``alpha`` (M,): the schedule's a_t per query.  Location-independent
        kernels ignore both; location-dependent ones require them.
        """
        raise TypeError

    def stein_directions(self, z: np.ndarray, scale: np.ndarray, x=None, alpha=None) -> np.ndarray:  # pragma: no cover
        """``Sigma^{-1} xi`` (n, M, dim) for the perturbations ``xi = offsets(z, scale, x, alpha)``."""
        raise TypeError

    def offsets_vjp(self, z: np.ndarray, scale: np.ndarray, x, alpha, v: np.ndarray) -> np.ndarray | None:
        """``(d offsets / d x)^T v`` (n, M, dim) for per-sample vectors ``v`` (n, M, dim), or None
        when the offsets do not depend on x (almost everywhere): the reparameterisation term of
        the "log-density smoothing" gradient ``grad_x E log p(x + offset(x, z))``."""
        return None

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

    def _bind(self, dim: int, context=None) -> "BoundKernel":
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

    def offsets(self, z, scale, x=None, alpha=None):
        return z * scale[None, :, None]

    @property
    def invertible(self) -> bool:
        return not self.static_zero

    def stein_directions(self, z, scale, x=None, alpha=None):
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

    def _bind(self, dim: int, context=None) -> "BoundKernel":
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

    def offsets(self, z, scale, x=None, alpha=None):
        out = z @ self.f.T
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    @property
    def invertible(self) -> bool:
        return self.g is not None

    def stein_directions(self, z, scale, x=None, alpha=None):
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

    def offsets(self, z, scale, x=None, alpha=None):
        if self.tangent_only:  # z (n, M, k): xi = h_par B^T z
            out = self.h_par * (z @ self.b)
        else:  # z (n, M, d): xi = h_norm z + (h_par - h_norm) P z
            out = self.h_norm * z + (self.h_par - self.h_norm) * ((z @ self.b.T) @ self.b)
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    @property
    def invertible(self) -> bool:
        return self.h_par > 0.0 and self.h_norm > 0.0

    def stein_directions(self, z, scale, x=None, alpha=None):
        # Sigma^{-1} xi = Sigma^{-1/2} z = z / h_norm + (1/h_par - 1/h_norm) P z.
        out = z / self.h_norm + (1.0 / self.h_par - 1.0 / self.h_norm) * ((z @ self.b.T) @ self.b)
        return np.broadcast_to(out, (z.shape[0], scale.shape[0], self.dim)) if out.shape[1] == 1 else out

    def factor(self, sigma_tilde):
        p = self.b.T @ self.b
        full = self.h_par * p + self.h_norm * (np.eye(self.dim) - p)
        if self.tangent_only:
            return self.h_par * self.b.T
        return full


# ----------------------------------------------------------------------------------------------
# Location-dependent kernels (science.md §2.2 items 2-3)
# ----------------------------------------------------------------------------------------------


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {low}, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")
    return value


def _check_queries(x, alpha, kernel: str):
    if x is None or alpha is None:
        raise TypeError(f"{kernel} is location-dependent: offsets() needs the query rows x and alpha")
    x = np.asarray(x, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    return x, np.broadcast_to(alpha, (x.shape[0],))


#: Above this many training points the tangent kernel's neighbour search uses a faiss flat index
#: (float32 distances); below it, exact float64 distances.
TANGENT_EXACT_MAX_TRAIN = 50_000


class TangentKernel(Kernel):
    """Estimated tangent kernel ``Y = x + U_x U_x^T h xi``, ``xi ~ N(0, I_d)`` (science.md §2.2 item 3).

    **Experimental** ([R], a library extension that makes FPHDP's oracle manifold kernel
    practical).  ``U_x`` (d, dim) holds the top ``dim`` principal directions of a local PCA
    (centred) of the ``k_neighbors`` training points nearest to ``x / a_t`` (data coordinates);
    the perturbation is the Gaussian ``h U_x z``, ``z ~ N(0, I_dim)``, in x-space at time t.  On
    an affine data manifold the local PCA recovers its tangent space and the kernel is the affine
    tangent kernel of FPHDP Prop. 3.1 (the normal part of the score is left unchanged).

    The training set is the smoothed model's ``base.train`` (bound by :class:`SmoothedScore`).
    Neighbours are found with exact float64 distances for N <= 50 000 training points and a faiss
    flat (float32) index above.  The offsets are odd and linear in z for each query, so the
    control-variate and raw estimators, antithetic pairs, "fixed" mode and (for ``dim <= 3``)
    Gauss-Hermite quadrature all apply; "stein" does not (rank ``dim``, location-dependent).
    The smoothed model's ``divergence`` is None (the mean of the base divergence is not the
    divergence of a location-dependent smoothing).

    Parameters
    ----------
    h : float >= 0, or callable
        Bandwidth in x-units, as for :class:`GaussianKernel` (``h = 0``: no smoothing).
    dim : int >= 1
        Intrinsic dimension n of the tangent spaces (<= d, checked when bound).
    k_neighbors : int > dim, default 32
        Training points in each local PCA (capped at N); a centred PCA of k points has rank
        <= k - 1, so ``k_neighbors >= dim + 1``.
    """

    location_dependent = True

    def __init__(self, h, dim, k_neighbors=32):
        self.h = check_bandwidth(h, "h")
        self.dim = _check_int(dim, "dim", 1)
        self.k_neighbors = _check_int(k_neighbors, "k_neighbors", 1)
        if self.k_neighbors <= self.dim:
            raise ValueError(
                f"k_neighbors: must be > dim = {self.dim} (a centred local PCA of k points has rank "
                f"<= k - 1), got {self.k_neighbors}"
            )

    def bandwidth(self, sigma_tilde) -> np.ndarray:
        """Bandwidth h (M,) float64 at the VE noise levels ``sigma_tilde`` (M,)."""
        st = np.atleast_1d(np.asarray(sigma_tilde, dtype=np.float64))
        return eval_bandwidth(self.h, st, "h")

    def _bind(self, dim: int, context=None) -> "BoundKernel":
        if self.dim > dim:
            raise ValueError(f"dim: the tangent dimension {self.dim} exceeds the data dimension d = {dim}")
        train = None if context is None else context.train
        if train is None:
            raise ValueError(
                "kernel: TangentKernel needs a training set for its local PCA; smooth a base model "
                "with a `train` attribute (EmpiricalScore, KNNScore, ...)"
            )
        if train.ndim != 2 or train.shape[1] != dim:
            raise ValueError(f"kernel: the base's training rows have shape {train.shape}, expected (N, {dim})")
        if train.shape[0] <= self.dim:
            raise ValueError(
                f"k_neighbors: a {self.dim}-dim local PCA needs at least {self.dim + 1} training points, "
                f"the base has N = {train.shape[0]}"
            )
        return _BoundTangent(self.h, self.dim, min(self.k_neighbors, train.shape[0]), train)

    def __repr__(self) -> str:
        return f"TangentKernel(h={self.h!r}, dim={self.dim}, k_neighbors={self.k_neighbors})"


class _BoundTangent(BoundKernel):
    location_dependent = True

    def __init__(self, h, n_dim: int, k: int, train: np.ndarray):
        self.h = h
        self.n_dim = n_dim
        self.k = k
        self.train = train
        self.dim = train.shape[1]
        self.static_zero = (not callable(h)) and h == 0.0
        self.rank = 0 if self.static_zero else n_dim
        self._index = None
        self._sq = None

    def scales(self, sigma_tilde):
        return eval_bandwidth(self.h, sigma_tilde, "h")

    def neighbors(self, y: np.ndarray) -> np.ndarray:
        """Indices (M, k) of the k training rows nearest to the data-space points ``y`` (M, d)."""
        n_train = self.train.shape[0]
        if n_train > TANGENT_EXACT_MAX_TRAIN:
            if self._index is None:
                from ..metrics.memorization import _faiss

                faiss = _faiss()
                index = faiss.IndexFlatL2(self.dim)
                index.add(np.ascontiguousarray(self.train, dtype=np.float32))
                self._index = index
            _, idx = self._index.search(np.ascontiguousarray(y, dtype=np.float32), self.k)
            return idx.astype(np.int64)
        if self._sq is None:
            tr = self.train.astype(np.float64, copy=False)
            self._sq = np.einsum("ij,ij->i", tr, tr)
        tr = self.train.astype(np.float64, copy=False)
        out = np.empty((y.shape[0], self.k), dtype=np.int64)
        step = max(1, (1 << 22) // max(n_train, 1))
        for a in range(0, y.shape[0], step):
            yb = y[a : a + step]
            d2 = self._sq[None, :] - 2.0 * (yb @ tr.T)  # + |y|^2, constant per row
            if self.k < n_train:
                part = np.argpartition(d2, self.k - 1, axis=1)[:, : self.k]
            else:
                part = np.broadcast_to(np.arange(n_train), (yb.shape[0], n_train)).copy()
            out[a : a + step] = part
        return out

    def frames(self, y: np.ndarray) -> np.ndarray:
        """U (M, d, dim): top principal directions of the local PCA at data-space points ``y``."""
        idx = self.neighbors(y)
        out = np.empty((y.shape[0], self.dim, self.n_dim))
        step = max(1, (1 << 22) // (self.k * self.dim))
        for a in range(0, y.shape[0], step):
            pts = self.train[idx[a : a + step]].astype(np.float64)  # (b, k, d)
            pts -= pts.mean(axis=1, keepdims=True)
            _, _, vt = np.linalg.svd(pts, full_matrices=False)  # (b, min(k, d), d)
            out[a : a + step] = np.swapaxes(vt[:, : self.n_dim, :], 1, 2)
        return out

    def offsets(self, z, scale, x=None, alpha=None):
        x, alpha = _check_queries(x, alpha, "TangentKernel")
        n_q = x.shape[0]
        u = self.frames(x / alpha[:, None])
        zb = np.broadcast_to(z, (z.shape[0], n_q, z.shape[2]))
        return np.einsum("nmr,mdr->nmd", zb, u) * scale[None, :, None]

    def factor(self, sigma_tilde):  # pragma: no cover - location-dependent
        raise TypeError("TangentKernel is location-dependent: it has no single factor")


class ManifoldKernel(Kernel):
    """Oracle translated-manifold kernel ``Y = x + Pi(Pi(x) + h xi) - Pi(x)``, ``xi ~ N(0, I_d)``.

    **Oracle** (science.md §2.2 item 2; [Vc] FPHDP's ``get_manifold_translated_smoothed_fn``):
    it needs the projection Pi onto the data manifold M, known only for synthetic data.  It moves
    x along the translated copy of M through x.  At time t it acts in x-space on the scaled
    manifold a_t M, i.e. ``Y = x + a (Pi(Pi(x/a) + h xi / a) - Pi(x/a))`` (the formula above for
    the VE schedule, a = 1).

    The offsets are not zero-mean (nor odd in xi), so :class:`SmoothedScore` accepts only
    ``estimator="raw"`` (the mean of the base scores at the perturbed points, FPHDP's
    "score-smoothing"), with or without antithetic pairs (xi and -xi are both valid draws) and
    not in "quadrature" mode.  ``mc_stderr`` is reported as usual; ``error_bound`` and
    ``divergence`` are None (the McDiarmid bound of science.md §2.1.3 assumes the linear part of
    the score cancels, which it does not here).

    Parameters
    ----------
    h : float >= 0, or callable
        Bandwidth in x-units, as for :class:`GaussianKernel` (``h = 0``: no smoothing).
    projection : callable or object with ``.project``
        Pi: (M, d) float64 points -> (M, d) nearest points of M, e.g. a
        :class:`nnscore.datasets.Manifold` (its ``project`` method is used) or
        ``lambda p: p / np.linalg.norm(p, axis=1, keepdims=True)``.
    jacobian : callable, optional
        ``J(p)`` (M, d) -> (M, d, d), ``J[m, i, k] = d Pi_i / d p_k``: used only by
        ``SmoothedScore(..., smoothing="log_density")``.  Default: central differences of Pi with
        step ``1e-5 max(1, ||p||)`` (2 d projections per point; about 1e-8 relative accuracy for
        projections exact to 1e-13).
    """

    location_dependent = True

    def __init__(self, h, projection, jacobian=None):
        self.h = check_bandwidth(h, "h")
        if jacobian is not None and not callable(jacobian):
            raise TypeError(f"jacobian: expected None or a callable (M, d) -> (M, d, d), got {type(jacobian).__name__}")
        self.jacobian = jacobian
        project = getattr(projection, "project", None)
        if callable(project):
            self._project = project
        elif callable(projection):
            self._project = projection
        else:
            raise TypeError(
                "projection: expected a callable (M, d) -> (M, d) or an object with a .project method "
                f"(a nnscore.datasets Manifold), got {type(projection).__name__}"
            )
        self.projection = projection

    def bandwidth(self, sigma_tilde) -> np.ndarray:
        """Bandwidth h (M,) float64 at the VE noise levels ``sigma_tilde`` (M,)."""
        st = np.atleast_1d(np.asarray(sigma_tilde, dtype=np.float64))
        return eval_bandwidth(self.h, st, "h")

    def _bind(self, dim: int, context=None) -> "BoundKernel":
        return _BoundManifold(self.h, self._project, dim, self.jacobian)

    def __repr__(self) -> str:
        p = self.projection
        name = getattr(p, "__name__", None) if not hasattr(p, "project") else None
        return f"ManifoldKernel(h={self.h!r}, projection={name or type(p).__name__})"


class _BoundManifold(BoundKernel):
    location_dependent = True
    zero_mean = False

    def __init__(self, h, project, dim: int, jacobian=None):
        self.h = h
        self.project = project
        self.jacobian = jacobian
        self.dim = dim
        self.static_zero = (not callable(h)) and h == 0.0
        self.rank = 0 if self.static_zero else dim

    def scales(self, sigma_tilde):
        return eval_bandwidth(self.h, sigma_tilde, "h")

    def _pi(self, p: np.ndarray) -> np.ndarray:
        out = np.asarray(self.project(p))
        if out.dtype.kind not in "fiu" or out.shape != p.shape:
            raise ValueError(
                f"projection: must map (M, {self.dim}) real points to (M, {self.dim}) real points, "
                f"got shape {out.shape} dtype {out.dtype} for input shape {p.shape}"
            )
        out = out.astype(np.float64, copy=False)
        if not np.all(np.isfinite(out)):
            raise ValueError("projection: returned a non-finite value")
        return out

    def offsets(self, z, scale, x=None, alpha=None):
        x, alpha = _check_queries(x, alpha, "ManifoldKernel")
        n_q = x.shape[0]
        n = z.shape[0]
        base = self._pi(x / alpha[:, None])  # Pi(x/a), (M, d)
        step = z * (scale / alpha)[None, :, None]
        moved = self._pi((base[None, :, :] + step).reshape(n * n_q, self.dim)).reshape(n, n_q, self.dim)
        off = (moved - base[None, :, :]) * alpha[None, :, None]
        off[:, scale == 0.0, :] = 0.0
        return off

    def offsets_vjp(self, z, scale, x, alpha, v):
        # Y = x + a (Pi(w) - Pi(p)) with p = x / a, w = Pi(p) + h z / a:
        # dY/dx = I + (J(w) - I) J(p), so the term is J(p)^T (J(w)^T v - v).
        x, alpha = _check_queries(x, alpha, "ManifoldKernel")
        n, n_q = v.shape[0], x.shape[0]
        p = x / alpha[:, None]
        base = self._pi(p)
        w = (base[None, :, :] + z * (scale / alpha)[None, :, None]).reshape(n * n_q, self.dim)
        u = self._jacobian_t_times(w, v.reshape(n * n_q, self.dim)).reshape(n, n_q, self.dim) - v
        jp = self._jacobian(p)  # (M, d, d)
        out = np.einsum("mik,nmi->nmk", jp, u)
        out[:, scale == 0.0, :] = 0.0  # no smoothing: Y = x exactly
        return out

    def _jacobian(self, p: np.ndarray) -> np.ndarray:
        """J (B, d, d) of Pi at the rows of p: the user's, or central differences."""
        if self.jacobian is not None:
            jac = np.asarray(self.jacobian(p), dtype=np.float64)
            if jac.shape != (p.shape[0], self.dim, self.dim) or not np.all(np.isfinite(jac)):
                raise ValueError(
                    f"jacobian: must map (M, {self.dim}) points to finite (M, {self.dim}, {self.dim}) "
                    f"matrices, got shape {jac.shape}"
                )
            return jac
        n_pts, d = p.shape
        step = 1e-5 * np.maximum(1.0, np.linalg.norm(p, axis=1))  # (B,)
        shifts = step[:, None, None] * np.eye(d)[None]  # (B, d, d): row k shifts coordinate k
        plus = self._pi((p[:, None, :] + shifts).reshape(n_pts * d, d)).reshape(n_pts, d, d)
        minus = self._pi((p[:, None, :] - shifts).reshape(n_pts * d, d)).reshape(n_pts, d, d)
        # plus[b, k, i] = Pi_i(p_b + step e_k): transpose to J[b, i, k]
        return np.swapaxes(plus - minus, 1, 2) / (2.0 * step[:, None, None])

    def _jacobian_t_times(self, p: np.ndarray, v: np.ndarray, chunk_entries: int = 1 << 22) -> np.ndarray:
        """J(p)^T v row by row, in chunks of at most ``chunk_entries`` Jacobian entries."""
        out = np.empty_like(v)
        step = max(1, chunk_entries // (self.dim * self.dim))
        for a in range(0, p.shape[0], step):
            out[a : a + step] = np.einsum("bik,bi->bk", self._jacobian(p[a : a + step]), v[a : a + step])
        return out

    def factor(self, sigma_tilde):  # pragma: no cover - location-dependent
        raise TypeError("ManifoldKernel is location-dependent: it has no single factor")
