"""Exact cell skipping for the dense engine: ``EmpiricalScore(train, cells=...)``.

The training set is partitioned into the cells of an IVF index (k-means centroids, see
:class:`~nnscore.TrainingIndex`).  For a query y at noise sigma every row j of cell c has

    l_j = log pi_j - ||y - x_j||^2 / (2 sigma^2)  <=  u_c = max_{j in c} log pi_j - L_c^2 / (2 sigma^2)

with L_c the certified lower bound of :meth:`TrainingIndex.cell_lower_bounds`.  The dense
kernels may skip any term below (max logit - log_cut).  The query's own cell (its nearest
centroid) is reduced first; its max logit m_1 is at most the max over all rows, so a cell with
u_c < m_1 - log_cut holds only terms the dense kernels may skip, and is skipped whole.  The
other cells are reduced by the cell-batched kernel (``partials_cells``: products about each
cell's own centre, the dense kernel's fast and selection paths).  The result carries the dense
engine's guarantee; only the work changes.

Inside a scanned cell the rows are sorted by a key, their projection on the data's principal
axis (:meth:`CellSortedData.keyed <nnscore.backends.CellSortedData.keyed>`): a row whose key is
further than sqrt(2 sigma^2 (max log pi_c - floor)) from the query's has a logit below floor, so
with floor = (a logit the query is known to reach) - log_cut its rows are skippable terms too and
are never read.  The own cell is scanned outwards from the query's key (:func:`key_scans`, cpp):
rows in increasing key gap, until the running max proves every row left skippable; a row is
read whole only where a sketch of it on 8 more principal axes (``CellSortedData.row_sketch``)
lets its logit reach the floor.  Where a scan runs out of its budget, its max sets the floor of
a windowed scan by the cell kernel; the other cells are scanned in windows from the own cell's
max.  Runs of identical rows are one term each (``CellSortedData.runs``).

Skipping pays at small noise, where the near cells hold all the weight.  A query whose cells
to scan hold more than :data:`PRUNE_MAX_FRACTION` of the rows goes to the dense kernel instead:
per row the cell-batched scan costs more (it only visits rows near the query, where the terms
must be exponentiated, summed and often recomputed in float64, and it merges a partial per
cell).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import backends as _backends
from .._validation import check_int
from ..index.faiss_index import TrainingIndex
from ..partials import Partial, assemble, empty_partial, merge, take

__all__ = ["CellPruning", "PRUNE_MAX_FRACTION", "AUTO_MIN_ROWS", "key_scans", "key_scan_partials"]

#: A query whose cells to scan hold more than this fraction of the rows takes the dense kernel.
#: Measured at small sigma (README grid data, M = 1024, N = 10^5, 316 cells): per row scanned the
#: cell scan cost 7x the dense kernel's time per row at d = 64 (4% of the rows scanned), 3.4x at
#: d = 784 (19%) and 3.9x at d = 3072 (34%, slower than dense), so it paid below about 1/5.
#: Stop 19 (158 cells, the faster tile kernel; min of 4 interleaved rounds, 0.2 against 0.35):
#: d = 16 / 64 / 256 / 784 / 3072 took 0.0165 / 0.0274 / 0.110 / 0.486 / 2.29 s against
#: 0.0156 / 0.0206 / 0.091 / 0.451 / 2.19 s; at d = 784 the queries taking cells went from 46%
#: to 77% (per row scanned, 3.2x the dense kernel's time there).
PRUNE_MAX_FRACTION = 0.35
#: ``cells="auto"`` partitions training sets of at least this many rows (below, dense only).
AUTO_MIN_ROWS = 16384
#: The own cell's key scan (:func:`key_scans`) takes at most this many terms at d <= 64 (as
#: many flops above, at least 8); past it, its max only sets the floor of a windowed scan.  The
#: exact-max windows of the 10^6 image patches at sigma = 1e-4 hold ~170 rows per query, but
#: cells of near-equal keys (dark patches) need a few thousand.
KEY_SCAN_MAX_TERMS = 2048
#: With row sketches (``CellSortedData.row_sketch``) a scan may visit this many rows per term of
#: its budget: a visit reads 32 bytes, not the row.
KEY_SCAN_VISITS_PER_TERM = 16
#: Key scans only where the narrowest possible window spans less than this fraction of the
#: cell's key range (at larger sigma the tile kernel reads the cell faster than float64 rows).
KEY_SCAN_USEFUL = 0.5


class CellPruning:
    """A training set's IVF partition and cell-sorted copy, and the skipping rule above.

    Built by :meth:`from_option`; :meth:`partials` replaces the dense reduction.  Memory: the
    cell-sorted copy of the points (N d) plus the index's float32 copy (N d) and O(N + nlist^2).
    """

    def __init__(self, data: _backends.TrainingData, index: TrainingIndex):
        self.index = index
        offsets = index.cell_offsets
        # each cell sorted by key (CellSortedData.keyed): rows far from a query along the key
        # axis are never visited at small sigma
        self.cells, self.order = _backends.CellSortedData.keyed(data.points, data.log_w, index.cell_order, offsets,
                                                                data.center)  # fmt: skip
        self.sizes = np.diff(offsets).astype(np.int64)
        # max log pi - log_w_shift per cell (the kernels' frame); 0 for unit weights, -inf if empty
        self.log_w_max = self.cells.log_w_max
        full_cells = self.log_w_max[self.sizes > 0]
        self._lowest_log_w = float(full_cells.min())  # over non-empty cells
        index.prepare_bounds()

    @classmethod
    def from_option(cls, cells, data: _backends.TrainingData, n_threads) -> "CellPruning | None":
        """``cells`` of :class:`EmpiricalScore`: None, "auto", an int nlist or an IVF TrainingIndex."""
        if cells is None:
            return None
        n, dim = data.n_points, data.dim
        if isinstance(cells, TrainingIndex):
            if cells.kind != "ivf":
                raise ValueError(f"cells: a TrainingIndex must be of kind 'ivf' to give cells, got {cells.kind!r}")
            if (cells.n, cells.d) != (n, dim):
                raise ValueError(f"cells: the index holds {cells.n} rows of dimension {cells.d}, the training set "
                                 f"{n} of dimension {dim}")  # fmt: skip
            cells.check_rows(data.points, "cells")
            return cls(data, cells)
        if isinstance(cells, str):
            if cells != "auto":
                raise ValueError(f"cells: expected None, 'auto', an int (number of cells) or an IVF TrainingIndex, "
                                 f"got {cells!r}")  # fmt: skip
            if n < AUTO_MIN_ROWS:
                return None
            nlist = "scan"
        else:
            nlist = check_int(cells, "cells", minimum=1)
            if nlist > n:
                raise ValueError(f"cells: the number of cells must be <= N={n}, got {nlist}")
        # A fixed seed: the partition, hence the summation order, is the same on every build.
        index = TrainingIndex(data.points, kind="ivf", nlist=nlist, n_threads=n_threads, rng=0)
        return cls(data, index)

    @property
    def n_cells(self) -> int:
        return int(self.sizes.size)

    def partials(self, backend: str, y: np.ndarray, sigma: np.ndarray, data: _backends.TrainingData,
                 threads, diagnostics: dict | None = None, fast_tol: float | None = None) -> Partial:  # fmt: skip
        """The dense reduction of ``y`` (M, D) at ``sigma`` (M,) with exactly skippable cells
        skipped; ``threads(work)`` gives the thread count for ``work`` flops.  ``diagnostics``
        (a dict) receives ``rows_scanned`` (M,) and, for cpp, ``n_exact``.  ``fast_tol`` lowers
        the GEMM-form logit error target as for :func:`~nnscore.backends.partials_dense`."""
        n_q, n = y.shape[0], data.n_points
        ftol = min(_backends.FAST_TOL[data.points.dtype], fast_tol or np.inf)
        if n_q == 0:
            return _backends.partials_dense(backend, y, sigma, data, threads(0.0), diagnostics=diagnostics)
        log_cut = _backends.skip_log_cut(n, data.points.dtype)
        rows = np.full(n_q, n, dtype=np.int64)
        # Queries that may skip enough rows.  m <= max_c u_c, so a cell is skippable only if
        # u_c < max_c u_c - log_cut; and u_c >= min log pi - (||y - mu|| + R)^2 / (2 sigma^2)
        # (mu the data centre, R the data radius), which spares the bounds at large sigma.
        reach = np.linalg.norm(y.astype(np.float64) - data.center, axis=1) + data.radius
        maybe = np.flatnonzero(self._lowest_log_w - reach * reach / (2.0 * sigma * sigma) < -log_cut)
        pruned = np.zeros(n_q, dtype=bool)
        if maybe.size:
            ym, sm = y[maybe], sigma[maybe]
            nearest = np.empty(maybe.size, dtype=np.int64)
            low2 = self.index.cell_lower_bounds(ym, nearest=nearest)
            with np.errstate(divide="ignore", invalid="ignore"):
                upper = self.log_w_max[None, :] - low2 / (2.0 * sm * sm)[:, None]
            best = (upper >= (upper.max(axis=1) - log_cut)[:, None]).astype(np.int64) @ self.sizes
            hope = best <= PRUNE_MAX_FRACTION * n
            maybe, ym, sm, nearest, upper = maybe[hope], ym[hope], sm[hope], nearest[hope], upper[hope]
        if maybe.size:
            own = np.zeros(upper.shape, dtype=np.uint8)
            own[np.arange(maybe.size), nearest] = 1
            first, first_exact = key_scan_partials(
                backend, self.cells, ym, sm, nearest, data.log_w_shift, data.log_mass, log_cut, threads,
                lambda rows, marked, known: self._scan(backend, ym[rows], sm[rows], marked, data, threads, ftol,
                                                       self.cells.window_floor(known, log_cut)))  # fmt: skip
            floor = first.m - data.log_w_shift - log_cut  # every term below it may be skipped
            scan = (upper >= floor[:, None]) & (own == 0)
            rows_m = self.sizes[nearest] + scan.astype(np.int64) @ self.sizes
            ok = rows_m <= PRUNE_MAX_FRACTION * n
            maybe, ym, sm, scan, first_exact = maybe[ok], ym[ok], sm[ok], scan[ok], first_exact[ok]
            first = take(first, ok)
            rows[maybe] = rows_m[ok]
            pruned[maybe] = True
        blocks = []
        n_exact = np.zeros(n_q, dtype=np.int64)
        if maybe.size:
            rest, rest_exact = self._scan(backend, ym, sm, scan.astype(np.uint8), data, threads, ftol,
                                          self.cells.window_floor(first.m, log_cut), start_max=first.m)  # fmt: skip
            p = merge(first, rest)
            top1 = np.where(p.top1 >= 0, self.order[np.maximum(p.top1, 0)], -1)
            blocks.append((maybe, Partial(m=p.m, z=p.z, v=p.v, q=p.q, z2=p.z2, top1=top1)))
            n_exact[maybe] = first_exact + rest_exact
        if not pruned.all():
            idx = np.flatnonzero(~pruned)
            diag: dict = {}
            work = 4.0 * idx.size * n * data.dim
            blocks.append((idx, _backends.partials_dense(backend, y[idx], sigma[idx], data, threads(work),
                                                         diagnostics=diag, fast_tol=ftol)))  # fmt: skip
            n_exact[idx] = diag.get("n_exact", 0)
        if diagnostics is not None:
            diagnostics["rows_scanned"] = rows
            if backend == "cpp":
                diagnostics["n_exact"] = n_exact
        return assemble(blocks, n_q, data.dim, data.log_mass)

    def _scan(self, backend, y, sigma, marked, data, threads, fast_tol, floor,
              start_max=None) -> tuple[Partial, np.ndarray]:  # fmt: skip
        """(partial over the marked cells, rows below ``floor`` skipped, top1 in cell order; its
        float64 recompute counts).  ``start_max``: that of :func:`~nnscore.backends.partials_cells`,
        for a result merged into a partial of at least that max."""
        work = 4.0 * float(np.sum(marked.astype(np.int64) @ self.sizes)) * data.dim
        diag: dict = {}
        p = _backends.partials_cells(backend, y, sigma, self.cells, marked, threads(work),
                                     log_w_shift=data.log_w_shift, log_mass=data.log_mass,
                                     fast_tol=fast_tol, diagnostics=diag, floor=floor,
                                     start_max=start_max)  # fmt: skip
        return p, diag.get("n_exact", np.zeros(y.shape[0], dtype=np.int64))


def key_scans(backend: str, cells: _backends.CellSortedData, y: np.ndarray, sigma: np.ndarray, cell: np.ndarray,
              log_w_shift: float, log_mass: float, log_cut: float,
              threads) -> tuple[Partial, np.ndarray, np.ndarray]:  # fmt: skip
    """Key scans (:func:`~nnscore.backends.partials_key_scan`) of cell ``cell[i]`` for query i
    where they can spare most of it: cpp, keyed cells whose windows pay, and a narrowest possible
    window (sqrt(2 sigma^2 log_cut) each side) under :data:`KEY_SCAN_USEFUL` of the cell's key
    span.  Returns (partial, complete (B,) bool, float64 terms (B,)): where complete the partial
    is the cell's; elsewhere its ``m`` is a lower bound on the cell's max logit (-inf where no
    scan ran)."""
    n_q, dim = y.shape[0], cells.points.shape[1]
    complete, terms = np.zeros(n_q, dtype=bool), np.zeros(n_q, dtype=np.int64)
    if backend != "cpp" or not cells.windows_pay or n_q == 0:
        return dataclasses.replace(empty_partial(n_q, dim), log_mass=log_mass), complete, terms
    todo = 2.0 * np.sqrt(2.0 * log_cut) * sigma < KEY_SCAN_USEFUL * cells.key_span[cell]
    # the other queries get no cell (an empty scan; not reported complete)
    offsets = np.concatenate([[0], np.cumsum(todo)]).astype(np.int64)
    ids = cell[todo].astype(np.int64)
    sizes = cells.offsets[ids + 1] - cells.offsets[ids]
    max_terms = max(KEY_SCAN_MAX_TERMS * 64 // max(64, dim), 8)
    max_visits = max_terms * (KEY_SCAN_VISITS_PER_TERM if cells.row_sketch is not None else 1)
    work = 4.0 * float(np.sum(np.minimum(sizes, max_terms))) * dim
    p, done, terms = _backends.partials_key_scan(np.ascontiguousarray(y), sigma, cells, (offsets, ids), threads(work),
                                                 max_terms=max_terms, max_visits=max_visits, log_w_shift=log_w_shift,
                                                 log_mass=log_mass, log_cut=log_cut)  # fmt: skip
    return p, done & todo, terms


def key_scan_partials(backend: str, cells: _backends.CellSortedData, y: np.ndarray, sigma: np.ndarray,
                      cell: np.ndarray, log_w_shift: float, log_mass: float, log_cut: float, threads,
                      scan_marked) -> tuple[Partial, np.ndarray]:  # fmt: skip
    """(partial of query i over cell ``cell[i]``, float64 terms per query): the key scan of
    :func:`key_scans` where it completes; elsewhere ``scan_marked(rows, marked, known)`` ->
    (partial, float64 terms), the caller's cell kernel over the cells marked in ``marked``
    ((R, n_cells) uint8) for the queries ``rows``, whose partials reach at least ``known`` (R,)
    (the scans' maxima: key windows may start from them)."""
    n_q, dim = y.shape[0], cells.points.shape[1]
    scan, done, terms = key_scans(backend, cells, y, sigma, cell, log_w_shift, log_mass, log_cut, threads)
    rest = np.flatnonzero(~done)
    blocks = [(np.flatnonzero(done), take(scan, done))]
    n_exact = terms.copy()
    if rest.size:
        marked = np.zeros((rest.size, cells.offsets.size - 1), dtype=np.uint8)
        marked[np.arange(rest.size), cell[rest]] = 1
        p, rest_exact = scan_marked(rest, marked, scan.m[rest])
        blocks.append((rest, p))
        n_exact[rest] += rest_exact
    return assemble(blocks, n_q, dim, log_mass), n_exact
