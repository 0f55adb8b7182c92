// Fused dense reduction on the GPU: flash-attention-style tiles of queries x training points.
//
// One block owns kBM queries and one split of the training rows.  Per tile of kBN points:
//  1. dot products <y - c, x - c> of the tile, operands staged in shared memory in chunks of
//     kBK coordinates: exact fp32/fp64 FMAs, or TF32 tensor cores (WMMA m16n16k8) by option;
//  2. per query (one warp per query row): GEMM-form logits with float64 norms; the same static
//     fast / mixed / exact rule as the CPU engine (dense.hpp): non-fast queries recompute the
//     terms near the running max in float64 difference form (warp-cooperative over d) and skip
//     terms certainly below max - log_cut; then the online log-sum-exp update (float64 m, z, q,
//     z2) and the tile's weights into shared memory;
//  3. v and q: exactly recomputed terms in difference form w (x - y); the others as
//     sum w (x - c) - (sum w)(y - c) in the accumulate precision, with q from float64 sums about
//     the centre; zero weights are skipped (most of them at small sigma).
// A combine kernel merges the per-split partials (split order: ties keep the lowest index) and
// flags mixed queries whose GEMM-form terms carried too much mass; the caller reruns them with
// force_exact (the CPU engine's redo rule).
#include <mma.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "api.hpp"
#include "launch.cuh"

