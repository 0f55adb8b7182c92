// Online log-sum-exp partials: the only C++ copy of the merge algebra (Python twin:
// nnscore/partials.py).  Per query: m = max logit, z = sum w, v = sum w (x - y) (d values),
// q = sum w ||x - y||^2, z2 = sum w^2, top1 = argmax, with w = exp(l - m).
#pragma once
#include <cmath>
#include <limits>

#include "nnscore/common.hpp"

namespace nnscore {

/// Views of one query's partial inside structure-of-arrays outputs.
struct PartialRef {
  double* m;
  double* z;
  double* v;  // d values
  double* q;
  double* z2;
  std::int64_t* top1;
};

inline void partial_reset(PartialRef p, index_t d) {
  *p.m = -std::numeric_limits<double>::infinity();
  *p.z = 0.0;
  *p.q = 0.0;
  *p.z2 = 0.0;
  *p.top1 = -1;
  for (index_t k = 0; k < d; ++k) p.v[k] = 0.0;
}

/// Rescale a partial to a new (larger or equal) max; an empty partial stays empty.
inline void partial_rescale(PartialRef p, index_t d, double m_new) {
  if (*p.m == m_new) return;
  const double s = (*p.m == -std::numeric_limits<double>::infinity()) ? 0.0 : std::exp(*p.m - m_new);
  *p.z *= s;
  *p.q *= s;
  *p.z2 *= s * s;
  for (index_t k = 0; k < d; ++k) p.v[k] *= s;
  *p.m = m_new;
}

/// acc <- merge(acc, other).  On exact ties of the max, acc's top1 wins (index order).
inline void partial_merge_into(PartialRef acc, const PartialRef other, index_t d) {
  if (*other.m == -std::numeric_limits<double>::infinity()) return;
  if (*other.m > *acc.m) {
    partial_rescale(acc, d, *other.m);
    *acc.top1 = *other.top1;
  }
  const double s = std::exp(*other.m - *acc.m);
  *acc.z += s * *other.z;
  *acc.q += s * *other.q;
  *acc.z2 += s * s * *other.z2;
  for (index_t k = 0; k < d; ++k) acc.v[k] += s * other.v[k];
}

}  // namespace nnscore
