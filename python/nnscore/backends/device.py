"""Dispatch of the device backends (``torch``, ``cuda``) and host <-> device conversions.

Both keep the training set resident as a :class:`TorchTrainingData` on one torch device and
return :class:`TorchPartial` (tensors on that device).  Host callers (``partials_dense`` with
NumPy queries) get NumPy partials back through :meth:`TorchPartial.to_numpy`.  Imported lazily
(it imports torch).
"""
from __future__ import annotations

import math
import warnings
import weakref

import numpy as np

from . import FAST_TOL, Segments, TrainingData, skip_log_cut
from . import torch_backend as tb
from .torch_backend import TorchPartial, TorchTrainingData

__all__ = ["as_device_data", "to_device", "partials_dense_device", "partials_segments_device", "host_tensor"]

# Host TrainingData -> its device copy, per backend (built once per training set).
_DEVICE_COPIES: "weakref.WeakKeyDictionary[TrainingData, dict]" = weakref.WeakKeyDictionary()


def default_device(backend: str):
    return "cuda" if backend == "cuda" else "cpu"


def host_tensor(arr: np.ndarray, device="cpu"):
    """A tensor over a NumPy array, zero-copy on the CPU (read-only arrays are never written)."""
    torch = tb._torch()
    arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():  # torch warns about non-writable arrays; nothing writes here
        warnings.simplefilter("ignore", UserWarning)
        out = torch.from_numpy(arr)
    return out.to(device) if str(device) != "cpu" else out


def as_device_data(data, backend: str) -> TorchTrainingData:
    """``data`` as a TorchTrainingData for ``backend`` (a host TrainingData is copied once)."""
    if isinstance(data, TorchTrainingData):
        if backend == "cuda" and data.device.type != "cuda":
            raise ValueError(f"train: the cuda backend needs the training set on a CUDA device, got {data.device}")
        return data
    cache = _DEVICE_COPIES.setdefault(data, {})
    if backend not in cache:
        dev = default_device(backend)
        torch = tb._torch()
        log_w = None if data.log_w is None else host_tensor(data.log_w, dev)
        finite = np.asarray(data.log_w)[np.isfinite(data.log_w)] if data.log_w is not None else np.zeros(0)
        center = host_tensor(np.asarray(data.center), dev)
        cache[backend] = TorchTrainingData(
            host_tensor(data.points, dev), center, center.to(torch.float64), host_tensor(data.half_sqnorm, dev),
            data.radius, log_w, data.log_mass, data.log_w_shift,
            float(np.abs(finite).max()) if finite.size else 0.0,
        )
    return cache[backend]


def to_device(arr: np.ndarray, data: TorchTrainingData):
    return host_tensor(arr, data.device)


def _cut_and_tol(data: TorchTrainingData, fast_tol: float | None) -> tuple[float, float]:
    dt = data.dtype
    return min(FAST_TOL[dt], fast_tol or math.inf), skip_log_cut(data.n_points, dt)


def partials_dense_device(
    backend: str, y, sigma, data: TorchTrainingData, *, fast_tol: float | None = None,
    diagnostics: dict | None = None, accumulate: str = "fp64", tf32: bool = False,
    working_memory: int | None = None,
) -> TorchPartial:
    """Dense partials of ``y`` (M, d) (dtype/device of ``data.points``), ``sigma`` (M,) float64."""
    tol, log_cut = _cut_and_tol(data, fast_tol)
    if backend == "torch":
        if tf32:
            raise ValueError("tf32: the torch backend follows torch's own matmul precision setting; "
                             "tf32=True is an option of the cuda backend")
        return tb.partials_dense_torch(y, sigma, data, fast_tol=tol, log_cut=log_cut, accumulate=accumulate,
                                       working_memory=working_memory, diagnostics=diagnostics)
    if backend == "cuda":
        from . import cuda_backend

        return cuda_backend.partials_dense_cuda(y, sigma, data, fast_tol=tol, log_cut=log_cut,
                                                accumulate=accumulate, tf32=tf32, diagnostics=diagnostics)
    raise ValueError(f"backend: {backend!r} is not a device backend")


def partials_segments_device(backend: str, y, sigma, points, log_w, segments: Segments):
    """Exact subset partials of host arrays through a device backend; returns a NumPy Partial."""
    dev = default_device(backend)
    args = [host_tensor(np.asarray(a), dev) for a in (y, sigma, points)]
    lw = None if log_w is None else host_tensor(np.asarray(log_w, dtype=np.float64), dev)
    seg = [host_tensor(np.asarray(a, dtype=np.int64), dev) for a in (segments.offsets, segments.start, segments.length)]
    if backend == "torch":
        p = tb.partials_segments_torch(*args, lw, *seg)
    else:
        from . import cuda_backend

        p = cuda_backend.partials_segments_cuda(*args, lw, *seg)
    return p.to_numpy()
