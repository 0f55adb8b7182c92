"""ScoreResult and the one conversion from VE-space partials to user coordinates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..partials import Partial, finalize_partial

__all__ = ["ScoreResult", "result_from_partial"]


@dataclass(frozen=True, kw_only=True)
class ScoreResult:
    """Everything one evaluation of a score model at (x, t) returns.

    Shapes: ``M`` queries, ``shape`` the trailing data shape, ``d = prod(shape)``.

    Attributes
    ----------
    denoised : (M, *shape), query dtype
        D(x, t) = E[x_0 | x_t = x] (data coordinates).
    score : (M, *shape), query dtype
        grad_x log p_t(x) = (a D - x) / s^2, computed from D - y without cancellation.
    log_density : (M,) float64
        log p_t(x) of the noised (weighted) empirical measure, in x-coordinates.
    divergence : (M,) float64
        Exact divergence of the score: (a^2 tr C / s^2 - d) / s^2 (science.md (1.7)).
    posterior_variance : (M,) float64
        tr Cov[x_0 | x_t = x], the trace of the posterior covariance (data units).
    n_eff : (M,) float64
        Effective number of training points, 1 / sum_i lambda_i^2.
    top1 : (M,) int64
        Index of the training point with the largest posterior weight.
    max_weight : (M,) float64
        The largest posterior weight, lambda_top1.
    sigma : (M,) float64
        The VE-equivalent noise level sigma~ = s/a of each query.
    backend : str
        The backend that computed the result.
    mc_stderr : (M,) float64 or None
        Monte-Carlo models: empirical standard error of the score estimate (norm, x-units).
    error_bound : (M,) float64 or None
        Approximate models: a bound on the error of the chosen quantity (see the model).
    path : (M,) object array of str, or None
        Approximate models: how each query was computed.
    k_used : (M,) int64 or None
        Truncated models: how many training points each query's result is computed from.

    A field a model cannot compute is ``None``, never a guess.
    """

    denoised: np.ndarray
    score: np.ndarray
    sigma: np.ndarray
    log_density: np.ndarray | None = None
    divergence: np.ndarray | None = None
    posterior_variance: np.ndarray | None = None
    n_eff: np.ndarray | None = None
    top1: np.ndarray | None = None
    max_weight: np.ndarray | None = None
    backend: str = ""
    mc_stderr: np.ndarray | None = None
    error_bound: np.ndarray | None = None
    path: np.ndarray | None = None
    k_used: np.ndarray | None = None


def result_from_partial(
    p: Partial,
    y: np.ndarray,
    alpha: np.ndarray,
    s: np.ndarray,
    shape: tuple,
    dtype: np.dtype,
    backend: str = "",
) -> ScoreResult:
    """Finalize a merged partial of queries ``y = x / alpha`` (M, d) into a ScoreResult.

    ``alpha`` and ``s`` are the schedule's a(t), s(t) per query (float64, (M,)).
    """
    f = finalize_partial(p)
    n_q, dim = p.v.shape
    st = s / alpha
    denoised = y.astype(np.float64, copy=False) + f.delta
    # score = (a D - x)/s^2 = (D - y)/(a st^2): D - y is the accumulated v/z, no cancellation.
    score = f.delta / (alpha * st * st)[:, None]
    log_density = -0.5 * dim * np.log(2.0 * np.pi * s * s) + f.lse
    with np.errstate(over="ignore"):  # |divergence| ~ d / s^2 may exceed float64: then it is +-inf
        divergence = (f.trace_cov / (st * st) - dim) / (s * s)
    return ScoreResult(
        denoised=denoised.astype(dtype, copy=False).reshape((n_q, *shape)),
        score=score.astype(dtype, copy=False).reshape((n_q, *shape)),
        log_density=log_density,
        divergence=divergence,
        posterior_variance=f.trace_cov,
        n_eff=f.n_eff,
        top1=f.top1,
        max_weight=f.max_weight,
        sigma=st,
        backend=backend,
    )
