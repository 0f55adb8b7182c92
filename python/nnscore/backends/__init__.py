"""Backend registry: one adapter per kernel family, chosen once per model.

``"auto"`` (or ``NNSCORE_BACKEND``) tries cpp -> numba for host arrays and cuda -> torch for CUDA
tensors (``resolve(backend, like=...)``); ``reference`` is the float64 oracle and is never chosen
automatically.  The device backends (``torch``, ``cuda``; :data:`DEVICE_BACKENDS`) import torch
lazily, on first use.  An explicitly requested backend that cannot
run raises :class:`~nnscore.exceptions.BackendUnavailableError` with the reason.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import numpy as np

from .._threads import single_threaded_blas
from ..exceptions import BackendUnavailableError
from ..partials import Partial, empty_partial
from . import numba_kernels, torch_backend
from .reference import partials_dense_reference, partials_segments_reference, third_moments_reference

try:  # the compiled core is optional at import: a failed build still imports (Numba fallback)
    from .. import _core  # type: ignore[attr-defined]

    HAS_CORE = True
    CORE_IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - exercised only on broken builds
    _core = None
    HAS_CORE = False
    CORE_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "HAS_CORE",
    "TrainingData",
    "available_backends",
    "backend_status",
    "resolve",
    "partials_dense",
    "partials_segments",
    "third_moments",
    "Segments",
    "SIMD_LEVELS",
    "simd_level",
]

BACKENDS = ("cpp", "numba", "cuda", "torch", "reference")
AUTO_ORDER = ("cpp", "numba")
#: Backends that keep the training set as a tensor on a torch device (see scores/_device.py).
DEVICE_BACKENDS = ("cuda", "torch")
#: ``backend="auto"`` for CUDA tensor inputs (torch or CuPy).
DEVICE_AUTO_ORDER = ("cuda", "torch")
SIMD_LEVELS = ("generic", "avx2", "avx512")

#: Target logit error of GEMM-form terms (see csrc/include/nnscore/dense.hpp).  Logit errors
#: |e_i| <= e move the denoiser by at most e * sqrt(tr Cov) <= 2 e R and log p by at most e, so
#: 5e-6 keeps float32 results within the stated 1e-5 R and 1e-5 (+1e-6 |log p|).
FAST_TOL = {np.dtype(np.float32): 5e-6, np.dtype(np.float64): 1e-13}
#: Skipped terms are below exp(-SKIP_MARGIN) / N of the largest weight: below the resolution
#: of the result's precision (float32 results: e^-25 ~ 1e-11; float64: e^-40 ~ 4e-18).
SKIP_MARGIN = {np.dtype(np.float32): 25.0, np.dtype(np.float64): 40.0}


def _mark_repeats(rows: np.ndarray, before: np.ndarray | None, out: np.ndarray) -> None:
    """out[j] = 1 where rows[j] equals the row before it (``before`` precedes rows[0])."""
    if rows.shape[0] > 1:
        out[1:] = np.all(rows[1:] == rows[:-1], axis=1)
    if before is not None and rows.shape[0]:
        out[0] = np.array_equal(rows[0], before)


@dataclass(frozen=True, eq=False)
class TrainingData:
    """A training set prepared once per model: O(N) float64 side arrays, no copy of the points.

    ``points`` (N, D) has unit-stride rows (a view of the user's array when possible);
    ``center`` (D,) is the data mean rounded to the points' dtype; ``half_sqnorm`` is
    ``||x_i - center||^2 / 2`` in float64; ``radius`` = max ||x_i - center||; ``log_w`` is
    ``log pi_i - log_w_shift`` with ``log_w_shift = max log pi`` (None for unit weights, the
    kernels then see log pi_i = 0), and ``log_mass`` = log sum pi_i (unnormalised).
    ``row_repeats`` (N,) uint8 marks the rows equal to the row before them (None if there are
    none): the compiled kernels compute one exact distance per run of such rows.
    """

    points: np.ndarray
    center: np.ndarray
    half_sqnorm: np.ndarray
    radius: float
    log_w: np.ndarray | None
    log_mass: float
    log_w_shift: float = 0.0
    row_repeats: np.ndarray | None = None

    @classmethod
    def prepare(cls, points: np.ndarray, weights: np.ndarray | None = None, chunk_rows: int = 16384):
        """Side arrays of ``points`` (N, D) with optional non-negative ``weights`` (N,)."""
        n, dim = points.shape
        center64 = np.zeros(dim)
        for start in range(0, n, chunk_rows):
            center64 += points[start : start + chunk_rows].sum(axis=0, dtype=np.float64)
        center = (center64 / n).astype(points.dtype)
        c = center.astype(np.float64)
        half_sqnorm = np.empty(n)
        repeats = np.zeros(n, dtype=np.uint8)
        for start in range(0, n, chunk_rows):
            rows = points[start : start + chunk_rows]
            block = rows.astype(np.float64) - c
            half_sqnorm[start : start + chunk_rows] = 0.5 * np.einsum("ij,ij->i", block, block)
            _mark_repeats(rows, points[start - 1] if start else None, repeats[start : start + chunk_rows])
        radius = float(np.sqrt(2.0 * half_sqnorm.max()))
        repeats = repeats if repeats.any() else None
        if weights is None:
            return cls(points, center, half_sqnorm, radius, None, float(np.log(n)), row_repeats=repeats)
        with np.errstate(divide="ignore"):
            log_pi = np.log(np.asarray(weights, dtype=np.float64))
        shift = float(log_pi.max())
        return cls(points, center, half_sqnorm, radius, log_pi - shift,
                   float(np.log(np.sum(weights, dtype=np.float64))), shift, repeats)

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])


def backend_status() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend."""
    status = {"cpp": (HAS_CORE, "" if HAS_CORE else f"the compiled core failed to import ({CORE_IMPORT_ERROR}); "
                      "reinstall with a C++17 compiler: pip install --force-reinstall --no-deps .")}
    status["numba"] = numba_kernels.is_available()
    status["cuda"] = cuda_status()
    status["torch"] = torch_backend.is_available()
    status["reference"] = (True, "")
    return status


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(available, reason) of the ``cuda`` backend: ``_cuda`` imports and sees a device.

    Never raises and never warns: a machine without a GPU or driver simply reports why.
    """
    try:
        from .. import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        return False, (f"the CUDA module is not built ({type(exc).__name__}: {exc}); build with "
                       "NNSCORE_CUDA=ON and a CUDA toolkit (see docs/cuda.md)")
    try:
        count = int(_cuda.device_count())
    except Exception as exc:  # noqa: BLE001 - a broken driver is reported, not raised
        return False, f"the CUDA runtime failed: {exc}"
    if count == 0:
        return False, "no CUDA device is visible (driver missing or no GPU)"
    if not torch_backend.is_available()[0]:
        return False, "the cuda backend allocates its outputs with torch, which is not installed"
    return True, ""


def is_cuda_array(a) -> bool:
    """True for torch CUDA tensors and ``__cuda_array_interface__`` arrays (CuPy, Numba)."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    device = getattr(a, "device", None)
    return getattr(device, "type", None) == "cuda" and hasattr(a, "data_ptr")


def available_backends() -> list[str]:
    """Names of the backends usable in this process, fastest first."""
    return [name for name, (ok, _) in backend_status().items() if ok]


def resolve(backend: str = "auto", like=None) -> str:
    """The backend name to use for ``backend`` ("auto", or one of :data:`BACKENDS`).

    ``like``: the training array; with "auto", a CUDA tensor selects cuda, then torch.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get("NNSCORE_BACKEND", "auto")
    if backend == "auto":
        status = backend_status()
        order = DEVICE_AUTO_ORDER if like is not None and is_cuda_array(like) else AUTO_ORDER
        for name in order:
            if status[name][0]:
                return name
        raise BackendUnavailableError(
            "no fast backend is available: " + "; ".join(f"{n}: {status[n][1]}" for n in order)
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; expected 'auto' or one of {list(BACKENDS)}")
    ok, reason = backend_status()[backend]
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
    return backend


@functools.lru_cache(maxsize=1)
def _detected_simd_level() -> int:
    # build_info() assembles a dict of strings: once per process, not once per kernel call
    return int(_core.build_info()["simd_detected_index"])


def simd_level() -> int:
    """SIMD level index for the cpp kernels: detected, lowered by NNSCORE_SIMD_LEVEL if set."""
    if not HAS_CORE:
        return 0
    level = _detected_simd_level()
    forced = os.environ.get("NNSCORE_SIMD_LEVEL")
    if forced:
        if forced not in SIMD_LEVELS:
            raise ValueError(f"NNSCORE_SIMD_LEVEL: expected one of {SIMD_LEVELS}, got {forced!r}")
        level = min(level, SIMD_LEVELS.index(forced))
    return level


def partials_dense(
    backend: str,
    y: np.ndarray,
    sigma: np.ndarray,
    data: TrainingData,
    n_threads: int,
    *,
    level: int | None = None,
    diagnostics: dict | None = None,
    fast_tol: float | None = None,
) -> Partial:
    """Partials of queries ``y`` (M, D), same dtype as ``data.points``, over all training points.

    ``fast_tol`` (cpp only) lowers the logit error target below :data:`FAST_TOL`, for GEMM-form
    logits and for the difference-form ones the kernel uses at d <= 4 (more terms are recomputed
    exactly; never raised above it).
    ``log_mass`` of the result is set from ``data``; ``top1`` indexes ``data.points``.
    ``diagnostics``, when a dict, receives ``n_exact`` (terms recomputed in float64 difference
    form).
    """
    n_q, dim = y.shape[0], data.dim
    if n_q == 0:
        return dataclasses.replace(empty_partial(0, dim), log_mass=data.log_mass)
    if backend == "cpp":
        m, z, q, z2 = (np.empty(n_q) for _ in range(4))
        v = np.empty((n_q, dim))
        top1 = np.empty(n_q, dtype=np.int64)
        n_exact = np.empty(n_q, dtype=np.int64)
        kernel = _core.partials_dense_f32 if data.points.dtype == np.float32 else _core.partials_dense_f64
        kernel(
            y, data.points, data.half_sqnorm, data.log_w, data.center, sigma,
            m, z, v, q, z2, top1, n_exact,
            data.radius, min(FAST_TOL[data.points.dtype], fast_tol or np.inf), skip_log_cut(data.n_points, data.points.dtype),
            n_threads, simd_level() if level is None else level, data.row_repeats,
        )  # fmt: skip
        if diagnostics is not None:
            diagnostics["n_exact"] = n_exact
        return Partial(m=m + data.log_w_shift, z=z, v=v, q=q, z2=z2, top1=top1, log_mass=data.log_mass)
    if backend in DEVICE_BACKENDS:  # host arrays through a device backend: numpy in, numpy out
        from . import device

        tdata = device.as_device_data(data, backend)
        p = device.partials_dense_device(backend, device.to_device(y, tdata), device.to_device(sigma, tdata),
                                         tdata, fast_tol=fast_tol, diagnostics=diagnostics)
        return p.to_numpy()
    if backend == "numba":
        p = numba_kernels.partials_dense_numba(y, data.points, sigma, data.log_w, n_threads=n_threads)
    elif backend == "reference":
        p = partials_dense_reference(y, data.points, sigma, data.log_w)
    else:
        raise ValueError(f"backend: unknown backend {backend!r}")
    return Partial(m=p.m + data.log_w_shift, z=p.z, v=p.v, q=p.q, z2=p.z2, top1=p.top1, log_mass=data.log_mass)


@dataclass(frozen=True, eq=False)
class Segments:
    """Per-query lists of contiguous row ranges of a points array (CSR layout, int64).

    Query i owns segments ``offsets[i] .. offsets[i+1]-1``; segment g covers rows
    ``start[g] .. start[g] + length[g] - 1``.  A kNN list is segments of length 1
    (:meth:`from_ids`); an IVF cell of a cell-sorted array is one segment.
    """

    offsets: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> "Segments":
        """One length-1 segment per entry of ``ids`` (M, k) (every id must be a valid row)."""
        ids = np.asarray(ids, dtype=np.int64)
        n_q, k = ids.shape
        return cls(np.arange(n_q + 1, dtype=np.int64) * k, np.ascontiguousarray(ids).reshape(-1),
                   np.ones(n_q * k, dtype=np.int64))

    @property
    def n_queries(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def counts(self) -> np.ndarray:
        """Rows per query (M,)."""
        per_seg = np.concatenate([[0], np.cumsum(self.length)])
        return per_seg[self.offsets[1:]] - per_seg[self.offsets[:-1]]


def partials_segments(
    backend: str,
    y: np.ndarray,
    sigma: np.ndarray,
    points: np.ndarray,
    log_w: np.ndarray | None,
    segments: Segments,
    n_threads: int,
    *,
    log_w_shift: float = 0.0,
    log_mass: float = 0.0,
    level: int | None = None,
) -> Partial:
    """Exact partials of query i (rows of ``y``, dtype of ``points``) over its segments' rows.

    Every logit is computed in float64 difference form (no GEMM-form selection: the subsets are
    small), so the result is exact up to float64 rounding.  ``log_w`` is aligned with ``points``
    (shifted by ``log_w_shift``, added back to ``m``); ``log_mass`` is copied into the partial.
    ``top1`` indexes ``points``; a query with no positive-weight row gets the empty partial.
    """
    n_q, dim = y.shape[0], points.shape[1]
    if n_q == 0:
        return dataclasses.replace(empty_partial(0, dim), log_mass=log_mass)
    if backend == "cpp":
        m, z, q, z2 = (np.empty(n_q) for _ in range(4))
        v = np.empty((n_q, dim))
        top1 = np.empty(n_q, dtype=np.int64)
        kernel = _core.partials_segments_f32 if points.dtype == np.float32 else _core.partials_segments_f64
        kernel(
            y, points, log_w, sigma, segments.offsets, segments.start, segments.length,
            m, z, v, q, z2, top1, skip_log_cut(points.shape[0], points.dtype),
            n_threads, simd_level() if level is None else level,
        )  # fmt: skip
        p = Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top1)
    elif backend in DEVICE_BACKENDS:
        from . import device

        p = device.partials_segments_device(backend, y, sigma, points, log_w, segments)
    elif backend == "numba":
        p = numba_kernels.partials_segments_numba(y, points, sigma, log_w, segments.offsets, segments.start,
                                                  segments.length, n_threads=n_threads)
    elif backend == "reference":
        p = partials_segments_reference(y, points, sigma, log_w, segments.offsets, segments.start, segments.length)
    else:
        raise ValueError(f"backend: unknown backend {backend!r}")
    return Partial(m=p.m + log_w_shift, z=p.z, v=p.v, q=p.q, z2=p.z2, top1=p.top1, log_mass=log_mass)


def partials_cells(
    backend: str,
    y: np.ndarray,
    sigma: np.ndarray,
    cells: "CellSortedData",
    probed: np.ndarray,
    n_threads: int,
    *,
    log_w_shift: float = 0.0,
    log_mass: float = 0.0,
    log_cut: float | None = None,
    fast_tol: float = 0.0,
    level: int | None = None,
    diagnostics: dict | None = None,
    floor: np.ndarray | None = None,
    start_max: np.ndarray | None = None,
) -> Partial:
    """Partials of query i over the rows of the cells c with ``probed[i, c]`` of a cell-sorted
    training set (:class:`CellSortedData`).  Terms below (max - ``log_cut``) may be skipped
    (default :func:`skip_log_cut`; the other backends keep that default).
    ``floor`` (B,), optional, in the frame of the returned ``m``: query i may skip every row
    whose logit is below floor[i]; the caller guarantees floor[i] <= (max logit of the partial
    the result is merged into) - log_cut, so these are terms the kernels may skip anyway.  With
    the cells' keys (:meth:`CellSortedData.key_windows`) only the rows of a key window are
    visited.
    ``start_max`` (B,), optional, same frame (cpp; the other backends ignore it): for a result
    that will be merged into a partial whose max is at least start_max[i].  Query i's partial
    starts at max start_max[i] with no mass, so its rows below start_max - log_cut are skipped
    tile by tile from the first one and the others are weighed against that max (a cell far
    from the query's best would otherwise be weighed against its own best row, and sum rows
    that the merge drops).  The returned ``m`` is then at least start_max, with ``top1`` -1
    where no row reaches it.
    ``fast_tol`` (cpp only, capped at :data:`FAST_TOL`): queries whose GEMM-form logits about a
    cell's centre are within it use them as the dense kernel's fast path does; 0 (default) puts
    every query on the selection path.  ``diagnostics`` (a dict, cpp) receives ``n_exact``.

    cpp: the dense tile kernel one cell at a time, products about each cell's own centre
    (nnscore/cells.hpp), on its selection path: every term within ``log_cut`` of the max is
    computed in float64 difference form, the guarantee of :func:`partials_segments` (which the
    other backends run on the same rows).  ``top1`` indexes ``cells.points``.
    """
    n_q, dim = y.shape[0], cells.points.shape[1]
    if n_q == 0:
        return dataclasses.replace(empty_partial(0, dim), log_mass=log_mass)
    probed = np.ascontiguousarray(probed, dtype=np.uint8)
    offsets = cells.offsets
    keyed = floor is not None and cells.row_keys is not None
    if keyed:
        floor = np.ascontiguousarray(np.asarray(floor, dtype=np.float64) - log_w_shift)  # the kernels' frame
    if backend != "cpp":
        q_of, c_of = marked_pairs(probed)
        lo, hi = cells.key_windows(y, sigma, probed, floor) if keyed else (offsets[c_of], offsets[c_of + 1])
        seg = Segments(np.concatenate([[0], np.cumsum(np.bincount(q_of, minlength=n_q))]).astype(np.int64),
                       lo, hi - lo)  # fmt: skip
        return partials_segments(backend, y, sigma, cells.points, cells.log_w, seg, n_threads,
                                 log_w_shift=log_w_shift, log_mass=log_mass, level=level)  # fmt: skip
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, dim))
    top1 = np.empty(n_q, dtype=np.int64)
    n_exact = np.empty(n_q, dtype=np.int64)
    points = cells.points
    key_args: tuple = (None, None, None, None, 0.0)
    if keyed:  # the kernel finds the windows of CellSortedData.key_windows itself
        query_keys, slack = cells.query_keys(y)
        key_args = (cells.row_keys, query_keys, floor, cells.log_w_max, slack)
    runs = (None, None) if cells.runs is None else cells.runs
    kernel = _core.partials_cells_f32 if points.dtype == np.float32 else _core.partials_cells_f64
    kernel(
        y, points, cells.half_sqnorm, cells.log_w, sigma, probed, offsets, cells.centers, cells.radii,
        m, z, v, q, z2, top1, n_exact, min(FAST_TOL[points.dtype], fast_tol),
        skip_log_cut(points.shape[0], points.dtype) if log_cut is None else log_cut,
        n_threads,
        simd_level() if level is None else level,
        cells.row_repeats,
        *key_args,
        *runs,
        None if start_max is None else np.ascontiguousarray(np.asarray(start_max, dtype=np.float64) - log_w_shift),
    )  # fmt: skip
    if diagnostics is not None:
        diagnostics["n_exact"] = n_exact
    m = m + log_w_shift
    if start_max is not None:  # no row reached it: the max is the caller's, bit for bit (merge ties)
        m = np.where(top1 < 0, np.asarray(start_max, dtype=np.float64), m)
    return Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top1, log_mass=log_mass)


def partials_key_scan(
    y: np.ndarray,
    sigma: np.ndarray,
    cells: "CellSortedData",
    cell_lists: tuple[np.ndarray, np.ndarray],
    n_threads: int,
    *,
    max_terms: int,
    max_visits: int,
    floor: np.ndarray | None = None,
    log_w_shift: float = 0.0,
    log_mass: float = 0.0,
    log_cut: float | None = None,
    level: int | None = None,
) -> tuple[Partial, np.ndarray, np.ndarray]:
    """cpp only: query i scans the rows of its cells of keyed ``cells`` (``cell_lists`` =
    (offsets (B + 1,), cell ids): query i's cells are ids[offsets[i]:offsets[i+1]], see
    :func:`cell_lists`) outwards from its own key, in float64 difference form, until every row
    left is provably below max(``floor[i]``, max - ``log_cut``), or ``max_terms`` terms are taken
    or ``max_visits`` rows visited (nnscore/segments.hpp, ``KeyScanProblem``).  With
    ``cells.row_sketch`` a row is read only where its sketch bound lets its logit reach the
    floor.  ``floor`` (B,), in the frame of the returned ``m``, is the caller's promise that
    floor[i] <= (max logit of the partial the result is merged into) - log_cut.

    Returns (partial, complete (B,) bool, terms taken (B,) int64).  Where complete, the partial
    is the cells' with the guarantee of :func:`partials_segments` (terms below max - log_cut
    skipped); elsewhere it covers the rows taken, so its ``m`` is a lower bound on the cells'.
    Runs of identical rows (``cells.runs``) are one term each.  ``top1`` indexes ``cells.points``."""
    n_q, dim = y.shape[0], cells.points.shape[1]
    if cells.row_keys is None:
        raise ValueError("cells: key scans need keyed cells (CellSortedData.keyed)")
    range_offsets, cell_ids = cell_lists
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, dim))
    top1 = np.empty(n_q, dtype=np.int64)
    n_terms = np.empty(n_q, dtype=np.int64)
    complete = np.empty(n_q, dtype=np.uint8)
    query_keys, slack, query_sketch, sketch_slack = cells.query_frame(y)
    runs = (None, None) if cells.runs is None else cells.runs
    if floor is not None:
        floor = np.ascontiguousarray(np.asarray(floor, dtype=np.float64) - log_w_shift)  # the kernels' frame
    points = cells.points
    kernel = _core.partials_key_scan_f32 if points.dtype == np.float32 else _core.partials_key_scan_f64
    kernel(
        y, points, cells.log_w, sigma, range_offsets, np.ascontiguousarray(cells.offsets[cell_ids]),
        np.ascontiguousarray(cells.offsets[cell_ids + 1]), np.ascontiguousarray(cells.log_w_max[cell_ids]),
        cells.row_keys, query_keys, floor, slack, *runs, cells.row_sketch, query_sketch, sketch_slack,
        m, z, v, q, z2, top1, n_terms, complete,
        skip_log_cut(points.shape[0], points.dtype) if log_cut is None else log_cut, int(max_terms),
        int(max_visits), n_threads, simd_level() if level is None else level,
    )  # fmt: skip
    p = Partial(m=m + log_w_shift, z=z, v=v, q=q, z2=z2, top1=top1, log_mass=log_mass)
    return p, complete.astype(bool), n_terms


def cell_lists(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (B + 1,), cell ids) int64 of ``cell``: (B,) one cell per query, or a (B, n_cells)
    mask (each query's marked cells, ascending)."""
    cell = np.asarray(cell)
    if cell.ndim == 1:
        return np.arange(cell.size + 1, dtype=np.int64), cell.astype(np.int64)
    q_of, ids = marked_pairs(cell)
    counts = np.bincount(q_of, minlength=cell.shape[0])
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ids


