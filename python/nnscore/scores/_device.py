"""Tensor inputs and outputs for the device backends (``torch``, ``cuda``) of EmpiricalScore.

Policy: a training tensor stays a tensor on its device; host training arrays keep the host
TrainingData of the NumPy path and are copied once, on first use, to the CPU (``torch``) or the
current CUDA device (``cuda``).  ``evaluate`` with a tensor query returns
a :class:`ScoreResult` whose fields are tensors on the query's device: ``denoised`` and ``score``
in the query dtype, the per-query statistics (``log_density``, ``divergence``, ``n_eff``,
``sigma``, ...) float64 and ``top1`` int64.  CuPy queries get CuPy arrays back (through DLPack).
NumPy queries take the NumPy path of :class:`ScoreModel` and get NumPy results.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import as_float_array, check_finite
from ..backends import torch_backend as tb
from ..backends.device import as_device_data, default_device, partials_dense_device
from ..backends.torch_backend import TorchPartial, TorchTrainingData
from .base import schedule_coefficients
from .result import ScoreResult

__all__ = ["is_tensor_input", "prepare_device_training_data", "evaluate_device", "result_from_partial_torch"]


def is_tensor_input(a) -> bool:
    """A torch tensor or a CUDA array (``__cuda_array_interface__``, e.g. CuPy)."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    torch = _torch_if_loaded()
    return torch is not None and torch.is_tensor(a)


def _torch_if_loaded():
    import sys

    return sys.modules.get("torch")


def _as_tensor(a, name: str, device=None):
    """``a`` as a float32/float64 tensor (precision policy of _validation), on ``device`` if given."""
    torch = tb._torch()
    if torch.is_tensor(a):
        t = a.detach()
    elif hasattr(a, "__cuda_array_interface__"):
        t = torch.as_tensor(a, device="cuda")
    else:
        from ..backends.device import host_tensor

        t = host_tensor(as_float_array(a, name))
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    elif t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        t = t.to(torch.float64)
    elif t.dtype == torch.bool:
        raise TypeError(f"{name}: bool dtype is not supported; convert to float explicitly")
    elif t.is_complex():
        raise TypeError(f"{name}: complex dtype {t.dtype} is not supported (scores are real)")
    elif t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (expected float32 or float64)")
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


def _check_finite_tensor(t, name: str) -> None:
    torch = tb._torch()
    if t.numel() and not bool(torch.isfinite(t).all()):
        flat = t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(-1, 1)
        row = int(torch.nonzero(~torch.isfinite(flat))[0, 0])
        what = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise ValueError(f"{name}: contains {what} (first at row {row}); inputs must be finite")


def prepare_device_training_data(train, weights, backend: str) -> tuple[TorchTrainingData, tuple]:
    """Validated training tensor (N, d) resident on its device, and the trailing data shape."""
    torch = tb._torch()
    if not is_tensor_input(train):
        # Host arrays: the NumPy validation, then the backend's default device.
        check_finite(as_float_array(train, "train"), "train")
    t = _as_tensor(train, "train")
    if backend == "cuda" and t.device.type != "cuda":
        t = t.to(default_device(backend))
    if t.ndim < 2:
        raise ValueError(f"train: expected shape (N, d) or (N, *shape), got ndim={t.ndim}")
    if t.shape[0] == 0:
        raise ValueError("train: the training set is empty (N = 0)")
    if t.numel() == 0:
        raise ValueError(f"train: points have no coordinates (shape {tuple(t.shape)})")
    _check_finite_tensor(t, "train")
    rows = t.reshape(t.shape[0], -1).contiguous()
    w = None
    if weights is not None:
        w = _as_tensor(weights, "weights", device=t.device).to(torch.float64)
        if tuple(w.shape) != (rows.shape[0],):
            raise ValueError(f"weights: expected shape ({rows.shape[0]},), got {tuple(w.shape)}")
        _check_finite_tensor(w, "weights")
        if bool((w < 0).any()):
            raise ValueError("weights: must be non-negative")
        if not bool((w > 0).any()):
            raise ValueError("weights: all weights are zero")
    return TorchTrainingData.prepare(rows, w), tuple(t.shape[1:])


