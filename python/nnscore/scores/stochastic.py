"""Stochastic nearest-neighbour score estimators (science.md §3.4).

Two Monte-Carlo estimators of the empirical score that look at the k nearest neighbours K of a
query exactly and at the rest of the training set only through random draws:

* :class:`ImportanceSampledScore` -- the NNSE proposal of Niedoba et al. (science.md (3.2)),
  generalised to non-uniform prior weights pi,

      q_i = pi_i e^{-d_i^2/2s^2} / Z_q  (i in K),    q_j = pi_j e^{l_bar} / Z_q  (j not in K),
      Z_q = S_K + Pi_out e^{l_bar},   l_bar = -d_(k)^2 / 2s^2  (the k-th neighbour's distance logit),

  sampled exactly as the mixture nu Cat(pi / sum pi) + (1 - nu) Cat(pi_i (e^{l_i} - e^{l_bar}) on K),
  nu = Pi_total e^{l_bar} / Z_q, followed by self-normalised importance sampling (SNIS) with
  weights w = pi_i e^{-d_i^2/2s^2} / q_i.  Numerator and denominator are unbiased; the ratio is
  consistent with an O(1/n) bias.  Its ``error_bound`` is a *root-mean-square* bound (Agapiou et
  al. 2017, Thm 2.1, with chi^2(p||q) <= T_bar_k / S_K), not a deterministic one.

* :class:`StratifiedScore` -- the CFDM/DEANN stratified estimator: K exactly, plus L indices drawn
  uniformly without replacement from the complement, weighted by (N - k)/L.  Its ``error_bound``
  is deterministic (science.md §3.2 proof of (ii)).

Both draw from ``rng`` (None, an int seed or a Generator): a model built with the same seed gives
the same results for the same sequence of calls; every call consumes fresh draws.
"""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from .. import backends as _backends
from .._rng import check_rng
from .._threads import effective_n_threads
from .._validation import check_int
from ..index.faiss_index import TrainingIndex
from ..partials import Partial, merge
from .base import ScoreModel, schedule_coefficients
from .empirical import prepare_training_data
from .knn import PriorMass, _lse, candidate_geometry, gathered_partials
from .result import ScoreResult, result_from_partial

__all__ = ["ImportanceSampledScore", "StratifiedScore"]

_U64 = 2.0**-53
#: float64 values per working block (queries x draws x d) of the estimators.
_BLOCK_VALUES = 1 << 22


def _sample_complement(nbr: np.ndarray, n_train: int, n_rand: int, gen: np.random.Generator) -> np.ndarray:
    """Per row, ``n_rand`` distinct indices drawn uniformly from {0..N-1} minus the row's ``nbr``.

    Floyd's algorithm on positions u in {0..N-k-1} of the complement (vectorised over rows,
    O(B L^2)), then u -> the u-th index not in ``nbr``.  (The one implementation, shared with
    :class:`~nnscore.CFDMScore`'s kNN estimator.)
    """
    n_rows, k = nbr.shape
    m = n_train - k
    chosen = np.empty((n_rows, n_rand), dtype=np.int64)
    rows = np.arange(n_rows)
    for c, j in enumerate(range(m - n_rand, m)):
        r = gen.integers(0, j + 1, size=n_rows)
        seen = np.any(chosen[:, :c] == r[:, None], axis=1) if c else np.zeros(n_rows, dtype=bool)
        chosen[rows, c] = np.where(seen, j, r)
    # the u-th complement element is u + #{i : sorted_nbr[i] - i <= u} (found by iteration)
    adj = np.sort(nbr, axis=1) - np.arange(k)[None, :]
    out = chosen + np.sum(adj[:, None, :] <= chosen[:, :, None], axis=2)
    return out


def _full_complement(nbr: np.ndarray, n_train: int) -> np.ndarray:
    """Per row, all N - k indices not in the row's ``nbr`` (ascending)."""
    n_rows, k = nbr.shape
    mask = np.ones((n_rows, n_train), dtype=bool)
    mask[np.arange(n_rows)[:, None], nbr] = False
    return np.nonzero(mask)[1].reshape(n_rows, n_train - k)


