// CPU feature detection, once; the Python layer decides which level to use per call
// (NNSCORE_SIMD_LEVEL may force a lower one there).
#include "nnscore/simd.hpp"

namespace nnscore {

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::avx2: return "avx2";
    default: return "generic";
  }
}

bool simd_level_compiled(SimdLevel level) {
  switch (level) {
    case SimdLevel::generic: return true;
#ifdef NNSCORE_HAVE_AVX2
    case SimdLevel::avx2: return true;
#endif
#ifdef NNSCORE_HAVE_AVX512
    case SimdLevel::avx512: return true;
#endif
    default: return false;
  }
}

SimdLevel detected_simd_level() {
  static const SimdLevel level = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
#ifdef NNSCORE_HAVE_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma"))
      return SimdLevel::avx512;
#endif
#ifdef NNSCORE_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
#endif
#endif
    return SimdLevel::generic;
  }();
  return level;
}

}  // namespace nnscore
