"""Density-domain baselines (science.md §2.3): KDE / bandwidth inflation and softmax temperature.

Both are exact closed forms computed by one pass of the base model's kernels at a modified
noise level; neither involves Monte Carlo.

* :class:`KDEScore`: the score of ``p_t * N(0, h^2 I) = sum_i pi_i N(a x_i, (s^2 + h^2) I)``,
  i.e. the empirical model with sigma~^2 -> sigma~^2 + h^2/a^2 at the same a.
* :class:`TemperedScore`: posterior weights at temperature tau,
  ``lambda_i ∝ exp(-||y - x_i||^2 / (2 tau sigma~^2))``, inside ``(D - y) / (a sigma~^2)``; it
  equals ``tau * grad log p(x; sqrt(tau) sigma~)``, the score of ``p_{sqrt(tau) sigma~}^tau``.

Denoiser convention.  Samplers exchange only the denoiser and turn it into a score with the
schedule's own s(t): ``score = (a D - x) / s^2``.  So the ``denoised`` field of both models is
the denoiser *consistent with the returned score at the query's s*, not the posterior mean of
the modified model where the two differ (KDE: ``D = y + (sigma~^2 / sigma~'^2) (D' - y)`` with
D' the posterior mean at the inflated sigma~'; tempered: the posterior mean at
``sqrt(tau) sigma~``, which is already consistent).  A sampler driven by ``KDEScore`` with a
constant h under the VE schedule therefore samples the KDE ``p_hat * N(0, h^2 I)``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from ..partials import finalize_partial
from .base import ScoreModel, schedule_coefficients
from .kernels import check_bandwidth, eval_bandwidth
from .result import ScoreResult, result_from_partial

__all__ = ["KDEScore", "TemperedScore"]


def _check_partials_base(base, cls_name: str) -> None:
    if not callable(getattr(base, "evaluate", None)):
        raise TypeError(f"base: expected a score model with an evaluate(x, t) method, got {type(base).__name__}")
    impl = getattr(type(base), "_partials_ve", None)
    has_attrs = all(hasattr(base, a) for a in ("schedule", "shape", "dtype"))
    if impl is None or impl is ScoreModel._partials_ve or not has_attrs:
        raise TypeError(
            f"base: {cls_name} needs a model that computes log-sum-exp partials in VE coordinates "
            f"(e.g. EmpiricalScore), got {type(base).__name__}"
        )


class _ModifiedNoiseModel(ScoreModel):
    """Shared plumbing: the base model's kernels at a per-query modified sigma~."""

    def __init__(self, base):
        self.base = base
        self.schedule = base.schedule
        self.shape = tuple(base.shape)
        self.dtype = np.dtype(base.dtype)
        self.backend = getattr(base, "backend", "")

    def _prepare(self, x, t):
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = self._to_ve(x_rows, alpha)
        return y, alpha, s, s / alpha, out_dtype


