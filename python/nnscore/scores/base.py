"""ScoreModel: the evaluate(x, t) contract shared by every score model.

Subclasses implement ``_partials_ve(y, sigma)`` in VE-normalised coordinates; this class owns
query validation, the schedule conversion (x, t) -> (y, sigma~) and back, and flattening of
(M, *shape) queries.
"""
from __future__ import annotations

import numpy as np

from .. import schedules as _schedules
from .._validation import as_float_array, as_rows, as_sigma, check_finite
from ..partials import Partial
from .result import ScoreResult, result_from_partial

__all__ = ["ScoreModel", "schedule_coefficients"]


def schedule_coefficients(schedule: _schedules.Schedule, t, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """a(t) and s(t) per query, float64 (M,), after validating ``t`` (scalar or (M,))."""
    t_arr = as_sigma(t, n_queries, "t")
    if n_queries:
        t_arr = np.asarray(schedule.validate_t(t_arr), dtype=np.float64).reshape(n_queries)
    alpha = np.asarray(schedule.alpha(t_arr), dtype=np.float64).reshape(n_queries)
    s = np.asarray(schedule.sigma(t_arr), dtype=np.float64).reshape(n_queries)
    st = s / alpha
    with np.errstate(over="ignore", divide="ignore"):
        bad = ~(np.isfinite(1.0 / (st * st)) & np.isfinite(s * s) & (st > 0))
    if np.any(bad):
        raise ValueError(
            f"t: the noise level sigma~ = s/a = {st[bad][0]!r} is outside the float64 range of the kernels "
            "(1/sigma~^2 and s^2 must be finite and positive)"
        )
    return alpha, s


class ScoreModel:
    """Base class: ``evaluate(x, t) -> ScoreResult``; ``model(x, t)`` returns the denoiser."""

    schedule: _schedules.Schedule
    shape: tuple  # trailing data shape
    dtype: np.dtype  # compute dtype of the training data
    backend: str = ""

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    # -- public API ---------------------------------------------------------------------------
    def evaluate(self, x, t) -> ScoreResult:
        """Denoiser, score, log-density, divergence and posterior statistics at (x, t).

        Parameters
        ----------
        x : array-like, (M, *shape) or (M, d), float32/float64
            Queries in the schedule's coordinates; M = 0 gives empty results.
        t : float or (M,) array
            Time of the schedule (with ``schedule="ve"``, t is sigma).
        """
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = self._to_ve(x_rows, alpha)
        p = self._partials_ve(y, s / alpha)
        return result_from_partial(p, y, alpha, s, self.shape, out_dtype, self.backend)

    def denoise(self, x, t) -> np.ndarray:
        """D(x, t) = E[x_0 | x_t = x], shape and dtype of ``x``."""
        return self.evaluate(x, t).denoised

    def score(self, x, t) -> np.ndarray:
        """grad_x log p_t(x), shape and dtype of ``x``."""
        return self.evaluate(x, t).score

    def log_density(self, x, t) -> np.ndarray:
        """log p_t(x), float64 (M,)."""
        return self.evaluate(x, t).log_density

    def __call__(self, x, t) -> np.ndarray:
        return self.denoise(x, t)

    # -- helpers ------------------------------------------------------------------------------
    def _check_queries(self, x) -> tuple[np.ndarray, np.dtype]:
        arr = as_float_array(x, "x")
        matches = arr.ndim >= 2 and (arr.shape[1:] == self.shape or (arr.ndim == 2 and arr.shape[1] == self.dim))
        if not matches:
            raise ValueError(
                f"x: expected shape (M, {', '.join(map(str, self.shape))}) or (M, {self.dim}) to match the "
                f"training data (one query is x[None]), got {arr.shape}"
            )
        check_finite(arr, "x")
        rows = as_rows(arr, "x")
        if rows.dtype != self.dtype:
            rows = rows.astype(self.dtype)
        return rows, arr.dtype

    def _to_ve(self, x_rows: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        if np.all(alpha == 1.0):
            return x_rows
        return (x_rows / alpha[:, None]).astype(self.dtype, copy=False)

    def _partials_ve(self, y: np.ndarray, sigma: np.ndarray) -> Partial:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not implement _partials_ve")
