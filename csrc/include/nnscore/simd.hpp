// SIMD levels compiled into the core and detected on this CPU; the caller picks one per call.
#pragma once
#include <cstddef>

namespace nnscore {

enum class SimdLevel : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* simd_level_name(SimdLevel level);
/// Highest level this CPU and this build both support.
SimdLevel detected_simd_level();
/// Whether the build contains kernels for `level` (compile-time fact).
bool simd_level_compiled(SimdLevel level);
/// Bytes of a transposed training tile for queries whose weighted sums are formed (the dense
/// kernel's wide tiles), chosen once for this CPU (see dispatch.cpp).
std::size_t wide_tile_bytes();

}  // namespace nnscore
