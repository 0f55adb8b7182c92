// Dense kernels for the avx512 SIMD level (flags set per file in CMakeLists.txt).
#define NNSCORE_VBYTES 64
#define NNSCORE_ISA_NS avx512
#include "dense_kernel.inc"
#include "segments_kernel.inc"
