"""Pure-torch exact reduction on any torch device: the GPU fallback when ``_cuda`` is absent.

The algorithm mirrors the CPU engine (``csrc/include/nnscore/dense.hpp``) in vectorised torch:

* training points are streamed in chunks of rows sized from a byte budget, so no more than one
  (queries x chunk) tile of logits exists at a time;
* logits are first formed in GEMM form about the data centre ``c`` in the input precision,
  ``l = log pi - (||y - c||^2/2 + ||x - c||^2/2 - <y - c, x - c>) / sigma^2``, with float64 norms;
* per query a static rule picks the path: *fast* (the calibrated GEMM-form logit error ``est`` is
  below ``fast_tol``: GEMM logits are used as they are), *mixed* (terms within
  ``log(est/fast_tol) + 3.5`` of the running max are recomputed in float64 difference form, the
  rest keep GEMM form; afterwards a query whose GEMM-form terms carry more than ``fast_tol/est``
  of the mass is redone exactly) or *exact* (every term within ``log_cut`` of the running max is
  recomputed in difference form).  Terms whose logit is certainly below ``max - log_cut`` are
  skipped; they carry at most ``N exp(-log_cut)`` of the mass relative to the largest weight;
* the log-sum-exp is streamed (running max, rescaled sums) with float64 sums; ``v`` is
  accumulated as ``sum w (x - c) - (sum w) (y - c)`` in float64 (or float32 with
  ``accumulate="fp32"``, faster on GPUs without fast float64, looser for far queries).

Everything stays on the device of the training tensor; the only host synchronisations are the
mode counts of a tile (to skip the exact pass when no query needs it) and the final redo check.
torch is imported lazily: importing this module does not import torch.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_WORKING_MEMORY",
    "TorchPartial",
    "TorchTrainingData",
    "is_available",
    "partials_dense_torch",
    "partials_segments_torch",
    "tile_shape",
]

#: Default byte budget of one tile's temporaries (the (queries x chunk) float64 matrices).
DEFAULT_WORKING_MEMORY = 256 * 2**20
#: float64 temporaries alive per (query, point) entry of a tile: GEMM result, half distances,
#: logits, weights, products and masks (an upper estimate, used to size the chunks).
BYTES_PER_TILE_ENTRY = 64
#: Query rows per block (keeps the per-query state small next to the tile).
MAX_QUERY_BLOCK = 4096
ACCUMULATE = ("fp64", "fp32")


def is_available() -> tuple[bool, str]:
    """(available, reason): torch is importable (checked without importing it)."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed (pip install torch)"
    return True, ""


def _torch():
    import torch

    return torch


def numpy_dtype(torch_dtype) -> np.dtype:
    torch = _torch()
    return {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}[torch_dtype]


@dataclass(frozen=True, eq=False)
class TorchTrainingData:
    """The training set resident on one torch device, with its O(N) float64 side tensors.

    Same fields as :class:`nnscore.backends.TrainingData` (``points`` (N, d) contiguous, ``center``
    (d,) in the points' dtype, ``half_sqnorm`` = ||x_i - c||^2/2 float64, ``radius``, ``log_w``
    shifted by ``log_w_shift`` or None, ``log_mass``), as tensors on ``points.device``.
    """

    points: object
    center: object
    center64: object
    half_sqnorm: object
    radius: float
    log_w: object | None
    log_mass: float
    log_w_shift: float = 0.0
    log_w_max_abs: float = 0.0

    @classmethod
    def prepare(cls, points, weights=None, chunk_rows: int = 65536) -> "TorchTrainingData":
        """Side tensors of ``points`` (N, d) float32/float64 with optional ``weights`` (N,) >= 0."""
        torch = _torch()
        points = points.contiguous()
        n, dim = points.shape
        f64 = torch.float64
        total = torch.zeros(dim, dtype=f64, device=points.device)
        for start in range(0, n, chunk_rows):
            total += points[start : start + chunk_rows].sum(0, dtype=f64)
        center = (total / n).to(points.dtype)
        center64 = center.to(f64)
        half = torch.empty(n, dtype=f64, device=points.device)
        for start in range(0, n, chunk_rows):
            block = points[start : start + chunk_rows].to(f64) - center64
            half[start : start + chunk_rows] = 0.5 * (block * block).sum(1)
        radius = float(torch.sqrt(2.0 * half.max()))
        if weights is None:
            return cls(points, center, center64, half, radius, None, math.log(n))
        w = weights.to(device=points.device, dtype=f64)
        log_pi = torch.log(w)
        shift = float(log_pi.max())
        log_w = log_pi - shift
        finite = log_w[torch.isfinite(log_w)]
        return cls(points, center, center64, half, radius, log_w, float(torch.log(w.sum())), shift,
                   float(finite.abs().max()) if finite.numel() else 0.0)

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    @property
    def device(self):
        return self.points.device

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.points.dtype)


