// Gathered exact reduction: each query against its own subset of training rows, given as a
// list of contiguous row segments (a kNN list is segments of length 1; an IVF cell is one
// segment of a cell-sorted copy).  Every logit is computed in float64 difference form, so the
// partials are exact up to float64 rounding; the accumulator is the dense engine's
// (online_softmax.hpp), and the outputs have the same layout (DenseOutput, n_exact unused).
#pragma once
#include <cstdint>

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

/// Partials of every query over its segments (top1 indexes x), on `n_threads` threads.
template <class T>
void partials_segments(const SegmentsProblem<T>& problem, const DenseOutput& out, int n_threads, SimdLevel level);

/// One query [qi], using `scratch` (grown as needed) for its squared distances.
template <class T>
using SegmentsQueryFn = void (*)(const SegmentsProblem<T>&, index_t qi, const DenseOutput& out, double* scratch);

#define NNSCORE_DECLARE_SEGMENTS(ns)                                                                      \
  namespace ns {                                                                                          \
  void segments_query_f32(const SegmentsProblem<float>&, index_t, const DenseOutput&, double*);        \
  void segments_query_f64(const SegmentsProblem<double>&, index_t, const DenseOutput&, double*);       \
  }
NNSCORE_DECLARE_SEGMENTS(generic)
NNSCORE_DECLARE_SEGMENTS(avx2)
NNSCORE_DECLARE_SEGMENTS(avx512)
#undef NNSCORE_DECLARE_SEGMENTS

}  // namespace nnscore
