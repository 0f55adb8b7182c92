"""float64 NumPy reference: readable, unchunked, the oracle of the tests.

Forms the full (M, N) logit matrix in difference form, so it is for small problems only and is
never chosen by ``backend="auto"``.
"""
from __future__ import annotations

import numpy as np

from ..partials import Partial

#: Refuse problems whose (M, N) logit matrix would exceed this many float64 entries (~1 GiB).
MAX_REFERENCE_ENTRIES = 2**27


def partials_dense_reference(y, train, sigma, log_weights=None) -> Partial:
    """Exact partials of every query over all training points, in float64.

    Parameters
    ----------
    y : (M, d) array, VE-normalised queries.
    train : (N, d) array, training points.
    sigma : (M,) float64, VE noise level per query (> 0).
    log_weights : (N,) float64 or None, log pi_i (None: all equal, i.e. 0; only the
        normalisation of the log-sum-exp changes, which the caller adds).
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(train, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    n_q, n_t = y.shape[0], x.shape[0]
    if n_q * n_t > MAX_REFERENCE_ENTRIES:
        raise MemoryError(
            f"the reference backend forms an (M, N) = ({n_q}, {n_t}) matrix; "
            "use backend='cpp' or 'numba' for problems this large"
        )
    diff = x[None, :, :] - y[:, None, :]  # (M, N, d): x_i - y
    sq = np.einsum("mnd,mnd->mn", diff, diff)
    logits = -sq / (2.0 * sigma[:, None] ** 2)
    if log_weights is not None:
        logits = logits + np.asarray(log_weights, dtype=np.float64)[None, :]
    top1 = np.argmax(logits, axis=1).astype(np.int64)
    m = logits[np.arange(n_q), top1] if n_q else np.zeros(0)
    w = np.exp(logits - m[:, None])
    return Partial(
        m=m,
        z=w.sum(axis=1),
        v=np.einsum("mn,mnd->md", w, diff),
        q=np.einsum("mn,mn->m", w, sq),
        z2=np.einsum("mn,mn->m", w, w),
        top1=top1,
    )


def partials_segments_reference(y, points, sigma, log_weights, offsets, seg_start, seg_len) -> Partial:
    """Exact float64 partials of query i over the rows of its segments (one query at a time)."""
    y = np.asarray(y, dtype=np.float64)
    n_q, dim = y.shape
    m, z, q, z2 = np.full(n_q, -np.inf), np.zeros(n_q), np.zeros(n_q), np.zeros(n_q)
    v, top1 = np.zeros((n_q, dim)), np.full(n_q, -1, dtype=np.int64)
    for i in range(n_q):
        rows = np.concatenate([np.arange(seg_start[g], seg_start[g] + seg_len[g])
                               for g in range(offsets[i], offsets[i + 1])] + [np.zeros(0, dtype=np.int64)])
        if log_weights is not None:
            rows = rows[np.asarray(log_weights)[rows] > -np.inf]
        if rows.size == 0:
            continue
        p = partials_dense_reference(y[i : i + 1], np.asarray(points)[rows], sigma[i : i + 1],
                                     None if log_weights is None else np.asarray(log_weights)[rows])
        m[i], z[i], q[i], z2[i], v[i], top1[i] = p.m[0], p.z[0], p.q[0], p.z2[0], p.v[0], rows[p.top1[0]]
    return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top1)


def third_moments_reference(y, train, sigma, log_weights, center):
    """``(t, G)`` in float64, no skipped terms: t_q = sum_i lambda_qi g_qi (x_i - c_q) and
    G_q = sum_i lambda_qi g_qi with g_qi = ||x_i - c_q||^2 and lambda the posterior weights."""
    p = partials_dense_reference(y, train, sigma, log_weights)
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(train, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    logits = -np.einsum("mnd,mnd->mn", x[None] - y[:, None], x[None] - y[:, None]) / (2.0 * sigma[:, None] ** 2)
    if log_weights is not None:
        logits = logits + np.asarray(log_weights, dtype=np.float64)[None, :]
    lam = np.exp(logits - (p.m + np.log(p.z))[:, None])
    dc = x[None, :, :] - np.asarray(center, dtype=np.float64)[:, None, :]  # (M, N, d): x_i - c_q
    g = lam * np.einsum("mnd,mnd->mn", dc, dc)
    return np.einsum("mn,mnd->md", g, dc), g.sum(axis=1)
