// CPU feature detection, once; the Python layer decides which level to use per call
// (NNSCORE_SIMD_LEVEL may force a lower one there).
#include "nnscore/simd.hpp"

#include <algorithm>

#include <unistd.h>

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

std::size_t wide_tile_bytes() {
  // The tile (transposed copy plus the row-major rows the sums read) should stay in L2 where L3
  // is slow.  Measured, float32, N = 2e4, M = 1024, 2 threads: on the Intel Xeon VM (2 MiB L2)
  // tiles of 256-512 KiB ran d = 256 / 784 / 3072 at large sigma 1.1 / 2.0 / 1.4x faster than
  // 1.5 MiB ones; on the AMD EPYC VM 1.5 MiB tiles were 20-25% faster than 256 KiB at d = 3072.
  static const std::size_t bytes = [] {
    constexpr std::size_t KiB = 1024, lo = 256 * KiB, hi = 1536 * KiB;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_is("amd")) return hi;
#endif
    long l2 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (l2 <= 0) return lo;
    return std::clamp<std::size_t>(static_cast<std::size_t>(l2) / 5, lo, hi);
  }();
  return bytes;
}

}  // namespace nnscore