namespace nnscore {
namespace cuda {
namespace {

constexpr int kBM = 32;       // queries per block
constexpr int kBN = 64;       // training points per tile
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = kBM / kWarps;
constexpr int kLdS = kBN + 4;  // row stride of the dot-product / weight tile (WMMA: multiple of 4)
enum : int { kFast = 0, kMixed = 1, kExact = 2 };

template <class T>
struct Tiles {
  static constexpr int kBK = std::is_same<T, float>::value ? 32 : 16;  // keeps shared memory < 48 KiB
  static constexpr int kLd = kBK + 4;
};

template <class T>
struct Args {
  const T* y;
  const T* x;
  const T* c;
  const double* hx;
  const double* log_w;
  const double* sigma;
  std::int64_t M, N, d, rows_per_split;
  double radius, fast_tol, log_cut, u, log_w_max_abs;
  bool force_exact;
};

template <class T, class Acc>
struct SplitOut {
  double *m, *z, *q, *z2, *zg;
  std::int64_t *top1, *n_exact;
  Acc* v;
  double* est;
  int* mode;
};

__device__ __forceinline__ double lw_at(const double* log_w, std::int64_t j) { return log_w ? log_w[j] : 0.0; }

template <class T, class Acc, bool kTF32>
__global__ void __launch_bounds__(kThreads) dense_kernel(Args<T> P, SplitOut<T, Acc> W) {
  using namespace nvcuda;
  constexpr int kBK = Tiles<T>::kBK, kLd = Tiles<T>::kLd;
  constexpr bool kFloat = std::is_same<T, float>::value;
  const double ninf = neg_inf();
  __shared__ alignas(32) T Ys[kBM * kLd];
  __shared__ alignas(32) T Xs[kBN * kLd];
  __shared__ alignas(32) double Wt[kBM * kLdS];                // tile weights (and fp64 dot products)
  __shared__ alignas(32) float Sf[kFloat ? kBM * kLdS : 1];   // fp32 dot products
  __shared__ double r_hy[kBM], r_inv[kBM], r_el[kBM], r_est[kBM], r_cut[kBM];
  __shared__ int r_mode[kBM];
  __shared__ double s_m[kBM], s_mlow[kBM], s_z[kBM], s_q[kBM], s_z2[kBM], s_zg[kBM];
  __shared__ std::int64_t s_top1[kBM], s_nex[kBM];
  T* S = kFloat ? reinterpret_cast<T*>(Sf) : reinterpret_cast<T*>(Wt);  // fp64: read before overwritten

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * kBM, d = P.d, M = P.M;
  const std::int64_t split = blockIdx.y;
  const std::int64_t n_begin = split * P.rows_per_split;
  const std::int64_t n_end = min(P.N, n_begin + P.rows_per_split);

  // Per-query setup (one warp per row): norms, error bounds and the path of the query.
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const std::int64_t i = q0 + r;
    double s = 0;
    if (i < M)
      for (std::int64_t k = lane; k < d; k += 32) {
        const double diff = static_cast<double>(P.y[i * d + k]) - static_cast<double>(P.c[k]);
        s += diff * diff;
      }
    s = warp_sum(s);
    if (lane == 0) {
      const double sig = i < M ? P.sigma[i] : 1.0, inv = 1.0 / (sig * sig), R = P.radius, yn = sqrt(s);
      const double hy = 0.5 * s;
      const double err_h = 1.01 * P.u * ((d + 3.0) * yn * R + 2.0 * R * R) + 1e-300;
      const double el = 2.0 * err_h * inv + 4.0 * 0x1p-53 * (P.log_w_max_abs + 1.0) + 8.0 * 0x1p-53 * hy * inv;
      const double est = P.u * (yn * R + R * R) * inv;
      const double mixed_cut = log(est / P.fast_tol) + 3.5;
      int mode = kExact;
      if (!P.force_exact && est <= P.fast_tol) mode = kFast;
      else if (!P.force_exact && est <= 1e-2 && mixed_cut < P.log_cut) mode = kMixed;
      r_hy[r] = hy;
      r_inv[r] = inv;
      r_el[r] = el;
      r_est[r] = est;
      r_mode[r] = mode;
      r_cut[r] = (mode == kMixed ? mixed_cut : P.log_cut) + 2.0 * el;
      s_m[r] = ninf;
      s_mlow[r] = ninf;
      s_z[r] = s_q[r] = s_z2[r] = s_zg[r] = 0.0;
      s_top1[r] = -1;
      s_nex[r] = 0;
      if (split == 0 && i < M) {
        W.est[i] = est;
        W.mode[i] = mode;
      }
    }
    if (i < M) {
      Acc* vrow = W.v + (split * M + i) * d;
      for (std::int64_t k = lane; k < d; k += 32) vrow[k] = Acc(0);
    }
  }
  __syncthreads();

  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kBN) {
    // ---- 1. dot products of the tile -----------------------------------------------------
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> cfrag;
    T acc[8];
    if constexpr (kTF32) {
      wmma::fill_fragment(cfrag, 0.0f);
    } else {
      for (int t = 0; t < 8; ++t) acc[t] = T(0);
    }
    const int my_row = tid / 8, my_col = tid % 8;  // SIMT layout: row, columns my_col + 8 t
    for (std::int64_t k0 = 0; k0 < d; k0 += kBK) {
      for (int idx = tid; idx < kBM * kBK; idx += kThreads) {
        const int r = idx / kBK, kk = idx % kBK;
        const std::int64_t i = q0 + r, k = k0 + kk;
        Ys[r * kLd + kk] = (i < M && k < d)
                               ? static_cast<T>(static_cast<double>(P.y[i * d + k]) - static_cast<double>(P.c[k]))
                               : T(0);
      }
      for (int idx = tid; idx < kBN * kBK; idx += kThreads) {
        const int r = idx / kBK, kk = idx % kBK;
        const std::int64_t j = n0 + r, k = k0 + kk;
        Xs[r * kLd + kk] = (j < n_end && k < d)
                               ? static_cast<T>(static_cast<double>(P.x[j * d + k]) - static_cast<double>(P.c[k]))
                               : T(0);
      }
      __syncthreads();
      if constexpr (kTF32) {
        const int wm = warp / 4, wn = warp % 4;
        for (int kk = 0; kk < kBK; kk += 8) {
          wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
          wmma::load_matrix_sync(a, reinterpret_cast<const float*>(Ys) + wm * 16 * kLd + kk, kLd);
          wmma::load_matrix_sync(b, reinterpret_cast<const float*>(Xs) + wn * 16 * kLd + kk, kLd);
          for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
          for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
          wmma::mma_sync(cfrag, a, b, cfrag);
        }
      } else {
        for (int kk = 0; kk < kBK; ++kk) {
          const T a = Ys[my_row * kLd + kk];
          for (int t = 0; t < 8; ++t) acc[t] = fma(a, Xs[(my_col + 8 * t) * kLd + kk], acc[t]);
        }
      }
      __syncthreads();
    }
    if constexpr (kTF32) {
      const int wm = warp / 4, wn = warp % 4;
      wmma::store_matrix_sync(reinterpret_cast<float*>(Sf) + wm * 16 * kLdS + wn * 16, cfrag, kLdS, wmma::mem_row_major);
    } else {
      for (int t = 0; t < 8; ++t) S[my_row * kLdS + my_col + 8 * t] = acc[t];
    }
    __syncthreads();

    // ---- 2. logits, exact recompute near the max, online log-sum-exp ---------------------
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const std::int64_t i = q0 + r;
      if (i >= M) continue;  // uniform over the warp
      const double hy = r_hy[r], inv = r_inv[r], el = r_el[r];
      const int mode = r_mode[r];
      double lg[2], hs[2];
      bool valid[2], exact[2] = {false, false};
      for (int t = 0; t < 2; ++t) {
        const int col = lane + 32 * t;
        const std::int64_t j = n0 + col;
        valid[t] = j < n_end;
        hs[t] = valid[t] ? fmax(0.0, hy + P.hx[j] - static_cast<double>(S[r * kLdS + col])) : 0.0;
        lg[t] = valid[t] ? lw_at(P.log_w, j) - hs[t] * inv : ninf;
      }
      if (mode != kFast) {
        const double tmax = warp_max(fmax(lg[0], lg[1]));
        const double ref = fmax(s_mlow[r], tmax - el);
        bool skip[2];
        for (int t = 0; t < 2; ++t) {
          exact[t] = valid[t] && lg[t] >= ref - r_cut[r];
          skip[t] = valid[t] && !exact[t] && lg[t] + el < ref - P.log_cut;
        }
        for (int t = 0; t < 2; ++t) {
          unsigned pending = __ballot_sync(kFullMask, exact[t]);
          while (pending) {  // warp-cooperative difference form, one candidate at a time
            const int src = __ffs(pending) - 1;
            pending &= pending - 1;
            const std::int64_t j = n0 + src + 32 * t;
            double s = 0;
            for (std::int64_t k = lane; k < d; k += 32) {
              const double diff = static_cast<double>(P.x[j * d + k]) - static_cast<double>(P.y[i * d + k]);
              s += diff * diff;
            }
            s = warp_sum(s);
            if (lane == src) {
              hs[t] = 0.5 * s;
              lg[t] = lw_at(P.log_w, j) - hs[t] * inv;
            }
          }
          if (skip[t]) lg[t] = ninf;
        }
        const double emax = warp_max(fmax(exact[0] ? lg[0] : ninf, exact[1] ? lg[1] : ninf));
        const int nex = __popc(__ballot_sync(kFullMask, exact[0])) + __popc(__ballot_sync(kFullMask, exact[1]));
        __syncwarp();
        if (lane == 0) {
          s_mlow[r] = fmax(ref, emax);
          s_nex[r] += nex;
        }
      }
      double best = lg[0];
      int best_col = lane;
      if (lg[1] > best) {
        best = lg[1];
        best_col = lane + 32;
      }
      warp_argmax(best, best_col);
      const double m_old = s_m[r];
      const double m_new = fmax(m_old, best);
      const double shift = isfinite(m_new) ? m_new : 0.0;
      const double scale = isfinite(m_old) ? exp(m_old - shift) : 0.0;
      double w[2];
      for (int t = 0; t < 2; ++t) w[t] = exp(lg[t] - shift);  // exp(-inf) = 0: invalid and skipped terms
      // Exactly recomputed terms enter v and q in difference form (no cancellation at small
      // sigma); the others through sums about the centre (see phase 3).
      const unsigned long long emask = static_cast<unsigned long long>(__ballot_sync(kFullMask, exact[0])) |
                                       (static_cast<unsigned long long>(__ballot_sync(kFullMask, exact[1])) << 32);
      double wg_[2], hx_[2];
      for (int t = 0; t < 2; ++t) {
        wg_[t] = exact[t] ? 0.0 : w[t];
        hx_[t] = valid[t] ? P.hx[n0 + lane + 32 * t] : 0.0;
      }
      const double wsum = warp_sum(w[0] + w[1]);
      const double w2 = warp_sum(w[0] * w[0] + w[1] * w[1]);
      const double q_exact = warp_sum((exact[0] ? w[0] * hs[0] : 0.0) + (exact[1] ? w[1] * hs[1] : 0.0));
      const double wsum_g = warp_sum(wg_[0] + wg_[1]);
      const double whx_g = warp_sum(wg_[0] * hx_[0] + wg_[1] * hx_[1]);
      const double wg = mode == kMixed ? wsum_g : 0.0;
      __syncwarp();
      for (int t = 0; t < 2; ++t) Wt[r * kLdS + lane + 32 * t] = w[t];
      if (lane == 0) {
        s_z[r] = s_z[r] * scale + wsum;
        s_z2[r] = s_z2[r] * scale * scale + w2;
        s_q[r] = s_q[r] * scale + 2.0 * q_exact;
        s_zg[r] = s_zg[r] * scale + wg;
        if (best > m_old) s_top1[r] = n0 + best_col;
        s_m[r] = m_new;
      }
      __syncwarp();

      // ---- 3. v += sum_exact w (x - y) + sum_other w (x - c) - (sum_other w)(y - c), and
      // q += sum_other w ||x - y||^2 = 2 sum w hx - 2 <sum w (x - c), y - c> + 2 (sum w) hy,
      // so that q is not limited by the input-precision dot products (tr Cov cancels in q/z).
      Acc* vrow = W.v + (split * M + i) * d;
      const Acc sc = static_cast<Acc>(scale), wsg = static_cast<Acc>(wsum_g);
      double dot = 0;
      for (std::int64_t k = lane; k < d; k += 32) {
        const double ck = static_cast<double>(P.c[k]), yk = static_cast<double>(P.y[i * d + k]);
        Acc a = vrow[k] * sc, tg = Acc(0);
        for (int col = 0; col < kBN; ++col) {
          const double wj = Wt[r * kLdS + col];  // the same for every lane: no divergence
          if (wj == 0.0) continue;
          const double xk = static_cast<double>(P.x[(n0 + col) * d + k]);
          if ((emask >> col) & 1ull) a += static_cast<Acc>(wj * (xk - yk));
          else tg += static_cast<Acc>(wj) * static_cast<Acc>(xk - ck);
        }
        const Acc yck = static_cast<Acc>(yk - ck);
        vrow[k] = a + tg - wsg * yck;
        dot += static_cast<double>(tg) * static_cast<double>(yck);
      }
      dot = warp_sum(dot);
      if (lane == 0) s_q[r] += 2.0 * whx_g - 2.0 * dot + 2.0 * wsum_g * hy;
    }
    __syncthreads();
  }

  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const std::int64_t i = q0 + r;
    if (lane == 0 && i < M) {
      const std::int64_t o = split * M + i;
      W.m[o] = s_m[r];
      W.z[o] = s_z[r];
      W.q[o] = s_q[r];
      W.z2[o] = s_z2[r];
      W.zg[o] = s_zg[r];
      W.top1[o] = s_top1[r];
      W.n_exact[o] = s_nex[r];
    }
  }
}

