"""Noise schedules of Gaussian-affine diffusion processes ``x_t = a(t) x_0 + s(t) eps``.

Every score computation in nnscore happens in VE-normalised coordinates
``y = x / a(t)`` with noise level ``sigma_tilde = s(t) / a(t)``; a schedule is the map between
a process time ``t`` and those coordinates, plus the conversions from a denoiser output
``D ~ E[x_0 | x_t]`` to a score, a noise prediction and a probability-flow velocity.

Schedules
---------
========== ===================== ====================== ============ ===========
name       a(t)                  s(t)                   domain       data end
========== ===================== ====================== ============ ===========
ve         1                     t                      (0, inf)     t = 0
vp         exp(-t^2 db/4-t b0/2) sqrt(1 - a^2)          (0, 1]       t = 0
vp-cosine  cos-ratio (N&D 2021)  sqrt(1 - a^2)          (0, 1)       t = 0
edm        1                     t                      (0, inf)     t = 0
flow       1 - t                 t                      (0, 1)       t = 0
cfdm       t                     1 - t                  (0, 1)       t = 1
========== ===================== ====================== ============ ===========

The domain is the set of ``t`` where ``sigma_tilde`` is positive and finite (for ``vp`` it is
additionally capped at the conventional ``t = 1``). ``alpha``, ``sigma`` and ``sigma_tilde`` also
accept the data end, where ``sigma_tilde = 0``; every other per-time method needs ``t`` inside
the domain because it divides by ``s(t)``.

Noise grids
-----------
:func:`karras_grid`, :func:`geometric_grid` and :func:`linear_grid` (dispatched by
:func:`noise_grid`) return ``n + 1`` decreasing ``sigma_tilde`` values ending in an exact 0;
:meth:`Schedule.grid` maps such a grid to process times.

Everything is float64 NumPy.
"""
from __future__ import annotations

import abc
import math
import numbers
import operator

import numpy as np

__all__ = [
    "Schedule",
    "VE",
    "VP",
    "VPCosine",
    "EDM",
    "Flow",
    "CFDM",
    "SCHEDULE_NAMES",
    "GRID_KINDS",
    "get_schedule",
    "karras_grid",
    "geometric_grid",
    "linear_grid",
    "noise_grid",
]

#: Kinds accepted by :func:`noise_grid` and :meth:`Schedule.grid`.
GRID_KINDS = ("karras", "geometric", "linear")


# ----------------------------------------------------------------------------------------------
# Argument checking helpers
# ----------------------------------------------------------------------------------------------


def _real_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; TypeError naming ``name`` unless it is real-valued."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: must be a real number or array of real numbers ({exc})") from None
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "c":
        raise TypeError(f"{name}: must be real, got a complex value")
    raise TypeError(f"{name}: must be a real number or array of real numbers, got dtype {arr.dtype}")


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> float:
    """The first offending entry, for error messages."""
    return float(arr[bad].flat[0])


def _out(arr: np.ndarray, scalar: bool):
    """Scalar inputs give a float64 scalar back, array inputs an array."""
    return np.float64(arr[()]) if scalar else arr


def _positive_int(n, name: str = "n") -> int:
    """``n`` as a Python int >= 1; bools and non-integral types are a TypeError."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name}: must be an integer >= 1, got {n!r} of type {type(n).__name__}")
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {n}")
    return n


def _finite_real(value, name: str) -> float:
    """``value`` as a finite Python float; TypeError for non-real, ValueError for NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def _check_grid_args(n, sigma_min, sigma_max, rho=None):
    n = _positive_int(n, "n")
    sigma_min = _finite_real(sigma_min, "sigma_min")
    sigma_max = _finite_real(sigma_max, "sigma_max")
    if not sigma_min > 0.0:
        raise ValueError(f"sigma_min: must be > 0, got {sigma_min}")
    if not sigma_min <= sigma_max:
        raise ValueError(
            f"sigma_min: must be <= sigma_max, got sigma_min={sigma_min} > sigma_max={sigma_max}"
        )
    if rho is not None:
        rho = _finite_real(rho, "rho")
        if not rho > 0.0:
            raise ValueError(f"rho: must be > 0, got {rho}")
    return n, sigma_min, sigma_max, rho


