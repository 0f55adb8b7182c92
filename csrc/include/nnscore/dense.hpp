// Dense exact reduction: every query against every training point, streamed in tiles.
//
// Design note.  Logits l_i = log pi_i - ||y - x_i||^2 / (2 s^2) are first formed in GEMM form
// (<y, x_i> - ||x_i||^2 / 2, a register-blocked micro-kernel over a transposed tile) in the
// input precision.  Per query a static rule picks one of two paths:
//  * fast path: the GEMM-form logit error estimate  u (sqrt(d) + 2) (|y| R + R^2) / s^2  is below
//    `fast_tol`; logits are used as they are, exponentiated with a SIMD exp and accumulated in
//    per-tile sums that are added into float64 state;
//  * selection path (small s, or queries far from the data): GEMM-form distances only select
//    candidates with a rigorous rounding bound; a candidate whose logit may be within `log_cut`
//    of the running max is recomputed in float64 difference form and accumulated in float64.
//    Skipped terms carry at most N exp(-log_cut) of the mass relative to the max weight.
//  * difference-form path (d <= 4, where the selection path would be taken with a GEMM-form
//    error estimate <= 1e-2): logits sum_k (y_k - x_k)^2 in precision T over the raw points,
//    whose error is relative to the distance; kept when the posterior mean of that error bound
//    is below `fast_tol` (checked after the pass), else the query is redone on the selection path.
// Products are taken about a centre c (the data mean), subtracted while packing, so that the
// rounding bounds scale with the spread of the data rather than its offset.
// Never more than one tile of logits is in memory.  At large d with GEMM-form sums the tile
// (the rows whose weights and sums a query folds into float64 at once, up to 512) is packed for
// the logits in L2-sized sub-tiles, and its weighted sums run in column chunks ("deep tiles"):
// the float64 state of a query block (up to 512 queries x 3072 x 8 bytes) would otherwise be
// streamed once per 32 rows.
//
// Third-moment mode (moment_center set; the taylor2 smoothed score, science.md §2.1.4): a second
// pass over the same queries with the max logit m known from the first.  With w = exp(l - m) and
// g = ||x - c||^2 for the query's centre c, the outputs become  v = sum w g (x - c),
// q = sum w g,  z = sum w  (m = known_max; z2, top1 unused).  Fast-path queries form g in GEMM
// form about the data centre (a second micro-kernel pass over the tile); the others take the
// selection path with every candidate in float64 (no mixed path: nothing to redo).
#pragma once
#include <cstdint>

#include "nnscore/common.hpp"
#include "nnscore/simd.hpp"

namespace nnscore {

/// Inputs of one dense reduction (all pointers borrowed; rows have unit stride inside).
template <class T>
struct DenseProblem {
  const T* y = nullptr;        ///< (M, ldy) queries, VE-normalised
  index_t ldy = 0;             ///< row stride of y in elements (>= d)
  const T* x = nullptr;        ///< (N, ldx) training points
  index_t ldx = 0;             ///< row stride of x in elements (>= d)
  const double* x_half_sqnorm = nullptr;  ///< (N,) ||x_i - c||^2 / 2 in float64
  const double* log_w = nullptr;          ///< (N,) log pi_i, or null for all-equal (0)
  const T* center = nullptr;  ///< (d,) c: GEMM-form products use x - c and y - c (null: 0)
  const double* sigma = nullptr;          ///< (M,) VE noise level per query, > 0
  index_t M = 0, N = 0, d = 0;
  double x_radius = 0.0;  ///< max_i ||x_i - c|| (scales the rounding bounds)
  double fast_tol = 0.0;  ///< fast path when the logit error estimate is below this (0: never)
  double log_cut = 0.0;   ///< skip terms whose logit is below (running max - log_cut)
  const double* moment_center = nullptr;  ///< (M, d) c per query: third-moment mode, or null
  const double* known_max = nullptr;      ///< (M,) max logit of each query (third-moment mode)
  /// (N,) optional: row_repeats[j] != 0 when row j equals row j - 1 (value-wise).  Runs of
  /// identical rows then share one float64 distance in the exact recompute; null: no runs.
  const std::uint8_t* row_repeats = nullptr;
  /// (M,) optional: query i's partial starts at max start_max[i] with no mass, a lower bound of
  /// the max of the partial it is merged into (the caller's), so that terms below
  /// start_max - log_cut are skipped from the first tile on and weights are relative to it.
  /// -inf: none.  Not with moment_center.
  const double* start_max = nullptr;
};

/// Structure-of-arrays outputs: one partial per query (see online_softmax.hpp).
struct DenseOutput {
  double* m;
  double* z;
  double* v;  ///< (M, d)
  double* q;
  double* z2;
  std::int64_t* top1;
  std::int64_t* n_exact;  ///< (M,) terms recomputed in difference form (diagnostic), or null
};

/// Runs the reduction on `n_threads` threads with kernels of `level`.
template <class T>
void partials_dense(const DenseProblem<T>& problem, const DenseOutput& out, int n_threads, SimdLevel level);

/// One work item: queries [q0, q1) against training points [n0, n1), written to `out`
/// (indexed by query, relative to q0).  Implemented once per SIMD level.
template <class T>
using DenseBlockFn = void (*)(const DenseProblem<T>&, index_t q0, index_t q1, index_t n0, index_t n1,
                              const DenseOutput& out);

/// The block kernel of `level` (which must be compiled in).
template <class T>
DenseBlockFn<T> dense_block_fn(SimdLevel level);

namespace generic {
void dense_block_f32(const DenseProblem<float>&, index_t, index_t, index_t, index_t, const DenseOutput&);
void dense_block_f64(const DenseProblem<double>&, index_t, index_t, index_t, index_t, const DenseOutput&);
}  // namespace generic
namespace avx2 {
void dense_block_f32(const DenseProblem<float>&, index_t, index_t, index_t, index_t, const DenseOutput&);
void dense_block_f64(const DenseProblem<double>&, index_t, index_t, index_t, index_t, const DenseOutput&);
}  // namespace avx2
namespace avx512 {
void dense_block_f32(const DenseProblem<float>&, index_t, index_t, index_t, index_t, const DenseOutput&);
void dense_block_f64(const DenseProblem<double>&, index_t, index_t, index_t, index_t, const DenseOutput&);
}  // namespace avx512

}  // namespace nnscore
