// Gathered-rows kernel (kNN candidate lists, IVF cells): each query over its own CSR segments
// of training rows, every logit in float64 difference form (the lists are short, exactness
// first).  One warp per query: the squared distance of a row is a warp reduction over d, the
// partial state (m, z, q, z2, top1) is warp-uniform and v lives in the output row.
#include <cstdint>
#include <limits>

#include "api.hpp"
#include "launch.cuh"

namespace nnscore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <class T>
__global__ void __launch_bounds__(kThreads) segment_kernel(const T* __restrict__ y, const T* __restrict__ x,
                                                           const double* __restrict__ log_w,
                                                           const double* __restrict__ sigma,
                                                           const std::int64_t* __restrict__ offsets,
                                                           const std::int64_t* __restrict__ seg_start,
                                                           const std::int64_t* __restrict__ seg_len, std::int64_t M,
                                                           std::int64_t d, DenseOutputs out) {
  const int lane = threadIdx.x & 31;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= M) return;
  const double inv = 1.0 / (sigma[i] * sigma[i]);
  double m = neg_inf(), z = 0, q = 0, z2 = 0;
  std::int64_t top1 = -1;
  double* vrow = out.v + i * d;
  for (std::int64_t k = lane; k < d; k += 32) vrow[k] = 0.0;
  for (std::int64_t g = offsets[i]; g < offsets[i + 1]; ++g) {
    for (std::int64_t j = seg_start[g]; j < seg_start[g] + seg_len[g]; ++j) {
      const double lw = log_w ? log_w[j] : 0.0;
      if (lw == neg_inf()) continue;  // zero prior weight
      double s = 0;
      for (std::int64_t k = lane; k < d; k += 32) {
        const double diff = static_cast<double>(x[j * d + k]) - static_cast<double>(y[i * d + k]);
        s += diff * diff;
      }
      s = warp_sum(s);
      const double hs = 0.5 * s, l = lw - hs * inv;
      if (l > m) {  // new maximum: rescale the state (strict: ties keep the earlier row)
        const double sc = m == neg_inf() ? 0.0 : exp(m - l);
        z = z * sc + 1.0;
        z2 = z2 * sc * sc + 1.0;
        q = q * sc + 2.0 * hs;
        for (std::int64_t k = lane; k < d; k += 32)
          vrow[k] = vrow[k] * sc + (static_cast<double>(x[j * d + k]) - static_cast<double>(y[i * d + k]));
        m = l;
        top1 = j;
      } else {
        const double w = exp(l - m);
        if (w == 0.0) continue;
        z += w;
        z2 += w * w;
        q += 2.0 * w * hs;
        for (std::int64_t k = lane; k < d; k += 32)
          vrow[k] += w * (static_cast<double>(x[j * d + k]) - static_cast<double>(y[i * d + k]));
      }
    }
  }
  if (lane == 0) store_partial(out, i, m, z, q, z2, top1, 0);
}

}  // namespace

void segment_partials(const SegmentInputs& in, const DenseOutputs& out, void* stream) {
  if (in.M < 0 || in.d <= 0) throw std::invalid_argument("segment_partials: need M >= 0 and d > 0");
  if (in.M == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(in.M, kWarps);
  if (in.dtype == DType::kFloat32)
    segment_kernel<float><<<blocks, kThreads, 0, s>>>(static_cast<const float*>(in.y), static_cast<const float*>(in.x),
                                                       in.log_w, in.sigma, in.offsets, in.seg_start, in.seg_len,
                                                       in.M, in.d, out);
  else
    segment_kernel<double><<<blocks, kThreads, 0, s>>>(static_cast<const double*>(in.y),
                                                        static_cast<const double*>(in.x), in.log_w, in.sigma,
                                                        in.offsets, in.seg_start, in.seg_len, in.M, in.d, out);
  NNSCORE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace nnscore
