"""EmpiricalScore: the exact score of the noised (weighted) empirical measure."""
from __future__ import annotations

import numpy as np

from .. import backends as _backends
from .. import schedules as _schedules
from .._threads import effective_n_threads
from .._validation import as_float_array, as_rows, check_finite
from ..partials import Partial
from .base import ScoreModel, schedule_coefficients
from .cell_pruning import CellPruning
from .result import ScoreResult, result_from_partial

__all__ = ["EmpiricalScore", "prepare_training_data"]


def prepare_training_data(train, weights=None) -> tuple[_backends.TrainingData, tuple]:
    """Validate ``train`` (N, d) or (N, *shape) and ``weights`` (N,); returns data and shape."""
    arr = as_float_array(train, "train")
    if arr.ndim < 2:
        raise ValueError(f"train: expected shape (N, d) or (N, *shape), got ndim={arr.ndim}")
    if arr.shape[0] == 0:
        raise ValueError("train: the training set is empty (N = 0)")
    if arr.size == 0:
        raise ValueError(f"train: points have no coordinates (shape {arr.shape})")
    check_finite(arr, "train")
    rows = as_rows(arr, "train")
    w = None
    if weights is not None:
        w = as_float_array(weights, "weights").astype(np.float64, copy=False)
        if w.shape != (rows.shape[0],):
            raise ValueError(f"weights: expected shape ({rows.shape[0]},), got {w.shape}")
        check_finite(w, "weights")
        if np.any(w < 0):
            raise ValueError("weights: must be non-negative")
        if not np.any(w > 0):
            raise ValueError("weights: all weights are zero")
    return _backends.TrainingData.prepare(rows, w), tuple(arr.shape[1:])


