// See nnscore/ivf_bounds.hpp.  Plain loops over contiguous rows (auto-vectorised); one query
// per work item on the thread pool.
#include "nnscore/ivf_bounds.hpp"

#include <algorithm>
#include <utility>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "nnscore/thread_pool.hpp"

namespace nnscore {

namespace {

// The elementwise passes of one query's bounds, in their own functions so that the compiler sees
// unaliased local pointers and vectorises them; on x86-64 Linux with GCC and glibc (ifunc) each is
// also cloned for AVX2 and AVX-512 and picked at load time (sqrt and the min/max are the cost).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define NNSCORE_ELEMENTWISE_CLONES __attribute__((target_clones("default", "avx2", "arch=skylake-avx512")))
#else
#define NNSCORE_ELEMENTWISE_CLONES
#endif

// lo/hi bracket ||y - mu_c||^2; L the ball bound sqrt(lo) deflated minus R_c, clamped at 0.
NNSCORE_ELEMENTWISE_CLONES
void ball_bounds(const double* __restrict G, double qn, const double* __restrict cn, const double* __restrict radii,
                 double g, double deflate, index_t nlist, double* __restrict lo, double* __restrict hi,
                 double* __restrict L) {
  for (index_t c = 0; c < nlist; ++c) {
    const double d2 = qn + cn[c] - 2.0 * G[c];
    const double err = g * (qn + cn[c]);
    const double l = d2 - err > 0.0 ? d2 - err : 0.0;
    lo[c] = l;
    hi[c] = d2 + err;
    const double b = std::sqrt(l) * deflate - radii[c];
    L[c] = b > 0.0 ? b : 0.0;
  }
}

// L = max(L, (lo - h0 - slack) inv) against one reference centroid (inv = 1 / (2 nu_rc), 0: none).
NNSCORE_ELEMENTWISE_CLONES
void bisector_bounds(const double* __restrict lo, double h0, const double* __restrict slack,
                     const float* __restrict inv, index_t nlist, double* __restrict L) {
  for (index_t c = 0; c < nlist; ++c) {
    const double b = (lo[c] - h0 - slack[c]) * static_cast<double>(inv[c]);
    L[c] = b > L[c] ? b : L[c];
  }
}

NNSCORE_ELEMENTWISE_CLONES
void deflated_squares(double deflate, index_t nlist, double* __restrict L) {
  for (index_t c = 0; c < nlist; ++c) {
    const double l = L[c] * deflate;
    L[c] = l * l * deflate;
  }
}

}  // namespace

void ivf_cell_bounds(const IvfBoundsProblem& P, double* out, int n_threads) {
  NNSCORE_CHECK(P.nlist >= 1 && P.B >= 0, "ivf_cell_bounds: need nlist >= 1");
  const index_t nlist = P.nlist;
  const int n_refs = static_cast<int>(std::min<index_t>(P.n_refs, nlist));
  std::vector<std::vector<double>> scratch(static_cast<std::size_t>(std::max(1, n_threads)),
                                           std::vector<double>(2 * nlist));
  parallel_for(P.B, n_threads, [&](index_t b, int w) {
    double* lo = scratch[w].data();
    double* hi = lo + nlist;
    double* L = out + b * nlist;
    ball_bounds(P.G + b * nlist, P.qn[b], P.cn, P.radii, P.g, P.deflate, nlist, lo, hi, L);
    if (P.nearest != nullptr) P.nearest[b] = std::min_element(hi, hi + nlist) - hi;
    if (P.inv_gap != nullptr && n_refs > 0) {
      // the n_refs centroids nearest to the query (by the upper bracket), a small insertion list
      std::vector<index_t> refs;
      refs.reserve(n_refs + 1);
      for (index_t c = 0; c < nlist; ++c) {
        if (static_cast<int>(refs.size()) == n_refs && hi[c] >= hi[refs.back()]) continue;
        auto pos = std::upper_bound(refs.begin(), refs.end(), c, [&](index_t a, index_t r) { return hi[a] < hi[r]; });
        refs.insert(pos, c);
        if (static_cast<int>(refs.size()) > n_refs) refs.pop_back();
      }
      for (index_t r : refs) bisector_bounds(lo, hi[r], P.slack, P.inv_gap + r * nlist, nlist, L);
    }
    deflated_squares(P.deflate, nlist, L);
  });
}

}  // namespace nnscore