// Merge the per-split partials of each query (one warp per query), in split order.
template <class Acc>
__global__ void __launch_bounds__(kThreads) combine_kernel(std::int64_t M, std::int64_t d, std::int64_t n_splits,
                                                           double fast_tol, SplitOut<float, Acc> W, DenseOutputs out) {
  const int lane = threadIdx.x & 31;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= M) return;
  double m = neg_inf();
  for (std::int64_t s = 0; s < n_splits; ++s) m = fmax(m, W.m[s * M + i]);
  const double shift = isfinite(m) ? m : 0.0;
  double z = 0, q = 0, z2 = 0, zg = 0;
  std::int64_t top1 = -1, nex = 0;
  for (std::int64_t s = 0; s < n_splits; ++s) {
    const std::int64_t o = s * M + i;
    const double ms = W.m[o];
    const double sc = isfinite(ms) ? exp(ms - shift) : 0.0;
    z += sc * W.z[o];
    q += sc * W.q[o];
    z2 += sc * sc * W.z2[o];
    zg += sc * W.zg[o];
    nex += W.n_exact[o];
    if (top1 < 0 && isfinite(ms) && ms == m) top1 = W.top1[o];
  }
  for (std::int64_t k = lane; k < d; k += 32) {
    double a = 0;
    for (std::int64_t s = 0; s < n_splits; ++s) {
      const double ms = W.m[s * M + i];
      if (isfinite(ms)) a += exp(ms - shift) * static_cast<double>(W.v[(s * M + i) * d + k]);
    }
    out.v[i * d + k] = a;
  }
  if (lane == 0) {
    store_partial(out, i, m, z, q, z2, top1, nex);
    if (out.redo) out.redo[i] = (W.mode[i] == kMixed && z > 0 && zg * W.est[i] > fast_tol * z) ? 1 : 0;
  }
}

