// Launch helpers shared by the .cu files: error checks and warp reductions.
#pragma once
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.hpp"

#define NNSCORE_CUDA_CHECK(expr)                                                                   \
  do {                                                                                             \
    cudaError_t nnscore_err_ = (expr);                                                             \
    if (nnscore_err_ != cudaSuccess)                                                               \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " +                      \
                               cudaGetErrorString(nnscore_err_));                                  \
  } while (0)

namespace nnscore {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

/// -inf in device code (std::numeric_limits is host-only without --expt-relaxed-constexpr).
__device__ __forceinline__ double neg_inf() { return -CUDART_INF; }

/// One query's finished partial into the outputs (called by one lane).
__device__ __forceinline__ void store_partial(const DenseOutputs& out, std::int64_t i, double m, double z, double q,
                                              double z2, std::int64_t top1, std::int64_t n_exact) {
  out.m[i] = m;
  out.z[i] = z;
  out.q[i] = q;
  out.z2[i] = z2;
  out.top1[i] = top1;
  if (out.n_exact) out.n_exact[i] = n_exact;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

/// Warp-wide argmax: the largest value, lowest column on ties (columns are unique per lane).
__device__ __forceinline__ void warp_argmax(double& value, int& column) {
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_xor_sync(kFullMask, value, o);
    const int oc = __shfl_xor_sync(kFullMask, column, o);
    if (ov > value || (ov == value && oc < column)) {
      value = ov;
      column = oc;
    }
  }
}

inline int blocks_for(long long n, int per_block) { return static_cast<int>((n + per_block - 1) / per_block); }

}  // namespace cuda
}  // namespace nnscore
