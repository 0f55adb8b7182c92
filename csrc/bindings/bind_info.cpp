// build_info(): facts fixed at compile time plus the CPU detection, for `nnscore info`.
#include <pybind11/pybind11.h>

#include <thread>

#include "nnscore/simd.hpp"

namespace py = pybind11;

#define NNSCORE_STR2(x) #x
#define NNSCORE_STR(x) NNSCORE_STR2(x)

namespace nnscore {

void register_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict info;
    info["version"] = NNSCORE_STR(NNSCORE_VERSION);
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
    py::list compiled;
    for (int l = 0; l <= 2; ++l)
      if (simd_level_compiled(static_cast<SimdLevel>(l))) compiled.append(simd_level_name(static_cast<SimdLevel>(l)));
    info["simd_compiled"] = compiled;
    info["simd_detected"] = simd_level_name(detected_simd_level());
    info["simd_detected_index"] = static_cast<int>(detected_simd_level());
    info["openmp"] = false;
    info["cuda"] = false;
    info["wide_tile_kib"] = wide_tile_bytes() / 1024;
    info["hardware_threads"] = std::thread::hardware_concurrency();
    info["build_type"] = NNSCORE_STR(NNSCORE_BUILD_TYPE);
    return info;
  }, "Build facts: version, compiler, SIMD levels compiled and detected, OpenMP, CUDA.");
}

}  // namespace nnscore