class _NNEstimator(ScoreModel):
    """Shared construction: index, training data, schedule, backend, rng."""

    _name = ""

    def __init__(self, index, k, rng, schedule, weights, backend, n_threads):
        from .. import schedules as _schedules

        if isinstance(index, TrainingIndex):
            self.index = index
            source = index._train
        else:
            source = index
            self.index = TrainingIndex(index, n_threads=n_threads)
        self.schedule = _schedules.get_schedule(schedule)
        self.backend = _backends.resolve(backend)
        effective_n_threads(n_threads)  # validates
        self.n_threads = n_threads
        # an array keeps its trailing shape (N, *shape); an index holds rows (N, d)
        self.data, self.shape = prepare_training_data(source, weights)
        self.dtype = self.data.points.dtype
        n = self.data.n_points
        k = check_int(k, "k", 1)
        if k > n:
            raise ValueError(f"k: must be <= N={n} (the training set size), got {k}")
        self.k = k
        self._rng = check_rng(rng)
        self._lock = threading.Lock()
        self._prior = PriorMass(self.data)
        self._cum_w = None if self._prior.w is None else np.cumsum(self._prior.w)

    # -- properties -------------------------------------------------------------------------------
    @property
    def train(self) -> np.ndarray:
        """The training points as (N, d) rows."""
        return self.data.points

    @property
    def n_train(self) -> int:
        return self.data.n_points

    # -- helpers ----------------------------------------------------------------------------------
    def _threads(self, work: float) -> int:
        return effective_n_threads(self.n_threads, work)

    def _log_w_of(self, ids: np.ndarray) -> np.ndarray:
        """Shifted log prior weights of ``ids`` (0 for uniform weights)."""
        if self.data.log_w is None:
            return np.zeros(ids.shape)
        return self.data.log_w[ids]

    def _segments(self, y, st, ids: np.ndarray) -> Partial:
        """Exact float64 partials of each query over its row of ``ids`` (M, n)."""
        return gathered_partials(self, y, st, self.data.points, self.data.log_w, _backends.Segments.from_ids(ids))

    def _partials_ve(self, y: np.ndarray, sigma: np.ndarray) -> Partial:
        return self._estimate_ve(y, sigma, np.ones(y.shape[0]))[0]

    def evaluate(self, x, t) -> ScoreResult:
        """Estimated denoiser, score, log-density, divergence and posterior variance at (x, t),
        plus ``mc_stderr``, ``error_bound``, ``path`` and ``k_used`` (see the class notes)."""
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = self._to_ve(x_rows, alpha)
        st = s / alpha
        p, stderr_d, bound_d, path, top1 = self._estimate_ve(y, st, alpha)
        res = result_from_partial(p, y, alpha, s, self.shape, out_dtype, self.backend)
        units = alpha * st * st  # score = (D - y) / (a st^2): x-units of the score
        n_q = y.shape[0]
        return dataclasses.replace(res, n_eff=None, max_weight=None, top1=top1, mc_stderr=stderr_d / units,
                                   error_bound=bound_d / units, path=path,
                                   k_used=np.full(n_q, self.k, dtype=np.int64))  # fmt: skip

    def _search(self, y):
        nb = self.index.search(y, self.k)
        return nb.ids, nb.sqdist, nb.r_k


