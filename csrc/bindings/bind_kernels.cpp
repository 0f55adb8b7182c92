// Thin adapters: check shapes and dtypes (no conversion, no copies), release the GIL, call
// one core function.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional for log_w=None

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>
#include <string>

#include "nnscore/cells.hpp"
#include "nnscore/dense.hpp"
#include "nnscore/segments.hpp"
#include "nnscore/ivf_bounds.hpp"

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
DenseProblem<T> dense_problem(const py::array_t<T>& y, const py::array_t<T>& x, const py::array_t<double>& x_half_sqnorm,
                              const std::optional<py::array_t<double>>& log_w, const py::array_t<T>* center,
                              const py::array_t<double>& sigma, double x_radius, double fast_tol, double log_cut,
                              const std::optional<py::array_t<std::uint8_t>>& row_repeats) {
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
  if (center) {  // null: the caller sets it (per cell)
    NNSCORE_CHECK(center->ndim() == 1 && center->shape(0) == d && (center->flags() & py::array::c_style),
                  "center: expected a contiguous array of shape (" << d << ",)");
    P.center = center->data();
  }
  P.x_radius = x_radius;
  P.fast_tol = fast_tol;
  P.log_cut = log_cut;
  if (row_repeats) {
    NNSCORE_CHECK(row_repeats->ndim() == 1 && row_repeats->shape(0) == N && (row_repeats->flags() & py::array::c_style),
                  "row_repeats: expected a C-contiguous (" << N << ",) uint8 array");
    P.row_repeats = row_repeats->data();
  }
  return P;
}

template <class T>
void bind_dense(py::array_t<T> y, py::array_t<T> x, py::array_t<double> x_half_sqnorm,
                std::optional<py::array_t<double>> log_w, py::array_t<T> center, py::array_t<double> sigma, py::array_t<double> m,
                py::array_t<double> z, py::array_t<double> v, py::array_t<double> q, py::array_t<double> z2,
                py::array_t<std::int64_t> top1, py::array_t<std::int64_t> n_exact, double x_radius, double fast_tol,
                double log_cut, int n_threads, int simd_level, std::optional<py::array_t<std::uint8_t>> row_repeats) {
  const DenseProblem<T> P =
      dense_problem(y, x, x_half_sqnorm, log_w, &center, sigma, x_radius, fast_tol, log_cut, row_repeats);
  const index_t M = P.M, d = P.d;
  DenseOutput out{checked_out(m, "m", M), checked_out(z, "z", M),   checked_out(v, "v", M, d),
                  checked_out(q, "q", M), checked_out(z2, "z2", M), checked_out(top1, "top1", M),
                  checked_out(n_exact, "n_exact", M)};
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  py::gil_scoped_release release;
  partials_dense<T>(P, out, n_threads, static_cast<SimdLevel>(simd_level));
}

template <class T>
void bind_third_moments(py::array_t<T> y, py::array_t<T> x, py::array_t<double> x_half_sqnorm,
                        std::optional<py::array_t<double>> log_w, py::array_t<T> center, py::array_t<double> sigma,
                        py::array_t<double> known_max, py::array_t<double> moment_center, py::array_t<double> t,
                        py::array_t<double> g, py::array_t<double> z, double x_radius, double fast_tol,
                        double log_cut, int n_threads, int simd_level,
                        std::optional<py::array_t<std::uint8_t>> row_repeats) {
  DenseProblem<T> P = dense_problem(y, x, x_half_sqnorm, log_w, &center, sigma, x_radius, fast_tol, log_cut, row_repeats);
  const index_t M = P.M, d = P.d;
  P.known_max = checked_vec<T>(known_max, "known_max", M);
  NNSCORE_CHECK(moment_center.ndim() == 2 && moment_center.shape(0) == M && moment_center.shape(1) == d &&
                    (moment_center.flags() & py::array::c_style),
                "moment_center: expected a C-contiguous (" << M << ", " << d << ") float64 array");
  P.moment_center = moment_center.data();
  // m, z2 and top1 are scratch in this mode: m is overwritten with known_max.
  std::vector<double> m(M), z2(M);
  std::vector<std::int64_t> top1(M);
  DenseOutput out{m.data(), checked_out(z, "z", M), checked_out(t, "t", M, d), checked_out(g, "g", M),
                  z2.data(), top1.data(), nullptr};
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  py::gil_scoped_release release;
  partials_dense<T>(P, out, n_threads, static_cast<SimdLevel>(simd_level));
}