class KDEScore(_ModifiedNoiseModel):
    """KDE (density-domain) smoothing: the exact score of ``p_t * N(0, h^2 I)`` (science.md §2.3).

    ``p_t * N(0, h^2 I) = sum_i pi_i N(a x_i, (s^2 + h^2) I)``: the base model with
    sigma~^2 -> sigma~^2 + h^2/a^2 at the same a (``h`` in x-units at time t).  Early stopping
    at sigma~_stop gives the law of this model with h = sigma~_stop (VE).

    Parameters
    ----------
    base : EmpiricalScore (or another model implementing VE partials)
    h : float >= 0, or callable of sigma~ (float64 (M,) -> scalar or (M,)), x-units.

    Notes
    -----
    Result fields (exact, one kernel pass at sigma~' = sqrt(sigma~^2 + h^2/a^2)):
    ``score``, ``log_density`` (normalised KDE density in x-coordinates) and ``divergence`` of
    the KDE model; ``posterior_variance``, ``n_eff``, ``top1`` and ``max_weight`` of its
    posterior (weights at sigma~'); ``denoised`` is the sampler-consistent
    ``(x + s^2 score) / a = y + (sigma~/sigma~')^2 (D' - y)`` (see the module note); ``sigma`` is
    the query's sigma~ = s/a.  ``h = 0`` reproduces the base result bit for bit.
    """

    def __init__(self, base, h):
        _check_partials_base(base, "KDEScore")
        super().__init__(base)
        self.h = check_bandwidth(h, "h")

    def evaluate(self, x, t) -> ScoreResult:
        """KDE denoiser, score, log-density and divergence at (x, t); see the class notes."""
        y, alpha, s, st, out_dtype = self._prepare(x, t)
        h = eval_bandwidth(self.h, st, "h")
        st_in = np.hypot(st, h / alpha)
        p = self.base._partials_ve(y, st_in)
        res = result_from_partial(p, y, alpha, alpha * st_in, self.shape, out_dtype, self.backend)
        if np.all(st_in == st):
            return dataclasses.replace(res, sigma=st)
        delta = finalize_partial(p).delta
        ratio = (st / st_in) ** 2
        denoised = y.astype(np.float64, copy=False) + ratio[:, None] * delta
        return dataclasses.replace(
            res, denoised=denoised.astype(out_dtype, copy=False).reshape((y.shape[0], *self.shape)), sigma=st
        )

    def __repr__(self) -> str:
        return f"KDEScore(base={self.base!r}, h={self.h!r})"


class TemperedScore(_ModifiedNoiseModel):
    """Softmax-temperature smoothing (science.md §2.3): ``tau * grad log p(x; sqrt(tau) sigma~)``.

    Posterior weights ``lambda_i ∝ pi_i exp(-||y - x_i||^2 / (2 tau sigma~^2))`` inside
    ``(D - y) / (a sigma~^2)``: the score of the sharpened KDE ``p_{sqrt(tau) sigma~}^tau``.

    Parameters
    ----------
    base : EmpiricalScore (or another model implementing VE partials)
    tau : float >= 1
        The temperature.  ``tau = 1`` is the base model; ``tau < 1`` (which would sharpen the
        posterior towards memorisation rather than smooth it) is rejected.

    Notes
    -----
    Result fields (exact, one kernel pass at sqrt(tau) sigma~): ``denoised`` = the posterior
    mean at sqrt(tau) sigma~ (consistent with the score: ``score = (a D - x) / s^2``);
    ``score``; ``log_density`` = ``tau * log p_t(x; sqrt(tau) s)``, the log of the *unnormalised*
    tempered density ``p^tau``; ``divergence`` = ``tau`` times the divergence of the score at
    sqrt(tau) s; ``posterior_variance``, ``n_eff``, ``top1``, ``max_weight`` of the tempered
    weights; ``sigma`` = the query's sigma~ = s/a.
    """

    def __init__(self, base, tau):
        _check_partials_base(base, "TemperedScore")
        super().__init__(base)
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise TypeError(f"tau: expected a real number >= 1, got {tau!r}")
        tau = float(tau)
        if not math.isfinite(tau) or tau < 1.0:
            raise ValueError(f"tau: must be a finite number >= 1 (the softmax temperature), got {tau}")
        self.tau = tau

    def evaluate(self, x, t) -> ScoreResult:
        """Tempered denoiser, score, log-density and divergence at (x, t); see the class notes."""
        y, alpha, s, st, out_dtype = self._prepare(x, t)
        root = math.sqrt(self.tau)
        st_tau = root * st
        p = self.base._partials_ve(y, st_tau)
        res = result_from_partial(p, y, alpha, root * s, self.shape, out_dtype, self.backend)
        if self.tau == 1.0:
            return res
        delta = finalize_partial(p).delta
        # tau * (D - y) / (a tau sigma~^2) = (D - y) / (a sigma~^2)
        score = delta / (alpha * st * st)[:, None]
        return dataclasses.replace(
            res,
            score=score.astype(out_dtype, copy=False).reshape((y.shape[0], *self.shape)),
            log_density=self.tau * res.log_density,
            divergence=self.tau * res.divergence,
            sigma=st,
        )

    def __repr__(self) -> str:
        return f"TemperedScore(base={self.base!r}, tau={self.tau!r})"