class ImportanceSampledScore(_NNEstimator):
    """Empirical score by self-normalised importance sampling from the NNSE kNN proposal.

    Parameters
    ----------
    index : :class:`~nnscore.TrainingIndex` or array-like (N, d) or (N, *shape)
        The training set (an array is indexed with ``TrainingIndex(array)``).
    n_samples : int >= 1
        Draws n_s per query (i.i.d. from the proposal q).
    k : int, 1 <= k <= N
        Neighbours of the proposal.  k = N: the proposal is the posterior itself and nothing is
        sampled: the exact sums are returned (path "exact", mc_stderr and error_bound 0).
    rng : None, int or numpy.random.Generator -- source of the draws.
    schedule, weights, backend, n_threads : as for :class:`~nnscore.EmpiricalScore`.

    Notes
    -----
    With w = pi_i e^{-d_i^2/2s^2} / q_i (w = Z_q on K, Z_q e^{l_j - l_bar} off K):

    * ``denoised`` = sum w x / sum w (SNIS), ``posterior_variance`` the SNIS estimate of tr Cov,
      ``log_density`` from log(mean w) (an unbiased estimate of Z, logged), ``divergence`` from the
      variance estimate;
    * ``mc_stderr`` = delta-method standard error of the score,
      sqrt(sum w_r^2 ||x_r - D_hat||^2) / sum w_r / (a s~^2) (x-units);
    * ``error_bound`` = sqrt(4 d R^2 (1 + chi2) / n_s) / (a s~^2), with chi2(p||q) <= T_bar_k / S_K
      (T_bar_k = Pi_out e^{l_bar}; a factor e^{(d_(k)^2 - r_K)/2s^2} covers the index's float
      margin) and R = ``data.radius``.  It bounds the ROOT-MEAN-SQUARE error
      (E||score_hat - score||^2)^{1/2} (Agapiou, Papaspiliopoulos, Sanz-Alonso, Stuart 2017,
      Thm 2.1, summed over d orthonormal directions): it is NOT a bound on every draw's error.
      NaN for an uncertified (HNSW) index;
    * ``top1`` = the neighbour with the largest logit (the nearest one for uniform weights),
      ``n_eff`` and ``max_weight`` are None (not estimated), ``path`` "snis", ``k_used`` = k.
    """

    _name = "ImportanceSampledScore"

    def __init__(self, index, n_samples=256, k=64, rng=None, schedule="ve", weights=None, backend="auto",
                 n_threads=None):  # fmt: skip
        self.n_samples = check_int(n_samples, "n_samples", 1)
        super().__init__(index, k, rng, schedule, weights, backend, n_threads)

    def __repr__(self) -> str:
        return (f"ImportanceSampledScore(n_train={self.n_train}, d={self.dim}, k={self.k}, "
                f"n_samples={self.n_samples}, index={self.index.kind!r}, schedule={self.schedule!r})")  # fmt: skip

    def _estimate_ve(self, y, st, alpha):
        n_q, dim = y.shape
        ids, sq, r_k = self._search(y) if n_q else (np.zeros((0, self.k), np.int64), np.zeros((0, self.k)),
                                                   np.zeros(0))  # fmt: skip
        s2 = 2.0 * st * st
        logits = self._log_w_of(ids) - sq / s2[:, None]  # shifted log pi_i - d_i^2 / 2s^2 on K
        top1 = ids[np.arange(n_q), np.argmax(logits, axis=1)] if n_q else np.zeros(0, np.int64)
        if self.k == self.n_train:
            p = self._segments(y, st, ids)
            zero = np.zeros(n_q)
            return p, zero, zero.copy(), np.full(n_q, "exact", dtype=object), top1
        m = np.empty(n_q)
        z, q, z2 = np.empty(n_q), np.empty(n_q), np.empty(n_q)
        v = np.empty((n_q, dim))
        stderr = np.empty(n_q)
        log_sk = _lse(logits, axis=1)
        l_bar = -sq[:, -1] / s2
        log_out = self._prior.log_outside(ids)
        log_zq = np.logaddexp(log_sk, log_out + l_bar)
        # log(1 + chi2) <= log(Z_q / S_K) + (d_(k)^2 - r_K) / 2s^2
        with np.errstate(invalid="ignore"):
            log1p_chi2 = log_zq - log_sk + np.maximum(sq[:, -1] - r_k, 0.0) / s2
            bound = np.sqrt(4.0 * dim * self.data.radius**2 * np.exp(log1p_chi2) / self.n_samples)
        n = self.n_samples
        block = max(1, _BLOCK_VALUES // (n * (dim + 4)))
        with self._lock:
            for b0 in range(0, n_q, block):
                sl = slice(b0, min(n_q, b0 + block))
                out = self._snis_block(y[sl], s2[sl], ids[sl], sq[sl], logits[sl], l_bar[sl], log_zq[sl])
                z[sl], v[sl], q[sl], z2[sl], stderr[sl] = out
        # w / Z_q summed: z; the unbiased estimate of Z is Z_q z / n (shifted units; shift added back)
        m[:] = log_zq + self.data.log_w_shift - math.log(n)
        p = Partial(m=m, z=z, v=v, q=q, z2=z2, top1=top1, log_mass=self.data.log_mass)
        return p, stderr, bound, np.full(n_q, "snis", dtype=object), top1

    def _snis_block(self, y, s2, ids, sq, logits, l_bar, log_zq):
        """SNIS sums of one block of queries: (z, v, q, z2, stderr of D) with weights w / Z_q."""
        gen = self._rng
        b, k = ids.shape
        n, n_train = self.n_samples, self.n_train
        # mixture weight nu = Pi_total e^{l_bar} / Z_q of the prior component
        log_nu = math.log(self._prior.total) + l_bar - log_zq
        # neighbour component: pi_i (e^{l_i} - e^{l_bar}) on K, i.e. logits + log(1 - e^{l_bar - a_i})
        a = -sq / s2[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            comp = logits + np.log(-np.expm1(np.minimum(l_bar[:, None] - a, 0.0)))
        comp_lse = _lse(comp, axis=1)
        nu = np.where(np.isfinite(comp_lse), np.exp(np.minimum(log_nu, 0.0)), 1.0)
        with np.errstate(invalid="ignore"):
            cdf = np.cumsum(np.exp(comp - np.where(np.isfinite(comp_lse), comp_lse, 0.0)[:, None]), axis=1)
        cdf = np.where(np.isfinite(comp_lse)[:, None], cdf / np.maximum(cdf[:, -1:], 1e-300), 1.0)
        u_mix = gen.random((b, n))
        u_k = gen.random((b, n))
        if self._cum_w is None:
            prior = gen.integers(0, n_train, size=(b, n))
        else:
            u_p = gen.random((b, n)) * self._cum_w[-1]
            prior = np.minimum(np.searchsorted(self._cum_w, u_p, side="right"), n_train - 1)
        # inverse CDF on K, all rows at once: row r's cdf lives in [r, r + 1]
        flat = (cdf + np.arange(b)[:, None]).ravel()
        pos = np.searchsorted(flat, (u_k + np.arange(b)[:, None]).ravel(), side="right").reshape(b, n)
        pos = np.clip(pos - (np.arange(b) * k)[:, None], 0, k - 1)
        from_prior = u_mix < nu[:, None]
        draw = np.where(from_prior, prior, np.take_along_axis(ids, pos, axis=1))
        # membership of the draws in K (prior draws may land in K): position or -1
        order = np.argsort(ids, axis=1)
        sorted_ids = np.take_along_axis(ids, order, axis=1)
        flat_ids = (sorted_ids + (np.arange(b) * n_train)[:, None]).ravel()
        key = (draw + (np.arange(b) * n_train)[:, None]).ravel()
        at = np.minimum(np.searchsorted(flat_ids, key), flat_ids.size - 1)
        in_k = (flat_ids[at] == key).reshape(b, n)
        # x - y of the drawn points in float64 difference form; their squared distances off K
        diff = self.data.points[draw].astype(np.float64) - y.astype(np.float64)[:, None, :]
        dsq = np.einsum("bnd,bnd->bn", diff, diff)
        # w / Z_q = 1 on K, e^{a_j - l_bar} off K (<= 1 up to the index's float margin)
        lw_rel = np.where(in_k, 0.0, -dsq / s2[:, None] - l_bar[:, None])
        w = np.exp(lw_rel)
        z = w.sum(axis=1)
        v = np.einsum("bn,bnd->bd", w, diff)
        q = np.einsum("bn,bn->b", w, dsq)
        z2 = np.einsum("bn,bn->b", w, w)
        dev = diff - (v / z[:, None])[:, None, :]  # x_r - D_hat
        stderr = np.sqrt(np.einsum("bn,bnd,bnd->b", w * w, dev, dev)) / z
        return z, v, q, z2, stderr


class StratifiedScore(_NNEstimator):
    """Empirical score from the k nearest neighbours exactly plus a uniform sample of the rest.

    The CFDM/DEANN stratified estimator (science.md §3.4): with K the k nearest neighbours and J
    ``n_tail`` = L indices drawn uniformly without replacement from the N - k others,

        D_hat = (sum_K e^{l_i} x_i + f sum_J e^{l_j} x_j) / (S_K + f sum_J e^{l_j}),  f = (N - k)/L,

    (logits with the prior weights: l_i = log pi_i - ||y - x_i||^2 / 2s^2).  Numerator and
    denominator are unbiased; the ratio is consistent.  With L >= N - k the tail is the whole
    complement and the result is exact (no draws); with k = N there is no tail.

    Parameters
    ----------
    index : :class:`~nnscore.TrainingIndex` or array-like (N, d) or (N, *shape)
    k : int, 1 <= k <= N
    n_tail : int >= 1 -- L (clamped to N - k).
    rng, schedule, weights, backend, n_threads : as for :class:`ImportanceSampledScore`.

    Notes
    -----
    * ``mc_stderr`` = delta-method standard error of the score for sampling without replacement,
      f sqrt(L (1 - L/(N-k)) s_e^2) / (S_K + T_hat) / (a s~^2), with s_e^2 the sample variance
      (trace) of e_j = e^{l_j}(x_j - D_hat) over J (0 for an exact result, inf for L = 1 < N - k);
    * ``error_bound`` = (eps_bar + eps_hat)(R + ||D_K - c||)/(a s~^2) (x-units, deterministic):
      eps_bar = T_bar/(S_K + T_bar), T_bar = Pi_out e^{-r_K/2s^2} (r_K the index's certified
      squared radius), eps_hat = T_hat/(S_K + T_hat); both the true and the estimated denoiser lie
      within eps (R + ||D_K - c||) of D_K (science.md §3.2, proof of (ii)).  Plus a float64
      rounding allowance (the final cast to a float32 query dtype is not included); NaN for an
      uncertified (HNSW) index.  Exact results (L >= N - k) get the allowance only;
    * ``top1`` = the largest logit among the rows looked at, ``n_eff``/``max_weight`` None,
      ``path`` "stratified", ``k_used`` = k.
    """

    _name = "StratifiedScore"

    def __init__(self, index, k=64, n_tail=256, rng=None, schedule="ve", weights=None, backend="auto",
                 n_threads=None):  # fmt: skip
        self.n_tail = check_int(n_tail, "n_tail", 1)
        super().__init__(index, k, rng, schedule, weights, backend, n_threads)

    def __repr__(self) -> str:
        return (f"StratifiedScore(n_train={self.n_train}, d={self.dim}, k={self.k}, n_tail={self.n_tail}, "
                f"index={self.index.kind!r}, schedule={self.schedule!r})")  # fmt: skip

    def _estimate_ve(self, y, st, alpha):
        n_q, dim = y.shape
        n_train, k = self.n_train, self.k
        n_out = n_train - k
        L = min(self.n_tail, n_out)
        exact = L == n_out
        ids, sq, r_k = self._search(y) if n_q else (np.zeros((0, k), np.int64), np.zeros((0, k)), np.zeros(0))
        p_k = self._segments(y, st, ids)
        s2 = 2.0 * st * st
        p = p_k
        stderr = np.zeros(n_q)
        log_that = np.full(n_q, -np.inf)
        if L > 0 and n_q:
            if exact:
                tail = _full_complement(ids, n_train)
            else:
                with self._lock:
                    tail = _sample_complement(ids, n_train, L, self._rng)
            p_t = self._segments(y, st, tail)
            log_f = math.log(n_out / L)
            # the tail stands for f times its weight: shift m (z, v, q, z2 relative to e^m unchanged)
            p_ts = dataclasses.replace(p_t, m=p_t.m + log_f)
            with np.errstate(divide="ignore"):
                log_that = p_ts.m + np.log(p_ts.z)
            p = merge(p_k, p_ts)
            p = dataclasses.replace(p, top1=np.where(p_t.m > p_k.m, p_t.top1, p_k.top1), log_mass=self.data.log_mass)
            if not exact:
                stderr = self._stderr(y, s2, tail, p, log_f, L, n_out)
        top1 = p.top1
        # deterministic bound (science.md §3.2 (ii)) for the true and the estimated denoiser
        with np.errstate(divide="ignore"):
            log_sk = p_k.m + np.log(p_k.z)  # partials carry log pi; the masses are in pi / max pi
        log_out = self._prior.log_outside(ids) + self.data.log_w_shift
        with np.errstate(invalid="ignore"):
            log_tbar = np.where(np.isinf(r_k) & (r_k > 0), -np.inf, log_out - np.maximum(r_k, 0.0) / s2)
        eps_bar = _sigmoid(log_tbar - log_sk)
        eps_hat = _sigmoid(log_that - log_sk)
        r_y, dist_c = candidate_geometry(self.data, p_k, y)
        R = self.data.radius * (1.0 + 1e-12)
        rel = 4.0 * _U64 * (k + L + dim + 8)
        if exact:
            eps_bar, eps_hat = np.zeros(n_q), np.zeros(n_q)
        bound = (eps_bar + eps_hat) * (R + dist_c) + rel * (R + dist_c + r_y)
        return p, stderr, bound, np.full(n_q, "stratified", dtype=object), top1

    def _stderr(self, y, s2, tail, p, log_f, L, n_out):
        """Delta-method standard error of D_hat (data units) under sampling without replacement."""
        n_q, dim = y.shape
        if L < 2:
            return np.full(n_q, np.inf)
        out = np.empty(n_q)
        d_hat = p.v / p.z[:, None]  # D_hat - y
        # log of the full normaliser S_K + T_hat, in the merged partial's units
        log_norm = p.m + np.log(p.z)
        block = max(1, _BLOCK_VALUES // (L * (dim + 2)))
        shift = self.data.log_w_shift
        for b0 in range(0, n_q, block):
            sl = slice(b0, min(n_q, b0 + block))
            diff = self.data.points[tail[sl]].astype(np.float64) - y[sl].astype(np.float64)[:, None, :]
            lg = self._log_w_of(tail[sl]) + shift - np.einsum("bld,bld->bl", diff, diff) / s2[sl, None]
            t = np.exp(lg - log_norm[sl, None])  # e^{l_j} / (S_K + T_hat)
            e = t[:, :, None] * (diff - d_hat[sl, None, :])
            e -= e.mean(axis=1, keepdims=True)
            s_e2 = np.einsum("bld,bld->b", e, e) / (L - 1)
            out[sl] = math.exp(log_f) * np.sqrt(L * (1.0 - L / n_out) * s_e2)
        return out


def _sigmoid(log_ratio: np.ndarray) -> np.ndarray:
    """r / (1 + r) from log r (0 for -inf, 1 for +inf, nan stays nan)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isfinite(log_ratio), 1.0 / (1.0 + np.exp(-log_ratio)),
                        np.where(log_ratio > 0, 1.0, np.where(np.isnan(log_ratio), np.nan, 0.0)))  # fmt: skip