template <class T>
void def_dense(py::module_& m, const char* name) {
  m.def(name, &bind_dense<T>,
        "partials_dense_{f32,f64}(y, x, x_half_sqnorm, log_w, center, sigma, m, z, v, q, z2, top1, n_exact,\n"
        "    x_radius, fast_tol, log_cut, n_threads, simd_level, row_repeats=None)\n\n"
        "Exact streaming log-sum-exp partials of every query over all training points, written\n"
        "into the preallocated float64/int64 outputs. Inputs are not converted or copied.\n"
        "row_repeats (N,) uint8, optional: row j equals row j - 1 (runs share exact distances).",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("x_half_sqnorm").noconvert(),
        py::arg("log_w").noconvert(), py::arg("center").noconvert(), py::arg("sigma").noconvert(),
        py::arg("m").noconvert(), py::arg("z").noconvert(), py::arg("v").noconvert(), py::arg("q").noconvert(),
        py::arg("z2").noconvert(), py::arg("top1").noconvert(), py::arg("n_exact").noconvert(), py::arg("x_radius"),
        py::arg("fast_tol"), py::arg("log_cut"), py::arg("n_threads"), py::arg("simd_level"),
        py::arg("row_repeats").noconvert() = py::none());
}

template <class T>
void def_third_moments(py::module_& m, const char* name) {
  m.def(name, &bind_third_moments<T>,
        "third_moments_dense_{f32,f64}(y, x, x_half_sqnorm, log_w, center, sigma, known_max, moment_center,\n"
        "    t, g, z, x_radius, fast_tol, log_cut, n_threads, simd_level, row_repeats=None)\n\n"
        "Second pass of the dense reduction with the max logit known: with w = exp(l - known_max) and\n"
        "g = ||x - c||^2 (c = moment_center[i]), writes t = sum w g (x - c), g = sum w g, z = sum w.",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("x_half_sqnorm").noconvert(),
        py::arg("log_w").noconvert(), py::arg("center").noconvert(), py::arg("sigma").noconvert(),
        py::arg("known_max").noconvert(), py::arg("moment_center").noconvert(), py::arg("t").noconvert(),
        py::arg("g").noconvert(), py::arg("z").noconvert(), py::arg("x_radius"), py::arg("fast_tol"),
        py::arg("log_cut"), py::arg("n_threads"), py::arg("simd_level"), py::arg("row_repeats").noconvert() = py::none());
}

const std::int64_t* checked_index(const py::array_t<std::int64_t>& a, const char* name, index_t n) {
  NNSCORE_CHECK(a.ndim() == 1 && a.shape(0) == n, name << ": expected shape (" << n << ",)");
  NNSCORE_CHECK((a.flags() & py::array::c_style) != 0, name << ": must be C-contiguous");
  return a.data();
}

// Runs of identical rows (RowRuns) as the kernels trust them, checked once (O(runs), GIL held):
// non-empty, ascending, disjoint, within the N rows and, given cell offsets, each within one cell.
RowRuns checked_runs(const std::optional<py::array_t<std::int64_t>>& run_start,
                     const std::optional<py::array_t<std::int64_t>>& run_length, index_t N,
                     const std::int64_t* cell_offsets = nullptr, index_t n_cells = 0) {
  NNSCORE_CHECK(run_start.has_value() == run_length.has_value(), "run_start, run_length: give both or neither");
  RowRuns runs{nullptr, nullptr, 0};
  if (!run_start) return runs;
  NNSCORE_CHECK(run_start->ndim() == 1, "run_start: expected a 1-d array");
  runs.n = run_start->shape(0);
  runs.start = checked_index(*run_start, "run_start", runs.n);
  runs.length = checked_index(*run_length, "run_length", runs.n);
  for (index_t r = 0; r < runs.n; ++r) {
    const std::int64_t a = runs.start[r], b = a + runs.length[r];
    NNSCORE_CHECK(a >= 0 && b > a && b <= N && (r == 0 || a >= runs.start[r - 1] + runs.length[r - 1]),
                  "run_start, run_length: runs must be non-empty, ascending, disjoint and within x");
    if (cell_offsets) {
      const std::int64_t c = std::upper_bound(cell_offsets, cell_offsets + n_cells + 1, a) - cell_offsets - 1;
      NNSCORE_CHECK(b <= cell_offsets[c + 1], "run_start, run_length: run " << r << " crosses a cell boundary");
    }
  }
  return runs;
}

