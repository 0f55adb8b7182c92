// The _core extension module: registration only.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace nnscore {
void register_kernels(py::module_& m);
void register_info(py::module_& m);
}  // namespace nnscore

PYBIND11_MODULE(_core, m) {
  m.doc() = "nnscore compiled core: fused exact empirical-score kernels (CPU)";
  nnscore::register_kernels(m);
  nnscore::register_info(m);
}
