// Shared basics of the nnscore C++ core: index type and error checks.
// The core is Python-free: pointer-and-size signatures only (bindings adapt).
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace nnscore {

using index_t = std::int64_t;  // int64 everywhere: N*d exceeds 2^31 at scale

#define NNSCORE_CHECK(cond, msg)                                      \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::ostringstream nnscore_oss_;                                \
      nnscore_oss_ << msg;                                            \
      throw std::invalid_argument(nnscore_oss_.str());                \
    }                                                                 \
  } while (0)

}  // namespace nnscore