template <class T, class Acc, bool kTF32>
void launch_dense(const DenseInputs& in, const SplitWorkspace& ws, const DenseOutputs& out, cudaStream_t stream) {
  constexpr double u = kTF32 ? 0x1p-11 : (std::is_same<T, float>::value ? 0x1p-24 : 0x1p-53);
  Args<T> P{static_cast<const T*>(in.y), static_cast<const T*>(in.x), static_cast<const T*>(in.center),
            in.x_half_sqnorm, in.log_w, in.sigma, in.M, in.N, in.d, ws.rows_per_split,
            in.radius, in.fast_tol, in.log_cut, u, in.log_w_max_abs, in.force_exact};
  SplitOut<T, Acc> W{ws.m, ws.z, ws.q, ws.z2, ws.z_gemm, ws.top1, ws.n_exact, static_cast<Acc*>(ws.v), ws.est, ws.mode};
  const dim3 grid(static_cast<unsigned>(blocks_for(in.M, kBM)), static_cast<unsigned>(ws.n_splits));
  dense_kernel<T, Acc, kTF32><<<grid, kThreads, 0, stream>>>(P, W);
  NNSCORE_CUDA_CHECK(cudaGetLastError());
  SplitOut<float, Acc> Wc{ws.m, ws.z, ws.q, ws.z2, ws.z_gemm, ws.top1, ws.n_exact, static_cast<Acc*>(ws.v), ws.est, ws.mode};
  combine_kernel<Acc><<<blocks_for(in.M, kWarps), kThreads, 0, stream>>>(in.M, in.d, ws.n_splits, in.fast_tol, Wc, out);
  NNSCORE_CUDA_CHECK(cudaGetLastError());
}