def evaluate_device(model, x, t, **options) -> ScoreResult:
    """``model.evaluate(x, t)`` for a tensor query ``x`` on the device of ``model.data``.

    ``options`` go to the kernel (``accumulate``, ``tf32``, ``working_memory``, ``diagnostics``).
    """
    torch = tb._torch()
    data: TorchTrainingData = as_device_data(model.data, model.backend)
    cupy_in = hasattr(x, "__cuda_array_interface__") and not torch.is_tensor(x)
    xt = _as_tensor(x, "x")
    if xt.device != data.device:
        raise ValueError(f"x: the queries are on device {xt.device}, but the training set of this model is on "
                         f"{data.device}; move them with x.to({str(data.device)!r})")
    matches = xt.ndim >= 2 and (tuple(xt.shape[1:]) == model.shape or (xt.ndim == 2 and xt.shape[1] == model.dim))
    if not matches:
        raise ValueError(
            f"x: expected shape (M, {', '.join(map(str, model.shape))}) or (M, {model.dim}) to match the "
            f"training data (one query is x[None]), got {tuple(xt.shape)}"
        )
    _check_finite_tensor(xt, "x")
    out_dtype = xt.dtype
    n_q = int(xt.shape[0])
    rows = xt.reshape(n_q, model.dim).to(data.points.dtype)
    t_host = t.detach().cpu().numpy() if torch.is_tensor(t) else t
    alpha, s = schedule_coefficients(model.schedule, t_host, n_q)
    alpha_t = torch.as_tensor(alpha, dtype=torch.float64, device=data.device)
    s_t = torch.as_tensor(s, dtype=torch.float64, device=data.device)
    y = rows if np.all(alpha == 1.0) else (rows / alpha_t[:, None]).to(data.points.dtype)
    if n_q == 0:
        def zeros(*shape, dtype=torch.float64):
            return torch.zeros(shape, dtype=dtype, device=data.device)

        p = TorchPartial(zeros(0), zeros(0), zeros(0, model.dim), zeros(0), zeros(0), zeros(0, dtype=torch.int64),
                         data.log_mass)
    else:
        p = partials_dense_device(model.backend, y.contiguous(), s_t / alpha_t, data, **options)
    res = result_from_partial_torch(p, y, alpha_t, s_t, model.shape, out_dtype, model.backend)
    if cupy_in:
        import cupy

        res = ScoreResult(**{k: (cupy.from_dlpack(v) if torch.is_tensor(v) else v) for k, v in vars(res).items()})
    return res


def result_from_partial_torch(p: TorchPartial, y, alpha, s, shape: tuple, dtype, backend: str = "") -> ScoreResult:
    """The torch twin of :func:`nnscore.scores.result.result_from_partial` (same formulas)."""
    torch = tb._torch()
    if p.m.numel() and not bool(torch.isfinite(p.m).all()):
        raise ValueError("partial covers no training point for some queries (m = -inf)")
    n_q, dim = p.v.shape
    z = p.z
    delta = p.v / z[:, None]
    mean_sq = (delta * delta).sum(1)
    second = p.q / z
    trace_cov = second - mean_sq
    # Same rule as finalize_partial: differences below the rounding of q/z are reported as 0.
    trace_cov = torch.where(trace_cov <= 16 * np.finfo(np.float64).eps * second, torch.zeros_like(trace_cov),
                            trace_cov)
    lse = p.m + torch.log(z) - p.log_mass
    st = s / alpha
    denoised = y.to(torch.float64) + delta
    score = delta / (alpha * st * st)[:, None]
    log_density = -0.5 * dim * torch.log(2.0 * math.pi * s * s) + lse
    divergence = (trace_cov / (st * st) - dim) / (s * s)
    return ScoreResult(
        denoised=denoised.to(dtype).reshape((n_q, *shape)),
        score=score.to(dtype).reshape((n_q, *shape)),
        log_density=log_density,
        divergence=divergence,
        posterior_variance=trace_cov,
        n_eff=z * z / p.z2,
        top1=p.top1,
        max_weight=1.0 / z,
        sigma=st,
        backend=backend,
    )