# ----------------------------------------------------------------------------------------------
# Noise grids
# ----------------------------------------------------------------------------------------------


def _interp(n: int, start: float, stop: float) -> np.ndarray:
    """n points from ``start`` to ``stop`` (both exact), as ``start + (i/(n-1)) (stop - start)``.

    Shared by the linear and Karras grids so that Karras with ``rho = 1`` is bit-identical to
    the linear grid.
    """
    if n == 1:
        return np.array([start], dtype=np.float64)
    frac = np.arange(n, dtype=np.float64) / (n - 1)
    out = start + frac * (stop - start)
    out[0], out[-1] = start, stop
    return out


def _append_zero(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values, np.zeros(1, dtype=np.float64)])


def karras_grid(n, sigma_min, sigma_max, rho=7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels, followed by 0.

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for
    ``i = 0..n-1``, then ``sigma_n = 0``.

    Parameters
    ----------
    n : int
        Number of nonzero levels (>= 1); ``n = 1`` gives ``[sigma_max, 0]``.
    sigma_min, sigma_max : float
        ``0 < sigma_min <= sigma_max``, finite.
    rho : float, default 7.0
        Warping exponent (> 0); ``rho = 1`` is the linear grid, larger values put more levels
        near ``sigma_min``.

    Returns
    -------
    (n + 1,) float64 array
        Non-increasing (strictly decreasing when ``sigma_min < sigma_max``); the first entry is
        exactly ``sigma_max``, entry ``n - 1`` exactly ``sigma_min`` and the last exactly 0.

    Raises
    ------
    ValueError
        On a bad ``n``, ``sigma_min``, ``sigma_max`` or ``rho``, naming the argument.
    """
    n, sigma_min, sigma_max, rho = _check_grid_args(n, sigma_min, sigma_max, rho)
    inv = 1.0 / rho
    levels = _interp(n, sigma_max**inv, sigma_min**inv) ** rho
    # Taking the rho-th power of the rho-th root is not exact in floating point: pin the ends.
    levels[0] = sigma_max
    levels[-1] = sigma_min if n > 1 else sigma_max
    return _append_zero(levels)


def geometric_grid(n, sigma_min, sigma_max) -> np.ndarray:
    """Geometrically spaced noise levels from ``sigma_max`` to ``sigma_min``, followed by 0.

    Parameters and return value as in :func:`karras_grid` (without ``rho``).
    """
    n, sigma_min, sigma_max, _ = _check_grid_args(n, sigma_min, sigma_max)
    levels = np.exp(_interp(n, math.log(sigma_max), math.log(sigma_min)))
    levels[0] = sigma_max  # exp(log(x)) need not round-trip exactly
    levels[-1] = sigma_min if n > 1 else sigma_max
    return _append_zero(levels)


def linear_grid(n, sigma_min, sigma_max) -> np.ndarray:
    """Linearly spaced noise levels from ``sigma_max`` to ``sigma_min``, followed by 0.

    Parameters and return value as in :func:`karras_grid` (without ``rho``).
    """
    n, sigma_min, sigma_max, _ = _check_grid_args(n, sigma_min, sigma_max)
    return _append_zero(_interp(n, sigma_max, sigma_min))


def noise_grid(kind, n, sigma_min, sigma_max, rho=7.0) -> np.ndarray:
    """Dispatch to :func:`karras_grid`, :func:`geometric_grid` or :func:`linear_grid`.

    Parameters
    ----------
    kind : {"karras", "geometric", "linear"}
        Case-insensitive.
    n, sigma_min, sigma_max, rho
        As in :func:`karras_grid`; ``rho`` is only used (and checked) by ``"karras"``.

    Returns
    -------
    (n + 1,) float64 array ending in 0.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind: must be one of {', '.join(GRID_KINDS)}, got {kind!r}")
    key = kind.strip().lower()
    if key == "karras":
        return karras_grid(n, sigma_min, sigma_max, rho)
    if key == "geometric":
        return geometric_grid(n, sigma_min, sigma_max)
    if key == "linear":
        return linear_grid(n, sigma_min, sigma_max)
    raise ValueError(f"kind: must be one of {', '.join(GRID_KINDS)}, got {kind!r}")


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


class Schedule(abc.ABC):
    """Abstract Gaussian-affine noise schedule ``x_t = a(t) x_0 + s(t) eps``.

    Subclasses implement the private, unchecked kernels ``_alpha``, ``_sigma``, ``_d_alpha``,
    ``_d_sigma`` and ``_t_from_st`` on float64 arrays already inside the domain; the public
    methods validate, vectorise and return a float64 scalar for scalar input, an array otherwise.

    Attributes
    ----------
    name : str
        Registry name accepted by :func:`get_schedule`.
    """

    name: str = ""
    #: Open lower end of the domain of t.
    _t_lo: float = 0.0
    #: Upper end of the domain of t.
    _t_hi: float = 1.0
    #: Whether ``_t_hi`` belongs to the domain.
    _t_hi_closed: bool = False
    #: The t where sigma_tilde = 0 (either 0 or 1).
    _data_end: float = 0.0

    # -- kernels ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _alpha(self, t: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _sigma(self, t: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _d_alpha(self, t: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _d_sigma(self, t: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _t_from_st(self, st: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _params(self) -> tuple:
        """``((name, value), ...)`` of the constructor parameters, for repr and equality."""

    @abc.abstractmethod
    def _default_sigma_range(self) -> tuple[float, float]:
        ...

    def _sigma_tilde(self, t: np.ndarray) -> np.ndarray:
        # Subclasses override where s/a loses accuracy.
        return self._sigma(t) / self._alpha(t)

    def _default_rho(self) -> float:
        return 7.0

    # -- domain ----------------------------------------------------------------------------

    @property
    def t_min(self) -> float:
        """Lower end of the (open) domain of t."""
        return float(self._t_lo)

    @property
    def t_max(self) -> float:
        """Upper end of the domain of t (included only for ``vp``)."""
        return float(self._t_hi)

    @property
    def data_end(self) -> float:
        """The time at which ``sigma_tilde = 0`` (0, or 1 for ``cfdm``)."""
        return float(self._data_end)

    @property
    def default_sigma_range(self) -> tuple[float, float]:
        """Default ``(sigma_min, sigma_max)`` of :meth:`grid`, in sigma_tilde units."""
        return self._default_sigma_range()

    def _domain_text(self) -> str:
        hi = "inf" if math.isinf(self._t_hi) else repr(float(self._t_hi))
        op = "<=" if self._t_hi_closed else "<"
        return f"{float(self._t_lo)!r} < t {op} {hi}"

    def _check_t(self, t, allow_data_end: bool, name: str = "t"):
        arr = _real_array(t, name)
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f"{name}: must be finite, got {_first_bad(arr, ~finite)}")
        inside = arr > self._t_lo
        inside &= (arr <= self._t_hi) if self._t_hi_closed else (arr < self._t_hi)
        if allow_data_end:
            inside |= arr == self._data_end
        if not inside.all():
            extra = f" (or t = {float(self._data_end)!r})" if allow_data_end else ""
            raise ValueError(
                f"{name}: must satisfy {self._domain_text()}{extra} for the {self.name} schedule, "
                f"got {_first_bad(arr, ~inside)}"
            )
        return arr, arr.ndim == 0

    def validate_t(self, t) -> np.ndarray:
        """Check that every ``t`` lies in the open domain where ``sigma_tilde`` is in (0, inf).

        Parameters
        ----------
        t : float or array_like of float

        Returns
        -------
        float64 ndarray
            ``t`` converted (0-d for scalar input).

        Raises
        ------
        TypeError
            If ``t`` is complex or not numeric.
        ValueError
            If ``t`` is NaN, infinite or outside the domain; the message starts with ``t:``.
        """
        return self._check_t(t, allow_data_end=False)[0]

    # -- coefficients ----------------------------------------------------------------------

    def alpha(self, t):
        """Signal scale ``a(t)``; the data end is accepted."""
        arr, scalar = self._check_t(t, allow_data_end=True)
        return _out(self._alpha(arr), scalar)

    def sigma(self, t):
        """Noise scale ``s(t)``; the data end is accepted (where it is 0)."""
        arr, scalar = self._check_t(t, allow_data_end=True)
        return _out(self._sigma(arr), scalar)

    def d_alpha(self, t):
        """Exact derivative ``da/dt``."""
        arr, scalar = self._check_t(t, allow_data_end=False)
        return _out(self._d_alpha(arr), scalar)

    def d_sigma(self, t):
        """Exact derivative ``ds/dt`` (unbounded at the data end for the VP schedules)."""
        arr, scalar = self._check_t(t, allow_data_end=False)
        return _out(self._d_sigma(arr), scalar)

    def sigma_tilde(self, t):
        """VE-equivalent noise level ``s(t) / a(t)``; 0 at the data end."""
        arr, scalar = self._check_t(t, allow_data_end=True)
        return _out(self._sigma_tilde(arr), scalar)

    def t_from_sigma_tilde(self, st):
        """Inverse of :meth:`sigma_tilde`.

        Parameters
        ----------
        st : float or array_like of float
            Finite, ``>= 0``; 0 maps to :attr:`data_end`.

        Returns
        -------
        float64 scalar or ndarray
            Times with ``sigma_tilde(t) = st``.

        Raises
        ------
        ValueError
            If ``st`` is negative, NaN, infinite, or larger than the schedule can reach (e.g.
            above ``sigma_tilde(1)`` for ``vp``, or so large that ``t`` rounds onto the edge of
            the domain); the message starts with ``st:``.
        """
        arr = _real_array(st, "st")
        scalar = arr.ndim == 0
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f"st: must be finite, got {_first_bad(arr, ~finite)}")
        neg = arr < 0.0
        if neg.any():
            raise ValueError(f"st: must be >= 0, got {_first_bad(arr, neg)}")
        t = self._t_from_st(arr)
        t = np.where(arr == 0.0, self._data_end, t)  # exact data end, whatever the formula does
        if self._t_hi_closed:
            # sigma_tilde(t_max) itself may invert to a few ulps past a closed upper end.
            t = np.where((t > self._t_hi) & (t <= self._t_hi * (1.0 + 1e-14)), self._t_hi, t)
        pos = arr > 0.0
        inside = (t > self._t_lo) & ((t <= self._t_hi) if self._t_hi_closed else (t < self._t_hi))
        bad = pos & ~inside
        if bad.any():
            raise ValueError(
                f"st: sigma_tilde {_first_bad(arr, bad)} is out of reach of the {self.name} schedule "
                f"(its time would leave {self._domain_text()})"
            )
        return _out(np.asarray(t, dtype=np.float64), scalar)

    # -- coordinates and parametrisations --------------------------------------------------

    @staticmethod
    def _lead(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Reshape a per-row coefficient of shape (M,) to broadcast over x of shape (M, ...)."""
        return coef if coef.ndim == 0 else coef.reshape(coef.shape + (1,) * (x.ndim - 1))

    def _check_t_rows(self, t, x: np.ndarray):
        arr, scalar = self._check_t(t, allow_data_end=False)
        if arr.ndim > 1:
            raise ValueError(f"t: must be a scalar or a 1-D array, got shape {arr.shape}")
        if arr.ndim == 1 and (x.ndim == 0 or x.shape[0] != arr.shape[0]):
            raise ValueError(
                f"t: a 1-D t must have one entry per row of x, got t of shape {arr.shape} "
                f"and x of shape {x.shape}"
            )
        return arr, scalar

    def to_ve(self, x, t):
        """VE-normalised coordinates ``y = x / a(t)`` and noise level ``sigma_tilde(t)``.

        Parameters
        ----------
        x : (M, ...) array_like
            Noisy samples on the schedule's scale.
        t : float or (M,) array_like
            One time for all rows, or one per row (broadcast over the leading axis of ``x``).

        Returns
        -------
        y : float64 ndarray, shape of ``x``
        sigma_tilde : float64 scalar or (M,) ndarray, as ``t``
        """
        x = _real_array(x, "x")
        arr, scalar = self._check_t_rows(t, x)
        a = self._alpha(arr)
        return x / self._lead(a, x), _out(self._sigma_tilde(arr), scalar)

    def _prep_denoised(self, x, denoised, t):
        x = _real_array(x, "x")
        d = _real_array(denoised, "denoised")
        if d.shape != x.shape:
            raise ValueError(f"denoised: must have the shape of x {x.shape}, got {d.shape}")
        arr, _ = self._check_t_rows(t, x)
        return x, d, arr

    def eps_from_denoised(self, x, denoised, t) -> np.ndarray:
        """Noise prediction ``eps_hat = (x - a D) / s``.

        Parameters
        ----------
        x : (M, ...) array_like
            Noisy samples ``x_t``.
        denoised : array_like, shape of ``x``
            Denoiser output ``D ~ E[x_0 | x_t]``.
        t : float or (M,) array_like
            Time(s) inside the domain, broadcast over the leading axis of ``x``.

        Returns
        -------
        float64 ndarray, shape of ``x``
        """
        x, d, t = self._prep_denoised(x, denoised, t)
        a = self._lead(self._alpha(t), x)
        s = self._lead(self._sigma(t), x)
        return (x - a * d) / s

    def score_from_denoised(self, x, denoised, t) -> np.ndarray:
        """Score of the noisy marginal, ``grad log p_t(x) = (a D - x) / s^2`` (Tweedie).

        Parameters as in :meth:`eps_from_denoised`. Equals ``(D - y) / (a sigma_tilde^2)`` in
        VE coordinates.
        """
        x, d, t = self._prep_denoised(x, denoised, t)
        a = self._lead(self._alpha(t), x)
        s = self._lead(self._sigma(t), x)
        # Divide twice rather than by s**2, which underflows sooner for tiny s.
        return (a * d - x) / s / s

    def velocity_from_denoised(self, x, denoised, t) -> np.ndarray:
        """Probability-flow velocity ``dx/dt = a'(t) D + s'(t) eps_hat``.

        Parameters as in :meth:`eps_from_denoised`. For ``flow`` this is ``(x - D) / t``, for
        ``cfdm`` ``(D - x) / (1 - t)``.
        """
        x, d, t = self._prep_denoised(x, denoised, t)
        a = self._lead(self._alpha(t), x)
        s = self._lead(self._sigma(t), x)
        da = self._lead(self._d_alpha(t), x)
        ds = self._lead(self._d_sigma(t), x)
        return da * d + ds * ((x - a * d) / s)

    # -- time grids ------------------------------------------------------------------------

    def grid(self, n, kind="karras", sigma_min=None, sigma_max=None, rho=None) -> np.ndarray:
        """Process times whose ``sigma_tilde`` follows a noise grid, ending at the data end.

        Parameters
        ----------
        n : int
            Number of steps (>= 1); ``n + 1`` times are returned.
        kind : {"karras", "geometric", "linear"}, default "karras"
        sigma_min, sigma_max : float, optional
            Range in sigma_tilde units; defaults to :attr:`default_sigma_range`.
        rho : float, optional
            Karras exponent; 7.0 by default (the ``rho`` of an ``EDM`` schedule).

        Returns
        -------
        (n + 1,) float64 array
            ``t`` with ``sigma_tilde(t)`` equal to the noise grid (up to rounding) and last entry
            exactly :attr:`data_end`. Decreasing, except for ``cfdm`` where time runs towards 1.

        Raises
        ------
        ValueError
            On bad grid arguments (naming them), or a ``sigma_max`` the schedule cannot reach.
        """
        lo, hi = self._default_sigma_range()
        sigma_min = lo if sigma_min is None else sigma_min
        sigma_max = hi if sigma_max is None else sigma_max
        rho = self._default_rho() if rho is None else rho
        levels = noise_grid(kind, n, sigma_min, sigma_max, rho)
        try:
            t = self.t_from_sigma_tilde(levels)
        except ValueError:
            raise ValueError(
                f"sigma_max: {float(sigma_max)} is out of reach of the {self.name} schedule "
                f"({self._domain_text()})"
            ) from None
        t[-1] = self._data_end
        return t

    # -- dunder ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._params()))


class _Identity(Schedule):
    """a = 1, s = t: shared by VE and EDM (t is the noise level itself)."""

    _t_lo = 0.0
    _t_hi = math.inf
    _t_hi_closed = False
    _data_end = 0.0

    def _alpha(self, t):
        return np.ones_like(t)

    def _sigma(self, t):
        return t.copy()

    def _d_alpha(self, t):
        return np.zeros_like(t)

    def _d_sigma(self, t):
        return np.ones_like(t)

    def _sigma_tilde(self, t):
        return t.copy()

    def _t_from_st(self, st):
        return st.copy()


class VE(_Identity):
    """Variance-exploding schedule: ``a = 1``, ``s = t`` (t is sigma). Domain ``t > 0``.

    Default grid range: sigma in [0.002, 80].
    """

    name = "ve"

    def _params(self):
        return ()

    def _default_sigma_range(self):
        return (0.002, 80.0)


class EDM(_Identity):
    """EDM schedule (Karras et al. 2022): ``a = 1``, ``s = t``. Domain ``t > 0``.

    Parameters
    ----------
    sigma_min, sigma_max : float, default 0.002, 80.0
        Default range of :meth:`grid` (``0 < sigma_min <= sigma_max``).
    rho : float, default 7.0
        Default Karras exponent of :meth:`grid`.
    """

    name = "edm"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0):
        _, self._sigma_min, self._sigma_max, self._rho = _check_grid_args(1, sigma_min, sigma_max, rho)

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    @property
    def rho(self) -> float:
        return self._rho

    def _params(self):
        return (("sigma_min", self._sigma_min), ("sigma_max", self._sigma_max), ("rho", self._rho))

    def _default_sigma_range(self):
        return (self._sigma_min, self._sigma_max)

    def _default_rho(self):
        return self._rho


def _one_minus_a2_sqrt_ratio(log_a: np.ndarray) -> np.ndarray:
    """``sqrt(1/a^2 - 1)`` from ``log a``, accurate as a -> 1 (expm1 avoids the cancellation)."""
    return np.sqrt(np.expm1(-2.0 * log_a))


class VP(Schedule):
    """Variance-preserving schedule with linear beta (Song et al. 2021).

    ``a(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)``, ``s = sqrt(1 - a^2)``.
    Domain ``0 < t <= 1``.

    Parameters
    ----------
    beta_min, beta_max : float, default 0.1, 20.0
        ``0 <= beta_min <= beta_max``, ``beta_max > 0``.

    Notes
    -----
    Default grid range: ``[sigma_tilde(1e-3), sigma_tilde(1)]`` (about [0.0105, 152.2] with the
    default betas).
    """

    name = "vp"
    _t_lo = 0.0
    _t_hi = 1.0
    _t_hi_closed = True
    _data_end = 0.0

    def __init__(self, beta_min=0.1, beta_max=20.0):
        beta_min = _finite_real(beta_min, "beta_min")
        beta_max = _finite_real(beta_max, "beta_max")
        if beta_min < 0.0:
            raise ValueError(f"beta_min: must be >= 0, got {beta_min}")
        if not beta_max >= beta_min:
            raise ValueError(f"beta_max: must be >= beta_min, got beta_max={beta_max} < beta_min={beta_min}")
        if not beta_max > 0.0:
            raise ValueError(f"beta_max: must be > 0, got {beta_max}")
        self._beta_min = beta_min
        self._beta_max = beta_max

    @property
    def beta_min(self) -> float:
        return self._beta_min

    @property
    def beta_max(self) -> float:
        return self._beta_max

    def _params(self):
        return (("beta_min", self._beta_min), ("beta_max", self._beta_max))

    def _log_alpha(self, t):
        return -0.25 * t * t * (self._beta_max - self._beta_min) - 0.5 * t * self._beta_min

    def _alpha(self, t):
        return np.exp(self._log_alpha(t))

    def _sigma(self, t):
        # 1 - a^2 = -expm1(2 log a): no cancellation at small t.
        return np.sqrt(-np.expm1(2.0 * self._log_alpha(t)))

    def _sigma_tilde(self, t):
        return _one_minus_a2_sqrt_ratio(self._log_alpha(t))

    def _d_alpha(self, t):
        return self._alpha(t) * (-0.5 * t * (self._beta_max - self._beta_min) - 0.5 * self._beta_min)

    def _d_sigma(self, t):
        a = self._alpha(t)
        # s' = -a a' / s; s > 0 inside the domain unless it underflows for subnormal t.
        with np.errstate(divide="ignore", invalid="ignore"):
            return -a * self._d_alpha(t) / self._sigma(t)

    def _t_from_st(self, st):
        # a = 1/sqrt(1 + st^2)  =>  c := -log a = log1p(st^2)/2 solves d t^2/4 + b0 t/2 - c = 0.
        c = 0.5 * np.log1p(st * st)
        d = self._beta_max - self._beta_min
        b = 0.5 * self._beta_min
        # Root in the cancellation-free form 2c / (b + sqrt(b^2 + d c)).
        denom = b + np.sqrt(b * b + d * c)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0.0, 2.0 * c / denom, 0.0)

    def _default_sigma_range(self):
        st = self._sigma_tilde(np.array([1e-3, 1.0]))
        return (float(st[0]), float(st[1]))


class VPCosine(Schedule):
    """Cosine variance-preserving schedule (Nichol & Dhariwal 2021).

    ``a(t) = cos(phi(t)) / cos(phi(0))`` with ``phi(t) = (t + s0) / (1 + s0) * pi / 2``,
    ``s = sqrt(1 - a^2)``. Domain ``0 < t < 1`` (``a(1) = 0``).

    Parameters
    ----------
    s0 : float, default 0.008
        Offset (>= 0) that keeps the noise level away from 0 near ``t = 0``.

    Notes
    -----
    ``1 - a`` is evaluated as ``2 sin((phi + phi0)/2) sin(delta/2) / cos(phi0)`` with
    ``delta = phi - phi0`` and ``a`` itself as ``sin(pi/2 - phi) / cos(phi0)``, so both ends of
    the domain keep full relative accuracy. Default grid range:
    ``[sigma_tilde(1e-3), sigma_tilde(0.999)]`` (about [0.00643, 642] with ``s0 = 0.008``).
    """

    name = "vp-cosine"
    _t_lo = 0.0
    _t_hi = 1.0
    _t_hi_closed = False
    _data_end = 0.0

    def __init__(self, s0=0.008):
        s0 = _finite_real(s0, "s0")
        if s0 < 0.0:
            raise ValueError(f"s0: must be >= 0, got {s0}")
        self._s0 = s0
        self._k = 0.5 * math.pi / (1.0 + s0)  # dphi/dt
        self._phi0 = s0 * self._k
        self._cos0 = math.cos(self._phi0)
        self._sin0 = math.sin(self._phi0)

    @property
    def s0(self) -> float:
        return self._s0

    def _params(self):
        return (("s0", self._s0),)

    def _alpha(self, t):
        # pi/2 - phi(t) = (1 - t) k; 1 - t is exact near t = 1 where a -> 0.
        return np.sin((1.0 - t) * self._k) / self._cos0

    def _one_minus_alpha(self, t):
        delta = t * self._k
        return 2.0 * np.sin(self._phi0 + 0.5 * delta) * np.sin(0.5 * delta) / self._cos0

    def _sigma(self, t):
        a = self._alpha(t)
        return np.sqrt(self._one_minus_alpha(t) * (1.0 + a))

    def _d_alpha(self, t):
        return -np.cos((1.0 - t) * self._k) * self._k / self._cos0

    def _d_sigma(self, t):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _t_from_st(self, st):
        # With a = 1/sqrt(1 + st^2): cos(phi) = a cos(phi0). Recover delta = phi - phi0 through
        # atan2 of its sine and cosine, whose sine is written without cancellation using
        # sin(phi) - a sin(phi0) = (1 - a^2) / (sin(phi) + a sin(phi0)).
        st2 = st * st
        a2 = 1.0 / (1.0 + st2)
        one_m_a2 = st2 / (1.0 + st2)
        a = np.sqrt(a2)
        sin_phi = np.sqrt(self._sin0**2 + one_m_a2 * self._cos0**2)
        cos_phi = a * self._cos0
        denom = sin_phi + a * self._sin0  # 0 only at st = 0 with s0 = 0, where delta = 0
        sin_delta = np.divide(
            self._cos0 * one_m_a2, denom, out=np.zeros_like(denom), where=denom > 0.0
        )
        cos_delta = cos_phi * self._cos0 + sin_phi * self._sin0
        return np.arctan2(sin_delta, cos_delta) / self._k

    def _default_sigma_range(self):
        st = self._sigma_tilde(np.array([1e-3, 0.999]))
        return (float(st[0]), float(st[1]))


class Flow(Schedule):
    """Rectified-flow / linear interpolant: ``a = 1 - t``, ``s = t``. Domain ``0 < t < 1``.

    Default grid range: sigma_tilde in [1e-3, 1e3] (t from about 1e-3 to 0.999).
    """

    name = "flow"
    _t_lo = 0.0
    _t_hi = 1.0
    _t_hi_closed = False
    _data_end = 0.0

    def _params(self):
        return ()

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        return t.copy()

    def _d_alpha(self, t):
        return np.full_like(t, -1.0)

    def _d_sigma(self, t):
        return np.ones_like(t)

    def _t_from_st(self, st):
        return st / (1.0 + st)

    def _default_sigma_range(self):
        return (1e-3, 1e3)


class CFDM(Schedule):
    """Conditional-flow schedule with time reversed: ``a = t``, ``s = 1 - t``.

    ``t = 0`` is pure noise and ``t = 1`` data. Domain ``0 < t < 1``; :attr:`data_end` is 1, so
    :meth:`grid` returns increasing times.

    Default grid range: sigma_tilde in [1e-3, 1e3] (t from about 1e-3 to 0.999).
    """

    name = "cfdm"
    _t_lo = 0.0
    _t_hi = 1.0
    _t_hi_closed = False
    _data_end = 1.0

    def _params(self):
        return ()

    def _alpha(self, t):
        return t.copy()

    def _sigma(self, t):
        return 1.0 - t

    def _d_alpha(self, t):
        return np.ones_like(t)

    def _d_sigma(self, t):
        return np.full_like(t, -1.0)

    def _t_from_st(self, st):
        return 1.0 / (1.0 + st)

    def _default_sigma_range(self):
        return (1e-3, 1e3)


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------

_REGISTRY = {
    "ve": VE,
    "vp": VP,
    "vp-linear": VP,
    "vp-cosine": VPCosine,
    "edm": EDM,
    "flow": Flow,
    "cfdm": CFDM,
}

#: Names accepted by :func:`get_schedule` (``"vp-linear"`` is an alias of ``"vp"``).
SCHEDULE_NAMES = tuple(_REGISTRY)


def get_schedule(spec) -> Schedule:
    """A schedule from an instance (returned as is) or a case-insensitive name.

    Parameters
    ----------
    spec : Schedule or str
        One of ``"ve"``, ``"vp"`` (alias ``"vp-linear"``), ``"vp-cosine"``, ``"edm"``,
        ``"flow"``, ``"cfdm"``; named schedules get their default parameters.

    Returns
    -------
    Schedule

    Raises
    ------
    TypeError
        If ``spec`` is neither a string nor a :class:`Schedule`.
    ValueError
        If the name is unknown; the message lists the valid names.
    """
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"schedule: must be a Schedule or one of {', '.join(SCHEDULE_NAMES)}, "
            f"got {type(spec).__name__}"
        )
    key = spec.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"schedule: unknown schedule {spec!r}; valid names: {', '.join(SCHEDULE_NAMES)}")
    return _REGISTRY[key]()