template <class T, class Acc>
void launch_dense_tf32(const DenseInputs& in, const SplitWorkspace& ws, const DenseOutputs& out, cudaStream_t s) {
  if constexpr (std::is_same<T, float>::value) {
    if (in.tf32) return launch_dense<T, Acc, true>(in, ws, out, s);
  } else {
    if (in.tf32) throw std::invalid_argument("tf32: TF32 tensor cores need float32 inputs");
  }
  launch_dense<T, Acc, false>(in, ws, out, s);
}

}  // namespace

std::int64_t dense_tile_rows() { return kBN; }

void dense_partials(const DenseInputs& in, const SplitWorkspace& ws, const DenseOutputs& out, void* stream) {
  if (in.M < 0 || in.N <= 0 || in.d <= 0) throw std::invalid_argument("dense_partials: need M >= 0, N > 0, d > 0");
  if (ws.n_splits <= 0 || ws.rows_per_split <= 0 || ws.rows_per_split % kBN != 0 ||
      ws.n_splits * ws.rows_per_split < in.N)
    throw std::invalid_argument("dense_partials: rows_per_split must be a positive multiple of the tile width and "
                                "n_splits * rows_per_split must cover N");
  if (in.M == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const bool f32 = in.dtype == DType::kFloat32, acc64 = in.accumulate == Accumulate::kFp64;
  if (f32 && acc64) launch_dense_tf32<float, double>(in, ws, out, s);
  else if (f32) launch_dense_tf32<float, float>(in, ws, out, s);
  else if (acc64) launch_dense_tf32<double, double>(in, ws, out, s);
  else launch_dense_tf32<double, float>(in, ws, out, s);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: report 0, clear the sticky error state
    return 0;
  }
  return n;
}

int multiprocessor_count(int device) {
  int n = 0;
  NNSCORE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

void synchronize(void* stream) { NNSCORE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace cuda
}  // namespace nnscore
