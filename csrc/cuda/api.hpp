// Host API of the CUDA kernels: plain C++ (no CUDA, no Python headers), so the pybind11 glue
// (bindings/module_cuda.cpp) is compiled by the host compiler and the .cu files need no Python.
// All pointers are device pointers; `stream` is a cudaStream_t passed as an opaque pointer
// (the caller's current stream).  Kernels are asynchronous on that stream.
#pragma once
#include <cstdint>
#include <string>

namespace nnscore {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1 };
enum class Accumulate : int { kFp64 = 0, kFp32 = 1 };

/// Inputs of one dense reduction (same meaning as DenseProblem in include/nnscore/dense.hpp).
struct DenseInputs {
  DType dtype = DType::kFloat32;
  const void* y = nullptr;                 ///< (M, d) contiguous queries
  const void* x = nullptr;                 ///< (N, d) contiguous training points
  const void* center = nullptr;            ///< (d,) data centre c, dtype of x
  const double* x_half_sqnorm = nullptr;   ///< (N,) ||x_i - c||^2 / 2
  const double* log_w = nullptr;           ///< (N,) shifted log weights, or null (all 0)
  const double* sigma = nullptr;           ///< (M,) > 0
  std::int64_t M = 0, N = 0, d = 0;
  double radius = 0.0;         ///< max_i ||x_i - c||
  double fast_tol = 0.0;       ///< GEMM-form logits are used as they are below this error
  double log_cut = 0.0;        ///< terms below (max - log_cut) are skipped
  double log_w_max_abs = 0.0;  ///< max |finite log_w|
  bool tf32 = false;           ///< distances on TF32 tensor cores (float32 inputs only)
  bool force_exact = false;    ///< every counted term in float64 difference form (redo pass)
  Accumulate accumulate = Accumulate::kFp64;  ///< precision of the v sums (scalars are float64)
};

/// Per-(split, query) partials written by the dense kernel, merged by the combine kernel.
/// Arrays of n_splits * M entries (v: n_splits * M * d, in the accumulate precision).
struct SplitWorkspace {
  std::int64_t n_splits = 1;
  std::int64_t rows_per_split = 0;  ///< training rows per split (a multiple of the tile width)
  double *m = nullptr, *z = nullptr, *q = nullptr, *z2 = nullptr, *z_gemm = nullptr;
  std::int64_t *top1 = nullptr, *n_exact = nullptr;
  void* v = nullptr;
  double* est = nullptr;  ///< (M,) calibrated GEMM-form logit error per query
  int* mode = nullptr;    ///< (M,) 0 fast, 1 mixed, 2 exact
};

/// Final merged partials (float64; top1/n_exact int64; redo int32 flags, M entries each).
struct DenseOutputs {
  double *m = nullptr, *z = nullptr, *v = nullptr, *q = nullptr, *z2 = nullptr;
  std::int64_t *top1 = nullptr, *n_exact = nullptr;
  int* redo = nullptr;  ///< 1: a mixed query whose GEMM-form terms carry too much mass: rerun exactly
};

/// Tile width over training points: rows_per_split must be a positive multiple of it.
std::int64_t dense_tile_rows();
/// Dense kernel over all splits, then the combine kernel.  Throws std::runtime_error on errors.
void dense_partials(const DenseInputs& in, const SplitWorkspace& ws, const DenseOutputs& out, void* stream);

/// Gathered rows per query (CSR segments, as nnscore.backends.Segments); exact float64 form.
struct SegmentInputs {
  DType dtype = DType::kFloat32;
  const void* y = nullptr;        ///< (M, d)
  const void* x = nullptr;        ///< (N, d)
  const double* log_w = nullptr;  ///< (N,) or null
  const double* sigma = nullptr;  ///< (M,)
  const std::int64_t* offsets = nullptr;  ///< (M + 1,)
  const std::int64_t* seg_start = nullptr;
  const std::int64_t* seg_len = nullptr;
  std::int64_t M = 0, N = 0, d = 0;
};
void segment_partials(const SegmentInputs& in, const DenseOutputs& out, void* stream);

/// Number of visible devices; 0 (never an exception) without a driver or GPU.
int device_count();
/// Streaming multiprocessors of `device` (sizes the split over N).
int multiprocessor_count(int device);
/// Block until all work on `stream` is done; throws on an asynchronous kernel error.
void synchronize(void* stream);
std::string runtime_version();

}  // namespace cuda
}  // namespace nnscore
