// Dense kernels for the avx2 SIMD level (flags set per file in CMakeLists.txt).
#define NNSCORE_VBYTES 32
#define NNSCORE_ISA_NS avx2
#include "dense_kernel.inc"
#include "segments_kernel.inc"