def marked_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-d uint8 (or bool) mask as int64 (row, column), row-major, in a
    tenth of its time where few entries are set (a probed-cells mask): the mask is read eight
    bytes at a time and only the nonzero words are taken apart."""
    flat = np.ascontiguousarray(mask).view(np.uint8).reshape(-1)
    n8 = flat.size // 8 * 8
    words = np.flatnonzero(flat[:n8].view(np.uint64))
    w, b = np.nonzero(flat[:n8].reshape(-1, 8)[words])
    idx = np.concatenate([words[w] * 8 + b, np.flatnonzero(flat[n8:]) + n8]).astype(np.int64)
    return np.divmod(idx, max(mask.shape[1], 1))


@dataclass(frozen=True, eq=False)
class CellSortedData:
    """A training set sorted by cell (an IVF index's lists), for :func:`partials_cells`.

    ``points`` (N, D) and ``log_w`` are in cell order; cell c owns rows ``offsets[c] ..
    offsets[c+1]-1`` and has centre ``centers[c]`` (its mean rounded to the points' dtype),
    ``radii[c]`` >= max ||x - centers[c]|| over its rows, ``half_sqnorm[j]`` =
    ||x_j - centre of j's cell||^2 / 2 (float64), ``log_w_max[c]`` the largest ``log_w`` of
    the cell (0 for unit weights, -inf if empty), and ``row_repeats`` as for
    :class:`TrainingData` (duplicates of a cell mostly sit together in cell order).

    Keys (:meth:`keyed`, optional): ``row_keys[j]`` = <x_j - key_origin, key_axis> (float64,
    ``key_axis`` a unit vector: the data's principal axis), ascending within each cell.  Since
    |<y - x, u>| <= ||y - x||, a query visits only the rows of a cell whose keys lie near its own
    (:meth:`key_windows`): at small sigma a thin slice of the cell."""

    points: np.ndarray
    log_w: np.ndarray | None
    offsets: np.ndarray
    centers: np.ndarray
    radii: np.ndarray
    half_sqnorm: np.ndarray
    row_repeats: np.ndarray | None = None
    log_w_max: np.ndarray | None = None
    key_axis: np.ndarray | None = None
    key_origin: np.ndarray | None = None
    row_keys: np.ndarray | None = None
    key_reach: float = 0.0  # max ||x_j - key_origin||: scales the keys' rounding
    key_share: float = 0.0  # sum of squared keys / sum of ||x_j - key_origin||^2 (the axis's share)
    key_span: np.ndarray | None = None  # (n_cells,) largest minus smallest key of each cell (0 if empty)
    runs: tuple[np.ndarray, np.ndarray] | None = None  # (start, length) of the long runs (_long_runs)
    sketch_axes: np.ndarray | None = None  # (SKETCH_AXES, D) float64, orthonormal, orthogonal to key_axis
    row_sketch: np.ndarray | None = None  # (N, SKETCH_AXES) float32: <x_j - key_origin, sketch_axes[k]>

    @property
    def windows_pay(self) -> bool:
        """Whether key windows are worth their cost here: keys exist and the key axis carries at
        least :data:`KEY_WINDOW_MIN_SHARE` of the data's squared spread about its centre."""
        return self.row_keys is not None and self.key_share >= KEY_WINDOW_MIN_SHARE

    def window_floor(self, known_max: np.ndarray, log_cut: float) -> np.ndarray | None:
        """The ``floor`` of :func:`partials_cells` for queries whose partial reaches logit
        ``known_max`` (B,): known_max - log_cut, or None (whole cells) where windows do not pay."""
        return known_max - log_cut if self.windows_pay else None

    @classmethod
    def keyed(cls, points: np.ndarray, log_w: np.ndarray | None, order: np.ndarray, offsets: np.ndarray,
              origin: np.ndarray, chunk_rows: int = 1 << 16) -> tuple["CellSortedData", np.ndarray]:  # fmt: skip
        """The cells of ``order`` / ``offsets`` (an IVF index's lists over ``points``), each sorted
        by key about ``origin`` (D,); returns (data, row order: sorted row j is points[order[j]])."""
        order = np.asarray(order, dtype=np.int64)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        origin = np.asarray(origin, dtype=np.float64)
        axis = principal_axis(points, origin)
        n = points.shape[0]
        keys = np.empty(n)
        reach = total = 0.0
        for s in range(0, n, chunk_rows):
            rows = points[order[s : s + chunk_rows]].astype(np.float64) - origin
            keys[s : s + chunk_rows] = rows @ axis
            sq = np.einsum("ij,ij->i", rows, rows)
            reach = max(reach, float(np.sqrt(np.max(sq, initial=0.0))))
            total += float(np.sum(sq))
        share = float(np.sum(keys * keys) / total) if total > 0 else 1.0
        cell_of_row = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
        within = np.lexsort((keys, cell_of_row))  # stable: equal keys keep the index's order
        order, keys = order[within], keys[within]
        data = cls.build(np.ascontiguousarray(points[order]),
                         None if log_w is None else np.ascontiguousarray(log_w[order]), offsets, chunk_rows)
        sketch_axes = sketch = None
        if points.shape[1] >= SKETCH_MIN_DIM:
            sketch_axes = sketch_basis(points, origin, axis)
            sketch = np.empty((n, SKETCH_AXES), dtype=np.float32)
            for s in range(0, n, chunk_rows):
                sketch[s : s + chunk_rows] = (data.points[s : s + chunk_rows].astype(np.float64) - origin) @ sketch_axes.T
        full = offsets[1:] > offsets[:-1]
        span = np.where(full, keys[np.maximum(offsets[1:], 1) - 1] - keys[np.minimum(offsets[:-1], max(n - 1, 0))], 0.0)
        data = dataclasses.replace(data, key_axis=axis, key_origin=origin, row_keys=keys,
                                   key_reach=reach * (1.0 + 1e-12), key_share=share, key_span=span,
                                   sketch_axes=sketch_axes, row_sketch=sketch)  # fmt: skip
        return data, order

    def query_keys(self, y: np.ndarray) -> tuple[np.ndarray, float]:
        """(keys of the rows of ``y`` (B, D), a bound on the float64 rounding of any key difference)."""
        yc, reach = self._centred(y)
        return self._project(yc, self.key_axis), self._key_slack(yc.shape[1], reach)

    @staticmethod
    def _project(yc: np.ndarray, axes: np.ndarray) -> np.ndarray:
        # BLAS on one thread: its workers would spin on after this small product and take the
        # core the kernel that follows needs (cell model, sigma = 0.002: 85-91 ms against 124-142)
        with single_threaded_blas():
            return yc @ axes

    def _centred(self, y: np.ndarray) -> tuple[np.ndarray, float]:
        """(y - key_origin in float64, the largest row norm of it)."""
        yc = y.astype(np.float64) - self.key_origin
        return yc, float(np.sqrt(np.max(np.einsum("ij,ij->i", yc, yc), initial=0.0)))

    def _key_slack(self, dim: int, reach: float) -> float:
        # each key is a float64 dot product of D terms: error <= (D + 2) u64 ||a|| ||u|| (u unit to 1 ulp)
        return 2.0 * (dim + 2) * 2.0**-53 * (reach + self.key_reach) * 2.0

    def query_frame(self, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None, float]:
        """(:meth:`query_keys`, and the rows' sketches (B, SKETCH_AXES) float64 with a bound on the
        error of any sketch coordinate difference against the exact projection; None, 0 without
        row sketches): the rows' float32 sketches are within 2^-24 of their float64 projections,
        which are within (D + 2) u64 ||x - o|| of exact."""
        yc, reach = self._centred(y)
        keys, slack = self._project(yc, self.key_axis), self._key_slack(yc.shape[1], reach)
        if self.row_sketch is None:
            return keys, slack, None, 0.0
        sketch_slack = 2.0**-24 * self.key_reach * (1.0 + 1e-6) + 4.0 * (yc.shape[1] + 2) * 2.0**-53 * (reach + self.key_reach)
        return keys, slack, np.ascontiguousarray(self._project(yc, self.sketch_axes.T)), sketch_slack

    def key_windows(self, y: np.ndarray, sigma: np.ndarray, probed: np.ndarray,
                    floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Row windows [lo, hi) of the marked (query, cell) pairs of ``probed`` (row-major order)
        that hold every row whose logit (kernels' log_w frame) can reach ``floor`` (B,): a row x
        of cell c has logit <= log_w_max[c] - <y - x, u>^2 / (2 sigma^2), so its key lies within
        sqrt(2 sigma^2 (log_w_max[c] - floor)) of the query's.  Rows outside lie below floor;
        an empty window (lo == hi) leaves the cell out."""
        q_of, c_of = marked_pairs(probed)
        ky, slack = self.query_keys(y)
        sig = np.asarray(sigma, dtype=np.float64)[q_of]
        top = self.log_w_max[c_of]
        with np.errstate(invalid="ignore", over="ignore"):  # overflow: -inf (empty) or inf (whole)
            h2 = 2.0 * sig * sig * (top - np.asarray(floor, dtype=np.float64)[q_of])
        h2 = np.where(np.isneginf(top), -1.0, np.where(np.isnan(h2), np.inf, h2))  # empty cell / floor -inf
        h = np.sqrt(np.maximum(h2, 0.0)) * (1.0 + 1e-12) + slack
        lo = _bisect(self.row_keys, self.offsets[c_of], self.offsets[c_of + 1], ky[q_of] - h, right=False)
        hi = _bisect(self.row_keys, lo, self.offsets[c_of + 1], ky[q_of] + h, right=True)
        hi = np.where(h2 < 0.0, lo, hi)
        return np.ascontiguousarray(lo, dtype=np.int64), np.ascontiguousarray(hi, dtype=np.int64)

    def key_rank(self, keys: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """(B,) the row of cell ``cell[i]`` where query key ``keys[i]`` would sort (first row
        with a key >= it; the cell's end if none)."""
        return _bisect(self.row_keys, self.offsets[cell], self.offsets[cell + 1], keys, right=False)

    def rows_within(self, keys: np.ndarray, cell: np.ndarray, h: np.ndarray) -> np.ndarray:
        """(B,) the number of rows of cell ``cell[i]`` whose keys lie within ``h[i]`` of ``keys[i]``."""
        c0, c1 = self.offsets[cell], self.offsets[cell + 1]
        return (_bisect(self.row_keys, c0, c1, keys + h, right=True)
                - _bisect(self.row_keys, c0, c1, keys - h, right=False))  # fmt: skip

    def key_neighbours(self, rank: np.ndarray, cell: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of the run of at most ``k`` rows of cell ``cell[i]`` centred on
        ``rank[i]`` (:meth:`key_rank`) and clipped to the cell: the rows whose keys are nearest."""
        c0, c1 = self.offsets[cell], self.offsets[cell + 1]
        start = np.clip(rank - k // 2, c0, np.maximum(c1 - k, c0))
        return start, np.minimum(c1 - start, k)

    @classmethod
    def build(cls, points: np.ndarray, log_w: np.ndarray | None, offsets: np.ndarray,
              chunk_rows: int = 1 << 16) -> "CellSortedData":  # fmt: skip
        """From cell-sorted ``points`` and ``offsets`` (n_cells + 1,): O(N D) time, O(chunk D) scratch."""
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        n, dim = points.shape
        sizes = np.diff(offsets)
        full = np.flatnonzero(sizes > 0)
        sums = np.zeros((sizes.size, dim))
        cell_of_row = np.repeat(np.arange(sizes.size), sizes)
        step = max(1, chunk_rows // max(1, int(sizes.max(initial=1))))  # cells per chunk: <= chunk_rows rows
        for s in range(0, full.size, step):
            cs = full[s : s + step]
            r0, r1 = offsets[cs[0]], offsets[cs[-1] + 1]
            sums[cs] = np.add.reduceat(points[r0:r1].astype(np.float64), offsets[cs] - r0, axis=0)
        centers = (sums / np.maximum(sizes, 1)[:, None]).astype(points.dtype)
        half_sqnorm = np.empty(n)
        repeats = np.zeros(n, dtype=np.uint8)
        for s in range(0, n, chunk_rows):
            rows = points[s : s + chunk_rows]
            diff = rows.astype(np.float64) - centers[cell_of_row[s : s + chunk_rows]]
            half_sqnorm[s : s + chunk_rows] = 0.5 * np.einsum("ij,ij->i", diff, diff)
            _mark_repeats(rows, points[s - 1] if s else None, repeats[s : s + chunk_rows])
        top = np.zeros(sizes.size)
        if full.size:
            top[full] = np.maximum.reduceat(half_sqnorm, offsets[full])
        # float64 rounding of the squared distances (<= (D + 2) u64 relative) covered with room
        radii = np.sqrt(2.0 * top) * (1.0 + 1e-12)
        log_w_max = np.where(sizes > 0, 0.0, -np.inf)
        if log_w is not None and full.size:
            log_w_max[full] = np.maximum.reduceat(log_w, offsets[full])
        return cls(points, log_w, offsets, np.ascontiguousarray(centers), radii, half_sqnorm,
                   repeats if repeats.any() else None, log_w_max, runs=_long_runs(repeats, log_w, offsets))


#: Key windows (a floor passed to :func:`partials_cells`, and seeds) are used where the key axis
#: carries at least this share of the data's squared spread: image patches 92% (their mean
#: brightness); the README grid's manifold data at d >= 16 18-25%, where windows held 96-100% of
#: the own cells' rows, seeds cost 10-20% of an evaluation, and the split passes up to 30%.
KEY_WINDOW_MIN_SHARE = 0.5

#: Keyed cells of D >= SKETCH_MIN_DIM also keep each row's projections on the SKETCH_AXES next
#: principal axes (float32, 32 bytes a row): with the key they bound ||y - x|| from below, and a key
#: scan reads a row whole only where that bound lets its logit reach the floor.  On the 10^6
#: image patches at sigma = 1e-3 the median own-cell key window holds 1081 distinct rows, of
#: which 1 passes 8 sketch axes (2 with 4, 35 with 2).
SKETCH_AXES = 8
SKETCH_MIN_DIM = 16

#: Runs of at least this many identical rows (equal prior weights, one cell) are kept in
#: :attr:`CellSortedData.runs`: the cell kernel takes such a run as one term of multiplicity k.
LONG_RUN_ROWS = 32


def _long_runs(repeats: np.ndarray, log_w: np.ndarray | None, offsets: np.ndarray):
    """(start, length) int64 of the runs of >= LONG_RUN_ROWS identical rows with equal log_w
    within one cell (``repeats[j]``: row j equals row j - 1), ascending; None if there are none."""
    same = repeats.astype(bool)
    if log_w is not None:
        same[1:] &= log_w[1:] == log_w[:-1]
    same[offsets[:-1][offsets[:-1] < same.size]] = False  # a run never crosses into the next cell
    if same.size:
        same[0] = False
    starts = np.flatnonzero(~same)
    lengths = np.diff(np.append(starts, same.size))
    keep = lengths >= LONG_RUN_ROWS
    if not keep.any():
        return None
    return np.ascontiguousarray(starts[keep], dtype=np.int64), np.ascontiguousarray(lengths[keep], dtype=np.int64)


def principal_axis(points: np.ndarray, origin: np.ndarray, n_sample: int = 16384, n_iter: int = 30) -> np.ndarray:
    """A unit vector along the largest variance of ``points`` (N, D) about ``origin``: power
    iteration on an evenly strided sample, from a fixed start (the same axis on every build).
    Any unit vector keeps the key windows exact; the principal one makes them thinnest."""
    step = max(1, points.shape[0] // n_sample)
    z = points[::step][:n_sample].astype(np.float64) - origin
    u = np.ones(z.shape[1]) + np.arange(z.shape[1]) / z.shape[1]  # fixed start, no zero coordinate
    for _ in range(n_iter):
        w = z.T @ (z @ u)
        norm = float(np.linalg.norm(w))
        if not norm > 0.0:  # all sample rows at the origin: any axis will do
            break
        u = w / norm
    return u / np.linalg.norm(u)


def sketch_basis(points: np.ndarray, origin: np.ndarray, axis: np.ndarray, n_sample: int = 16384,
                 n_iter: int = 20) -> np.ndarray:
    """(SKETCH_AXES, D) orthonormal rows spanning the largest variance of ``points`` about ``origin``
    orthogonal to the unit vector ``axis``: subspace iteration on an evenly strided sample from a
    fixed start (the same axes on every build), orthonormalised with ``axis`` as the first column.
    Any orthonormal set keeps the sketch bounds exact; the principal one makes them tightest."""
    step = max(1, points.shape[0] // n_sample)
    z = points[::step][:n_sample].astype(np.float64) - origin
    z -= np.outer(z @ axis, axis)
    basis = np.random.default_rng(0).standard_normal((z.shape[1], SKETCH_AXES))
    for _ in range(n_iter):
        basis, _ = np.linalg.qr(z.T @ (z @ basis))
    q, _ = np.linalg.qr(np.column_stack([axis, basis]))
    return np.ascontiguousarray(q[:, 1:].T)


def _bisect(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray, right: bool) -> np.ndarray:
    """Vectorised binary search: for each i the first j in [lo[i], hi[i]) with keys[j] >= target[i]
    (right=False) or > target[i] (right=True), hi[i] if none; keys ascending on each range."""
    lo = np.array(lo, dtype=np.int64)
    hi = np.array(hi, dtype=np.int64)
    target = np.asarray(target, dtype=np.float64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        k = keys[np.where(active, mid, 0)]
        go = (k <= target) if right else (k < target)
        lo = np.where(active & go, mid + 1, lo)
        hi = np.where(active & ~go, mid, hi)


def skip_log_cut(n_points: int, dtype) -> float:
    """The exact kernels skip terms whose logit is below (max - this): each carries less than
    exp(-SKIP_MARGIN) / N of the largest weight."""
    return float(np.log(n_points)) + SKIP_MARGIN[np.dtype(dtype)]


def third_moments(
    backend: str,
    y: np.ndarray,
    sigma: np.ndarray,
    data: TrainingData,
    p: Partial,
    center: np.ndarray,
    n_threads: int,
    *,
    level: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Third posterior moment about ``center``, a second pass after the partials ``p``.

    Returns ``t`` (M, D) = sum_i lambda_i g_i (x_i - c) and ``G`` (M,) = sum_i lambda_i g_i,
    float64, with g_i = ||x_i - c||^2, c = ``center`` (M, D) float64 (e.g. the denoiser) and
    lambda_i the posterior weights of ``y`` at ``sigma``; ``p`` is the first pass over the same
    queries (:func:`partials_dense`): its max logit and normaliser make the weights.  The cpp
    kernel takes the dense engine's two paths (GEMM-form terms where the logits are accurate
    enough, float64 difference form otherwise); numba and reference are float64 throughout.
    Host backends only (cpp, numba, reference).
    """
    n_q, dim = y.shape[0], data.dim
    center = np.ascontiguousarray(center, dtype=np.float64)
    if n_q == 0:
        return np.zeros((0, dim)), np.zeros(0)
    max_logit = np.ascontiguousarray(p.m - data.log_w_shift, dtype=np.float64)  # the kernels' log_w frame
    with np.errstate(divide="ignore"):
        log_norm = max_logit + np.log(p.z)
    log_cut = skip_log_cut(data.n_points, data.points.dtype)
    if backend == "cpp":
        t, g, z = np.empty((n_q, dim)), np.empty(n_q), np.empty(n_q)
        kernel = _core.third_moments_dense_f32 if data.points.dtype == np.float32 else _core.third_moments_dense_f64
        kernel(
            y, data.points, data.half_sqnorm, data.log_w, data.center, np.ascontiguousarray(sigma, dtype=np.float64),
            max_logit, center, t, g, z, data.radius, FAST_TOL[data.points.dtype], log_cut,
            n_threads, simd_level() if level is None else level, data.row_repeats,
        )  # fmt: skip
        # the kernel's weights are relative to the max logit; the first pass's z normalises them
        return t / p.z[:, None], g / p.z
    if backend == "numba":
        return numba_kernels.third_moments_numba(y, data.points, sigma, data.log_w, max_logit, log_norm, center,
                                                 log_cut, n_threads=n_threads)
    if backend == "reference":
        return third_moments_reference(y, data.points, sigma, data.log_w, center)
    raise ValueError(f"backend: unknown backend {backend!r}")
