"""Adapter of the ``_cuda`` kernels: torch tensors in, device pointers + stream to the module.

Outputs and the split workspace are torch tensors on the training set's device, allocated on
the caller's current stream (``torch.cuda.current_stream()``); the kernels run asynchronously
on that stream, so results are ordered with the caller's other work.  The only host
synchronisation is the redo check (a handful of mixed queries rerun exactly, as in the CPU
engine).  Imported lazily (it imports torch).
"""
from __future__ import annotations

from .torch_backend import TorchPartial, TorchTrainingData, _torch

#: fast_tol of the TF32 mode (logit error): TF32 keeps 10 mantissa bits, so GEMM-form logits
#: are used up to this error (D within ~2e-3 R, log p within ~1e-3); below it the terms near the
#: max are recomputed exactly as in the fp32 mode.  Never the default (see docs/cuda.md).
TF32_FAST_TOL = 1e-3
#: Upper bound of the split workspace (the per-split copies of v).
WORKSPACE_BYTES = 1 << 30


def _module():
    from .. import _cuda  # type: ignore[attr-defined]

    return _cuda


def _check(name: str, t, dtype, device, shape=None):
    torch = _torch()
    if not torch.is_tensor(t):
        raise TypeError(f"{name}: expected a torch tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: on device {t.device}, expected {device}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def current_stream_handle(device) -> int:
    """The caller's current stream on ``device`` as a cudaStream_t handle (an int)."""
    return _torch().cuda.current_stream(device).cuda_stream


def split_plan(n_queries: int, n_points: int, dim: int, acc_bytes: int, device) -> tuple[int, int]:
    """(n_splits, rows_per_split): about two blocks per SM, within :data:`WORKSPACE_BYTES`."""
    cu = _module()
    tile = cu.dense_tile_rows()
    n_tiles = -(-n_points // tile)
    query_blocks = -(-n_queries // 32)
    sms = cu.multiprocessor_count(device.index if device.index is not None else _torch().cuda.current_device())
    want = max(1, -(-2 * sms // query_blocks))
    cap = max(1, WORKSPACE_BYTES // max(1, n_queries * (dim * acc_bytes + 64)))
    n_splits = max(1, min(want, cap, n_tiles, 65535))  # gridDim.y limit
    rows = -(-n_tiles // n_splits) * tile
    return -(-n_points // rows), rows


def partials_dense_cuda(y, sigma, data: TorchTrainingData, *, fast_tol: float, log_cut: float,
                        accumulate: str = "fp64", tf32: bool = False, diagnostics: dict | None = None,
                        _force_exact: bool = False) -> TorchPartial:
    """Dense partials of ``y`` (M, d) over ``data`` on its CUDA device (see torch_backend)."""
    torch = _torch()
    if accumulate not in ("fp64", "fp32"):
        raise ValueError(f"accumulate: expected 'fp64' or 'fp32', got {accumulate!r}")
    if tf32 and data.points.dtype != torch.float32:
        raise ValueError("tf32: TF32 tensor cores need float32 training data")
    dev = data.device
    n_q, dim = int(y.shape[0]), data.dim
    _check("x", y, data.points.dtype, dev, (n_q, dim))
    _check("sigma", sigma, torch.float64, dev, (n_q,))
    f64, i64 = torch.float64, torch.int64
    acc_dtype = f64 if accumulate == "fp64" else torch.float32
    if tf32:
        fast_tol = max(fast_tol, TF32_FAST_TOL)
    n_splits, rows = split_plan(n_q, data.n_points, dim, 8 if accumulate == "fp64" else 4, dev)
    ws = {k: torch.empty(n_splits * n_q, dtype=f64, device=dev) for k in ("m", "z", "q", "z2", "z_gemm")}
    ws.update(top1=torch.empty(n_splits * n_q, dtype=i64, device=dev),
              n_exact=torch.empty(n_splits * n_q, dtype=i64, device=dev),
              v=torch.empty((n_splits * n_q, dim), dtype=acc_dtype, device=dev),
              est=torch.empty(n_q, dtype=f64, device=dev), mode=torch.empty(n_q, dtype=torch.int32, device=dev))
    out = {k: torch.empty(n_q, dtype=f64, device=dev) for k in ("m", "z", "q", "z2")}
    out.update(v=torch.empty((n_q, dim), dtype=f64, device=dev), top1=torch.empty(n_q, dtype=i64, device=dev),
               n_exact=torch.empty(n_q, dtype=i64, device=dev), redo=torch.empty(n_q, dtype=torch.int32, device=dev))
    stream = current_stream_handle(dev)
    _module().dense_partials(
        "float32" if data.points.dtype == torch.float32 else "float64",
        y.data_ptr(), data.points.data_ptr(), data.center.data_ptr(), data.half_sqnorm.data_ptr(),
        0 if data.log_w is None else data.log_w.data_ptr(), sigma.data_ptr(), n_q, data.n_points, dim,
        data.radius, fast_tol, log_cut, data.log_w_max_abs, tf32, _force_exact, accumulate == "fp32",
        n_splits, rows, *(ws[k].data_ptr() for k in ("m", "z", "q", "z2", "z_gemm", "top1", "n_exact", "v", "est", "mode")),
        *(out[k].data_ptr() for k in ("m", "z", "v", "q", "z2", "top1", "n_exact", "redo")), stream,
    )  # fmt: skip
    redo = torch.nonzero(out["redo"]).flatten()
    if redo.numel() and not _force_exact:  # mixed queries whose GEMM-form terms carried too much mass
        again = partials_dense_cuda(y[redo].contiguous(), sigma[redo].contiguous(), data, fast_tol=fast_tol,
                                    log_cut=log_cut, accumulate=accumulate, tf32=tf32, _force_exact=True)
        for key in ("m", "z", "v", "q", "z2", "top1"):
            val = getattr(again, key)
            out[key][redo] = val - data.log_w_shift if key == "m" else val
    if diagnostics is not None:
        diagnostics["n_exact"] = out["n_exact"]
        diagnostics["splits"] = (n_splits, rows)
    return TorchPartial(out["m"] + data.log_w_shift, out["z"], out["v"], out["q"], out["z2"], out["top1"],
                        data.log_mass)


def partials_segments_cuda(y, sigma, points, log_w, offsets, seg_start, seg_len) -> TorchPartial:
    """Exact partials of each query over its CSR segments of ``points`` rows (CUDA tensors)."""
    torch = _torch()
    dev = points.device
    n_q, dim = int(y.shape[0]), int(points.shape[1])
    _check("x", y, points.dtype, dev, (n_q, dim))
    _check("sigma", sigma, torch.float64, dev, (n_q,))
    for name, t in (("offsets", offsets), ("seg_start", seg_start), ("seg_len", seg_len)):
        _check(name, t, torch.int64, dev)
    out = {k: torch.empty(n_q, dtype=torch.float64, device=dev) for k in ("m", "z", "q", "z2")}
    out.update(v=torch.empty((n_q, dim), dtype=torch.float64, device=dev),
               top1=torch.empty(n_q, dtype=torch.int64, device=dev))
    if n_q:
        _module().segment_partials(
            "float32" if points.dtype == torch.float32 else "float64", y.data_ptr(), points.data_ptr(),
            0 if log_w is None else log_w.data_ptr(), sigma.data_ptr(), offsets.data_ptr(), seg_start.data_ptr(),
            seg_len.data_ptr(), n_q, int(points.shape[0]), dim,
            *(out[k].data_ptr() for k in ("m", "z", "v", "q", "z2", "top1")), current_stream_handle(dev),
        )  # fmt: skip
    return TorchPartial(out["m"], out["z"], out["v"], out["q"], out["z2"], out["top1"])

