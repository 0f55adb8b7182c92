"""Mergeable log-sum-exp partials: the one Python home of the online-softmax algebra.

For a query ``y`` (VE-normalised), a noise level ``sigma`` and a set of training points
``x_i`` with log weights ``log_pi_i``, the logits are

    l_i = log_pi_i - ||y - x_i||^2 / (2 sigma^2).

A :class:`Partial` summarises any subset S of the training points relative to its max logit
``m = max_{i in S} l_i`` with ``w_i = exp(l_i - m)``:

    z  = sum w_i                      (sum of shifted weights, >= 1 when S is non-empty)
    v  = sum w_i (x_i - y)            (D - y = v / z, accumulated relative to the query)
    q  = sum w_i ||x_i - y||^2        (tr Cov = q/z - ||v/z||^2)
    z2 = sum w_i^2                    (n_eff = z^2 / z2)
    top1 = argmax_i l_i               (index into the full training set)
    log_mass = log sum_{i in S} pi_i  (scalar: the prior mass the partial covers)

An empty subset has ``m = -inf`` and zeros elsewhere (``top1 = -1``).  Merging two partials
rescales each side by ``exp(m_side - max)``; a side with ``m = -inf`` contributes nothing (never
``exp(-inf + inf)``).  The C++ core (``online_softmax.hpp``) implements the same algebra.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

__all__ = ["Partial", "merge", "reduce_partials", "finalize_partial", "empty_partial", "take", "assemble"]


@dataclass(frozen=True, eq=False)
class Partial:
    """Per-query sufficient statistics of a log-sum-exp reduction (all float64, ``top1`` int64).

    Shapes: ``m, z, q, z2, top1``: (M,); ``v``: (M, d).  Frozen and picklable, so it can cross
    process boundaries (shards, workers) and be merged in any order.
    """

    m: np.ndarray
    z: np.ndarray
    v: np.ndarray
    q: np.ndarray
    z2: np.ndarray
    top1: np.ndarray
    #: log of the total (unnormalised) prior weight of the points covered; the log-density
    #: normalises by it, so shards with unnormalised weights merge exactly.
    log_mass: float = 0.0

    @property
    def n_queries(self) -> int:
        return int(self.m.shape[0])

    @property
    def dim(self) -> int:
        return int(self.v.shape[1])


def empty_partial(n_queries: int, dim: int) -> Partial:
    """The identity of :func:`merge`: a partial over no training points."""
    return Partial(
        m=np.full(n_queries, -np.inf),
        z=np.zeros(n_queries),
        v=np.zeros((n_queries, dim)),
        q=np.zeros(n_queries),
        z2=np.zeros(n_queries),
        top1=np.full(n_queries, -1, dtype=np.int64),
        log_mass=-np.inf,
    )


def _scale(m_side: np.ndarray, m_new: np.ndarray) -> np.ndarray:
    # exp(m_side - m_new), with 0 where the side is empty (m_side = -inf): no inf - inf.
    out = np.zeros_like(m_side)
    ok = np.isfinite(m_side)
    out[ok] = np.exp(m_side[ok] - m_new[ok])
    return out


def merge(a: Partial, b: Partial) -> Partial:
    """Merge two partials of the same queries over disjoint sets of training points.

    Exact up to rounding, commutative, and associative up to rounding; ``top1`` prefers ``a``
    on exact ties of the max logit, so merging shards in index order reproduces the index
    order of a single pass.
    """
    if a.v.shape != b.v.shape:
        raise ValueError(f"cannot merge partials of shapes {a.v.shape} and {b.v.shape}")
    m = np.maximum(a.m, b.m)
    sa, sb = _scale(a.m, m), _scale(b.m, m)
    top1 = np.where(b.m > a.m, b.top1, a.top1)
    return Partial(
        m=m,
        z=a.z * sa + b.z * sb,
        v=a.v * sa[:, None] + b.v * sb[:, None],
        q=a.q * sa + b.q * sb,
        z2=a.z2 * sa * sa + b.z2 * sb * sb,
        top1=top1.astype(np.int64, copy=False),
        log_mass=float(np.logaddexp(a.log_mass, b.log_mass)),
    )


def take(p: Partial, rows: np.ndarray) -> Partial:
    """The partials of the queries ``rows`` (an index array or a boolean mask) of ``p``."""
    return Partial(m=p.m[rows], z=p.z[rows], v=p.v[rows], q=p.q[rows], z2=p.z2[rows], top1=p.top1[rows],
                   log_mass=p.log_mass)  # fmt: skip


def assemble(blocks, n_queries: int, dim: int, log_mass: float) -> Partial:
    """One partial of ``n_queries`` queries from ``(rows, partial)`` blocks: block ``b`` holds the
    partials of the queries ``rows`` (in order); queries in no block stay empty."""
    out = empty_partial(n_queries, dim)
    for rows, p in blocks:
        for name in ("m", "z", "v", "q", "z2", "top1"):
            getattr(out, name)[rows] = getattr(p, name)
    return Partial(m=out.m, z=out.z, v=out.v, q=out.q, z2=out.z2, top1=out.top1, log_mass=log_mass)


def reduce_partials(parts) -> Partial:
    """Merge an iterable of partials left to right (a fixed order: reproducible results)."""
    parts = list(parts)
    if not parts:
        raise ValueError("parts: need at least one partial")
    return reduce(merge, parts)


@dataclass(frozen=True)
class FinalizedPartial:
    """VE-coordinate results of a partial: denoiser offset, log-sum-exp, covariance trace."""

    delta: np.ndarray  # (M, d) D - y
    lse: np.ndarray  # (M,) log sum_i (pi_i / sum pi) exp(-||y - x_i||^2 / (2 sigma^2))
    trace_cov: np.ndarray  # (M,) tr Cov[x_0 | y]
    n_eff: np.ndarray  # (M,)
    max_weight: np.ndarray  # (M,)
    top1: np.ndarray  # (M,) int64


def finalize_partial(p: Partial) -> FinalizedPartial:
    """Turn a merged partial into VE-space quantities (float64).

    Raises ``ValueError`` if a query saw no training point (``m = -inf``).
    """
    if p.n_queries and not np.all(np.isfinite(p.m)):
        raise ValueError("partial covers no training point for some queries (m = -inf)")
    z = p.z
    delta = p.v / z[:, None]
    mean_sq = np.einsum("ij,ij->i", delta, delta)
    # tr Cov = q/z - ||v/z||^2 >= 0 (Cauchy-Schwarz).  The difference is only resolved to about
    # eps * q/z (both terms carry rounding of that size); anything below that, including
    # negative rounding, is reported as 0 rather than amplified noise (it is divided by s^4 in
    # the divergence).
    second = p.q / z
    trace_cov = second - mean_sq
    trace_cov[trace_cov <= 16 * np.finfo(np.float64).eps * second] = 0.0
    return FinalizedPartial(
        delta=delta,
        lse=p.m + np.log(z) - p.log_mass,
        trace_cov=trace_cov,
        n_eff=z * z / p.z2,
        max_weight=1.0 / z,
        top1=p.top1,
    )
