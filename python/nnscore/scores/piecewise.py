"""CHEN's smoothed piecewise-linear empirical score (science.md §2.4).

Training points ``y_1 < ... < y_n`` on a line ``l = {c + u e}`` in R^d.  The empirical score
(ESF) of two points ``+-1`` in 1-D is ``(tanh(x/t) - x)/t``; its small-t limit, the PL-ESF, is
``(sgn(x) - x)/t``; CHEN smooths it by replacing the jump at 0 with a linear ramp (science.md (2.2)):

    s_{t,delta}(x) = -(x + 1)/t                  x <= delta - 1
                   = -(x - 1)/t                  x >= 1 - delta
                   = (delta/(1 - delta)) x / t   delta - 1 < x < 1 - delta,

with ``delta_t = kappa sqrt(t)``.  Here ``t`` is CHEN's *variance* time ``t = sigma~^2``.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import schedules as _schedules
from .._validation import as_float_array, check_finite
from .base import ScoreModel, schedule_coefficients
from .result import ScoreResult

__all__ = ["PiecewiseLinearScore"]

#: Relative tolerance of the collinearity and equal-spacing checks (in units of the point spread).
_REL_TOL = 1e-6


class PiecewiseLinearScore(ScoreModel):
    """Smoothed piecewise-linear empirical score (S-PL-ESF) of points on a line (CHEN).

    Time convention: CHEN's time ``t`` is the *variance* ``sigma~^2``.  With ``schedule="ve"``
    nnscore's ``t`` is ``sigma``, so CHEN's ``t`` equals ``sigma**2`` (for any schedule:
    ``(s(t)/a(t))**2``) and CHEN's smoothing width is ``delta_t = kappa * sqrt(t_CHEN) =
    kappa * sigma~``.

    Model, in VE coordinates ``y = x / a`` with ``theta = sigma~^2`` (CHEN's t): write
    ``y = c + u e + y_perp`` with ``e`` the unit direction of the line and ``y_perp`` normal to
    it.  The score is ``f(u) e - y_perp / theta``: the normal part is the exact (linear) empirical
    normal score, left unchanged by the smoothing; the tangential part ``f`` is

    * ``n = 2``: CHEN's smoothed PL-ESF (2.2) in the coordinate ``u`` of the line, with the two
      points at ``m +- g`` (``m`` midpoint, ``g`` half-gap) and window ``w = min(kappa sigma~, g)``:
      ``(y_k - u)/theta`` within ``w`` of a point (and beyond the outer points), and the ramp
      ``(w/(g - w)) (u - m)/theta`` in between.  For points ``+-1`` (``g = 1``) this is exactly
      (2.2) with ``delta = kappa sqrt(theta)`` while ``delta <= 1``; once ``kappa sigma~ >= g`` the
      ramp is gone and it is the PL-ESF ``(sgn(u) - u)/theta``.
    * ``n >= 3`` (**experimental**, a reconstruction [R] of science.md §2.4: the paper's general
      construction was not available): the same on every gap of equally spaced points, i.e.
      ``(y_k - u)/theta`` on ``[y_k - w, y_k + w]`` and ``(w/(g - w)) (u - m_k)/theta`` on the gap
      ``(y_k + w, y_{k+1} - w)`` with midpoint ``m_k``; continuous at every kink.  Found by binary
      search, O(log n + d) per query.

    The denoiser consistent with the score is ``D = (x + s^2 score)/a``; it lies on the line:
    ``y_k`` in the windows, ``m_k + (u - m_k) g/(g - w)`` on the ramps.

    Parameters
    ----------
    points_on_line : (n, d) array-like, float32/float64
        ``n >= 2`` distinct collinear points (any order); for ``n >= 3`` they must be equally
        spaced along the line.  A 1-D array is read as ``n`` points in d = 1.
    kappa : float
        Smoothing constant ``kappa > 0`` of ``delta_t = kappa sqrt(t)`` (finite).
    schedule : str or Schedule, default "ve"

    Notes
    -----
    :meth:`evaluate` returns ``denoised``, ``score`` and ``sigma``; the other fields of
    :class:`~nnscore.scores.result.ScoreResult` (log-density, divergence, posterior statistics)
    are ``None``: this score is not the gradient of a normalised mixture.
    """

    backend = "numpy"

    def __init__(self, points_on_line, kappa, schedule="ve"):
        pts = as_float_array(points_on_line, "points_on_line")
        if pts.ndim == 1:
            pts = pts[:, None]
        if pts.ndim != 2:
            raise ValueError(f"points_on_line: expected an (n, d) array of points, got shape {pts.shape}")
        n, d = pts.shape
        if n < 2:
            raise ValueError(f"points_on_line: need n >= 2 points, got {n}")
        if d < 1:
            raise ValueError(f"points_on_line: need d >= 1 coordinates, got shape {pts.shape}")
        check_finite(pts, "points_on_line")
        if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real):
            raise TypeError(f"kappa: must be a real number > 0, got {kappa!r}")
        kappa = float(kappa)
        if not (np.isfinite(kappa) and kappa > 0.0):
            raise ValueError(f"kappa: must be finite and > 0, got {kappa}")
        self.schedule = _schedules.get_schedule(schedule)
        self.shape = (d,)
        self.dtype = np.dtype(pts.dtype)
        self.kappa = kappa

        p64 = pts.astype(np.float64)
        centre = p64.mean(axis=0)
        centred = p64 - centre
        scale = float(np.max(np.linalg.norm(centred, axis=1)))
        if scale == 0.0:
            raise ValueError("points_on_line: all points coincide; need n >= 2 distinct points")
        # principal direction of the (centred) points; its sign fixed so that the first nonzero
        # coordinate is positive (deterministic orientation)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        e = vt[0]
        e = e * (1.0 if e[np.flatnonzero(np.abs(e) > 0)[0]] > 0 else -1.0)
        u = centred @ e
        resid = float(np.max(np.linalg.norm(centred - u[:, None] * e[None, :], axis=1)))
        if resid > _REL_TOL * scale:
            raise ValueError(
                f"points_on_line: points are not collinear (largest distance to their best-fit line "
                f"{resid:.3g}, relative {resid / scale:.3g} > {_REL_TOL:g})"
            )
        u = np.sort(u)
        gaps = np.diff(u)
        if np.any(gaps <= _REL_TOL * scale):
            raise ValueError("points_on_line: points must be distinct (two coincide along the line)")
        if n >= 3 and float(np.max(np.abs(gaps - gaps.mean()))) > _REL_TOL * gaps.mean():
            raise ValueError(
                f"points_on_line: the n-point extension (n = {n} >= 3) needs equally spaced points; "
                f"gaps range from {gaps.min():.6g} to {gaps.max():.6g}"
            )
        self.centre = centre
        self.direction = e
        self.coords = u  # sorted positions along the line, relative to ``centre``
        self.half_gap = 0.5 * float(gaps.mean()) if n >= 3 else 0.5 * float(gaps[0])
        self.n = n

    # -- public -----------------------------------------------------------------------------
    @property
    def points(self) -> np.ndarray:
        """The training points, sorted along the line, float64 (n, d)."""
        return self.centre[None, :] + self.coords[:, None] * self.direction[None, :]

    def tangential_ve(self, u, sigma) -> tuple[np.ndarray, np.ndarray]:
        """(denoised coordinate, tangential displacement ``D_u - u``) in VE coordinates.

        ``u`` (M,) line coordinates relative to :attr:`centre`, ``sigma`` (M,) the VE noise level
        sigma~ (CHEN's t = sigma~^2).  The tangential score is ``(D_u - u)/sigma~^2``.
        """
        u = np.asarray(u, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        g = self.half_gap
        w = np.minimum(self.kappa * sigma, g)
        # gap index k: y_k <= u < y_{k+1}, clipped so that points outside use the outer gaps
        k = np.clip(np.searchsorted(self.coords, u, side="right") - 1, 0, self.n - 2)
        mid = 0.5 * (self.coords[k] + self.coords[k + 1])
        r = u - mid
        inner = g - w  # half-width of the ramp; 0 once kappa sigma~ >= g (PL-ESF)
        on_ramp = np.abs(r) < inner
        with np.errstate(divide="ignore", invalid="ignore"):
            ramp = r * (w / inner)
        side = np.where(r >= 0.0, 1.0, -1.0)
        side = np.where(r == 0.0, 0.0, side)  # sgn(0) = 0: the midpoint stays (PL-ESF limit)
        window = side * g - r  # y_k - u for the nearer point of the gap
        delta = np.where(on_ramp, ramp, window)
        return u + delta, delta

    def evaluate(self, x, t) -> ScoreResult:
        """Denoiser and score at (x, t); see the class docstring.

        Parameters
        ----------
        x : array-like, (M, d)
            Queries in the schedule's coordinates.
        t : float or (M,) array
            Time of the schedule (with ``schedule="ve"``, t is sigma and CHEN's t is t**2).
        """
        rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, rows.shape[0])
        y = self._to_ve(rows, alpha).astype(np.float64, copy=False)
        st = s / alpha
        yc = y - self.centre[None, :]
        u = yc @ self.direction
        _, delta_u = self.tangential_ve(u, st)
        # D - y = delta_u e - y_perp  (D lies on the line)
        y_perp = yc - u[:, None] * self.direction[None, :]
        disp = delta_u[:, None] * self.direction[None, :] - y_perp
        denoised = y + disp
        score = disp / (alpha * st * st)[:, None]
        m = rows.shape[0]
        return ScoreResult(
            denoised=denoised.astype(out_dtype, copy=False).reshape((m, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((m, *self.shape)),
            sigma=st,
            backend=self.backend,
        )

    def __repr__(self) -> str:
        return (f"PiecewiseLinearScore(n={self.n}, d={self.shape[0]}, kappa={self.kappa:g}, "
                f"schedule={self.schedule!r})")  # fmt: skip
