"""Numba CPU kernels: exact dense partials with a streaming (online) softmax.

One pass over the training points per query with a running max: when a new max logit appears
the running sums are rescaled by ``exp(m_old - m_new)`` (``z2`` by its square).  Distances are
in difference form, ``sum_k (x_ik - y_qk)^2`` with every difference taken in float64 from the
input values, and every sum is accumulated in float64, so float32 inputs give the float64
result of their (exactly representable) float64 values.

Two parallel schedules, both deterministic:

* ``M >= n_threads``: ``prange`` over blocks of queries; each query scans the training points in
  index order (tiled across the block for cache reuse, which does not change the arithmetic),
  so the result is bitwise independent of the thread count.
* ``M < n_threads`` (few queries, large N): ``prange`` over ``4 * n_threads`` contiguous chunks
  of training points, each producing partials, merged left to right with the algebra of
  :func:`nnscore.partials.merge`.  The result depends (by rounding only) on the chunk count,
  which is a function of the requested ``n_threads`` alone, never of the machine.

numba is imported lazily (on the first call or by :func:`is_available`), and the kernels are
compiled on first use and kept in module globals.  No ``fastmath``: it would license
reassociation of the reductions and break the ``-inf`` handling.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from ..exceptions import BackendUnavailableError
from ..partials import Partial

__all__ = ["partials_dense_numba", "partials_segments_numba", "third_moments_numba", "is_available"]

#: Terms with ``l_i < m - SKIP_BELOW`` are skipped: ``exp(-746)`` is 0 in float64.
SKIP_BELOW = 746.0
#: Chunks per thread of the few-queries schedule (load balance vs merge cost).
CHUNKS_PER_THREAD = 4
#: Bytes of training rows per tile of the many-queries schedule (about L2-sized).
_TILE_BYTES = 1 << 17

_lock = threading.Lock()
_availability: tuple[bool, str] | None = None
_kernels: dict | None = None


def is_available() -> tuple[bool, str]:
    """``(True, "")`` if numba can be imported, else ``(False, reason)`` (with the fix)."""
    global _availability
    if _availability is None:
        try:
            import numba  # noqa: F401
        except Exception as exc:  # ImportError, or a broken llvmlite install
            _availability = (
                False,
                f"numba cannot be imported ({type(exc).__name__}: {exc}); "
                "install it with `pip install numba`",
            )
        else:
            _availability = (True, "")
    return _availability


def _build_kernels() -> dict:
    """Define the numba kernels (compiled per signature on their first call)."""
    from numba import njit, prange

    neg_inf = -np.inf
    skip_below = SKIP_BELOW

    @njit(cache=False, nogil=True)
    def scan(y, x, lw, has_lw, qi, two_s2, lo, hi, sm, sz, sq_, sz2, stop, sv, r):
        """Stream training rows ``lo..hi-1`` into the state of query ``qi`` at row ``r``."""
        d = x.shape[1]
        m = sm[r]
        z = sz[r]
        qq = sq_[r]
        z2 = sz2[r]
        top = stop[r]
        for i in range(lo, hi):
            # Four independent accumulators (fixed order: deterministic) break the add chain.
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            k = 0
            while k + 4 <= d:
                t0 = np.float64(x[i, k]) - np.float64(y[qi, k])
                t1 = np.float64(x[i, k + 1]) - np.float64(y[qi, k + 1])
                t2 = np.float64(x[i, k + 2]) - np.float64(y[qi, k + 2])
                t3 = np.float64(x[i, k + 3]) - np.float64(y[qi, k + 3])
                a0 += t0 * t0
                a1 += t1 * t1
                a2 += t2 * t2
                a3 += t3 * t3
                k += 4
            while k < d:
                t0 = np.float64(x[i, k]) - np.float64(y[qi, k])
                a0 += t0 * t0
                k += 1
            sq = (a0 + a1) + (a2 + a3)
            l = -sq / two_s2
            if has_lw:
                l += lw[i]
            if l > m:
                # New max: rescale the running sums (an empty state contributes nothing).
                s = 0.0
                if m != neg_inf:
                    s = math.exp(m - l)
                z = z * s + 1.0
                qq = qq * s + sq
                z2 = z2 * (s * s) + 1.0
                for k in range(d):
                    sv[r, k] = sv[r, k] * s + (np.float64(x[i, k]) - np.float64(y[qi, k]))
                m = l
                top = i
            elif l - m >= -skip_below:  # false for l = -inf and for NaN
                w = math.exp(l - m)
                z += w
                qq += w * sq
                z2 += w * w
                for k in range(d):
                    sv[r, k] += w * (np.float64(x[i, k]) - np.float64(y[qi, k]))
        sm[r] = m
        sz[r] = z
        sq_[r] = qq
        sz2[r] = z2
        stop[r] = top

    @njit(parallel=True, cache=False)
    def by_queries(y, x, lw, has_lw, sigma, block, tile, m, z, v, q, z2, top):
        """Parallel over blocks of queries; outputs must start as the empty partial."""
        n_q = y.shape[0]
        n_t = x.shape[0]
        n_blocks = (n_q + block - 1) // block
        for b in prange(n_blocks):
            q0 = b * block
            q1 = min(n_q, q0 + block)
            for t0 in range(0, n_t, tile):
                t1 = min(n_t, t0 + tile)
                for qi in range(q0, q1):
                    s = sigma[qi]
                    scan(y, x, lw, has_lw, qi, 2.0 * (s * s), t0, t1, m, z, q, z2, top, v, qi)

    @njit(parallel=True, cache=False)
    def by_chunks(y, x, lw, has_lw, sigma, n_chunks, cm, cz, cv, cq, cz2, ctop):
        """Parallel over contiguous chunks of training points; one partial per chunk."""
        n_q = y.shape[0]
        n_t = x.shape[0]
        for c in prange(n_chunks):
            lo = (c * n_t) // n_chunks
            hi = ((c + 1) * n_t) // n_chunks
            for qi in range(n_q):
                s = sigma[qi]
                scan(y, x, lw, has_lw, qi, 2.0 * (s * s), lo, hi,
                     cm[c], cz[c], cq[c], cz2[c], ctop[c], cv[c], qi)

    @njit(cache=False, nogil=True)
    def merge_chunks(cm, cz, cv, cq, cz2, ctop, m, z, v, q, z2, top):
        """Merge chunk partials left to right (``partials.merge``); outputs start empty."""
        n_chunks, n_q, d = cv.shape
        for c in range(n_chunks):
            for qi in range(n_q):
                ma = m[qi]
                mb = cm[c, qi]
                mn = max(ma, mb)
                sa = 0.0
                if ma != neg_inf:
                    sa = math.exp(ma - mn)
                sb = 0.0
                if mb != neg_inf:
                    sb = math.exp(mb - mn)
                if mb > ma:
                    top[qi] = ctop[c, qi]
                m[qi] = mn
                z[qi] = z[qi] * sa + cz[c, qi] * sb
                q[qi] = q[qi] * sa + cq[c, qi] * sb
                z2[qi] = z2[qi] * sa * sa + cz2[c, qi] * sb * sb
                for k in range(d):
                    v[qi, k] = v[qi, k] * sa + cv[c, qi, k] * sb

    @njit(parallel=True, cache=False)
    def by_segments(y, x, lw, has_lw, sigma, offsets, seg_start, seg_len, m, z, v, q, z2, top):
        """Parallel over queries; query i streams the rows of its segments in order."""
        for qi in prange(y.shape[0]):
            s = sigma[qi]
            for g in range(offsets[qi], offsets[qi + 1]):
                scan(y, x, lw, has_lw, qi, 2.0 * (s * s), seg_start[g], seg_start[g] + seg_len[g],
                     m, z, q, z2, top, v, qi)

    @njit(parallel=True, cache=False)
    def third_moments(y, x, lw, has_lw, sigma, max_logit, log_norm, center, log_cut, t, g):
        """Per query: t = sum lambda ||x - c||^2 (x - c), g = sum lambda ||x - c||^2 (difference form)."""
        n_t, d = x.shape
        for qi in prange(y.shape[0]):
            inv = 0.5 / (sigma[qi] * sigma[qi])
            floor_l = max_logit[qi] - log_cut
            gq = 0.0
            for i in range(n_t):
                sq = 0.0
                for k in range(d):
                    e = np.float64(x[i, k]) - np.float64(y[qi, k])
                    sq += e * e
                l = -sq * inv
                if has_lw:
                    l += lw[i]
                if not l >= floor_l:
                    continue
                w = math.exp(l - log_norm[qi])
                gc = 0.0
                for k in range(d):
                    e = np.float64(x[i, k]) - center[qi, k]
                    gc += e * e
                w *= gc
                gq += w
                for k in range(d):
                    t[qi, k] += w * (np.float64(x[i, k]) - center[qi, k])
            g[qi] = gq

    return {"by_queries": by_queries, "by_chunks": by_chunks, "merge_chunks": merge_chunks,
            "by_segments": by_segments, "third_moments": third_moments}


def _get_kernels() -> dict:
    global _kernels
    if _kernels is None:
        ok, reason = is_available()
        if not ok:
            raise BackendUnavailableError(f"the numba backend is unavailable: {reason}")
        with _lock:
            if _kernels is None:
                _kernels = _build_kernels()
    return _kernels


def _empty_state(shape_q: tuple, dim: int):
    return (
        np.full(shape_q, -np.inf),
        np.zeros(shape_q),
        np.zeros(shape_q + (dim,)),
        np.zeros(shape_q),
        np.zeros(shape_q),
        np.full(shape_q, -1, dtype=np.int64),
    )


def _prepare(y, train, sigma, log_weights):
    y = np.asarray(y)
    x = np.asarray(train)
    if y.ndim != 2 or x.ndim != 2:
        raise ValueError(f"y and train must be 2-D, got shapes {y.shape} and {x.shape}")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"dimension mismatch: y has d={y.shape[1]}, train has d={x.shape[1]}")
    if x.shape[0] == 0:
        raise ValueError("train: need at least one training point")
    if y.dtype != x.dtype or y.dtype not in (np.float32, np.float64):
        # Not the documented contract; widen rather than compile a mixed signature.
        y = y.astype(np.float64)
        x = x.astype(np.float64)
    y = np.ascontiguousarray(y)
    x = np.ascontiguousarray(x)
    sigma = np.ascontiguousarray(sigma, dtype=np.float64).reshape(-1)
    if sigma.shape[0] != y.shape[0]:
        raise ValueError(f"sigma has {sigma.shape[0]} entries for {y.shape[0]} queries")
    if log_weights is None:
        lw, has_lw = np.zeros(1), False
    else:
        lw = np.ascontiguousarray(log_weights, dtype=np.float64).reshape(-1)
        if lw.shape[0] != x.shape[0]:
            raise ValueError(f"log_weights has {lw.shape[0]} entries for {x.shape[0]} points")
        has_lw = True
    return y, x, sigma, lw, has_lw


def partials_dense_numba(y, train, sigma, log_weights=None, n_threads=None) -> Partial:
    """Exact partials of every query over all training points (numba, float64 accumulation).

    Parameters
    ----------
    y : (M, d) float32 or float64, VE-normalised queries (same dtype as ``train``).
    train : (N, d) float32 or float64, training points.
    sigma : (M,) float64, VE noise level per query (> 0).
    log_weights : (N,) float64 or None (None: all log weights 0).
    n_threads : int or None.  None: numba's current thread count.  Otherwise the count used
        for this call only (capped at ``numba.config.NUMBA_NUM_THREADS``; the previous setting
        is restored).  Results are deterministic for a fixed ``n_threads``.

    Returns
    -------
    Partial with ``m, z, q, z2`` (M,) float64, ``v`` (M, d) float64, ``top1`` (M,) int64
    (first index of the max logit).
    """
    y, x, sigma, lw, has_lw = _prepare(y, train, sigma, log_weights)
    n_q, d = y.shape
    n_t = x.shape[0]
    if n_q == 0:
        m, z, v, q, z2, top = _empty_state((0,), d)
        return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top)
    if n_threads is not None:
        n_threads = int(n_threads)
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1 or None, got {n_threads}")

    kernels = _get_kernels()
    import numba

    prev = numba.get_num_threads()
    requested = prev if n_threads is None else n_threads
    # The schedule depends on the requested count only, so results do not depend on the host.
    n_use = min(requested, numba.config.NUMBA_NUM_THREADS)
    m, z, v, q, z2, top = _empty_state((n_q,), d)
    if n_use != prev:
        numba.set_num_threads(n_use)
    try:
        if n_q >= requested:
            block = int(min(16, max(1, n_q // (4 * requested))))
            tile = int(max(16, _TILE_BYTES // max(1, d * x.itemsize)))
            kernels["by_queries"](y, x, lw, has_lw, sigma, block, tile, m, z, v, q, z2, top)
        else:
            n_chunks = int(max(1, min(n_t, CHUNKS_PER_THREAD * requested)))
            cm, cz, cv, cq, cz2, ctop = _empty_state((n_chunks, n_q), d)
            kernels["by_chunks"](y, x, lw, has_lw, sigma, n_chunks, cm, cz, cv, cq, cz2, ctop)
            kernels["merge_chunks"](cm, cz, cv, cq, cz2, ctop, m, z, v, q, z2, top)
    finally:
        if n_use != prev:
            numba.set_num_threads(prev)
    return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top)


@contextlib.contextmanager
def _numba_threads(n_threads):
    """numba's thread count set to ``n_threads`` (capped; None: unchanged) for one call, then restored."""
    import numba

    prev = numba.get_num_threads()
    n_use = prev if n_threads is None else min(int(n_threads), numba.config.NUMBA_NUM_THREADS)
    if n_use != prev:
        numba.set_num_threads(n_use)
    try:
        yield
    finally:
        if n_use != prev:
            numba.set_num_threads(prev)


