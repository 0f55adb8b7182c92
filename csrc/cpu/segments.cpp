// Gathered reduction drivers: queries in blocks on the thread pool, one scratch of terms per
// worker (sized to the largest query's term count).
#include <algorithm>
#include <vector>

#include "nnscore/segments.hpp"
#include "nnscore/thread_pool.hpp"

namespace nnscore {
namespace {

template <class Fn>
Fn pick_level(SimdLevel level, Fn generic_fn, [[maybe_unused]] Fn avx2_fn, [[maybe_unused]] Fn avx512_fn) {
  switch (level) {
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return avx512_fn;
#endif
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return avx2_fn;
#endif
    default: return generic_fn;
  }
}

// A level that is not compiled in is never picked (pick_level): its entry may be null.
#ifdef NNSCORE_HAVE_AVX2
#define NNSCORE_AVX2_FN(name) &avx2::name
#else
#define NNSCORE_AVX2_FN(name) nullptr
#endif
#ifdef NNSCORE_HAVE_AVX512
#define NNSCORE_AVX512_FN(name) &avx512::name
#else
#define NNSCORE_AVX512_FN(name) nullptr
#endif

template <class T>
SegmentsQueryFn<T> pick_segments(SimdLevel level) {
  if constexpr (sizeof(T) == 4)
    return pick_level<SegmentsQueryFn<T>>(level, &generic::segments_query_f32, NNSCORE_AVX2_FN(segments_query_f32),
                                          NNSCORE_AVX512_FN(segments_query_f32));
  else
    return pick_level<SegmentsQueryFn<T>>(level, &generic::segments_query_f64, NNSCORE_AVX2_FN(segments_query_f64),
                                          NNSCORE_AVX512_FN(segments_query_f64));
}

template <class T>
KeyScanQueryFn<T> pick_key_scan(SimdLevel level) {
  if constexpr (sizeof(T) == 4)
    return pick_level<KeyScanQueryFn<T>>(level, &generic::key_scan_query_f32, NNSCORE_AVX2_FN(key_scan_query_f32),
                                         NNSCORE_AVX512_FN(key_scan_query_f32));
  else
    return pick_level<KeyScanQueryFn<T>>(level, &generic::key_scan_query_f64, NNSCORE_AVX2_FN(key_scan_query_f64),
                                         NNSCORE_AVX512_FN(key_scan_query_f64));
}

// Runs fn(query, worker scratch) for every query, in blocks of kBlock per work item.
template <class Fn>
void for_each_query(index_t M, index_t scratch_terms, int n_threads, Fn&& fn) {
  if (n_threads < 1) n_threads = 1;
  std::vector<GatherScratch> scratch(static_cast<std::size_t>(n_threads), GatherScratch(scratch_terms));
  constexpr index_t kBlock = 16;  // queries per work item: enough to amortise the claim
  const index_t n_blocks = (M + kBlock - 1) / kBlock;
  parallel_for(n_blocks, n_threads, [&](index_t b, int w) {
    for (index_t i = b * kBlock; i < std::min(M, (b + 1) * kBlock); ++i) fn(i, scratch[w]);
  });
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
  for_each_query(P.M, most, n_threads, [&](index_t i, GatherScratch& s) { fn(P, i, out, s); });
}

template <class T>
void partials_key_scan(const KeyScanProblem<T>& P, const DenseOutput& out, std::uint8_t* complete, int n_threads,
                       SimdLevel level) {
  NNSCORE_CHECK(P.d >= 1 && P.N >= 1 && P.M >= 0 && P.max_terms >= 1,
                "partials_key_scan: need d >= 1, N >= 1, M >= 0, max_terms >= 1");
  NNSCORE_CHECK(simd_level_compiled(level), "partials_key_scan: SIMD level " << simd_level_name(level)
                                                                              << " is not compiled in");
  if (P.M == 0) return;
  const KeyScanQueryFn<T> fn = pick_key_scan<T>(level);
  index_t most = 0;
  for (index_t i = 0; i < P.M; ++i) {
    index_t n = 0;
    for (index_t r = P.range_offsets[i]; r < P.range_offsets[i + 1]; ++r) n += P.range_hi[r] - P.range_lo[r];
    most = std::max(most, std::min(n, P.max_terms));
  }
  // Queries in (first range, key) order: neighbours in the list read overlapping rows while cached.
  auto first = [&](index_t i) { return P.range_offsets[i] < P.range_offsets[i + 1] ? P.range_lo[P.range_offsets[i]] : -1; };
  std::vector<index_t> order(static_cast<std::size_t>(P.M));
  for (index_t i = 0; i < P.M; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
    return first(a) != first(b) ? first(a) < first(b) : P.query_keys[a] < P.query_keys[b];
  });
  for_each_query(P.M, most, n_threads, [&](index_t i, GatherScratch& s) { fn(P, order[i], out, complete, s); });
}

template void partials_segments<float>(const SegmentsProblem<float>&, const DenseOutput&, int, SimdLevel);
template void partials_segments<double>(const SegmentsProblem<double>&, const DenseOutput&, int, SimdLevel);
template void partials_key_scan<float>(const KeyScanProblem<float>&, const DenseOutput&, std::uint8_t*, int, SimdLevel);
template void partials_key_scan<double>(const KeyScanProblem<double>&, const DenseOutput&, std::uint8_t*, int,
                                        SimdLevel);

}  // namespace nnscore
