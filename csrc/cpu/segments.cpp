// Segment-list reduction driver: queries in blocks on the thread pool, one scratch buffer of
// squared distances per worker (sized to the largest query's point count).
#include <algorithm>
#include <vector>

#include "nnscore/segments.hpp"
#include "nnscore/thread_pool.hpp"

namespace nnscore {
namespace {

template <class T>
SegmentsQueryFn<T> pick_segments(SimdLevel level);

template <>
SegmentsQueryFn<float> pick_segments<float>(SimdLevel level) {
  switch (level) {
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return &avx512::segments_query_f32;
#endif
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return &avx2::segments_query_f32;
#endif
    default: return &generic::segments_query_f32;
  }
}
template <>
SegmentsQueryFn<double> pick_segments<double>(SimdLevel level) {
  switch (level) {
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return &avx512::segments_query_f64;
#endif
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return &avx2::segments_query_f64;
#endif
    default: return &generic::segments_query_f64;
  }
}

}  // namespace

template <class T>
void partials_segments(const SegmentsProblem<T>& P, const DenseOutput& out, int n_threads, SimdLevel level) {
  NNSCORE_CHECK(P.d >= 1 && P.N >= 1 && P.M >= 0, "partials_segments: need d >= 1, N >= 1, M >= 0");
  NNSCORE_CHECK(simd_level_compiled(level), "partials_segments: SIMD level " << simd_level_name(level)
                                                                              << " is not compiled in");
  if (P.M == 0) return;
  const SegmentsQueryFn<T> fn = pick_segments<T>(level);
  index_t most = 0;
  for (index_t i = 0; i < P.M; ++i) {
    index_t n = 0;
    for (index_t s = P.offsets[i]; s < P.offsets[i + 1]; ++s) n += P.seg_len[s];
    most = std::max(most, n);
  }
  if (n_threads < 1) n_threads = 1;
  std::vector<std::vector<double>> scratch(static_cast<std::size_t>(n_threads), std::vector<double>(most));
  constexpr index_t kBlock = 16;  // queries per work item: enough to amortise the claim
  const index_t n_blocks = (P.M + kBlock - 1) / kBlock;
  parallel_for(n_blocks, n_threads, [&](index_t b, int w) {
    for (index_t i = b * kBlock; i < std::min(P.M, (b + 1) * kBlock); ++i) fn(P, i, out, scratch[w].data());
  });
}

template void partials_segments<float>(const SegmentsProblem<float>&, const DenseOutput&, int, SimdLevel);
template void partials_segments<double>(const SegmentsProblem<double>&, const DenseOutput&, int, SimdLevel);

}  // namespace nnscore
