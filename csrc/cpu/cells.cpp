// Cell-batched reduction driver (see nnscore/cells.hpp).
#include "nnscore/cells.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nnscore/ivf_bounds.hpp"
#include "nnscore/online_softmax.hpp"
#include "nnscore/thread_pool.hpp"

namespace nnscore {
namespace {

// Structure-of-arrays partials for n queries (owned storage).
struct PartialBuffer {
  std::vector<double> m, z, v, q, z2;
  std::vector<std::int64_t> top1, n_exact;
  index_t d = 0;
  void resize(index_t n, index_t dim) {
    d = dim;
    m.resize(n);
    z.resize(n);
    q.resize(n);
    z2.resize(n);
    v.resize(static_cast<std::size_t>(n * dim));
    top1.resize(n);
    n_exact.resize(n);
  }
  DenseOutput view() { return DenseOutput{m.data(), z.data(), v.data(), q.data(), z2.data(), top1.data(), n_exact.data()}; }
};

PartialRef ref(const DenseOutput& o, index_t i, index_t d) {
  return PartialRef{o.m + i, o.z + i, o.v + i * d, o.q + i, o.z2 + i, o.top1 + i};
}

// Each (query, row, k): k identical rows as one exact term (float64 difference form), merged
// into the query's partial in order.
template <class T, class Terms>
void merge_run_terms(const DenseProblem<T>& P, const Terms& terms, const DenseOutput& out) {
  const index_t d = P.d;
  std::vector<double> v(d);
  double m, z, q, z2;
  std::int64_t top1;
  for (const auto& t : terms) {
    const T* x = P.x + t.row * P.ldx;
    const T* y = P.y + t.query * P.ldy;
    double d2 = 0;
    for (index_t k = 0; k < d; ++k) {
      v[k] = static_cast<double>(x[k]) - static_cast<double>(y[k]);
      d2 += v[k] * v[k];
    }
    const double s = P.sigma[t.query], k = static_cast<double>(t.k);
    m = (P.log_w ? P.log_w[t.row] : 0.0) - 0.5 * d2 / (s * s);
    if (m == -std::numeric_limits<double>::infinity()) continue;  // no prior mass
    z = z2 = k;
    q = k * d2;
    for (index_t j = 0; j < d; ++j) v[j] *= k;
    top1 = t.row;
    partial_merge_into(ref(out, t.query, d), PartialRef{&m, &z, v.data(), &q, &z2, &top1}, d);
    if (out.n_exact) out.n_exact[t.query] += t.k;
  }
}

}  // namespace

template <class T>
void partials_cells(const DenseProblem<T>& P, const std::uint8_t* probed, index_t n_cells,
                    const std::int64_t* cell_offsets, const T* cell_centers, const double* cell_radii,
                    const DenseOutput& out, int n_threads, SimdLevel level, const KeyWindows* windows,
                    const RowRuns* runs) {
  NNSCORE_CHECK(P.d >= 1 && P.N >= 1 && P.M >= 0 && n_cells >= 1, "partials_cells: need d >= 1, N >= 1, cells >= 1");
  NNSCORE_CHECK(cell_offsets[0] == 0 && cell_offsets[n_cells] == P.N, "partials_cells: cell_offsets must span [0, N]");
  NNSCORE_CHECK(simd_level_compiled(level), "partials_cells: SIMD level " << simd_level_name(level)
                                                                           << " is not compiled in");
  const index_t M = P.M, d = P.d;
  for (index_t i = 0; i < M; ++i) {
    partial_reset(ref(out, i, d), d);
    if (out.n_exact) out.n_exact[i] = 0;
  }
  if (M == 0) return;
  if (n_threads < 1) n_threads = 1;
  const DenseBlockFn<T> fn = dense_block_fn<T>(level);

  // (query, cell) pairs with their rows: the whole cell, or the window given for that pair.
  struct Pair {
    index_t cell, query, lo, hi;
  };
  std::vector<Pair> pairs;
  std::vector<index_t> count(n_cells + 1, 0);
  auto add_pair = [&](index_t c, index_t i, index_t lo, index_t hi) {
    if (hi > lo) {
      pairs.push_back(Pair{c, i, lo, hi});
      ++count[c + 1];
    }
  };
  const double ninf = -std::numeric_limits<double>::infinity();
  for (index_t i = 0; i < M; ++i)
    for_marked(probed + i * n_cells, n_cells, [&](index_t c) {
      index_t lo = cell_offsets[c], hi = cell_offsets[c + 1];
      if (windows && hi > lo) {
        // Rows of cell c with logit >= floor have |key - query key| <= h (cells.hpp).
        const double top = windows->cell_log_w_max[c], s = P.sigma[i];
        const double h2 = top == ninf ? -1.0 : 2.0 * s * s * (top - windows->floor[i]);
        if (!(h2 >= 0.0)) {
          hi = lo;  // no mass, or every row below the floor (NaN: keep the cell whole)
          if (std::isnan(h2)) hi = cell_offsets[c + 1];
        } else if (h2 < std::numeric_limits<double>::infinity()) {
          const double h = std::sqrt(h2) * (1.0 + 1e-12) + windows->slack, k = windows->query_keys[i];
          const double* keys = windows->row_keys;
          lo = std::lower_bound(keys + lo, keys + hi, k - h) - keys;
          hi = std::upper_bound(keys + lo, keys + hi, k + h) - keys;
        }
      }
      add_pair(c, i, lo, hi);
    });
  // By cell, then by window start (stable: queries ascending among equal windows).
  for (index_t c = 0; c < n_cells; ++c) count[c + 1] += count[c];
  std::vector<Pair> by_cell(pairs.size());
  {
    std::vector<index_t> fill(count.begin(), count.end() - 1);
    for (const Pair& p : pairs) by_cell[fill[p.cell]++] = p;
  }
  for (index_t c = 0; c < n_cells; ++c)
    std::stable_sort(by_cell.begin() + count[c], by_cell.begin() + count[c + 1],
                     [](const Pair& a, const Pair& b) { return a.lo < b.lo || (a.lo == b.lo && a.hi < b.hi); });
  std::vector<index_t> members(by_cell.size());
  for (std::size_t k = 0; k < by_cell.size(); ++k) members[k] = by_cell[k].query;

  // Groups: runs of a cell's queries (by window start) that share one pass over the union of
  // their rows (one packing of those rows serves them all).  A pass over r rows for g queries
  // costs about r (g + kPassQueries) query-rows (the packing and the memory traffic of the rows;
  // the kernel's own estimate below uses 4) plus kPassFixed: a query joins the current group
  // when that makes the joint pass cheaper than the two apart.  Whole cells: one group per cell.
  // Work pieces: (group, row range), a large range split so that no piece dominates a thread.
  constexpr double kPassQueries = 8.0, kPassFixed = 512.0;
  constexpr index_t kPieceRows = 4096;
  std::vector<index_t> piece_cell, piece_m0, piece_m1, piece_r0, piece_r1;
  std::vector<double> work;  // rows x queries: the cost estimate that balances the chunks
  auto add_rows = [&](index_t c, index_t m0, index_t m1, index_t lo, index_t hi) {
    for (index_t r = lo; r < hi; r += kPieceRows) {
      piece_cell.push_back(c);
      piece_m0.push_back(m0);
      piece_m1.push_back(m1);
      piece_r0.push_back(r);
      piece_r1.push_back(std::min(hi, r + kPieceRows));
      work.push_back(static_cast<double>(std::min(kPieceRows, hi - r)) * static_cast<double>(m1 - m0 + 4));
    }
  };
  // A group's rows [lo, hi) (every member reduces all of them: rows of its cell outside its own
  // window are exact terms too), less its long runs of identical rows: one term per member each
  // (RowRuns), merged into the members' partials before the pieces run.
  struct RunTerm {
    index_t query, row, k;
  };
  constexpr index_t kLongRun = 32;
  std::vector<RunTerm> run_terms;
  auto add_group = [&](index_t c, index_t m0, index_t m1, index_t lo, index_t hi) {
    index_t cur = lo;
    if (runs != nullptr && hi - lo >= kLongRun) {
      const std::int64_t* rs = runs->start;
      index_t r = std::upper_bound(rs, rs + runs->n, lo) - rs - 1;  // the last run starting at or before lo
      for (r = std::max<index_t>(r, 0); r < runs->n && rs[r] < hi; ++r) {
        const index_t a = std::max<index_t>(rs[r], lo), b = std::min<index_t>(rs[r] + runs->length[r], hi);
        if (b - a < kLongRun) continue;
        add_rows(c, m0, m1, cur, a);
        for (index_t k = m0; k < m1; ++k) run_terms.push_back(RunTerm{members[k], a, b - a});
        cur = b;
      }
    }
    add_rows(c, m0, m1, cur, hi);
  };
  auto pass_cost = [&](index_t rows, index_t g) {
    return static_cast<double>(rows) * (static_cast<double>(g) + kPassQueries) + kPassFixed;
  };
  for (index_t c = 0; c < n_cells; ++c) {
    index_t m0 = count[c], lo = 0, hi = 0;
    for (index_t k = count[c]; k < count[c + 1]; ++k) {
      const Pair& p = by_cell[k];
      if (k > m0) {
        const index_t joint_hi = std::max(hi, p.hi), g = k - m0;
        if (pass_cost(joint_hi - lo, g + 1) <= pass_cost(hi - lo, g) + pass_cost(p.hi - p.lo, 1)) {
          hi = joint_hi;
          continue;
        }
        add_group(c, m0, k, lo, hi);
        m0 = k;
      }
      lo = p.lo;
      hi = p.hi;
    }
    if (count[c + 1] > m0) add_group(c, m0, count[c + 1], lo, hi);
  }
  const index_t n_pieces = static_cast<index_t>(work.size());
  merge_run_terms(P, run_terms, out);
  if (n_pieces == 0) return;

  // Contiguous chunks of pieces of about equal work; chunk 0 accumulates into `out`.
  double total = 0;
  for (double w : work) total += w;
  // Many more chunks than threads: the cost estimate misses how many terms need float64, so
  // balance comes from dynamic claiming.  Each chunk beyond the first holds the partials of the
  // queries it touches (at most M): at most ~64 MiB of them.
  const double partial_bytes = 8.0 * static_cast<double>(M) * static_cast<double>(d + 6);
  const index_t by_memory = std::max<index_t>(2 * n_threads, static_cast<index_t>((64.0 * (1 << 20)) / partial_bytes));
  const index_t n_chunks = std::min<index_t>(n_pieces, n_threads == 1 ? 1 : std::min<index_t>(16 * n_threads, by_memory));
  std::vector<index_t> bounds{0};
  double acc = 0;
  for (index_t k = 0; k < n_pieces; ++k) {
    acc += work[k];
    const index_t next = static_cast<index_t>(bounds.size());
    if (next < n_chunks && acc >= total * static_cast<double>(next) / static_cast<double>(n_chunks)) bounds.push_back(k + 1);
  }
  while (static_cast<index_t>(bounds.size()) <= n_chunks) bounds.push_back(n_pieces);
  // Chunk ch > 0 accumulates only the queries its pieces touch (ascending, chunk_queries[ch]):
  // a buffer of all M partials per chunk cost more to clear and merge than small chunks' work.
  std::vector<std::vector<index_t>> chunk_queries(n_chunks);
  std::vector<PartialBuffer> chunk_acc(n_chunks > 1 ? n_chunks - 1 : 0);
  for (index_t ch = 1; ch < n_chunks; ++ch) {
    std::vector<index_t>& qs = chunk_queries[ch];
    for (index_t pc = bounds[ch]; pc < bounds[ch + 1]; ++pc)
      qs.insert(qs.end(), members.begin() + piece_m0[pc], members.begin() + piece_m1[pc]);
    std::sort(qs.begin(), qs.end());
    qs.erase(std::unique(qs.begin(), qs.end()), qs.end());
    chunk_acc[ch - 1].resize(static_cast<index_t>(qs.size()), d);
  }
  auto chunk_out = [&](index_t ch) { return ch == 0 ? out : chunk_acc[ch - 1].view(); };
  // Row of query i in chunk ch's accumulator.
  auto chunk_row = [&](index_t ch, index_t i) -> index_t {
    if (ch == 0) return i;
    const std::vector<index_t>& qs = chunk_queries[ch];
    return std::lower_bound(qs.begin(), qs.end(), i) - qs.begin();
  };

  parallel_for(n_chunks, n_threads, [&](index_t ch, int) {
    const DenseOutput acc_out = chunk_out(ch);
    if (ch > 0) {
      for (index_t r = 0; r < static_cast<index_t>(chunk_queries[ch].size()); ++r) {
        partial_reset(ref(acc_out, r, d), d);
        acc_out.n_exact[r] = 0;
      }
    }
    std::vector<T> ys;
    std::vector<double> sig, start;
    PartialBuffer part;
    for (index_t pc = bounds[ch]; pc < bounds[ch + 1]; ++pc) {
      const index_t c = piece_cell[pc], r0 = piece_r0[pc], m0 = piece_m0[pc], nq = piece_m1[pc] - m0;
      ys.resize(static_cast<std::size_t>(nq * d));
      sig.resize(nq);
      if (P.start_max) start.resize(nq);
      part.resize(nq, d);
      for (index_t j = 0; j < nq; ++j) {
        const index_t i = members[m0 + j];
        std::copy(P.y + i * P.ldy, P.y + i * P.ldy + d, ys.begin() + j * d);
        sig[j] = P.sigma[i];
        if (P.start_max) start[j] = P.start_max[i];
      }
      DenseProblem<T> S = P;
      S.y = ys.data();
      S.ldy = d;
      S.sigma = sig.data();
      S.start_max = P.start_max ? start.data() : nullptr;
      S.M = nq;
      S.x = P.x + r0 * P.ldx;
      S.N = piece_r1[pc] - r0;
      S.x_half_sqnorm = P.x_half_sqnorm + r0;
      S.log_w = P.log_w ? P.log_w + r0 : nullptr;
      S.row_repeats = P.row_repeats ? P.row_repeats + r0 : nullptr;
      S.center = cell_centers + c * d;
      S.x_radius = cell_radii[c];
      const DenseOutput po = part.view();
      fn(S, 0, nq, 0, S.N, po);
      for (index_t j = 0; j < nq; ++j) {
        const index_t row = chunk_row(ch, members[m0 + j]);
        if (po.top1[j] >= 0) po.top1[j] += r0;
        partial_merge_into(ref(acc_out, row, d), ref(po, j, d), d);
        if (acc_out.n_exact) acc_out.n_exact[row] += po.n_exact[j];
      }
    }
  });
  // Fixed order (chunk 1, 2, ...) per query: deterministic for a given thread count.
  for (index_t ch = 1; ch < n_chunks; ++ch) {
    const DenseOutput c = chunk_out(ch);
    const std::vector<index_t>& qs = chunk_queries[ch];
    for (index_t r = 0; r < static_cast<index_t>(qs.size()); ++r) {
      partial_merge_into(ref(out, qs[r], d), ref(c, r, d), d);
      if (out.n_exact) out.n_exact[qs[r]] += c.n_exact[r];
    }
  }
}

template void partials_cells<float>(const DenseProblem<float>&, const std::uint8_t*, index_t, const std::int64_t*,
                                    const float*, const double*, const DenseOutput&, int, SimdLevel,
                                    const KeyWindows*, const RowRuns*);
template void partials_cells<double>(const DenseProblem<double>&, const std::uint8_t*, index_t, const std::int64_t*,
                                     const double*, const double*, const DenseOutput&, int, SimdLevel,
                                     const KeyWindows*, const RowRuns*);

}  // namespace nnscore
