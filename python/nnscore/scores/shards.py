"""Mergeable reductions over shards of a training set.

``partial_reduce`` evaluates one shard and returns its :class:`~nnscore.partials.Partial`;
partials of disjoint shards merge exactly (``nnscore.merge``), and ``finalize`` turns the
merged partial into the :class:`ScoreResult` that ``EmpiricalScore.evaluate`` gives on the union.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import schedules as _schedules
from .._validation import as_float_array, as_rows, check_finite
from ..partials import Partial
from .empirical import EmpiricalScore
from .base import schedule_coefficients
from .result import ScoreResult, result_from_partial

__all__ = ["partial_reduce", "finalize"]


def partial_reduce(
    x, train_shard, t, schedule="ve", *, weights=None, index_offset: int = 0, backend="auto", n_threads=None
) -> Partial:
    """Partial of queries ``x`` at time ``t`` over one shard of the training set.

    ``weights`` are the shard's unnormalised prior weights (default 1 per point, so shards of
    a uniformly weighted set merge to the uniform mixture); ``index_offset`` is added to
    ``top1`` so that it indexes the full training set.
    """
    if not isinstance(index_offset, (int, np.integer)) or index_offset < 0:
        raise ValueError(f"index_offset: expected a non-negative int, got {index_offset!r}")
    model = EmpiricalScore(train_shard, weights=weights, schedule=schedule, backend=backend, n_threads=n_threads)
    x_rows, _ = model._check_queries(x)
    alpha, s = schedule_coefficients(model.schedule, t, x_rows.shape[0])
    p = model._partials_ve(model._to_ve(x_rows, alpha), s / alpha)
    if index_offset:
        p = dataclasses.replace(p, top1=np.where(p.top1 >= 0, p.top1 + index_offset, -1))
    return p


def finalize(partial: Partial, x, t, schedule="ve") -> ScoreResult:
    """ScoreResult of a (merged) partial for the queries ``x`` at time ``t`` it was made from."""
    if not isinstance(partial, Partial):
        raise TypeError(f"partial: expected a nnscore.Partial, got {type(partial).__name__}")
    arr = as_float_array(x, "x")
    if arr.ndim < 2:
        raise ValueError(f"x: expected shape (M, *shape), got ndim={arr.ndim}")
    check_finite(arr, "x")
    rows = as_rows(arr, "x")
    if rows.shape != partial.v.shape:
        raise ValueError(f"x: shape {arr.shape} does not match the partial's queries {partial.v.shape}")
    alpha, s = schedule_coefficients(_schedules.get_schedule(schedule), t, rows.shape[0])
    y = rows / alpha[:, None]
    return result_from_partial(partial, y, alpha, s, tuple(arr.shape[1:]), arr.dtype)
