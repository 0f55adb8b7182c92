// Certified distance lower bounds from a query to every cell of an inverted-file index.
//
// For query b and cell c with centroid mu_c, radius R_c and assignment slack s_c (every row x of
// cell c satisfies ||x - mu_c||^2 <= ||x - mu_r||^2 + s_c for every other centroid r), the
// bound on ||y - x|| for rows x of c is the larger of
//   ball:      sqrt(lo_bc) - R_c                                   (triangle inequality)
//   bisector:  (lo_bc - hi_br - s_c) / (2 nu_rc)   for the n_refs centroids r nearest to y
// where [lo, hi] bracket ||y - mu||^2 (GEMM form  qn + cn - 2 G  -/+ its rounding bound
// g (qn + cn)), computed as a product with inv_gap_rc <= 1 / (2 ||mu_r - mu_c||) (float32,
// rounded down; 0 for r = c or coincident centroids: no bound).  Results
// are deflated by `deflate` (< 1) to absorb the rounding of this arithmetic, and squared.
#pragma once
#include <cstdint>
#include <cstring>

#include "nnscore/common.hpp"

namespace nnscore {

struct IvfBoundsProblem {
  const double* G = nullptr;      ///< (B, nlist) <y_b - centre, mu_c>
  const double* qn = nullptr;     ///< (B,) ||y_b - centre||^2
  const double* cn = nullptr;     ///< (nlist,) ||mu_c||^2
  const double* radii = nullptr;  ///< (nlist,) R_c (inflated)
  const double* slack = nullptr;  ///< (nlist,) s_c >= 0
  const float* inv_gap = nullptr;  ///< (nlist, nlist) lower bounds of 1/(2||mu_r - mu_c||), or null: ball only
  std::int64_t* nearest = nullptr;  ///< optional out (B,): the centroid nearest to each query (by hi; lowest index on ties)
  index_t B = 0, nlist = 0;
  int n_refs = 0;
  double g = 0.0, deflate = 1.0;
};

/// out (B, nlist): squared lower bounds (empty cells are the caller's business).
void ivf_cell_bounds(const IvfBoundsProblem& problem, double* out, int n_threads);

}  // namespace nnscore

#include <cstdint>

namespace nnscore {

/// Marks in `probed` the cells to scan so that the unprobed tail sum
/// sum_c Pi_c exp(-low2[b, c] / 2 sigma_b^2) stays below exp(log_budget[b]): the smallest terms
/// are left out first.  A query for which the cells that must be scanned (those already probed
/// and those whose term alone exceeds the budget) hold more than `row_budget` rows is flagged in
/// `over_budget` and left unmarked.
void ivf_select_cells(const double* low2, const double* log_mass, const double* sigma, const double* log_budget,
                      const std::int64_t* cell_rows, double row_budget, index_t B, index_t nlist,
                      std::uint8_t* probed, std::uint8_t* over_budget, int n_threads);

/// Over the unprobed cells of each query: log_t = log sum_c Pi_c exp(-L_c^2 / 2s^2) and
/// log_g = log sum_c Pi_c g(L_c) (science.md §3.2 (i)-(iii) with per-cell radii), rounded up
/// (terms below e^-40 of the largest are bounded by that, not evaluated).
void ivf_tail_sums(const double* low2, const double* log_mass, const double* sigma, const std::uint8_t* probed,
                   index_t B, index_t nlist, double* log_t, double* log_g, int n_threads);

/// Calls f(c) for each c < n with row[c] != 0, in order.  A query marks few of the cells, so
/// eight unmarked ones are skipped at once.
template <class F>
inline void for_marked(const std::uint8_t* row, index_t n, F&& f) {
  index_t c = 0;
  for (; c + 8 <= n; c += 8) {
    std::uint64_t word;
    std::memcpy(&word, row + c, 8);
    if (word == 0) continue;
    for (index_t k = c; k < c + 8; ++k)
      if (row[k]) f(k);
  }
  for (; c < n; ++c)
    if (row[c]) f(c);
}

/// rows[b] = sum of cell_rows[c] over the cells c with marked[b, c] != 0 (the rows a scan of the
/// marked cells reads).
void ivf_marked_rows(const std::uint8_t* marked, const std::int64_t* cell_rows, index_t B, index_t nlist,
                     std::int64_t* rows, int n_threads);

}  // namespace nnscore