class EmpiricalScore(ScoreModel):
    """Exact empirical score, denoiser and log-density of a finite training set.

    p_t(x) = sum_i pi_i N(x; a_t x_i, s_t^2 I): an attention whose keys and values are the
    training points.  Computed by streaming kernels that never hold an M x N matrix.

    Parameters
    ----------
    train : array-like (N, d) or (N, *shape), float32/float64 (memmap accepted, not copied
        when its rows are contiguous).  Integers become float64.
    weights : (N,) non-negative, optional; pi_i proportional to weights (default uniform).
    schedule : str or Schedule, default "ve" (t is sigma).
    backend : "auto" | "cpp" | "numba" | "cuda" | "torch" | "reference".  "auto" picks cuda, then
        torch, for a CUDA tensor ``train``, and cpp, then numba, otherwise.  With "cuda" or "torch"
        the training set stays a tensor on its device, and ``evaluate`` with a tensor (or CuPy)
        query returns tensors on that device (see ``docs/cuda.md``); NumPy queries still get
        NumPy results.
    n_threads : int, optional; default: NNSCORE_NUM_THREADS or the CPUs available.
    cells : None (default) | "auto" | int | TrainingIndex, host backends cpp and numba only.
        Partition the training set into cells (an IVF index: k-means, built once here; an int
        is the number of cells, "auto" takes sqrt(N) / 2 for N >= 16384 and none below) and skip,
        at each evaluation, the cells whose every term lies below the dense kernels' skip
        threshold.  Results keep the dense engine's guarantee; small noise levels get faster
        (see ``nnscore.scores.cell_pruning``), at the cost of the build and about two more
        copies of the training set in memory.  An IVF :class:`~nnscore.TrainingIndex` built on
        ``train`` is used as it is.
    """

    def __init__(self, train, weights=None, schedule="ve", backend="auto", n_threads=None, cells=None):
        self.schedule = _schedules.get_schedule(schedule)
        self.backend = _backends.resolve(backend, like=train)
        effective_n_threads(n_threads)  # validates
        self.n_threads = n_threads
        from ._device import is_tensor_input  # imports no torch

        if self.backend in _backends.DEVICE_BACKENDS and is_tensor_input(train):
            from ._device import prepare_device_training_data

            # A tensor stays a tensor on its device (TorchTrainingData); host arrays keep the host
            # TrainingData, copied to the device once on first use (backends.device.as_device_data).
            self.data, self.shape = prepare_device_training_data(train, weights, self.backend)
        else:
            self.data, self.shape = prepare_training_data(train, weights)
        self.dtype = np.dtype(self.data.dtype if hasattr(self.data, "device") else self.data.points.dtype)
        if cells is not None and self.backend not in ("cpp", "numba"):
            raise ValueError(f"cells: cell skipping runs on the host backends 'cpp' and 'numba', not {self.backend!r}")
        self.cells = CellPruning.from_option(cells, self.data, n_threads)

    def evaluate(self, x, t, **device_options):
        """See :meth:`ScoreModel.evaluate`.  Device backends with a tensor ``x``: tensors out.

        ``device_options`` (device backends only): ``accumulate`` ("fp64" | "fp32"), ``tf32``
        (cuda: TF32 tensor-core distances, looser accuracy), ``working_memory`` (bytes per tile),
        ``diagnostics`` (a dict receiving ``n_exact``).
        """
        if self.backend in _backends.DEVICE_BACKENDS:
            from ._device import evaluate_device, is_tensor_input

            if is_tensor_input(x):
                return evaluate_device(self, x, t, **device_options)
        if device_options:
            raise TypeError(f"evaluate: options {sorted(device_options)} need a device backend and a tensor x")
        return super().evaluate(x, t)

    @property
    def train(self) -> np.ndarray:
        """The training points as (N, d) rows (a view of the caller's array when possible)."""
        return self.data.points

    @property
    def n_train(self) -> int:
        return self.data.n_points

    def _partials_ve(self, y: np.ndarray, sigma: np.ndarray, diagnostics: dict | None = None) -> Partial:
        if self.cells is not None:
            return self.cells.partials(self.backend, y, sigma, self.data,
                                       lambda work: effective_n_threads(self.n_threads, work), diagnostics)  # fmt: skip
        work = 4.0 * y.shape[0] * self.n_train * self.dim
        n_threads = effective_n_threads(self.n_threads, work)
        return _backends.partials_dense(self.backend, y, sigma, self.data, n_threads, diagnostics=diagnostics)

    def third_moment(self, x, t) -> tuple[ScoreResult, np.ndarray]:
        """``evaluate(x, t)`` and the contracted third central moment of the posterior.

        Returns ``(result, T)`` with ``T`` (M, d) float64 = sum_i lambda_i ||x_i - D||^2 (x_i - D)
        in data units (D the denoiser, lambda the posterior weights): ``grad_y tr Cov`` times
        sigma~^2, the term of the ``taylor2`` smoothed score (science.md §2.1.4).  A second pass
        over the training set with the first pass's max logit and normaliser (about the cost of
        one more evaluation); the cpp backend forms the terms as the first pass does (GEMM form
        where the logits are accurate enough, float64 difference form otherwise).
        """
        if self.backend in _backends.DEVICE_BACKENDS:
            raise ValueError(
                f"backend: third_moment (the taylor2 second pass) runs on the host backends cpp, numba and "
                f"reference, not {self.backend!r}"
            )
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = self._to_ve(x_rows, alpha)
        st = s / alpha
        p = self._partials_ve(y, st)
        res = result_from_partial(p, y, alpha, s, self.shape, out_dtype, self.backend)
        centre = y.astype(np.float64) + p.v / np.maximum(p.z, np.finfo(np.float64).tiny)[:, None]
        work = 8.0 * y.shape[0] * self.n_train * self.dim
        n_threads = effective_n_threads(self.n_threads, work)
        third, _ = _backends.third_moments(self.backend, y, st, self.data, p, centre, n_threads)
        return res, third

    def __repr__(self) -> str:
        return (
            f"EmpiricalScore(n_train={self.n_train}, shape={self.shape}, dtype={self.dtype}, "
            f"schedule={self.schedule!r}, backend={self.backend!r}"
            + ("" if self.cells is None else f", cells={self.cells.n_cells}") + ")"
        )