@dataclass(frozen=True, eq=False)
class TorchPartial:
    """A :class:`nnscore.partials.Partial` held as tensors on a device (float64, top1 int64)."""

    m: object
    z: object
    v: object
    q: object
    z2: object
    top1: object
    log_mass: float = 0.0

    def to_numpy(self):
        from ..partials import Partial

        host = {k: getattr(self, k).detach().cpu().numpy() for k in ("m", "z", "v", "q", "z2", "top1")}
        host["v"] = host["v"].astype(np.float64, copy=False)
        return Partial(**host, log_mass=self.log_mass)


def unit_roundoff(points) -> float:
    """Unit roundoff of a matmul of ``points``' dtype on its device (TF32 when torch allows it)."""
    torch = _torch()
    if points.dtype == torch.float64:
        return 2.0**-53
    if points.device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    ):
        return 2.0**-11  # TF32 keeps 10 explicit mantissa bits
    return 2.0**-24


def tile_shape(n_queries: int, n_points: int, dim: int, working_memory: int) -> tuple[int, int]:
    """(query block, chunk rows) whose temporaries fit in ``working_memory`` bytes."""
    q_block = max(1, min(n_queries, MAX_QUERY_BLOCK))
    per_row = BYTES_PER_TILE_ENTRY * q_block + 24 * dim  # tile column + the chunk's float64 copy
    rows = max(1, min(n_points, working_memory // per_row))
    return q_block, int(rows)


def partials_dense_torch(
    y,
    sigma,
    data: TorchTrainingData,
    *,
    fast_tol: float,
    log_cut: float,
    accumulate: str = "fp64",
    working_memory: int | None = None,
    diagnostics: dict | None = None,
) -> TorchPartial:
    """Partials of queries ``y`` (M, d) (dtype and device of ``data.points``) over all points.

    ``sigma`` (M,) float64 on the same device.  ``m`` of the result includes ``log_w_shift``;
    ``log_mass`` is ``data.log_mass``.  ``diagnostics`` (a dict) receives ``n_exact`` (M,) and
    ``tile`` = (query block, chunk rows).
    """
    torch = _torch()
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate: expected one of {ACCUMULATE}, got {accumulate!r}")
    budget = DEFAULT_WORKING_MEMORY if working_memory is None else int(working_memory)
    n_q, dim = y.shape
    q_block, rows = tile_shape(n_q, data.n_points, dim, budget)
    dev, f64 = y.device, torch.float64
    m = torch.full((n_q,), -math.inf, dtype=f64, device=dev)
    z, q, z2 = (torch.zeros(n_q, dtype=f64, device=dev) for _ in range(3))
    v = torch.zeros((n_q, dim), dtype=f64, device=dev)
    top1 = torch.full((n_q,), -1, dtype=torch.int64, device=dev)
    n_exact = torch.zeros(n_q, dtype=torch.int64, device=dev)
    for q0 in range(0, n_q, q_block):
        sl = slice(q0, min(n_q, q0 + q_block))
        out = _dense_block(y[sl], sigma[sl], data, fast_tol, log_cut, accumulate, rows, budget, None)
        redo = out.pop("redo")
        if redo.numel():  # mixed queries whose GEMM-form terms carried too much mass: exactly
            again = _dense_block(y[sl][redo], sigma[sl][redo], data, fast_tol, log_cut, accumulate, rows,
                                 budget, True)
            again.pop("redo")
            for key, val in again.items():
                out[key][redo] = val
        m[sl], z[sl], v[sl], q[sl], z2[sl], top1[sl], n_exact[sl] = (
            out["m"], out["z"], out["v"], out["q"], out["z2"], out["top1"], out["n_exact"])
    if diagnostics is not None:
        diagnostics["n_exact"] = n_exact
        diagnostics["tile"] = (q_block, rows)
    return TorchPartial(m + data.log_w_shift, z, v, q, z2, top1, data.log_mass)


def _dense_block(y, sig, data, fast_tol, log_cut, accumulate, rows, budget, force_exact):
    torch = _torch()
    dev, f64 = y.device, torch.float64
    acc = f64 if accumulate == "fp64" else torch.float32
    nq, dim = y.shape
    u = unit_roundoff(data.points)
    y64 = y.to(f64)
    yc64 = y64 - data.center64
    yc = yc64.to(y.dtype)  # rounded query minus centre: the GEMM operand
    hy = 0.5 * (yc64 * yc64).sum(1)
    inv = 1.0 / (sig * sig)
    ynorm = torch.sqrt(2.0 * hy)
    R = data.radius
    # Rigorous bound on |GEMM-form logit - exact logit| (the d-term dot product and the rounding
    # of both operands, doubled), plus the float64 rounding of the shift hy/sigma^2.
    err_h = 1.01 * u * ((dim + 3.0) * ynorm * R + 2.0 * R * R) + 1e-300
    el = 2.0 * err_h * inv + 4.0 * 2.0**-53 * (data.log_w_max_abs + 1.0) + 8.0 * 2.0**-53 * hy * inv
    # Calibrated (typical) GEMM-form logit error: selects the path, as in the CPU engine.
    est = u * (ynorm * R + R * R) * inv
    mixed_cut = torch.log(est / fast_tol) + 3.5
    if force_exact:
        fast = torch.zeros(nq, dtype=torch.bool, device=dev)
        mixed = fast.clone()
    else:
        fast = est <= fast_tol
        mixed = ~fast & (est <= 1e-2) & (mixed_cut < log_cut)
    exact_cut = torch.where(mixed, mixed_cut, torch.full_like(est, log_cut)) + 2.0 * el
    slow_rows = torch.nonzero(~fast).flatten()
    n_slow = int(slow_rows.numel())
    m = torch.full((nq,), -math.inf, dtype=f64, device=dev)
    m_low = m.clone()  # a lower bound of the true running max (exact or GEMM minus its error)
    z, q, z2, z_gemm = (torch.zeros(nq, dtype=f64, device=dev) for _ in range(4))
    v = torch.zeros((nq, dim), dtype=acc, device=dev)
    top1 = torch.full((nq,), -1, dtype=torch.int64, device=dev)
    n_exact = torch.zeros(nq, dtype=torch.int64, device=dev)
    pair_batch = max(1, budget // (24 * dim + 64))
    for n0 in range(0, data.n_points, rows):
        n1 = min(data.n_points, n0 + rows)
        xb = data.points[n0:n1]
        xc64 = xb.to(f64) - data.center64
        g = (yc @ (xb - data.center).T).to(f64)
        hs = (hy[:, None] + data.half_sqnorm[None, n0:n1]) - g  # GEMM-form ||y - x||^2 / 2
        hs.clamp_(min=0.0)
        lw = data.log_w[n0:n1] if data.log_w is not None else None
        logit = -hs * inv[:, None]
        if lw is not None:
            logit += lw
        gemm_terms = None
        pairs = None
        if n_slow:
            ls, hss = logit[slow_rows], hs[slow_rows]
            els = el[slow_rows]
            ref = torch.maximum(m_low[slow_rows], ls.max(1).values - els)
            is_exact = ls >= (ref - exact_cut[slow_rows])[:, None]
            skip = ((ls + els[:, None]) < (ref - log_cut)[:, None]) & ~is_exact
            ri, bj = torch.nonzero(is_exact, as_tuple=True)
            pairs = (slow_rows[ri], bj)
            for p0 in range(0, int(ri.numel()), pair_batch):
                pi, pj = ri[p0 : p0 + pair_batch], bj[p0 : p0 + pair_batch]
                diff = xb[pj].to(f64) - y64[slow_rows[pi]]  # difference form, float64
                hss[pi, pj] = 0.5 * (diff * diff).sum(1)
            ls = -hss * inv[slow_rows][:, None]
            if lw is not None:
                ls += lw
            ls = ls.masked_fill(skip, -math.inf)
            exact_max = ls.masked_fill(~is_exact, -math.inf).max(1).values
            m_low[slow_rows] = torch.maximum(ref, exact_max)
            logit[slow_rows], hs[slow_rows] = ls, hss
            n_exact[slow_rows] += is_exact.sum(1)
            gemm_terms = torch.zeros_like(logit, dtype=torch.bool)
            gemm_terms[slow_rows] = ~is_exact & ~skip & mixed[slow_rows][:, None]
        # Streaming log-sum-exp over the tile; a side with m = -inf contributes 0 (never NaN).
        tile_arg = logit.argmax(1)  # first maximal index: ties keep the lowest index
        tile_max = logit.gather(1, tile_arg[:, None]).squeeze(1)
        m_new = torch.maximum(m, tile_max)
        top1 = torch.where(tile_max > m, tile_arg + n0, top1)
        shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        scale = torch.exp(m - shift)  # 0 where m = -inf
        w = torch.exp(logit - shift[:, None])
        wsum = w.sum(1)
        z = z * scale + wsum
        z2 = z2 * scale * scale + (w * w).sum(1)
        if gemm_terms is not None:
            z_gemm = z_gemm * scale + (w * gemm_terms).sum(1)
        v = v * scale[:, None].to(acc)
        q = q * scale
        if pairs is not None and pairs[0].numel():
            # Exactly recomputed terms go into v and q in difference form, w (x - y), like the
            # CPU engine: no cancellation between sum w (x - c) and z (y - c) at small sigma.
            pq, pj = pairs
            w_pairs = w[pq, pj]
            q.index_add_(0, pq, 2.0 * w_pairs * hs[pq, pj])
            w = w.index_put((pq, pj), torch.zeros_like(w_pairs))
            for p0 in range(0, int(pq.numel()), pair_batch):
                sl = slice(p0, p0 + pair_batch)
                diff = xb[pj[sl]].to(f64) - y64[pq[sl]]
                v.index_add_(0, pq[sl], (w_pairs[sl, None] * diff).to(acc))
        # The other terms through float64 sums about the centre: sum w (x - c) and
        # sum w ||x - y||^2 = sum w 2 hx - 2 <sum w (x - c), y - c> + (sum w) 2 hy, so that q is
        # not limited by the input-precision GEMM (tr Cov = q/z - |v/z|^2 cancels at large sigma).
        w_sum = w.sum(1)
        wx = w.to(acc) @ xc64.to(acc)
        v += wx - w_sum[:, None].to(acc) * yc64.to(acc)
        q += 2.0 * (w @ data.half_sqnorm[n0:n1]) - 2.0 * (wx.to(f64) * yc64).sum(1) + 2.0 * w_sum * hy
        m = m_new
    redo = torch.nonzero(mixed & (z_gemm * est > fast_tol * z)).flatten()
    return {"m": m, "z": z, "v": v.to(f64), "q": q, "z2": z2, "top1": top1, "n_exact": n_exact, "redo": redo}


def partials_segments_torch(y, sigma, points, log_w, offsets, seg_start, seg_len, *,
                            working_memory: int | None = None) -> TorchPartial:
    """Exact float64 partials of query i over the rows of its segments (CSR, int64 tensors).

    Every logit is computed in difference form.  A query without a positive-weight row gets the
    empty partial (m = -inf, top1 = -1).  ``top1`` indexes ``points``; on exact ties the row that
    comes first in the query's list wins.  ``log_w`` (aligned with ``points``) or None.
    """
    torch = _torch()
    dev, f64 = y.device, torch.float64
    n_q, dim = y.shape
    budget = DEFAULT_WORKING_MEMORY if working_memory is None else int(working_memory)
    # Expand segments into one entry per (query, row), in list order.
    seg_query = torch.repeat_interleave(torch.arange(n_q, device=dev), offsets[1:] - offsets[:-1])
    entry_seg = torch.repeat_interleave(torch.arange(seg_len.numel(), device=dev), seg_len)
    first_entry = torch.cumsum(seg_len, 0) - seg_len
    row = seg_start[entry_seg] + (torch.arange(entry_seg.numel(), device=dev) - first_entry[entry_seg])
    qid = seg_query[entry_seg]
    n_e = int(row.numel())
    inv = 1.0 / (sigma * sigma)
    hs = torch.empty(n_e, dtype=f64, device=dev)
    batch = max(1, budget // (16 * dim + 64))
    y64 = y.to(f64)
    for e0 in range(0, n_e, batch):
        diff = points[row[e0 : e0 + batch]].to(f64) - y64[qid[e0 : e0 + batch]]
        hs[e0 : e0 + batch] = 0.5 * (diff * diff).sum(1)
    logit = -hs * inv[qid]
    if log_w is not None:
        logit = logit + log_w[row]
    m = torch.full((n_q,), -math.inf, dtype=f64, device=dev).scatter_reduce(0, qid, logit, "amax")
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(logit - shift[qid])
    z = torch.zeros(n_q, dtype=f64, device=dev).index_add_(0, qid, w)
    z2 = torch.zeros(n_q, dtype=f64, device=dev).index_add_(0, qid, w * w)
    q = torch.zeros(n_q, dtype=f64, device=dev).index_add_(0, qid, 2.0 * w * hs)
    v = torch.zeros((n_q, dim), dtype=f64, device=dev)
    for e0 in range(0, n_e, batch):
        sl = slice(e0, e0 + batch)
        diff = points[row[sl]].to(f64) - y64[qid[sl]]
        v.index_add_(0, qid[sl], w[sl, None] * diff)
    position = torch.arange(n_e, device=dev)
    is_max = (logit == m[qid]) & torch.isfinite(logit)
    first = torch.full((n_q,), n_e, dtype=torch.int64, device=dev).scatter_reduce(
        0, qid[is_max], position[is_max], "amin")
    top1 = torch.where(first < n_e, row[first.clamp(max=max(n_e - 1, 0))] if n_e else first, -1)
    return TorchPartial(m, z, v, q, z2, top1.to(torch.int64))
