// PYBIND11_MODULE(_cuda): pointer + shape + stream API over csrc/cuda (no torch headers).
// Python (nnscore.backends.cuda_backend) passes device pointers as integers (tensor.data_ptr()
// or __cuda_array_interface__), shapes, and the caller's current stream handle; outputs and the
// split workspace are allocated by the caller (torch's caching allocator).  Kernels run
// asynchronously on that stream; the GIL is released around each launch.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/api.hpp"

namespace py = pybind11;
namespace nc = nnscore::cuda;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

nc::DType dtype_of(const std::string& name) {
  if (name == "float32") return nc::DType::kFloat32;
  if (name == "float64") return nc::DType::kFloat64;
  throw py::type_error("dtype: expected 'float32' or 'float64', got '" + name + "'");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "nnscore CUDA kernels: device pointers in, partials out (see nnscore.backends.cuda_backend)";
  m.def("device_count", &nc::device_count, "Visible CUDA devices (0 without a driver or GPU; never raises).");
  m.def("multiprocessor_count", &nc::multiprocessor_count, py::arg("device"));
  m.def("runtime_version", &nc::runtime_version);
  m.def("dense_tile_rows", &nc::dense_tile_rows, "rows_per_split must be a multiple of this.");
  m.def("synchronize", [](std::uintptr_t stream) { nc::synchronize(reinterpret_cast<void*>(stream)); },
        py::arg("stream"));
  m.def(
      "dense_partials",
      [](const std::string& dtype, std::uintptr_t y, std::uintptr_t x, std::uintptr_t center, std::uintptr_t half_sqnorm,
         std::uintptr_t log_w, std::uintptr_t sigma, std::int64_t M, std::int64_t N, std::int64_t d, double radius,
         double fast_tol, double log_cut, double log_w_max_abs, bool tf32, bool force_exact, bool accumulate_fp32,
         std::int64_t n_splits, std::int64_t rows_per_split, std::uintptr_t ws_m, std::uintptr_t ws_z,
         std::uintptr_t ws_q, std::uintptr_t ws_z2, std::uintptr_t ws_z_gemm, std::uintptr_t ws_top1,
         std::uintptr_t ws_n_exact, std::uintptr_t ws_v, std::uintptr_t ws_est, std::uintptr_t ws_mode,
         std::uintptr_t out_m, std::uintptr_t out_z, std::uintptr_t out_v, std::uintptr_t out_q, std::uintptr_t out_z2,
         std::uintptr_t out_top1, std::uintptr_t out_n_exact, std::uintptr_t out_redo, std::uintptr_t stream) {
        nc::DenseInputs in;
        in.dtype = dtype_of(dtype);
        in.y = ptr<const void>(y);
        in.x = ptr<const void>(x);
        in.center = ptr<const void>(center);
        in.x_half_sqnorm = ptr<const double>(half_sqnorm);
        in.log_w = ptr<const double>(log_w);
        in.sigma = ptr<const double>(sigma);
        in.M = M;
        in.N = N;
        in.d = d;
        in.radius = radius;
        in.fast_tol = fast_tol;
        in.log_cut = log_cut;
        in.log_w_max_abs = log_w_max_abs;
        in.tf32 = tf32;
        in.force_exact = force_exact;
        in.accumulate = accumulate_fp32 ? nc::Accumulate::kFp32 : nc::Accumulate::kFp64;
        nc::SplitWorkspace ws;
        ws.n_splits = n_splits;
        ws.rows_per_split = rows_per_split;
        ws.m = ptr<double>(ws_m);
        ws.z = ptr<double>(ws_z);
        ws.q = ptr<double>(ws_q);
        ws.z2 = ptr<double>(ws_z2);
        ws.z_gemm = ptr<double>(ws_z_gemm);
        ws.top1 = ptr<std::int64_t>(ws_top1);
        ws.n_exact = ptr<std::int64_t>(ws_n_exact);
        ws.v = ptr<void>(ws_v);
        ws.est = ptr<double>(ws_est);
        ws.mode = ptr<int>(ws_mode);
        nc::DenseOutputs out{ptr<double>(out_m), ptr<double>(out_z), ptr<double>(out_v), ptr<double>(out_q),
                             ptr<double>(out_z2), ptr<std::int64_t>(out_top1), ptr<std::int64_t>(out_n_exact),
                             ptr<int>(out_redo)};
        py::gil_scoped_release release;
        nc::dense_partials(in, ws, out, reinterpret_cast<void*>(stream));
      },
      py::arg("dtype"), py::arg("y"), py::arg("x"), py::arg("center"), py::arg("half_sqnorm"), py::arg("log_w"),
      py::arg("sigma"), py::arg("M"), py::arg("N"), py::arg("d"), py::arg("radius"), py::arg("fast_tol"),
      py::arg("log_cut"), py::arg("log_w_max_abs"), py::arg("tf32"), py::arg("force_exact"),
      py::arg("accumulate_fp32"), py::arg("n_splits"), py::arg("rows_per_split"), py::arg("ws_m"), py::arg("ws_z"),
      py::arg("ws_q"), py::arg("ws_z2"), py::arg("ws_z_gemm"), py::arg("ws_top1"), py::arg("ws_n_exact"),
      py::arg("ws_v"), py::arg("ws_est"), py::arg("ws_mode"), py::arg("out_m"), py::arg("out_z"), py::arg("out_v"),
      py::arg("out_q"), py::arg("out_z2"), py::arg("out_top1"), py::arg("out_n_exact"), py::arg("out_redo"),
      py::arg("stream"),
      "Dense partials of M queries over N points (all device pointers; log_w may be 0 = null).");
  m.def(
      "segment_partials",
      [](const std::string& dtype, std::uintptr_t y, std::uintptr_t x, std::uintptr_t log_w, std::uintptr_t sigma,
         std::uintptr_t offsets, std::uintptr_t seg_start, std::uintptr_t seg_len, std::int64_t M, std::int64_t N,
         std::int64_t d, std::uintptr_t out_m, std::uintptr_t out_z, std::uintptr_t out_v, std::uintptr_t out_q,
         std::uintptr_t out_z2, std::uintptr_t out_top1, std::uintptr_t stream) {
        nc::SegmentInputs in;
        in.dtype = dtype_of(dtype);
        in.y = ptr<const void>(y);
        in.x = ptr<const void>(x);
        in.log_w = ptr<const double>(log_w);
        in.sigma = ptr<const double>(sigma);
        in.offsets = ptr<const std::int64_t>(offsets);
        in.seg_start = ptr<const std::int64_t>(seg_start);
        in.seg_len = ptr<const std::int64_t>(seg_len);
        in.M = M;
        in.N = N;
        in.d = d;
        nc::DenseOutputs out{ptr<double>(out_m), ptr<double>(out_z), ptr<double>(out_v), ptr<double>(out_q),
                             ptr<double>(out_z2), ptr<std::int64_t>(out_top1), nullptr, nullptr};
        py::gil_scoped_release release;
        nc::segment_partials(in, out, reinterpret_cast<void*>(stream));
      },
      py::arg("dtype"), py::arg("y"), py::arg("x"), py::arg("log_w"), py::arg("sigma"), py::arg("offsets"),
      py::arg("seg_start"), py::arg("seg_len"), py::arg("M"), py::arg("N"), py::arg("d"), py::arg("out_m"),
      py::arg("out_z"), py::arg("out_v"), py::arg("out_q"), py::arg("out_z2"), py::arg("out_top1"), py::arg("stream"),
      "Exact partials of each query over its CSR segments of rows (device pointers).");
}
