// Gathered exact reductions: each query against its own subset of training rows, given as a
// list of contiguous row segments (a kNN list is segments of length 1; an IVF cell is one
// segment of a cell-sorted copy) or found by a key scan (below).  Every logit is computed in
// float64 difference form, so the partials are exact up to float64 rounding; the outputs have
// the dense engine's layout (DenseOutput).
#pragma once
#include <cstdint>
#include <vector>

#include "nnscore/common.hpp"
#include "nnscore/dense.hpp"
#include "nnscore/simd.hpp"

namespace nnscore {

template <class T>
struct SegmentsProblem {
  const T* y = nullptr;  ///< (M, ldy) queries, VE-normalised
  index_t ldy = 0;
  const T* x = nullptr;  ///< (N, ldx) training rows
  index_t ldx = 0;
  const double* log_w = nullptr;  ///< (N,) log pi_i aligned with x, or null (all 0)
  const double* sigma = nullptr;  ///< (M,) > 0
  const std::int64_t* offsets = nullptr;    ///< (M + 1,) query i owns segments [offsets[i], offsets[i+1])
  const std::int64_t* seg_start = nullptr;  ///< (S,) first row of each segment
  const std::int64_t* seg_len = nullptr;    ///< (S,) rows per segment (>= 0)
  index_t M = 0, N = 0, d = 0;
  double log_cut = 0.0;  ///< terms below (max logit - log_cut) are skipped (weight < e^-log_cut)
};

/// Outward key scans over key-sorted row ranges (IVF cells of CellSortedData): query i takes the
/// rows of each of its ranges [range_lo[r], range_hi[r]) (r in [range_offsets[i],
/// range_offsets[i+1])) in increasing |row_keys[j] - query_keys[i]|, each in float64 difference
/// form, and leaves a range once every row left in it has a key gap above
/// h = sqrt(2 sigma_i^2 (range_top[r] - floor)) (1 + 1e-12) + slack, with floor = max(floor[i],
/// running max logit - log_cut): since |key(y) - key(x)| <= ||y - x|| (unit key axis; slack >=
/// the keys' rounding), those rows have logits below the floor, terms the kernels may skip (the
/// caller makes floor[i] <= the max logit of the partial the result is merged into - log_cut).
/// The partial is then the ranges', with the dense engine's guarantee, and complete[i] = 1.
/// After max_terms terms or max_visits rows the scan stops (complete[i] = 0): its partial covers
/// the rows taken, so its max is a lower bound on the ranges'.  A run of identical rows
/// (run_start / run_length: ascending, disjoint, equal log_w) is taken as one term of
/// multiplicity k.  range_top[r] >= max log_w over the range (-inf: no mass).
/// Sketches (optional): row_sketch[j, a] ~ <x_j - o, s_a> for kSketchAxes unit vectors s_a,
/// orthonormal with the key axis, and query_sketch[i, a] ~ <y_i - o, s_a>, the two together
/// within sketch_slack of exact.  Then (key gap - slack)^2 + sum_a (|sketch difference| -
/// sketch_slack)^2 <= ||y - x||^2, and a row whose bound puts its logit below the floor is not
/// read.
constexpr int kSketchAxes = 8;

template <class T>
struct KeyScanProblem {
  const T* y = nullptr;  ///< (M, ldy) queries, VE-normalised
  index_t ldy = 0;
  const T* x = nullptr;  ///< (N, ldx) rows, ascending by key within each range
  index_t ldx = 0;
  const double* log_w = nullptr;  ///< (N,) or null (all 0)
  const double* sigma = nullptr;  ///< (M,) > 0
  const std::int64_t* range_offsets = nullptr;  ///< (M + 1,)
  const std::int64_t* range_lo = nullptr;       ///< (R,)
  const std::int64_t* range_hi = nullptr;       ///< (R,)
  const double* range_top = nullptr;            ///< (R,)
  const double* row_keys = nullptr;             ///< (N,)
  const double* query_keys = nullptr;           ///< (M,)
  const double* floor = nullptr;                ///< (M,) initial floor (log_w frame), or null (-inf)
  double slack = 0.0;
  const std::int64_t* run_start = nullptr;
  const std::int64_t* run_length = nullptr;
  index_t n_runs = 0;
  const float* row_sketch = nullptr;     ///< (N, kSketchAxes) or null
  const double* query_sketch = nullptr;  ///< (M, kSketchAxes) with row_sketch
  double sketch_slack = 0.0;
  index_t M = 0, N = 0, d = 0;
  double log_cut = 0.0;
  index_t max_terms = 0;   ///< >= 1
  index_t max_visits = 0;  ///< >= max_terms
};

/// Per-worker scratch of the gathered kernels: the terms of one query.
struct GatherScratch {
  std::vector<index_t> rows, mult;
  std::vector<double> d2;
  explicit GatherScratch(index_t n) : rows(n), mult(n), d2(n) {}
};

/// Partials of every query over its segments (top1 indexes x), on `n_threads` threads.
template <class T>
void partials_segments(const SegmentsProblem<T>& problem, const DenseOutput& out, int n_threads, SimdLevel level);

/// Key scans of every query (top1 indexes x; out.n_exact, if given, receives the terms taken).
template <class T>
void partials_key_scan(const KeyScanProblem<T>& problem, const DenseOutput& out, std::uint8_t* complete, int n_threads,
                       SimdLevel level);

template <class T>
using SegmentsQueryFn = void (*)(const SegmentsProblem<T>&, index_t qi, const DenseOutput& out, GatherScratch&);
template <class T>
using KeyScanQueryFn = void (*)(const KeyScanProblem<T>&, index_t qi, const DenseOutput& out, std::uint8_t* complete,
                                GatherScratch&);

#define NNSCORE_DECLARE_SEGMENTS(ns)                                                                        \
  namespace ns {                                                                                            \
  void segments_query_f32(const SegmentsProblem<float>&, index_t, const DenseOutput&, GatherScratch&);   \
  void segments_query_f64(const SegmentsProblem<double>&, index_t, const DenseOutput&, GatherScratch&);  \
  void key_scan_query_f32(const KeyScanProblem<float>&, index_t, const DenseOutput&, std::uint8_t*,      \
                          GatherScratch&);                                                                  \
  void key_scan_query_f64(const KeyScanProblem<double>&, index_t, const DenseOutput&, std::uint8_t*,     \
                          GatherScratch&);                                                                  \
  }
NNSCORE_DECLARE_SEGMENTS(generic)
NNSCORE_DECLARE_SEGMENTS(avx2)
NNSCORE_DECLARE_SEGMENTS(avx512)
#undef NNSCORE_DECLARE_SEGMENTS

}  // namespace nnscore
