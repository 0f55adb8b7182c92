// Cell-batched reduction: each query against the rows of its own set of cells of a cell-sorted
// training array (an IVF index's probed cells).  Work is organised by cell, not by query: the
// queries that probe a cell are gathered and run through the dense tile kernel against the
// cell's contiguous rows (one packing of the cell serves all of them), and each query's per-cell
// partials are merged.  Each cell's GEMM-form products are taken about its own centre, so the
// rounding bounds scale with the cell's radius rather than the data's: at small sigma, where
// the cells that matter are near the query, far fewer candidates need float64.  With fast_tol = 0 every query takes the dense kernel's selection path:
// GEMM-form distances only choose candidates under a rigorous rounding bound, and every term
// within log_cut of the running max is recomputed in float64 difference form, so the partial is
// exact up to float64 rounding plus at most (rows scanned) exp(-log_cut) of skipped mass relative
// to the largest weight -- the guarantee of the gathered kernel (segments.hpp), at GEMM speed.
#pragma once
#include <cstdint>

#include "nnscore/common.hpp"
#include "nnscore/dense.hpp"
#include "nnscore/simd.hpp"

namespace nnscore {

/// `P` describes all M queries and the whole cell-sorted array (x and log_w aligned with it;
/// P.center and P.x_radius are not used).  probed (M, n_cells), row-major: query i scans cell c
/// when probed[i * n_cells + c] != 0; cell c owns rows [cell_offsets[c], cell_offsets[c + 1]),
/// has centre cell_centers[c * d ...] and radius cell_radii[c] >= max ||x - centre|| over its
/// rows; P.x_half_sqnorm[j] = ||x_j - centre of j's cell||^2 / 2.  top1 indexes the sorted rows.
/// Per-cell partials are merged in increasing cell order within fixed, work-balanced chunks of
/// cells, then the chunks in order: the result depends only on (inputs, n_threads, level).
/// Extra memory: O(chunks * M * d), chunks <= 16 n_threads and ~64 MiB (but >= 2 n_threads).
/// `windows` (optional): each cell's rows sorted by a key <x - o, u> (u a unit vector), so that
/// |key(y) - key(x)| <= ||y - x||.  Query i then reduces only the rows of cell c whose keys lie
/// within h = sqrt(2 sigma_i^2 (cell_log_w_max[c] - floor[i])) (1 + 1e-12) + slack of its own:
/// every other row has a logit below floor[i] (the caller makes floor[i] <= max logit - log_cut,
/// so they are terms the kernel may skip anyway).  A window may be empty (the cell is skipped).
/// Queries of a cell whose windows overlap share passes over the union of their rows.
struct KeyWindows {
  const double* row_keys;        ///< (N,) ascending within each cell
  const double* query_keys;      ///< (M,)
  const double* floor;           ///< (M,) logit floor, log_w frame (-inf: whole cells)
  const double* cell_log_w_max;  ///< (n_cells,) max log_w of the cell (-inf: no mass)
  double slack;                  ///< >= the rounding of any key difference
};

/// `runs` (optional): runs of identical rows with equal log_w, within cells, ascending and
/// disjoint.  The part of a run inside a query's rows, when at least kLongRun rows, is one term of
/// multiplicity k (one float64 distance; weight k w, square k w^2, top1 its first row) instead of
/// k rows of the tile kernel: a flat image patch repeated 47 000 times costs one term per query.
struct RowRuns {
  const std::int64_t* start;
  const std::int64_t* length;
  index_t n;
};

template <class T>
void partials_cells(const DenseProblem<T>& P, const std::uint8_t* probed, index_t n_cells,
                    const std::int64_t* cell_offsets, const T* cell_centers, const double* cell_radii,
                    const DenseOutput& out, int n_threads, SimdLevel level, const KeyWindows* windows = nullptr,
                    const RowRuns* runs = nullptr);

}  // namespace nnscore
