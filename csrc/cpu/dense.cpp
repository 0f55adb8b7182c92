// Dense reduction driver: splits queries into blocks (and N into chunks when there are fewer
// query blocks than threads), runs the per-ISA block kernel on the thread pool, then merges
// the N-chunk partials in a fixed order, so results depend only on (n_threads, level).
#include <algorithm>
#include <vector>

#include "nnscore/dense.hpp"
#include "nnscore/online_softmax.hpp"
#include "nnscore/thread_pool.hpp"

namespace nnscore {
template <>
DenseBlockFn<float> dense_block_fn<float>(SimdLevel level) {
  switch (level) {
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return &avx512::dense_block_f32;
#endif
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return &avx2::dense_block_f32;
#endif
    default: return &generic::dense_block_f32;
  }
}
template <>
DenseBlockFn<double> dense_block_fn<double>(SimdLevel level) {
  switch (level) {
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return &avx512::dense_block_f64;
#endif
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return &avx2::dense_block_f64;
#endif
    default: return &generic::dense_block_f64;
  }
}

namespace {

DenseOutput shifted(const DenseOutput& o, index_t q0, index_t d) {
  return DenseOutput{o.m + q0, o.z + q0, o.v + q0 * d, o.q + q0, o.z2 + q0, o.top1 + q0,
                     o.n_exact ? o.n_exact + q0 : nullptr};
}

}  // namespace

template <class T>
void partials_dense(const DenseProblem<T>& P, const DenseOutput& out, int n_threads, SimdLevel level) {
  NNSCORE_CHECK(P.d >= 1 && P.N >= 1 && P.M >= 0, "partials_dense: need d >= 1, N >= 1, M >= 0");
  NNSCORE_CHECK(P.ldx >= P.d && P.ldy >= P.d, "partials_dense: row strides must be >= d");
  NNSCORE_CHECK(simd_level_compiled(level), "partials_dense: SIMD level " << simd_level_name(level)
                                                                           << " is not compiled in");
  if (P.M == 0) return;
  const DenseBlockFn<T> fn = dense_block_fn<T>(level);
  if (n_threads < 1) n_threads = 1;
  // Query blocks amortise the packing of each training tile (streamed from memory at large N d):
  // one block per thread, up to 512 queries.  Against two blocks per thread (256 for M = 1024 on
  // 2 threads), median time ratios 0.89-0.95 at d = 256-3072, large sigma, and d = 3072, small
  // sigma; 0.97-1.03 elsewhere (in-process A/B, stop 19).
  const index_t kQueryBlock = std::clamp<index_t>((P.M + n_threads - 1) / n_threads, 32, 512);
  const index_t n_qblocks = (P.M + kQueryBlock - 1) / kQueryBlock;
  index_t n_splits = 1;
  if (n_qblocks < n_threads) {
    // Few queries: split the training set too, at least 4096 points per chunk.
    n_splits = std::min<index_t>((n_threads + n_qblocks - 1) / n_qblocks, std::max<index_t>(1, P.N / 4096));
  }
  if (n_splits == 1) {
    parallel_for(n_qblocks, n_threads, [&](index_t b, int) {
      const index_t q0 = b * kQueryBlock, q1 = std::min(P.M, q0 + kQueryBlock);
      fn(P, q0, q1, 0, P.N, shifted(out, q0, P.d));
    });
    return;
  }
  // Chunk s > 0 writes to its own buffer; chunk 0 writes to `out`; merged in order after.
  const index_t M = P.M, d = P.d;
  std::vector<double> m((n_splits - 1) * M), z(m.size()), q(m.size()), z2(m.size()), v(m.size() * d);
  std::vector<std::int64_t> top1(m.size()), n_exact(m.size());
  auto chunk_out = [&](index_t s) {
    if (s == 0) return out;
    const index_t o = (s - 1) * M;
    return DenseOutput{m.data() + o, z.data() + o, v.data() + o * d, q.data() + o,
                       z2.data() + o, top1.data() + o, n_exact.data() + o};
  };
  parallel_for(n_qblocks * n_splits, n_threads, [&](index_t item, int) {
    const index_t b = item / n_splits, s = item % n_splits;
    const index_t q0 = b * kQueryBlock, q1 = std::min(M, q0 + kQueryBlock);
    const index_t n0 = P.N * s / n_splits, n1 = P.N * (s + 1) / n_splits;
    fn(P, q0, q1, n0, n1, shifted(chunk_out(s), q0, d));
  });
  for (index_t s = 1; s < n_splits; ++s) {
    const DenseOutput c = chunk_out(s);
    for (index_t i = 0; i < M; ++i) {
      partial_merge_into(PartialRef{out.m + i, out.z + i, out.v + i * d, out.q + i, out.z2 + i, out.top1 + i},
                         PartialRef{c.m + i, c.z + i, c.v + i * d, c.q + i, c.z2 + i, c.top1 + i}, d);
      if (out.n_exact) out.n_exact[i] += c.n_exact[i];
    }
  }
}

template void partials_dense<float>(const DenseProblem<float>&, const DenseOutput&, int, SimdLevel);
template void partials_dense<double>(const DenseProblem<double>&, const DenseOutput&, int, SimdLevel);

}  // namespace nnscore
