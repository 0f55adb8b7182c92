"""CFDMScore: sigma-CFDM, the Gaussian-smoothed closed-form diffusion model (science.md §2.1.6).

In the CFDM convention (``schedule="cfdm"``: a = t, s = 1 - t, t = 0 noise, t = 1 data) the
closed-form score of the training set is ``(t D(z, t) - z)/(1 - t)^2`` and sigma-CFDM smooths it
in log-domain with a Gaussian of *constant* bandwidth sigma in z-space:

    s_sigma(z, t) = E_eps[ grad log rho_t(z + sigma eps) ] = (t Dbar_sigma(z, t) - z)/(1 - t)^2,
    Dbar_sigma(z, t) = E_eps D(z + sigma eps, t),    v = (Dbar_sigma - z)/(1 - t).

In VE-normalised coordinates y = z/t the bandwidth is therefore sigma/t.

Two evaluation paths:

* ``k=None`` (exact): the dense :class:`~nnscore.EmpiricalScore` smoothed by
  :class:`~nnscore.SmoothedScore` with ``GaussianKernel(sigma)`` (i.i.d. draws, no antithetic
  pairs, as in CFDM); every field of that model's result is returned.
* ``k`` given: the DEANN-style stratified estimator of CFDM's nearest-neighbour sampler
  (science.md §2.1.6, §3.4).  For each perturbed query w_m = z + sigma eps_m the k nearest
  training points of w_m / a (faiss ``IndexFlatL2``) are kept exactly and ``n_random`` points
  drawn uniformly without replacement from the other N - k stand in for the tail with weight
  (N - k)/L; the weights are self-normalised per perturbation and the denoisers averaged over
  the perturbations.  Numerator and denominator are unbiased for the full sums; the ratio is
  consistent.  With k = N (and L = 0) it is the exact model up to rounding.

"fixed" draws the perturbations eps once per batch shape (M, n_samples) and reuses them (a
deterministic velocity field whose fixed points at t -> 1 are barycentres
``(1/n) sum_m x_{NN(z + sigma eps_m)}``, see :meth:`CFDMScore.barycentres`); "fresh" draws new
ones at each evaluation.  In the kNN path, "fixed" also fixes the generator of the tail samples
(re-seeded identically at every evaluation), so the field is a deterministic function of (z, t).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import threading

import numpy as np

from .. import backends as _backends
from .._rng import check_rng
from .._validation import check_int as _check_int
from .base import ScoreModel, schedule_coefficients
from .empirical import EmpiricalScore
from ..partials import merge
from .kernels import GaussianKernel
from .knn import gathered_partials
from .result import ScoreResult
from .smoothed import SmoothedScore
from .stochastic import _sample_complement

__all__ = ["CFDMScore", "CFDM_MODES"]

#: Randomness modes of :class:`CFDMScore`.
CFDM_MODES = ("fixed", "fresh")
#: Rows of perturbed queries per block of the kNN estimator (bounds its working memory).
_KNN_BLOCK_ROWS = 4096


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("CFDMScore(k=...) needs faiss: pip install faiss-cpu") from exc
    return faiss


def _is_faiss_index(obj) -> bool:
    return hasattr(obj, "ntotal") and callable(getattr(obj, "reconstruct_n", None)) and callable(
        getattr(obj, "search", None)
    )


class CFDMScore(ScoreModel):
    """sigma-CFDM: closed-form diffusion model with constant-bandwidth Gaussian score smoothing.

    Parameters
    ----------
    train_or_index : array-like (N, d) or (N, *shape), an EmpiricalScore, or a faiss index
        The training set.  An :class:`~nnscore.EmpiricalScore` contributes its points and
        weights; a faiss ``IndexFlatL2`` contributes its stored vectors (unit weights) and is
        reused for the neighbour searches of the kNN path.
    sigma : float >= 0
        Smoothing bandwidth, constant in the schedule's x-coordinates (CFDM's z-space).
        ``sigma = 0`` is the unsmoothed closed-form model.
    n_samples : int >= 1
        Perturbations eps_1..eps_n per query (CFDM's M).
    mode : {"fixed", "fresh"}, default "fixed"
        "fixed": draws made once per batch shape (M queries, n_samples) and reused by every later
        evaluation (a deterministic field; CFDM's sampler).  "fresh": new draws at every call.
    schedule : str or Schedule, default "cfdm"
    k : int, optional
        None: exact smoothing of the dense empirical model.  1 <= k <= N: the DEANN-style kNN
        estimator (science.md §2.1.6).
    n_random : int, optional
        Uniform tail samples L per perturbed query of the kNN estimator, 0 <= L <= N - k
        (default min(k, N - k)).  Ignored when k is None.
    rng : None, int or numpy.random.Generator
        Source of all draws; an int seed makes results reproducible.

    Notes
    -----
    Exact path: :meth:`evaluate` returns the :class:`~nnscore.SmoothedScore` result (see its
    notes).  kNN path: ``denoised`` = the averaged self-normalised estimate Dbar, ``score`` =
    ``(a Dbar - x)/s^2``, ``sigma`` = sigma~, ``mc_stderr`` = ``(a/s^2) sqrt(tr Cov_hat(D_m)/n)``
    over the n per-perturbation estimates (``inf`` for n = 1; it does not cover the O(1/L) bias
    of self-normalisation), ``path`` = "knn-stochastic" for every query; the other fields are None.
    """

    def __init__(self, train_or_index, sigma, n_samples, mode="fixed", schedule="cfdm", k=None, n_random=None,
                 rng=None):  # fmt: skip
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
            raise TypeError(f"sigma: expected a real number >= 0, got {sigma!r}")
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma < 0.0:
            raise ValueError(f"sigma: must be finite and >= 0, got {sigma}")
        n_samples = _check_int(n_samples, "n_samples", 1)
        if not isinstance(mode, str) or mode not in CFDM_MODES:
            raise ValueError(f"mode: expected one of {list(CFDM_MODES)}, got {mode!r}")

        self._index = None
        if isinstance(train_or_index, ScoreModel) and hasattr(train_or_index, "train"):
            src = train_or_index
            log_w = getattr(getattr(src, "data", None), "log_w", None)
            weights = None if log_w is None else np.exp(np.asarray(log_w, dtype=np.float64))
            pts = np.asarray(src.train).reshape((-1, *tuple(src.shape)))
            self.base = EmpiricalScore(pts, weights=weights, schedule=schedule, backend=getattr(src, "backend", "auto")
                                       or "auto")  # fmt: skip
        elif _is_faiss_index(train_or_index):
            n_total = int(train_or_index.ntotal)
            if n_total == 0:
                raise ValueError("train_or_index: the faiss index is empty (N = 0)")
            metric = getattr(train_or_index, "metric_type", None)
            faiss = _faiss()
            if metric is not None and metric != faiss.METRIC_L2:
                raise ValueError("train_or_index: the faiss index must use the L2 metric (IndexFlatL2)")
            pts = np.asarray(train_or_index.reconstruct_n(0, n_total))
            self.base = EmpiricalScore(pts, schedule=schedule)
            self._index = train_or_index
        else:
            self.base = EmpiricalScore(train_or_index, schedule=schedule)

        self.schedule = self.base.schedule
        self.shape = tuple(self.base.shape)
        self.dtype = np.dtype(self.base.dtype)
        self.backend = self.base.backend
        self.sigma = sigma
        self.n_samples = n_samples
        self.mode = mode
        n_train = self.base.n_train

        if k is not None:
            k = _check_int(k, "k", 1)
            if k > n_train:
                raise ValueError(f"k: must be <= N = {n_train} (the training set size), got {k}")
            if n_random is None:
                n_random = min(k, n_train - k)
            n_random = _check_int(n_random, "n_random", 0)
            if n_random > n_train - k:
                raise ValueError(f"n_random: must be <= N - k = {n_train - k}, got {n_random}")
        elif n_random is not None:
            _check_int(n_random, "n_random", 0)
        self.k = k
        self.n_random = n_random if k is not None else None
        self._rng = check_rng(rng)
        self._lock = threading.Lock()
        self._fixed: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._smoothed = None
        if k is None:
            self._smoothed = SmoothedScore(self.base, GaussianKernel(sigma), n_samples=n_samples, mode=mode,
                                           antithetic=False, rng=self._rng)  # fmt: skip
        elif self._index is None:
            faiss = _faiss()
            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(np.ascontiguousarray(self.train, dtype=np.float32))
        elif int(self._index.d) != self.dim:  # pragma: no cover - reconstruct_n gives index.d columns
            raise ValueError(f"train_or_index: index dimension {self._index.d} != data dimension {self.dim}")

    # -- public ---------------------------------------------------------------------------------
    @property
    def train(self) -> np.ndarray:
        """The training points as (N, d) rows."""
        return self.base.train

    @property
    def data(self):
        """The prepared training data of the dense model (used by ``cfdm(start="data")``)."""
        return self.base.data

    @property
    def n_train(self) -> int:
        return self.base.n_train

    def evaluate(self, x, t) -> ScoreResult:
        """Smoothed denoiser and score at (x, t) (schedule coordinates; see the class notes).

        Parameters
        ----------
        x : array-like, (M, *shape) or (M, d), float32/float64
        t : float or (M,) array, times of the schedule (0 < t < 1 for ``cfdm``).
        """
        if self._smoothed is not None:
            return self._smoothed.evaluate(x, t)
        return self._evaluate_knn(x, t)

    def perturbations(self, n_queries: int) -> np.ndarray:
        """The fixed perturbations sigma eps (n_samples, n_queries, *shape) of "fixed" mode.

        They are the draws used by every evaluation of a batch of ``n_queries`` rows (drawn now
        if no such batch has been evaluated yet).  Row m of a batch gets ``[:, m]``.
        """
        if self.mode != "fixed":
            raise ValueError(f"mode: perturbations are only fixed in 'fixed' mode, this model has mode={self.mode!r}")
        n_queries = _check_int(n_queries, "n_queries", 0)
        if self._smoothed is not None:
            if self.sigma == 0.0:
                return np.zeros((self.n_samples, n_queries, *self.shape))
            z, _, _ = self._smoothed._draws(n_queries)
        else:
            z, _ = self._fixed_draws(n_queries)
        return (self.sigma * z).reshape((self.n_samples, n_queries, *self.shape))

    def barycentres(self, x) -> np.ndarray:
        """``(1/n) sum_m x_{NN(x + sigma eps_m)}`` for each row of ``x`` with the fixed draws.

        The fixed points of the "fixed"-mode sampler at t -> 1 (science.md §2.1.6): outputs of the
        sampler satisfy ``x ~= barycentres(x)``.  Nearest neighbours in float64 (exact).
        Returns float64 of the shape of ``x``.
        """
        x_rows, _ = self._check_queries(x)
        n_q = x_rows.shape[0]
        off = self.perturbations(n_q).reshape(self.n_samples, n_q, self.dim)
        pts = np.asarray(self.train, dtype=np.float64)
        half_sq = 0.5 * np.einsum("ij,ij->i", pts, pts)
        w = (x_rows.astype(np.float64)[None] + off).reshape(-1, self.dim)
        nn = np.empty(w.shape[0], dtype=np.int64)
        for c0 in range(0, w.shape[0], _KNN_BLOCK_ROWS):
            blk = w[c0 : c0 + _KNN_BLOCK_ROWS]
            nn[c0 : c0 + blk.shape[0]] = np.argmin(half_sq[None, :] - blk @ pts.T, axis=1)
        out = pts[nn].reshape(self.n_samples, n_q, self.dim).mean(axis=0)
        return out.reshape((n_q, *self.shape))

    def clear_cache(self) -> None:
        """Forget the draws of "fixed" mode (the next call draws new ones from ``rng``)."""
        with self._lock:
            self._fixed.clear()
        if self._smoothed is not None:
            self._smoothed.clear_cache()

    def __repr__(self) -> str:
        knn = "" if self.k is None else f", k={self.k}, n_random={self.n_random}"
        return (
            f"CFDMScore(n_train={self.n_train}, shape={self.shape}, sigma={self.sigma!r}, n_samples={self.n_samples}, "
            f"mode={self.mode!r}, schedule={self.schedule.name!r}{knn})"
        )

    # -- kNN estimator --------------------------------------------------------------------------
    def _fixed_draws(self, n_q: int) -> tuple[np.ndarray, int]:
        """(eps (n, n_q, d), tail seed) drawn once per batch shape; eps first, as SmoothedScore."""
        key = (n_q, self.n_samples)
        with self._lock:
            hit = self._fixed.get(key)
            if hit is None:
                z = self._rng.standard_normal((self.n_samples, n_q, self.dim))
                z.setflags(write=False)
                seed = int(self._rng.integers(0, 2**63 - 1))
                hit = (z, seed)
                self._fixed[key] = hit
        return hit

    def _evaluate_knn(self, x, t) -> ScoreResult:
        x_rows, out_dtype = self._check_queries(x)
        n_q, dim = x_rows.shape
        alpha, s = schedule_coefficients(self.schedule, t, n_q)
        st = s / alpha
        n = self.n_samples
        if self.mode == "fixed":
            z, seed = self._fixed_draws(n_q)
            tail_rng = np.random.default_rng(seed)
        else:
            with self._lock:
                z = self._rng.standard_normal((n, n_q, dim))
                seed = int(self._rng.integers(0, 2**63 - 1))
            tail_rng = np.random.default_rng(seed)
        x64 = x_rows.astype(np.float64, copy=False)
        w = (x64[None] + self.sigma * z).reshape(n * n_q, dim)  # perturbed queries, sample-major
        a_rep = np.tile(alpha, n)
        st_rep = np.tile(st, n)
        d_rows = np.empty((n * n_q, dim))
        for c0 in range(0, n * n_q, _KNN_BLOCK_ROWS):
            c1 = min(n * n_q, c0 + _KNN_BLOCK_ROWS)
            d_rows[c0:c1] = self._knn_denoise(w[c0:c1] / a_rep[c0:c1, None], st_rep[c0:c1], tail_rng)
        d_units = d_rows.reshape(n, n_q, dim)
        denoised = d_units.mean(axis=0)
        inv_s2 = 1.0 / (s * s)
        score = (alpha[:, None] * denoised - x64) * inv_s2[:, None]
        if n >= 2:
            dev = d_units - denoised[None]
            tr = np.einsum("nmd,nmd->m", dev, dev) / (n - 1)
            mc_stderr = alpha * inv_s2 * np.sqrt(tr / n)
        else:
            mc_stderr = np.full(n_q, np.inf)
        return ScoreResult(
            denoised=denoised.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            sigma=st,
            backend="faiss",
            mc_stderr=mc_stderr,
            path=np.full(n_q, "knn-stochastic", dtype=object),
        )

    def _knn_denoise(self, y: np.ndarray, st: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        """Stratified (k nearest + L uniform) self-normalised denoiser at VE rows y (B, d)."""
        n_train, k, n_rand = self.n_train, self.k, self.n_random
        _, nbr = self._index.search(np.ascontiguousarray(y, dtype=np.float32), k)
        nbr = nbr.astype(np.int64)
        if np.any(nbr < 0):  # pragma: no cover - flat indexes return k valid ids for k <= N
            raise RuntimeError("faiss returned fewer than k neighbours")
        rand = _sample_complement(nbr, n_train, n_rand, gen) if n_rand else None
        # exact float64 partials over the gathered rows (the kernels of KNNScore); the uniform
        # tail stands for (N - k) / L times its weight: a shift of its max logit, then a merge
        pts, log_w = self.base.data.points, self.base.data.log_w
        y_rows = np.ascontiguousarray(y, dtype=pts.dtype)
        p = gathered_partials(self.base, y_rows, st, pts, log_w, _backends.Segments.from_ids(nbr))
        if n_rand:
            p_r = gathered_partials(self.base, y_rows, st, pts, log_w, _backends.Segments.from_ids(rand))
            p = merge(p, dataclasses.replace(p_r, m=p_r.m + math.log((n_train - k) / n_rand)))
        # D - y accumulated from differences (no cancellation at small sigma~)
        return y_rows.astype(np.float64) + p.v / p.z[:, None]

