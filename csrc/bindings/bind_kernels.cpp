// Thin adapters: check shapes and dtypes (no conversion, no copies), release the GIL, call
// one core function.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional for log_w=None

#include <optional>
#include <string>

#include "nnscore/dense.hpp"
#include "nnscore/segments.hpp"

namespace py = pybind11;

namespace nnscore {
namespace {

template <class T>
index_t checked_row_stride(const py::array_t<T>& a, const char* name, index_t rows, index_t cols) {
  NNSCORE_CHECK(a.ndim() == 2, name << ": expected a 2-d array, got ndim=" << a.ndim());
  NNSCORE_CHECK(a.shape(0) == rows && a.shape(1) == cols,
                name << ": expected shape (" << rows << ", " << cols << "), got (" << a.shape(0) << ", " << a.shape(1)
                     << ")");
  NNSCORE_CHECK(cols <= 1 || a.strides(1) == static_cast<py::ssize_t>(sizeof(T)),
                name << ": rows must be contiguous (inner stride " << a.strides(1) << " bytes)");
  if (rows <= 1) return cols;
  NNSCORE_CHECK(a.strides(0) % static_cast<py::ssize_t>(sizeof(T)) == 0 && a.strides(0) >= cols * (index_t)sizeof(T),
                name << ": unsupported row stride " << a.strides(0) << " bytes");
  return a.strides(0) / static_cast<py::ssize_t>(sizeof(T));
}

template <class T>
T* checked_out(py::array_t<T>& a, const char* name, index_t n0, index_t n1 = -1) {
  NNSCORE_CHECK(a.writeable(), name << ": output must be writeable");
  NNSCORE_CHECK((a.flags() & py::array::c_style) != 0, name << ": output must be C-contiguous");
  if (n1 < 0) {
    NNSCORE_CHECK(a.ndim() == 1 && a.shape(0) == n0, name << ": expected shape (" << n0 << ",)");
  } else {
    NNSCORE_CHECK(a.ndim() == 2 && a.shape(0) == n0 && a.shape(1) == n1,
                  name << ": expected shape (" << n0 << ", " << n1 << ")");
  }
  return a.mutable_data();
}

template <class T>
const double* checked_vec(const py::array_t<double>& a, const char* name, index_t n) {
  NNSCORE_CHECK(a.ndim() == 1 && a.shape(0) == n, name << ": expected shape (" << n << ",)");
  NNSCORE_CHECK((a.flags() & py::array::c_style) != 0, name << ": must be C-contiguous");
  return a.data();
}

template <class T>
void bind_dense(py::array_t<T> y, py::array_t<T> x, py::array_t<double> x_half_sqnorm,
                std::optional<py::array_t<double>> log_w, py::array_t<T> center, py::array_t<double> sigma, py::array_t<double> m,
                py::array_t<double> z, py::array_t<double> v, py::array_t<double> q, py::array_t<double> z2,
                py::array_t<std::int64_t> top1, py::array_t<std::int64_t> n_exact, double x_radius, double fast_tol,
                double log_cut, int n_threads, int simd_level) {
  NNSCORE_CHECK(y.ndim() == 2 && x.ndim() == 2, "y and x must be 2-d");
  const index_t M = y.shape(0), N = x.shape(0), d = x.shape(1);
  DenseProblem<T> P;
  P.M = M;
  P.N = N;
  P.d = d;
  P.ldy = checked_row_stride(y, "y", M, d);
  P.ldx = checked_row_stride(x, "x", N, d);
  P.y = y.data();
  P.x = x.data();
  P.x_half_sqnorm = checked_vec<T>(x_half_sqnorm, "x_half_sqnorm", N);
  P.log_w = log_w ? checked_vec<T>(*log_w, "log_w", N) : nullptr;
  P.sigma = checked_vec<T>(sigma, "sigma", M);
  NNSCORE_CHECK(center.ndim() == 1 && center.shape(0) == d && (center.flags() & py::array::c_style),
                "center: expected a contiguous array of shape (" << d << ",)");
  P.center = center.data();
  P.x_radius = x_radius;
  P.fast_tol = fast_tol;
  P.log_cut = log_cut;
  DenseOutput out{checked_out(m, "m", M), checked_out(z, "z", M),   checked_out(v, "v", M, d),
                  checked_out(q, "q", M), checked_out(z2, "z2", M), checked_out(top1, "top1", M),
                  checked_out(n_exact, "n_exact", M)};
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  py::gil_scoped_release release;
  partials_dense<T>(P, out, n_threads, static_cast<SimdLevel>(simd_level));
}

template <class T>
void def_dense(py::module_& m, const char* name) {
  m.def(name, &bind_dense<T>,
        "partials_dense_{f32,f64}(y, x, x_half_sqnorm, log_w, center, sigma, m, z, v, q, z2, top1, n_exact,\n"
        "    x_radius, fast_tol, log_cut, n_threads, simd_level)\n\n"
        "Exact streaming log-sum-exp partials of every query over all training points, written\n"
        "into the preallocated float64/int64 outputs. Inputs are not converted or copied.",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("x_half_sqnorm").noconvert(),
        py::arg("log_w").noconvert(), py::arg("center").noconvert(), py::arg("sigma").noconvert(),
        py::arg("m").noconvert(), py::arg("z").noconvert(), py::arg("v").noconvert(), py::arg("q").noconvert(),
        py::arg("z2").noconvert(), py::arg("top1").noconvert(), py::arg("n_exact").noconvert(), py::arg("x_radius"),
        py::arg("fast_tol"), py::arg("log_cut"), py::arg("n_threads"), py::arg("simd_level"));
}

const std::int64_t* checked_index(const py::array_t<std::int64_t>& a, const char* name, index_t n) {
  NNSCORE_CHECK(a.ndim() == 1 && a.shape(0) == n, name << ": expected shape (" << n << ",)");
  NNSCORE_CHECK((a.flags() & py::array::c_style) != 0, name << ": must be C-contiguous");
  return a.data();
}

template <class T>
void bind_segments(py::array_t<T> y, py::array_t<T> x, std::optional<py::array_t<double>> log_w, py::array_t<double> sigma,
                   py::array_t<std::int64_t> offsets, py::array_t<std::int64_t> seg_start,
                   py::array_t<std::int64_t> seg_len, py::array_t<double> m, py::array_t<double> z, py::array_t<double> v,
                   py::array_t<double> q, py::array_t<double> z2, py::array_t<std::int64_t> top1, double log_cut,
                   int n_threads, int simd_level) {
  NNSCORE_CHECK(y.ndim() == 2 && x.ndim() == 2, "y and x must be 2-d");
  SegmentsProblem<T> P;
  P.M = y.shape(0);
  P.N = x.shape(0);
  P.d = x.shape(1);
  const index_t M = P.M, N = P.N, d = P.d;
  P.ldy = checked_row_stride(y, "y", M, d);
  P.ldx = checked_row_stride(x, "x", N, d);
  P.y = y.data();
  P.x = x.data();
  P.log_w = log_w ? checked_vec<T>(*log_w, "log_w", N) : nullptr;
  P.sigma = checked_vec<T>(sigma, "sigma", M);
  P.offsets = checked_index(offsets, "offsets", M + 1);
  const index_t S = seg_start.ndim() == 1 ? seg_start.shape(0) : -1;
  P.seg_start = checked_index(seg_start, "seg_start", S);
  P.seg_len = checked_index(seg_len, "seg_len", S);
  // The kernel trusts these: check them once here (O(M + S), GIL held).
  NNSCORE_CHECK(P.offsets[0] == 0 && P.offsets[M] == S, "offsets: must start at 0 and end at len(seg_start)");
  for (index_t i = 0; i < M; ++i) NNSCORE_CHECK(P.offsets[i] <= P.offsets[i + 1], "offsets: must be non-decreasing");
  for (index_t s = 0; s < S; ++s)
    NNSCORE_CHECK(P.seg_start[s] >= 0 && P.seg_len[s] >= 0 && P.seg_start[s] <= N - P.seg_len[s],
                  "segment " << s << ": rows [" << P.seg_start[s] << ", +" << P.seg_len[s] << ") outside [0, " << N << ")");
  P.log_cut = log_cut;
  DenseOutput out{checked_out(m, "m", M), checked_out(z, "z", M),   checked_out(v, "v", M, d),
                  checked_out(q, "q", M), checked_out(z2, "z2", M), checked_out(top1, "top1", M), nullptr};
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  py::gil_scoped_release release;
  partials_segments<T>(P, out, n_threads, static_cast<SimdLevel>(simd_level));
}

template <class T>
void def_segments(py::module_& m, const char* name) {
  m.def(name, &bind_segments<T>,
        "partials_segments_{f32,f64}(y, x, log_w, sigma, offsets, seg_start, seg_len, m, z, v, q, z2, top1,\n"
        "    log_cut, n_threads, simd_level)\n\n"
        "Exact (float64 difference form) partials of query i over the rows of its segments\n"
        "[offsets[i], offsets[i+1]) of (seg_start, seg_len); top1 indexes x. No conversion, no copies.",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("log_w").noconvert(), py::arg("sigma").noconvert(),
        py::arg("offsets").noconvert(), py::arg("seg_start").noconvert(), py::arg("seg_len").noconvert(),
        py::arg("m").noconvert(), py::arg("z").noconvert(), py::arg("v").noconvert(), py::arg("q").noconvert(),
        py::arg("z2").noconvert(), py::arg("top1").noconvert(), py::arg("log_cut"), py::arg("n_threads"),
        py::arg("simd_level"));
}

}  // namespace

void register_kernels(py::module_& m) {
  def_dense<float>(m, "partials_dense_f32");
  def_dense<double>(m, "partials_dense_f64");
  def_segments<float>(m, "partials_segments_f32");
  def_segments<double>(m, "partials_segments_f64");
}

}  // namespace nnscore