namespace nnscore {

// Tail terms below e^-kFaint of the reference (the budget, or the largest term) are not
// exponentiated: each is bounded by e^-kFaint, so their count times that bounds their sum from
// above (at most nlist e^-40 ~ 1e-14 relative for nlist <= 10^4, far below what matters).
constexpr double kFaint = 40.0;

namespace {

// t[c] = log_mass[c] - l2[c] inv (-inf for empty cells); returns how many unprobed, non-empty
// cells have t[c] < faint.  Vectorised (and cloned per ISA): every query scans every cell.
NNSCORE_ELEMENTWISE_CLONES
index_t tail_logits(const double* __restrict l2, const double* __restrict log_mass, double inv,
                    const std::uint8_t* __restrict probed, double faint, index_t nlist, double* __restrict t) {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  index_t n = 0;
  for (index_t c = 0; c < nlist; ++c) {
    const double v = log_mass[c] - l2[c] * inv;
    t[c] = v;
    n += (probed[c] == 0) & (v < faint) & (v != ninf);
  }
  return n;
}

}  // namespace

void ivf_select_cells(const double* low2, const double* log_mass, const double* sigma, const double* log_budget,
                      const std::int64_t* cell_rows, double row_budget, index_t B, index_t nlist,
                      std::uint8_t* probed, std::uint8_t* over_budget, int n_threads) {
  const std::size_t n_workers = static_cast<std::size_t>(std::max(1, n_threads));
  std::vector<std::vector<std::pair<double, index_t>>> scratch(n_workers);
  std::vector<std::vector<double>> logits(n_workers, std::vector<double>(nlist));
  parallel_for(B, n_threads, [&](index_t b, int w) {
    const double inv = 0.5 / (sigma[b] * sigma[b]), lb = log_budget[b];
    std::uint8_t* pr = probed + b * nlist;
    // Cells below budget / nlist stay out whatever happens (their total is below the budget);
    // the others are left out smallest first while the running total fits, the rest probed.
    // Faint cells (below e^-kFaint of the budget, so below the cut too: nlist < e^kFaint) are
    // counted, not exponentiated.
    const double cut = lb - std::log(static_cast<double>(nlist)), faint = lb - kFaint;
    double* t = logits[w].data();
    const index_t n_faint = tail_logits(low2 + b * nlist, log_mass, inv, pr, faint, nlist, t);
    auto& cand = scratch[w];
    cand.clear();
    double total = static_cast<double>(n_faint) * std::exp(-kFaint);  // relative to the budget; bounds the faint
    double must_rows = 0;  // rows of probed cells and of cells that alone exceed the budget
    for (index_t c = 0; c < nlist; ++c) {
      if (pr[c]) {
        must_rows += static_cast<double>(cell_rows[c]);
        continue;
      }
      const double tc = t[c];
      if (!(tc >= faint)) continue;  // faint (counted above) or empty (-inf)
      if (tc <= cut) {
        total += std::exp(tc - lb);
      } else {
        cand.emplace_back(tc, c);
        if (tc > lb) must_rows += static_cast<double>(cell_rows[c]);
      }
    }
    over_budget[b] = must_rows > row_budget;
    if (over_budget[b]) return;  // hopeless within the budget: leave it to the caller's fallback
    std::sort(cand.begin(), cand.end());
    std::size_t i = 0;
    for (; i < cand.size(); ++i) {
      const double add = std::exp(cand[i].first - lb);
      if (total + add > 1.0) break;
      total += add;
    }
    for (; i < cand.size(); ++i) pr[cand[i].second] = 1;
  });
}

void ivf_tail_sums(const double* low2, const double* log_mass, const double* sigma, const std::uint8_t* probed,
                   index_t B, index_t nlist, double* log_t, double* log_g, int n_threads) {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> scratch(static_cast<std::size_t>(std::max(1, n_threads)),
                                           std::vector<double>(2 * nlist));
  parallel_for(B, n_threads, [&](index_t b, int w) {
    double* t = scratch[w].data();
    double* g = t + nlist;
    const double s = sigma[b], inv = 0.5 / (s * s), log_near = std::log(s) - 0.5;
    const double* l2 = low2 + b * nlist;
    const std::uint8_t* pr = probed + b * nlist;
    // Pass 1 (cheap, every cell): tail logits t_c and their max.
    double mt = ninf, l2max = 0;
    for (index_t c = 0; c < nlist; ++c) {
      const bool skip = pr[c] || !(l2[c] < inf);
      t[c] = skip ? ninf : log_mass[c] - l2[c] * inv;
      mt = std::max(mt, t[c]);
      l2max = std::max(l2max, skip ? 0.0 : l2[c]);
    }
    if (mt == ninf) {
      log_t[b] = ninf;
      log_g[b] = ninf;
      return;
    }
    // Cells with t_c < mt - cut have exp(t_c - mt) = 0 and, since g_c <= t_c + log r_c while
    // the max g is >= mt + log(s) - 1/2, exp(g_c - max g) = 0 too: they are skipped exactly.
    const double cut = 746.0 + std::max(0.0, 0.5 * std::log(l2max) - std::log(s)) + 1.0;
    index_t n = 0;
    double mg = ninf;
    for (index_t c = 0; c < nlist; ++c) {
      if (!(t[c] >= mt - cut)) continue;
      const double r = std::sqrt(l2[c]);
      t[n] = t[c];
      g[n] = log_mass[c] + (r >= s ? std::log(r) - l2[c] * inv : log_near);
      mg = std::max(mg, g[n]);
      ++n;
    }
    // Terms below e^-kFaint of their max are counted (an upper bound of their sum), not summed.
    double st = 0, sg = 0;
    index_t faint_t = 0, faint_g = 0;
    for (index_t i = 0; i < n; ++i) {
      const double et = t[i] - mt, eg = g[i] - mg;
      if (et < -kFaint)
        ++faint_t;
      else
        st += std::exp(et);
      if (eg < -kFaint)
        ++faint_g;
      else
        sg += std::exp(eg);
    }
    st += static_cast<double>(faint_t) * std::exp(-kFaint);
    sg += static_cast<double>(faint_g) * std::exp(-kFaint);
    // sums of positive terms: relative rounding <= nlist u, covered by a (1 + 2 nlist u) factor
    const double up = std::log1p(2.0 * static_cast<double>(nlist) * 1.1102230246251565e-16);
    log_t[b] = mt + std::log(st) + up;
    log_g[b] = mg + std::log(sg) + up;
  });
}

void ivf_marked_rows(const std::uint8_t* marked, const std::int64_t* cell_rows, index_t B, index_t nlist,
                     std::int64_t* rows, int n_threads) {
  parallel_for(B, n_threads, [&](index_t b, int) {
    const std::uint8_t* mk = marked + b * nlist;
    std::int64_t total = 0;
    for_marked(mk, nlist, [&](index_t c) { total += cell_rows[c]; });
    rows[b] = total;
  });
}

}  // namespace nnscore
