"""Input validation and coercion, once per call; every error names the argument.

Precision policy (written once, here): float32 and float64 are kept; integers become float64
(never rescaled); float16 becomes float32; complex, bool, object and other kinds raise
``TypeError``.  Non-finite values raise ``ValueError``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_float_array", "check_finite", "as_sigma", "as_rows", "check_int", "check_real"]


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``: TypeError for non-integers (bools included), else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value}")
    return value


def check_real(value, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """``value`` as a finite float (optionally > 0 or >= 0): TypeError for non-reals, else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    if positive and not value > 0.0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    if nonneg and not value >= 0.0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def as_float_array(a, name: str) -> np.ndarray:
    """``a`` as an ndarray of float32/float64 without copying when it already is one."""
    if isinstance(a, np.ndarray):
        arr = a
    else:
        if hasattr(a, "__cuda_array_interface__"):
            raise TypeError(f"{name}: CUDA arrays need the 'cuda' backend, which this build does not have")
        if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensors: zero-copy via DLPack
            arr = np.from_dlpack(a.detach())
        else:
            arr = np.asarray(a)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype == np.float16:
            return arr.astype(np.float32)
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: unsupported floating dtype {arr.dtype} (use float32 or float64)")
        return arr
    if kind in "iu":
        return arr.astype(np.float64)
    if kind == "c":
        raise TypeError(f"{name}: complex dtype {arr.dtype} is not supported (scores are real)")
    if kind == "b":
        raise TypeError(f"{name}: bool dtype is not supported; convert to float explicitly")
    raise TypeError(f"{name}: dtype {arr.dtype} is not supported (expected float32 or float64)")


def check_finite(a: np.ndarray, name: str, chunk_rows: int = 65536) -> None:
    """Raise ``ValueError`` if ``a`` holds NaN or inf; O(1) extra memory on the fast path."""
    if a.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(a, axis=None, dtype=np.float64)
    if np.isfinite(total):
        return
    # Either a non-finite entry or an overflow of the sum: find out chunk by chunk.
    flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
    for start in range(0, flat.shape[0], chunk_rows):
        block = flat[start : start + chunk_rows]
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            what = "NaN" if np.isnan(block).any() else "inf"
            raise ValueError(f"{name}: contains {what} (first at row {row}); inputs must be finite")


def as_rows(a: np.ndarray, name: str) -> np.ndarray:
    """(N, *shape) -> (N, D) view with unit-stride rows; copies only when no such view exists."""
    if a.ndim < 2:
        raise ValueError(f"{name}: expected an array of shape (N, d) or (N, *shape), got ndim={a.ndim}")
    rows = a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))  # (0, d) too
    n, dim = rows.shape
    inner_ok = dim <= 1 or rows.strides[1] == rows.itemsize
    outer_ok = n <= 1 or (rows.strides[0] >= rows.itemsize * dim and rows.strides[0] % rows.itemsize == 0)
    if not (inner_ok and outer_ok):
        rows = np.ascontiguousarray(rows)  # F-order, negative or zero strides: the kernels need rows
    return rows


def as_sigma(values, n: int, name: str = "t") -> np.ndarray:
    """Scalar or (n,) array -> (n,) float64, finite (positivity is the schedule's business)."""
    if isinstance(values, numbers.Number) and not isinstance(values, numbers.Real):
        raise TypeError(f"{name}: must be real, got {type(values).__name__}")
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real scalar or array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    elif arr.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or shape ({n},), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite")
    return arr