def partials_segments_numba(y, points, sigma, log_weights, offsets, seg_start, seg_len, n_threads=None) -> Partial:
    """Exact partials of query i over the rows of its segments (see ``backends.Segments``).

    Same arithmetic as :func:`partials_dense_numba` (difference form, float64 sums, online
    rescaling); ``top1`` indexes ``points``.  Parallel over queries: bitwise independent of the
    thread count.
    """
    y, x, sigma, lw, has_lw = _prepare(y, points, sigma, log_weights)
    n_q, d = y.shape
    m, z, v, q, z2, top = _empty_state((n_q,), d)
    if n_q == 0:
        return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top)
    kernels = _get_kernels()
    with _numba_threads(n_threads):
        kernels["by_segments"](y, x, lw, has_lw, sigma, offsets, seg_start, seg_len, m, z, v, q, z2, top)
    return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top)


def third_moments_numba(y, points, sigma, log_weights, max_logit, log_norm, center, log_cut, n_threads=None):
    """``(t, G)``: see :func:`nnscore.backends.third_moments` (parallel over queries)."""
    y, x, sigma, lw, has_lw = _prepare(y, points, sigma, log_weights)
    n_q, d = y.shape
    t, g = np.zeros((n_q, d)), np.zeros(n_q)
    if n_q == 0:
        return t, g
    kernels = _get_kernels()
    with _numba_threads(n_threads):
        kernels["third_moments"](y, x, lw, has_lw, sigma, np.ascontiguousarray(max_logit, dtype=np.float64),
                                 np.ascontiguousarray(log_norm, dtype=np.float64),
                                 np.ascontiguousarray(center, dtype=np.float64), float(log_cut), t, g)
    return t, g