// The inputs SegmentsProblem and KeyScanProblem share: queries, rows, prior log weights, noise.
template <class T, class Problem>
void gathered_inputs(Problem& P, const py::array_t<T>& y, const py::array_t<T>& x,
                     const std::optional<py::array_t<double>>& log_w, const py::array_t<double>& sigma) {
  NNSCORE_CHECK(y.ndim() == 2 && x.ndim() == 2, "y and x must be 2-d");
  P.M = y.shape(0);
  P.N = x.shape(0);
  P.d = x.shape(1);
  P.ldy = checked_row_stride(y, "y", P.M, P.d);
  P.ldx = checked_row_stride(x, "x", P.N, P.d);
  P.y = y.data();
  P.x = x.data();
  P.log_w = log_w ? checked_vec<T>(*log_w, "log_w", P.N) : nullptr;
  P.sigma = checked_vec<T>(sigma, "sigma", P.M);
}

template <class T>
void bind_segments(py::array_t<T> y, py::array_t<T> x, std::optional<py::array_t<double>> log_w, py::array_t<double> sigma,
                   py::array_t<std::int64_t> offsets, py::array_t<std::int64_t> seg_start,
                   py::array_t<std::int64_t> seg_len, py::array_t<double> m, py::array_t<double> z, py::array_t<double> v,
                   py::array_t<double> q, py::array_t<double> z2, py::array_t<std::int64_t> top1, double log_cut,
                   int n_threads, int simd_level) {
  SegmentsProblem<T> P;
  gathered_inputs<T>(P, y, x, log_w, sigma);
  const index_t M = P.M, N = P.N, d = P.d;
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

template <class T>
void bind_key_scan(py::array_t<T> y, py::array_t<T> x, std::optional<py::array_t<double>> log_w, py::array_t<double> sigma,
                   py::array_t<std::int64_t> range_offsets, py::array_t<std::int64_t> range_lo,
                   py::array_t<std::int64_t> range_hi, py::array_t<double> range_top, py::array_t<double> row_keys,
                   py::array_t<double> query_keys, std::optional<py::array_t<double>> floor, double key_slack,
                   std::optional<py::array_t<std::int64_t>> run_start,
                   std::optional<py::array_t<std::int64_t>> run_length, std::optional<py::array_t<float>> row_sketch,
                   std::optional<py::array_t<double>> query_sketch, double sketch_slack, py::array_t<double> m,
                   py::array_t<double> z, py::array_t<double> v, py::array_t<double> q, py::array_t<double> z2,
                   py::array_t<std::int64_t> top1, py::array_t<std::int64_t> n_terms,
                   py::array_t<std::uint8_t> complete, double log_cut, std::int64_t max_terms,
                   std::int64_t max_visits, int n_threads, int simd_level) {
  KeyScanProblem<T> P;
  gathered_inputs<T>(P, y, x, log_w, sigma);
  const index_t M = P.M, N = P.N, d = P.d;
  P.range_offsets = checked_index(range_offsets, "range_offsets", M + 1);
  const index_t R = range_lo.ndim() == 1 ? range_lo.shape(0) : -1;
  P.range_lo = checked_index(range_lo, "range_lo", R);
  P.range_hi = checked_index(range_hi, "range_hi", R);
  P.range_top = checked_vec<T>(range_top, "range_top", R);
  // The kernel trusts these: check them once here (O(M + R), GIL held).
  NNSCORE_CHECK(P.range_offsets[0] == 0 && P.range_offsets[M] == R,
                "range_offsets: must start at 0 and end at len(range_lo)");
  for (index_t i = 0; i < M; ++i)
    NNSCORE_CHECK(P.range_offsets[i] <= P.range_offsets[i + 1], "range_offsets: must be non-decreasing");
  for (index_t r = 0; r < R; ++r)
    NNSCORE_CHECK(P.range_lo[r] >= 0 && P.range_lo[r] <= P.range_hi[r] && P.range_hi[r] <= N,
                  "range_lo, range_hi: range " << r << " has rows [" << P.range_lo[r] << ", " << P.range_hi[r]
                                               << ") outside [0, " << N << "]");
  // The key order within each range is trusted (CellSortedData.keyed sorts it): an O(range)
  // check per call would cost as much as the scan.
  P.row_keys = checked_vec<T>(row_keys, "row_keys", N);
  P.query_keys = checked_vec<T>(query_keys, "query_keys", M);
  P.floor = floor ? checked_vec<T>(*floor, "floor", M) : nullptr;
  for (index_t i = 0; P.floor && i < M; ++i) NNSCORE_CHECK(!std::isnan(P.floor[i]), "floor: must not be NaN");
  NNSCORE_CHECK(key_slack >= 0.0 && std::isfinite(key_slack), "key_slack: must be finite and >= 0");
  P.slack = key_slack;
  const RowRuns runs = checked_runs(run_start, run_length, N);
  P.run_start = runs.start;
  P.run_length = runs.length;
  P.n_runs = runs.n;
  NNSCORE_CHECK(row_sketch.has_value() == query_sketch.has_value(), "row_sketch, query_sketch: give both or neither");
  if (row_sketch) {
    auto shaped = [](const auto& a, index_t n) {
      return a.ndim() == 2 && a.shape(0) == n && a.shape(1) == kSketchAxes && (a.flags() & py::array::c_style);
    };
    NNSCORE_CHECK(shaped(*row_sketch, N), "row_sketch: expected a C-contiguous (" << N << ", " << kSketchAxes << ") array");
    NNSCORE_CHECK(shaped(*query_sketch, M),
                  "query_sketch: expected a C-contiguous (" << M << ", " << kSketchAxes << ") array");
    NNSCORE_CHECK(sketch_slack >= 0.0 && std::isfinite(sketch_slack), "sketch_slack: must be finite and >= 0");
    P.row_sketch = row_sketch->data();
    P.query_sketch = query_sketch->data();
    P.sketch_slack = sketch_slack;
  }
  NNSCORE_CHECK(std::isfinite(log_cut) && log_cut > 0.0, "log_cut: must be finite and > 0");
  NNSCORE_CHECK(max_terms >= 1 && max_visits >= max_terms, "max_terms, max_visits: need 1 <= max_terms <= max_visits");
  P.log_cut = log_cut;
  P.max_terms = max_terms;
  P.max_visits = max_visits;
  DenseOutput out{checked_out(m, "m", M),   checked_out(z, "z", M),       checked_out(v, "v", M, d),
                  checked_out(q, "q", M),   checked_out(z2, "z2", M),     checked_out(top1, "top1", M),
                  checked_out(n_terms, "n_terms", M)};
  std::uint8_t* done = checked_out(complete, "complete", M);
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  py::gil_scoped_release release;
  partials_key_scan<T>(P, out, done, n_threads, static_cast<SimdLevel>(simd_level));
}

template <class T>
void def_key_scan(py::module_& m, const char* name) {
  m.def(name, &bind_key_scan<T>,
        "partials_key_scan_{f32,f64}(y, x, log_w, sigma, range_offsets, range_lo, range_hi, range_top,\n"
        "    row_keys, query_keys, floor, key_slack, run_start, run_length, row_sketch, query_sketch,\n"
        "    sketch_slack, m, z, v, q, z2, top1, n_terms, complete, log_cut, max_terms, max_visits, n_threads,\n"
        "    simd_level)\n\n"
        "Outward key scans of query i over its ranges [range_lo[r], range_hi[r]) (ascending by row_keys),\n"
        "in float64 difference form, until every row left is provably below max(floor[i], max - log_cut)\n"
        "(complete[i] = 1) or max_terms terms are taken or max_visits rows visited (complete[i] = 0: the\n"
        "partial covers the rows taken); runs of identical rows are one term; rows whose sketch bound\n"
        "puts them below the floor are not read. range_top[r] >= max log_w of the range. See\n"
        "nnscore/segments.hpp.",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("log_w").noconvert(), py::arg("sigma").noconvert(),
        py::arg("range_offsets").noconvert(), py::arg("range_lo").noconvert(), py::arg("range_hi").noconvert(),
        py::arg("range_top").noconvert(), py::arg("row_keys").noconvert(), py::arg("query_keys").noconvert(),
        py::arg("floor").noconvert(), py::arg("key_slack"),
        py::arg("run_start").noconvert(), py::arg("run_length").noconvert(), py::arg("row_sketch").noconvert(),
        py::arg("query_sketch").noconvert(), py::arg("sketch_slack"), py::arg("m").noconvert(),
        py::arg("z").noconvert(), py::arg("v").noconvert(), py::arg("q").noconvert(), py::arg("z2").noconvert(),
        py::arg("top1").noconvert(), py::arg("n_terms").noconvert(), py::arg("complete").noconvert(),
        py::arg("log_cut"), py::arg("max_terms"), py::arg("max_visits"), py::arg("n_threads"), py::arg("simd_level"));
}

template <class T>
void bind_cells(py::array_t<T> y, py::array_t<T> x, py::array_t<double> x_half_sqnorm,
                std::optional<py::array_t<double>> log_w, py::array_t<double> sigma, py::array_t<std::uint8_t> probed,
                py::array_t<std::int64_t> cell_offsets, py::array_t<T> cell_centers, py::array_t<double> cell_radii,
                py::array_t<double> m, py::array_t<double> z, py::array_t<double> v, py::array_t<double> q,
                py::array_t<double> z2, py::array_t<std::int64_t> top1, py::array_t<std::int64_t> n_exact,
                double fast_tol, double log_cut, int n_threads, int simd_level,
                std::optional<py::array_t<std::uint8_t>> row_repeats,
                std::optional<py::array_t<double>> row_keys, std::optional<py::array_t<double>> query_keys,
                std::optional<py::array_t<double>> floor, std::optional<py::array_t<double>> cell_log_w_max,
                double key_slack, std::optional<py::array_t<std::int64_t>> run_start,
                std::optional<py::array_t<std::int64_t>> run_length, std::optional<py::array_t<double>> start_max) {
  DenseProblem<T> P =
      dense_problem<T>(y, x, x_half_sqnorm, log_w, nullptr, sigma, 0.0, fast_tol, log_cut, row_repeats);
  const index_t M = P.M, d = P.d;
  NNSCORE_CHECK(probed.ndim() == 2 && probed.shape(0) == M && (probed.flags() & py::array::c_style),
                "probed: expected a C-contiguous (" << M << ", n_cells) uint8 array");
  const index_t n_cells = probed.shape(1);
  NNSCORE_CHECK(n_cells >= 1, "probed: need at least one cell");
  const std::int64_t* offs = checked_index(cell_offsets, "cell_offsets", n_cells + 1);
  // The kernel trusts these: check them once here (O(n_cells), GIL held).
  NNSCORE_CHECK(offs[0] == 0 && offs[n_cells] == P.N, "cell_offsets: must start at 0 and end at len(x)");
  for (index_t c = 0; c < n_cells; ++c) NNSCORE_CHECK(offs[c] <= offs[c + 1], "cell_offsets: must be non-decreasing");
  NNSCORE_CHECK(cell_centers.ndim() == 2 && cell_centers.shape(0) == n_cells && cell_centers.shape(1) == d &&
                    (cell_centers.flags() & py::array::c_style),
                "cell_centers: expected a C-contiguous (" << n_cells << ", " << d << ") array");
  const double* radii = checked_vec<T>(cell_radii, "cell_radii", n_cells);
  DenseOutput out{checked_out(m, "m", M), checked_out(z, "z", M),   checked_out(v, "v", M, d),
                  checked_out(q, "q", M), checked_out(z2, "z2", M), checked_out(top1, "top1", M),
                  checked_out(n_exact, "n_exact", M)};
  NNSCORE_CHECK(simd_level >= 0 && simd_level <= 2, "simd_level: expected 0, 1 or 2");
  const int n_keys = row_keys.has_value() + query_keys.has_value() + floor.has_value() + cell_log_w_max.has_value();
  NNSCORE_CHECK(n_keys == 0 || n_keys == 4, "row_keys, query_keys, floor, cell_log_w_max: give all four or none");
  KeyWindows windows{};
  if (n_keys) {
    windows.row_keys = checked_vec<T>(*row_keys, "row_keys", P.N);
    windows.query_keys = checked_vec<T>(*query_keys, "query_keys", M);
    windows.floor = checked_vec<T>(*floor, "floor", M);
    windows.cell_log_w_max = checked_vec<T>(*cell_log_w_max, "cell_log_w_max", n_cells);
    windows.slack = key_slack;
    // The order of row_keys within the cells is trusted (CellSortedData.keyed sorts them; an
    // O(N) check per call would cost as much as a small-sigma scan).
    NNSCORE_CHECK(key_slack >= 0.0 && std::isfinite(key_slack), "key_slack: must be finite and >= 0");
  }
  const RowRuns runs = checked_runs(run_start, run_length, P.N, offs, n_cells);
  if (start_max) {
    P.start_max = checked_vec<T>(*start_max, "start_max", M);
    for (index_t i = 0; i < M; ++i)
      NNSCORE_CHECK(!std::isnan(P.start_max[i]) && P.start_max[i] != std::numeric_limits<double>::infinity(),
                    "start_max: must not be NaN or +inf");
  }
  py::gil_scoped_release release;
  partials_cells<T>(P, probed.data(), n_cells, offs, cell_centers.data(), radii, out, n_threads,
                    static_cast<SimdLevel>(simd_level), n_keys ? &windows : nullptr, runs.n ? &runs : nullptr);
}

template <class T>
void def_cells(py::module_& m, const char* name) {
  m.def(name, &bind_cells<T>,
        "partials_cells_{f32,f64}(y, x, x_half_sqnorm, log_w, sigma, probed, cell_offsets, cell_centers,\n"
        "    cell_radii, m, z, v, q, z2, top1, n_exact, fast_tol, log_cut, n_threads, simd_level,\n"
        "    row_repeats=None, row_keys=None, query_keys=None, floor=None, cell_log_w_max=None, key_slack=0,\n"
        "    run_start=None, run_length=None, start_max=None)\n\n"
        "Partials of query i over the rows of the cells c with probed[i, c] != 0 of a cell-sorted x\n"
        "(cell c: rows [cell_offsets[c], cell_offsets[c+1]), products about cell_centers[c], radius\n"
        "cell_radii[c]; x_half_sqnorm about each row's cell centre), through the dense tile kernel one\n"
        "cell at a time; fast_tol=0 keeps every term within log_cut exact (float64). top1 indexes x.\n"
        "With the four key arrays (rows ascending by key within each cell): query i reduces only\n"
        "the rows of cell c with |key - query_keys[i]| <= sqrt(2 sigma^2 (cell_log_w_max[c] -\n"
        "floor[i])) (1 + 1e-12) + key_slack (nnscore/cells.hpp). run_start/run_length: runs of\n"
        "identical rows with equal log_w (ascending, within cells); a long one is one term.\n"
        "start_max (M,): query i's partial starts at that max with no mass (a lower bound of the max\n"
        "of the partial the result is merged into; -inf: none): terms below start_max - log_cut are\n"
        "skipped, and the weights are relative to it.",
        py::arg("y").noconvert(), py::arg("x").noconvert(), py::arg("x_half_sqnorm").noconvert(),
        py::arg("log_w").noconvert(), py::arg("sigma").noconvert(), py::arg("probed").noconvert(),
        py::arg("cell_offsets").noconvert(), py::arg("cell_centers").noconvert(), py::arg("cell_radii").noconvert(),
        py::arg("m").noconvert(), py::arg("z").noconvert(), py::arg("v").noconvert(), py::arg("q").noconvert(),
        py::arg("z2").noconvert(), py::arg("top1").noconvert(), py::arg("n_exact").noconvert(), py::arg("fast_tol"),
        py::arg("log_cut"), py::arg("n_threads"), py::arg("simd_level"), py::arg("row_repeats").noconvert() = py::none(),
        py::arg("row_keys").noconvert() = py::none(), py::arg("query_keys").noconvert() = py::none(),
        py::arg("floor").noconvert() = py::none(), py::arg("cell_log_w_max").noconvert() = py::none(),
        py::arg("key_slack") = 0.0, py::arg("run_start").noconvert() = py::none(),
        py::arg("run_length").noconvert() = py::none(), py::arg("start_max").noconvert() = py::none());
}

void bind_ivf_bounds(py::array_t<double> G, py::array_t<double> qn, py::array_t<double> cn, py::array_t<double> radii,
                     py::array_t<double> slack, std::optional<py::array_t<float>> inv_gap, int n_refs, double g,
                     double deflate, py::array_t<double> out, int n_threads,
                     std::optional<py::array_t<std::int64_t>> nearest) {
  NNSCORE_CHECK(G.ndim() == 2 && (G.flags() & py::array::c_style), "G: expected a C-contiguous 2-d array");
  IvfBoundsProblem P;
  P.B = G.shape(0);
  P.nlist = G.shape(1);
  P.G = G.data();
  P.qn = checked_vec<double>(qn, "qn", P.B);
  P.cn = checked_vec<double>(cn, "cn", P.nlist);
  P.radii = checked_vec<double>(radii, "radii", P.nlist);
  P.slack = checked_vec<double>(slack, "slack", P.nlist);
  if (inv_gap) {
    NNSCORE_CHECK(inv_gap->ndim() == 2 && inv_gap->shape(0) == P.nlist && inv_gap->shape(1) == P.nlist &&
                      (inv_gap->flags() & py::array::c_style),
                  "inv_gap: expected a C-contiguous (nlist, nlist) float32 array");
    P.inv_gap = inv_gap->data();
  }
  NNSCORE_CHECK(n_refs >= 0, "n_refs: must be >= 0");
  P.n_refs = n_refs;
  P.g = g;
  P.deflate = deflate;
  double* o = checked_out(out, "out", P.B, P.nlist);
  if (nearest) {
    NNSCORE_CHECK(nearest->ndim() == 1 && nearest->shape(0) == P.B && (nearest->flags() & py::array::c_style) &&
                      nearest->writeable(),
                  "nearest: expected a writeable C-contiguous (B,) int64 array");
    P.nearest = nearest->mutable_data();
  }
  py::gil_scoped_release release;
  ivf_cell_bounds(P, o, n_threads);
}

struct CellMatrix {
  index_t B, nlist;
};

CellMatrix checked_cells(const py::array_t<double>& low2) {
  NNSCORE_CHECK(low2.ndim() == 2 && (low2.flags() & py::array::c_style), "low2: expected a C-contiguous 2-d array");
  return {low2.shape(0), low2.shape(1)};
}

void bind_select_cells(py::array_t<double> low2, py::array_t<double> log_mass, py::array_t<double> sigma,
                       py::array_t<double> thr, py::array_t<std::int64_t> cell_rows, double row_budget,
                       py::array_t<std::uint8_t> probed, py::array_t<std::uint8_t> over_budget, int n_threads) {
  const CellMatrix s = checked_cells(low2);
  const double* lm = checked_vec<double>(log_mass, "log_mass", s.nlist);
  const double* sg = checked_vec<double>(sigma, "sigma", s.B);
  const double* th = checked_vec<double>(thr, "thr", s.B);
  const std::int64_t* rows = checked_index(cell_rows, "cell_rows", s.nlist);
  std::uint8_t* pr = checked_out(probed, "probed", s.B, s.nlist);
  std::uint8_t* ob = checked_out(over_budget, "over_budget", s.B);
  py::gil_scoped_release release;
  ivf_select_cells(low2.data(), lm, sg, th, rows, row_budget, s.B, s.nlist, pr, ob, n_threads);
}

void bind_tail_sums(py::array_t<double> low2, py::array_t<double> log_mass, py::array_t<double> sigma,
                    py::array_t<std::uint8_t> probed, py::array_t<double> log_t, py::array_t<double> log_g,
                    int n_threads) {
  const CellMatrix s = checked_cells(low2);
  const double* lm = checked_vec<double>(log_mass, "log_mass", s.nlist);
  const double* sg = checked_vec<double>(sigma, "sigma", s.B);
  NNSCORE_CHECK(probed.ndim() == 2 && probed.shape(0) == s.B && probed.shape(1) == s.nlist &&
                    (probed.flags() & py::array::c_style),
                "probed: expected a C-contiguous (B, nlist) uint8 array");
  double* lt = checked_out(log_t, "log_t", s.B);
  double* lg = checked_out(log_g, "log_g", s.B);
  py::gil_scoped_release release;
  ivf_tail_sums(low2.data(), lm, sg, probed.data(), s.B, s.nlist, lt, lg, n_threads);
}

void bind_marked_rows(py::array_t<std::uint8_t> marked, py::array_t<std::int64_t> cell_rows,
                      py::array_t<std::int64_t> rows, int n_threads) {
  NNSCORE_CHECK(marked.ndim() == 2 && (marked.flags() & py::array::c_style),
                "marked: expected a C-contiguous (B, nlist) uint8 array");
  const index_t B = marked.shape(0), nlist = marked.shape(1);
  const std::int64_t* cr = checked_index(cell_rows, "cell_rows", nlist);
  std::int64_t* out = checked_out(rows, "rows", B);
  py::gil_scoped_release release;
  ivf_marked_rows(marked.data(), cr, B, nlist, out, n_threads);
}

}  // namespace

