// Dense kernels for the generic SIMD level (flags set per file in CMakeLists.txt).
#define NNSCORE_VBYTES 16
#define NNSCORE_ISA_NS generic
#include "dense_kernel.inc"
#include "segments_kernel.inc"