void register_kernels(py::module_& m) {
  def_dense<float>(m, "partials_dense_f32");
  def_dense<double>(m, "partials_dense_f64");
  def_segments<float>(m, "partials_segments_f32");
  def_segments<double>(m, "partials_segments_f64");
  def_key_scan<float>(m, "partials_key_scan_f32");
  def_key_scan<double>(m, "partials_key_scan_f64");
  def_cells<float>(m, "partials_cells_f32");
  def_cells<double>(m, "partials_cells_f64");
  def_third_moments<float>(m, "third_moments_dense_f32");
  def_third_moments<double>(m, "third_moments_dense_f64");
  m.def("ivf_cell_bounds", &bind_ivf_bounds,
        "ivf_cell_bounds(G, qn, cn, radii, slack, inv_gap, n_refs, g, deflate, out, n_threads, nearest=None)\n\n"
        "Certified squared distance lower bounds from each query to each IVF cell (ball and\n"
        "bisector bounds; see nnscore/ivf_bounds.hpp), written into out (B, nlist); nearest (B,)\n"
        "int64, if given, receives each query's nearest centroid.",
        py::arg("G").noconvert(), py::arg("qn").noconvert(), py::arg("cn").noconvert(), py::arg("radii").noconvert(),
        py::arg("slack").noconvert(), py::arg("inv_gap").noconvert(), py::arg("n_refs"), py::arg("g"), py::arg("deflate"),
        py::arg("out").noconvert(), py::arg("n_threads"), py::arg("nearest").noconvert() = py::none());
  m.def("ivf_select_cells", &bind_select_cells,
        "ivf_select_cells(low2, log_mass, sigma, thr, cell_rows, row_budget, probed, over_budget, n_threads):\n"
        "marks the cells to scan so that the unprobed tail sum of Pi_c exp(-low2 / 2 sigma^2) stays below\n"
        "exp(thr); flags queries whose unavoidable cells exceed row_budget rows.",
        py::arg("low2").noconvert(), py::arg("log_mass").noconvert(), py::arg("sigma").noconvert(),
        py::arg("thr").noconvert(), py::arg("cell_rows").noconvert(), py::arg("row_budget"),
        py::arg("probed").noconvert(), py::arg("over_budget").noconvert(), py::arg("n_threads"));
  m.def("ivf_tail_sums", &bind_tail_sums,
        "ivf_tail_sums(low2, log_mass, sigma, probed, log_t, log_g, n_threads): log-sums over the unprobed\n"
        "cells of Pi_c exp(-low2 / 2 sigma^2) and Pi_c g(sqrt(low2)), rounded up.",
        py::arg("low2").noconvert(), py::arg("log_mass").noconvert(), py::arg("sigma").noconvert(),
        py::arg("probed").noconvert(), py::arg("log_t").noconvert(), py::arg("log_g").noconvert(),
        py::arg("n_threads"));
  m.def("ivf_marked_rows", &bind_marked_rows,
        "ivf_marked_rows(marked, cell_rows, rows, n_threads): rows[b] = sum of cell_rows[c] over the cells\n"
        "marked (nonzero) in row b of marked (B, nlist).",
        py::arg("marked").noconvert(), py::arg("cell_rows").noconvert(), py::arg("rows").noconvert(),
        py::arg("n_threads"));
}

}  // namespace nnscore
