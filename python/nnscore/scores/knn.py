"""KNNScore: the empirical score from a few training points, with a certified error per query.

At small and moderate noise the posterior weights of the empirical model sit on a few training
points.  :class:`KNNScore` computes the exact partials of a candidate set K (the k nearest
neighbours, or every row of the probed cells of an IVF index) in float64 difference form and
bounds what the other points could add (science.md §3):

    T <= T_bar = sum over excluded mass  pi_j exp(-r_j^2 / (2 sigma~^2)),   ratio = T_bar / S_K,

with ``r_j`` a certified lower bound on the distance of excluded point j (one radius ``r_K`` for
a kNN list, per-cell bounds ``L_c`` for IVF; see :class:`~nnscore.TrainingIndex`), and

* log-density:  0 <= log p - log p_K <= log(1 + ratio)                              (i)
* denoiser:     ||D - D_K|| <= min( eps_bar (R + ||D_K - c||),                        (ii)
                                    sum_out pi_j [g(r_j) + ||y - D_K|| e^{-r_j^2/2s^2}] / S_K )  (iii)
  with eps_bar = ratio / (1 + ratio), R = max_i ||x_i - c||, g(r) = r e^{-r^2/2s^2} (r >= s),
  s e^{-1/2} (r < s);
* trace:        |tr C - tr C_K| <= eps_bar (tr C_K + 2 (R + ||D_K - c||)^2)            (iv)
* score:        ||score - score_K|| = ||D - D_K|| / (a sigma~^2)                      (v)

The bound reported is the smaller of (ii) and (iii) plus a float64 rounding allowance; the
result's final cast to a float32 query dtype is not included.  A query whose bound cannot meet
``tol`` within ``k_max`` neighbours (kNN) or within a scan budget (IVF) goes to the exact dense
engine (``fallback="exact"``; with an IVF index on the host backends it skips the cells the dense
kernels may skip, see ``cell_pruning``; its ``error_bound`` is then the dense engine's accuracy target,
which its rounding model guarantees but which is not an a-posteriori certificate) or raises
(``fallback="error"``).  HNSW indexes give no certificate: their queries are ``"uncertified"``
(``error_bound`` NaN) and never fall back.  Where ``tol`` is below what float64 resolves (a
query far from the data at tiny noise: logits of size |m| carry errors ~ d u64 |m|), the query
is computed exactly, its ``error_bound`` states the accuracy obtained, and a
:class:`~nnscore.PrecisionWarning` says how many queries that concerns.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings

import numpy as np

from .. import backends as _backends
from .. import schedules as _schedules
from .._threads import effective_n_threads
from .._validation import check_int
from ..exceptions import PrecisionWarning
from ..index.faiss_index import TrainingIndex
from ..partials import Partial, assemble, merge, take
from .base import ScoreModel, schedule_coefficients
from .cell_pruning import CellPruning, key_scan_partials
from .empirical import EmpiricalScore
from .result import ScoreResult, result_from_partial

__all__ = ["KNNScore", "KNNSamplerCache", "TOL_KINDS", "KNN_PATHS"]

#: Quantities a tolerance can be put on (see :class:`KNNScore`).
TOL_KINDS = ("denoiser_rel", "denoiser_abs", "score", "log_density", "posterior_variance")
#: Values of ``ScoreResult.path`` for KNNScore.
KNN_PATHS = ("knn", "knn-cached", "ivf-certified", "exact", "uncertified")
#: An IVF query whose certificate needs more rows than this fraction of N (and than 4 mean cells)
#: goes to the dense engine (the float64 gathered scan costs several times a dense tile per row).
IVF_SCAN_FRACTION = 1.0 / 8.0
#: Cells an IVF query scans (nearest centroids first) when its first cell missed its near
#: neighbours (see KNNScore._ivf_select).
IVF_RETRY_CELLS = 8
#: A batch with a single noise level tries this many queries first; if most fail the tolerance,
#: the rest of the batch goes straight to the dense engine (the fallback decides early).
PILOT_QUERIES = 16
#: Accuracy floor of the dense engine (relative to R, and to |log p|) beyond its fast_tol rule,
#: as tested (README "Numerics"): float32 1e-6 |log p|; float64 1e-10.
_DENSE_FLOOR = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-10}
_B_D, _B_LOGP, _B_TRACE = 0, 1, 2  # rows of the bounds array: ||dD||, |d log p|, |d tr C|
#: Queries per block of the IVF path (bounds the (block, nlist) bound matrices).
_IVF_BLOCK = 1024
_U64 = 2.0**-53


def _lse(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """log sum exp along ``axis`` (-inf for an all -inf row)."""
    m = np.max(a, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m_safe), axis=axis)) + np.squeeze(m_safe, axis=axis)
    return out


def _log_g(r: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log g(r) = log sup_{u >= r} u exp(-u^2 / (2 s^2)) (science.md §3.2 (iii))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.log(np.maximum(r, 1e-300)) - r * r / (2.0 * sigma * sigma)
    near = np.log(sigma) - 0.5
    return np.where(r >= sigma, far, near)


class PriorMass:
    """Prior masses in the kernels' shifted units (w = pi / max pi) and bounds of what lies
    outside a list of training ids: the Pi_out of the certificates (science.md §3.1)."""

    def __init__(self, data: _backends.TrainingData):
        self.n = data.n_points
        self.w = None if data.log_w is None else np.exp(data.log_w)
        self.total = float(self.n) if self.w is None else float(np.sum(self.w))

    def log_outside(self, ids: np.ndarray, k=None) -> np.ndarray:
        """log of an upper bound of the mass outside the first ``k[i]`` ids of row i of ``ids``
        (M, >= k) (all of the row when k is None); -inf when the ids cover all N rows."""
        k = np.broadcast_to(np.asarray(ids.shape[1] if k is None else k, dtype=np.int64), (ids.shape[0],))
        with np.errstate(divide="ignore"):
            if self.w is None:
                return np.log(np.maximum(self.n - k, 0).astype(np.float64))
            cum = np.concatenate([np.zeros((ids.shape[0], 1)), np.cumsum(self.w[ids], axis=1)], axis=1)
            inside = cum[np.arange(ids.shape[0]), k]
            # a 1e-12 relative slack on the total, and as much again, cover the rounding of both sums
            up = self.total * (1.0 + 1e-12)
            return np.where(k >= self.n, -np.inf, np.log(np.maximum(up - inside, 0.0) + 1e-12 * up))


def candidate_geometry(data, p: Partial, y) -> tuple[np.ndarray, np.ndarray]:
    """(||y - D_K||, ||D_K - c||) of a candidates' partial of queries ``y`` (c: the data centre)."""
    delta = p.v / p.z[:, None]  # D_K - y
    dk_c = y.astype(np.float64) + delta - data.center.astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", delta, delta)), np.sqrt(np.einsum("ij,ij->i", dk_c, dk_c))


def gathered_partials(model, y, st, points, log_w, seg) -> Partial:
    """Exact float64 partials of ``model``'s queries ``y`` over the rows of their segments of
    ``points`` (``log_w`` aligned with them), normalised by the full training mass."""
    data = model.data
    work = 4.0 * float(seg.length.sum()) * data.dim
    return _backends.partials_segments(model.backend, np.ascontiguousarray(y), st, points, log_w, seg,
                                       effective_n_threads(model.n_threads, work), log_w_shift=data.log_w_shift,
                                       log_mass=data.log_mass)  # fmt: skip


def _select_cells(low2, log_mass, sigma, log_budget, cell_rows, row_budget, probed, n_threads) -> np.ndarray:
    """Mark in ``probed`` (uint8) the cells to scan so that the unprobed tail sum stays below
    exp(log_budget): the smallest tail terms are left out first (nnscore/ivf_bounds.hpp).
    Returns the (B,) bool mask of queries whose unavoidable cells exceed ``row_budget`` rows
    (left unmarked)."""
    cell_rows = np.ascontiguousarray(cell_rows, dtype=np.int64)
    if _backends.HAS_CORE:
        over = np.zeros(low2.shape[0], dtype=np.uint8)
        _backends._core.ivf_select_cells(low2, log_mass, sigma, log_budget, cell_rows, float(row_budget), probed,
                                         over, n_threads)  # fmt: skip
        return over.astype(bool)
    with np.errstate(divide="ignore"):
        rel = log_mass[None, :] - low2 / (2.0 * sigma * sigma)[:, None] - log_budget[:, None]
    rel[probed.astype(bool)] = -np.inf
    order = np.argsort(rel, axis=1)
    cum = np.cumsum(np.exp(np.take_along_axis(rel, order, axis=1)), axis=1)
    scan = np.zeros_like(probed)
    np.put_along_axis(scan, order, (cum > 1.0).astype(np.uint8), axis=1)
    probed |= scan
    return np.zeros(low2.shape[0], dtype=bool)


def _marked_rows(marked: np.ndarray, cell_rows: np.ndarray, n_threads: int) -> np.ndarray:
    """(B,) int64: the rows of the cells marked in each row of ``marked`` ((B, nlist) uint8)."""
    if _backends.HAS_CORE:
        rows = np.empty(marked.shape[0], dtype=np.int64)
        _backends._core.ivf_marked_rows(np.ascontiguousarray(marked, dtype=np.uint8), cell_rows, rows, n_threads)
        return rows
    return (marked.astype(np.float64) @ cell_rows.astype(np.float64)).astype(np.int64)  # exact below 2^53 rows


def _tail_sums(low2, log_mass, sigma, probed, n_threads):
    """(log_t, log_g) over each query's unprobed cells (see nnscore/ivf_bounds.hpp)."""
    low2 = np.ascontiguousarray(low2, dtype=np.float64)
    if _backends.HAS_CORE:
        log_t, log_g = np.empty(low2.shape[0]), np.empty(low2.shape[0])
        _backends._core.ivf_tail_sums(low2, log_mass, sigma, probed, log_t, log_g, n_threads)
        return log_t, log_g
    skip = probed.astype(bool) | np.isinf(low2)
    s = sigma[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = _lse(np.where(skip, -np.inf, log_mass[None, :] - low2 / (2.0 * s * s)), axis=1)
        log_g = _lse(np.where(skip, -np.inf, log_mass[None, :] + _log_g(np.sqrt(low2), s)), axis=1)
    up = math.log1p(2.0 * low2.shape[1] * 2.0**-53)
    return log_t + up, log_g + up


@dataclasses.dataclass
class _Certified:
    """VE-space result of one certified evaluation (per query)."""

    partial: Partial
    bounds: np.ndarray  # (3, M): bounds on ||dD|| (data units), |d log p|, |d tr C|; nan when uncertified
    path: np.ndarray  # object array of path names
    k_used: np.ndarray  # int64
    # what a sampler cache keeps: per query the candidate rows (kNN ids) or probed cells (IVF)
    sets: list


class KNNScore(ScoreModel):
    """Empirical score from nearest neighbours, exact to a certified tolerance per query.

    Parameters
    ----------
    train_or_index : array-like (N, d) or (N, *shape), or a :class:`~nnscore.TrainingIndex`
        The training set; an array is indexed with ``TrainingIndex(train, kind=index_kind)``, an
        IVF one with :func:`~nnscore.index.scan_nlist` cells (sqrt(N)/2: whole cells are scanned).
    k : "auto" or int
        kNN indexes: "auto" searches ``k_max`` neighbours and uses the shortest prefix (k_max/8,
        k_max/4, k_max/2, k_max) whose certificate meets ``tol``; an int uses exactly k (an
        error if k > N).  IVF indexes scan whole cells: k is ignored (``k_used`` reports the rows).
    tol : float > 0 or None
        Tolerance on ``tol_kind``.  None (only with an int k, or an IVF index: then
        ``nprobe`` cells are scanned) reports the certified bound without enforcing one.
    tol_kind : "denoiser_rel" (||D - D_K|| <= tol R, R = max_i ||x_i - mean|| the data radius),
        "denoiser_abs" (||D - D_K|| <= tol), "score" (||score error|| <= tol, x-units),
        "log_density" (|log p error| <= tol) or "posterior_variance" (|tr Cov error| <= tol,
        data units squared; science.md §3.2 (iv), for divergences and likelihoods).
    schedule, weights, backend, n_threads : as for :class:`~nnscore.EmpiricalScore` (``weights``
        non-uniform pi: the bounds use the excluded prior mass).
    fallback : "exact" (default) or "error": what to do with a query the candidates cannot certify.
    k_max : int, default 256 (clamped to N).
    index_kind, rng : passed to :class:`~nnscore.TrainingIndex` when an array is given.
    """

    def __init__(self, train_or_index, k="auto", tol=1e-4, tol_kind="denoiser_rel", schedule="ve",
                 fallback="exact", k_max=256, weights=None, backend="auto", n_threads=None, index_kind="auto",
                 rng=None):  # fmt: skip
        if isinstance(train_or_index, TrainingIndex):
            self.index = train_or_index
            shape = (self.index.d,)
        else:
            self.index = TrainingIndex(train_or_index, kind=index_kind, n_threads=n_threads, rng=rng, nlist="scan")
            shape = tuple(np.shape(train_or_index)[1:])  # (N, *shape): queries may keep the shape
        self._exact = EmpiricalScore(self.index._train, weights=weights, schedule=schedule, backend=backend,
                                     n_threads=n_threads)  # fmt: skip
        self.schedule = self._exact.schedule
        self.backend = self._exact.backend
        self.n_threads = n_threads
        self.data = self._exact.data
        self.shape = shape
        self.dtype = self.data.points.dtype
        n = self.data.n_points
        self.k_max = min(check_int(k_max, "k_max", minimum=1), n)
        if isinstance(k, str):
            if k != "auto":
                raise ValueError(f"k: expected 'auto' or a positive int, got {k!r}")
        else:
            k = check_int(k, "k", minimum=1)
            if k > n:
                raise ValueError(f"k: must be <= N={n} (the training set size), got {k}")
        self.k = k
        if tol is not None:
            if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
                raise ValueError(f"tol: expected a finite float > 0 or None, got {tol!r}")
            tol = float(tol)
        elif k == "auto" and self.index.kind != "ivf":
            raise ValueError("tol: None (no tolerance) needs an explicit int k")
        self.tol = tol
        if tol_kind not in TOL_KINDS:
            raise ValueError(f"tol_kind: expected one of {TOL_KINDS}, got {tol_kind!r}")
        self.tol_kind = tol_kind
        if fallback not in ("exact", "error"):
            raise ValueError(f"fallback: expected 'exact' or 'error', got {fallback!r}")
        self.fallback = fallback
        log_w = self.data.log_w
        self._prior = PriorMass(self.data)
        if self.index.kind == "ivf":
            order, offsets = self.index.cell_order, self.index.cell_offsets
            # Cell-sorted copy: each cell is one contiguous segment of the gathered kernel.  On the
            # host backends it is the exact engine's too: the queries that fall back skip the
            # cells the dense kernels may skip (EmpiricalScore(cells=...)), for no extra memory.
            if self.backend in ("cpp", "numba"):
                self._exact.cells = CellPruning(self.data, self.index)
                self._cells, self._order = self._exact.cells.cells, self._exact.cells.order
            else:
                self._cells, self._order = _backends.CellSortedData.keyed(self.data.points, log_w, order, offsets,
                                                                          self.data.center)  # fmt: skip
            sizes = np.diff(offsets)
            if log_w is None:
                mass = sizes.astype(np.float64)
            else:
                cell_of_row = np.repeat(np.arange(sizes.size), sizes)
                mass = np.bincount(cell_of_row, weights=self._prior.w[order], minlength=sizes.size) * (1.0 + 1e-12)
            with np.errstate(divide="ignore"):
                self._log_cell_mass = np.log(mass)
            self._cell_sizes = np.ascontiguousarray(sizes, dtype=np.int64)
            self.index.prepare_bounds()  # the one-off O(nlist^2 d) part, not in the first evaluation

    # ------------------------------------------------------------------ properties
    @property
    def train(self) -> np.ndarray:
        return self.data.points

    @property
    def n_train(self) -> int:
        return self.data.n_points

    def __repr__(self) -> str:
        return (f"KNNScore(n_train={self.n_train}, shape={self.shape}, index={self.index.kind!r}, k={self.k!r}, "
                f"tol={self.tol!r}, tol_kind={self.tol_kind!r}, schedule={self.schedule!r}, "
                f"fallback={self.fallback!r})")  # fmt: skip

    # ------------------------------------------------------------------ public API
    def evaluate(self, x, t) -> ScoreResult:
        """Everything :meth:`EmpiricalScore.evaluate` returns, plus ``error_bound`` (certified,
        in ``tol_kind`` units), ``path`` and ``k_used`` per query."""
        return self._evaluate(x, t, cache=None)

    def denoiser_error_bound(self, res: ScoreResult, alpha) -> np.ndarray | None:
        """``res.error_bound`` of one of this model's results as a bound on ||D - D_exact|| in
        data units (``alpha``: a(t) per query), or None for tol_kinds without one (log_density,
        posterior_variance).  Smoothed scores fold it into their own bound."""
        if res.error_bound is None or self.tol_kind in ("log_density", "posterior_variance"):
            return None
        return np.asarray(res.error_bound, dtype=np.float64) * self._denoiser_unit(alpha, res.sigma)

    def _denoiser_unit(self, alpha, st) -> np.ndarray:
        """Per query, ||dD|| (data units) per unit of a denoiser/score tol_kind: 1, R or a st^2."""
        st = np.asarray(st, dtype=np.float64)
        if self.tol_kind == "denoiser_rel":
            return np.full(st.shape, self.data.radius)
        if self.tol_kind == "score":
            return np.asarray(alpha, dtype=np.float64) * st * st
        return np.ones(st.shape)

    def sampler_cache(self) -> "KNNSamplerCache":
        """A stateful view of this model that reuses candidate sets across sampler steps."""
        return KNNSamplerCache(self)

    # ------------------------------------------------------------------ internals
    def _evaluate(self, x, t, cache) -> ScoreResult:
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = self._to_ve(x_rows, alpha)
        st = s / alpha
        cert = self._certified_ve(y, st, alpha, cache)
        if cache is not None:
            cache._last_sets = cert.sets
        res = result_from_partial(cert.partial, y, alpha, s, self.shape, out_dtype, self.backend)
        bound = self._bound_in_units(cert, alpha, st)
        if self.tol is not None:
            unresolved = int(np.sum(bound > self.tol))
            if unresolved:
                warnings.warn(
                    f"{unresolved} of {bound.size} queries: tol={self.tol} ({self.tol_kind}) is below what float64 "
                    "resolves there (far from the data or at tiny noise); they were computed exactly and their "
                    "error_bound is the accuracy guaranteed instead",
                    PrecisionWarning, stacklevel=3,
                )  # fmt: skip
        return dataclasses.replace(res, error_bound=bound, path=cert.path, k_used=cert.k_used)

    def _partials_ve(self, y: np.ndarray, sigma: np.ndarray) -> Partial:
        return self._certified_ve(y, sigma, np.ones(y.shape[0]), None).partial

    def _bound_in_units(self, cert: _Certified, alpha, st) -> np.ndarray:
        kind = self.tol_kind
        if kind == "log_density":
            return cert.bounds[_B_LOGP]
        if kind == "posterior_variance":
            return cert.bounds[_B_TRACE]
        bound_d, unit = cert.bounds[_B_D], self._denoiser_unit(alpha, st)
        with np.errstate(divide="ignore", invalid="ignore"):  # R = 0: all points coincide, bound 0
            return np.where(unit > 0, bound_d / unit, np.where(bound_d > 0, np.inf, 0.0))

    def _targets(self, st, alpha):
        """(eta_d, rho): denoiser tolerance (data units; inf for log_density) and the tail ratio
        T_bar / S_K that certainly meets the tolerance ((ii) with ||D_K - c|| <= R, or (i))."""
        n_q, tol, r = st.shape[0], self.tol, self.data.radius
        if tol is None:
            return np.full(n_q, np.inf), np.full(n_q, np.inf)
        if self.tol_kind == "log_density":
            return np.full(n_q, np.inf), np.full(n_q, math.expm1(tol))
        if self.tol_kind == "posterior_variance":  # (iv) with tr C_K <= 4R^2, rho <= 2R
            return np.full(n_q, np.inf), np.full(n_q, tol / (12.0 * r * r) if r > 0 else np.inf)
        eta = tol * self._denoiser_unit(alpha, st)
        rho = eta / (2.0 * r) if r > 0 else np.full(n_q, np.inf)
        return eta, rho

    def _meets(self, b, eta):
        """Whether bounds ``b`` (3, n) meet the tolerance (eta: the denoiser's, per query)."""
        if self.tol is None:
            return np.ones(b.shape[1], dtype=bool)
        if self.tol_kind == "log_density":
            return b[_B_LOGP] <= self.tol
        if self.tol_kind == "posterior_variance":
            return b[_B_TRACE] <= self.tol
        return b[_B_D] <= eta

    def _threads(self, work: float) -> int:
        return effective_n_threads(self.n_threads, work)

    def _log_s(self, p: Partial) -> np.ndarray:
        """log S_K in the units of the tail masses (pi / max pi: the kernels' shifted log weights)."""
        with np.errstate(divide="ignore"):
            return p.m - self.data.log_w_shift + np.log(p.z)

    def _rounding(self, p: Partial, n_terms) -> tuple[np.ndarray, np.ndarray]:
        """(relative error of float64 sums, absolute error of the logits) of a computed partial.

        Sums of n_terms terms of d products: <= (n_terms + d + 8) u64, doubled for v/z.  A
        squared distance in float64 difference form is within (d + 3) u64 of its size, so a logit
        -||y - x||^2 / (2 s^2) of the terms that matter (within ~50 of the max |m|) is off by
        e <= (d + 4) u64 (|m| + 50): log p moves by <= e and D by <= (e^{2e} - 1) sqrt(tr C)
        (D' - D = sum (lambda'_i - lambda_i)(x_i - D), |lambda'_i - lambda_i| <= (e^{2e} - 1)
        lambda_i, then Cauchy-Schwarz; see :meth:`_spread`).  Far from the data at tiny sigma
        this can dominate: it is what float64 resolves there (science.md §1.4(a)).
        """
        rel = 4.0 * _U64 * (np.asarray(n_terms, dtype=np.float64) + self.dim + 8)
        logit = 1.01 * _U64 * (self.dim + 4) * (np.abs(p.m - self.data.log_w_shift) + 50.0)
        return rel, logit

    def _spread(self, p: Partial, rel, r_y) -> np.ndarray:
        """Bound of sum_i lambda_i ||x_i - D|| (what relative weight errors move D by): the smaller
        of sqrt(tr C) (the computed q/z - ||v/z||^2, which cancels far from the data, plus 4 rel
        q/z for that) and (1 - lambda_top) 2R (the top weight is exactly 1 of z in a partial;
        writing D' - D = sum (lambda'_i - lambda_i)(x_i - x_top))."""
        second = p.q / p.z
        trace = second - r_y * r_y
        off_top = np.maximum(p.z - 1.0, 0.0) / p.z
        return np.minimum(np.sqrt(np.maximum(trace, 0.0) + 4.0 * rel * second),
                          off_top * 2.0 * self.data.radius * (1.0 + 1e-12))  # fmt: skip

    def _finish_bounds(self, p: Partial, y, st, log_t, log_gsum, n_terms, log_cut=None):
        """Bounds (ii)/(iii) and (i) of a candidate partial ``p`` over ``n_terms`` rows, with log
        tail mass ``log_t`` (log sum over excluded j of pi_j e^{-r_j^2/2s^2}) and ``log_gsum``
        (log sum pi_j g(r_j)); plus the float64 rounding allowance of :meth:`_rounding`.

        The exact kernels skip candidate terms below (max - log_cut) (default :func:`backends.skip_log_cut`):
        at most ``n_terms`` of them, each of weight <= e^(m - log_cut) at a distance <= ||y - c|| + R
        from the query.  They join the excluded tail."""
        log_s = self._log_s(p)
        if log_cut is None:
            log_cut = _backends.skip_log_cut(self.n_train, self.dtype)
        with np.errstate(divide="ignore"):
            log_skip = np.log(np.maximum(np.asarray(n_terms, dtype=np.float64), 1.0)) - log_cut \
                + p.m - self.data.log_w_shift
            yc = y.astype(np.float64) - self.data.center
            far = np.log(np.sqrt(np.einsum("ij,ij->i", yc, yc)) + self.data.radius)
        log_t = np.logaddexp(log_t, log_skip)
        log_gsum = np.logaddexp(log_gsum, log_skip + far)
        with np.errstate(over="ignore", invalid="ignore"):
            lr = log_t - log_s  # log ratio
            ratio = np.exp(lr)
            eps = np.where(np.isfinite(lr), 1.0 / (1.0 + np.exp(-lr)), np.where(lr > 0, 1.0, 0.0))
        r_y, dist_c = candidate_geometry(self.data, p, y)
        R = self.data.radius * (1.0 + 1e-12)
        b2 = eps * (R + dist_c)
        with np.errstate(over="ignore", invalid="ignore"):
            b3 = np.exp(log_gsum - log_s) + r_y * ratio
        b3 = np.where(np.isnan(b3), np.inf, b3)
        rel, logit = self._rounding(p, n_terms)
        out = np.empty((3, p.m.shape[0]))
        none = np.isneginf(log_t)  # nothing excluded
        out[_B_D] = np.where(none, 0.0, np.minimum(b2, b3)) + rel * (R + dist_c + r_y) \
            + np.expm1(2.0 * logit) * self._spread(p, rel, r_y)
        with np.errstate(over="ignore", invalid="ignore"):
            truncation = np.where(np.isneginf(log_t), 0.0, np.logaddexp(0.0, lr))
        out[_B_LOGP] = truncation + rel * (1.0 + np.abs(log_s)) + logit
        # (iv): |tr C - tr C_K| <= eps_bar (tr C_K + 2 rho^2), rho = R + ||D_K - c||; relative
        # weight errors e move tr C by <= (e^{2e} - 1)(2 rho)^2 (+ the shift of D, squared)
        second = p.q / p.z
        trace_k = np.maximum(second - r_y * r_y, 0.0)
        rho_c = R + dist_c
        out[_B_TRACE] = np.where(none, 0.0, eps * (trace_k + 2.0 * rho_c * rho_c)) + 4.0 * rel * second \
            + 2.0 * np.expm1(2.0 * logit) * 4.0 * rho_c * rho_c
        return out

    def _certified_ve(self, y, st, alpha, cache) -> _Certified:
        n_q = y.shape[0]
        eta, rho = self._targets(st, alpha)
        parts: list = []
        bounds = np.full((3, n_q), np.nan)
        path = np.full(n_q, "exact", dtype=object)
        k_used = np.zeros(n_q, dtype=np.int64)
        sets = [None] * n_q
        todo = np.arange(n_q)
        out = (parts, bounds, path, k_used, sets)
        if n_q and cache is not None:
            todo = self._from_cache(y, st, eta, rho, cache, todo, out)
        if todo.size and self.index.kind == "ivf":
            todo = self._with_pilot(functools.partial(self._ivf, cache=cache), y, st, eta, rho, todo, out)
        elif todo.size:
            todo = self._with_pilot(self._knn_rows, y, st, eta, rho, todo, out)
        if todo.size:
            if self.fallback == "error":
                raise ValueError(
                    f"tol: {todo.size} of {n_q} queries cannot be certified to {self.tol_kind} <= {self.tol} "
                    f"with k_max={self.k_max} (index {self.index.kind!r}); raise k_max or use fallback='exact'"
                )
            self._dense(y, st, eta, rho, todo, out)
        partial = assemble(parts, n_q, self.dim, self.data.log_mass)
        return _Certified(partial, bounds, path, k_used, sets)

    # -- exact dense fallback -------------------------------------------------------------------
    def _dense(self, y, st, eta, rho, rows, out):
        parts, bounds, path, k_used, sets = out
        R = self.data.radius
        # The dense engine's tested accuracy (README "Numerics"): GEMM-form logit errors below
        # fast_tol under its rounding model, which move D by <= 2 fast_tol R and log p by
        # <= fast_tol (float32: fast_tol = 5e-6, lowered here when tol asks for more), and a
        # floor of 1e-10 R for float64 inputs; plus float64 rounding as for the other paths.
        ftol = _backends.FAST_TOL[self.dtype]
        if self.tol is not None:
            if self.tol_kind == "log_density":
                ftol = min(ftol, 0.45 * self.tol)
            elif self.tol_kind == "posterior_variance":
                ftol = min(ftol, 0.45 * self.tol / (8.0 * R * R)) if R > 0 else ftol
            elif R > 0:
                ftol = min(ftol, 0.45 * float(np.min(eta[rows])) / (2.0 * R))
        yr = np.ascontiguousarray(y[rows])
        if self._exact.cells is not None:  # the same engine and guarantee, cells skipped (cell_pruning)
            p = self._exact.cells.partials(self.backend, yr, st[rows], self.data, self._threads, fast_tol=ftol)
        else:
            work = 4.0 * rows.size * self.n_train * self.dim
            p = _backends.partials_dense(self.backend, yr, st[rows], self.data, self._threads(work), fast_tol=ftol)
        _scatter(parts, rows, p)
        rel, logit = self._rounding(p, self.n_train)
        r_y, dist_c = candidate_geometry(self.data, p, y[rows])
        floor = _DENSE_FLOOR[self.dtype]
        engine = max(2.0 * ftol, floor)  # relative weight error of the engine's logits
        bounds[_B_D, rows] = engine * R + np.expm1(2.0 * logit) * self._spread(p, rel, r_y) \
            + rel * (R + dist_c + r_y)
        log_s = self._log_s(p)
        bounds[_B_LOGP, rows] = 2.0 * ftol + floor * np.abs(log_s) + rel * (1.0 + np.abs(log_s)) + logit
        # tr C = sum lambda ||x - D||^2: weight errors move it by <= (e^{2e'} - 1) 4R^2 plus ||dD||^2
        weight = np.expm1(2.0 * (ftol + logit)) + floor
        bounds[_B_TRACE, rows] = 2.0 * weight * 4.0 * R * R + bounds[_B_D, rows] ** 2 + 4.0 * rel * p.q / p.z
        path[rows] = "exact"
        k_used[rows] = self.n_train

    # -- kNN lists (flat / HNSW) ----------------------------------------------------------------
    def _with_pilot(self, certify, y, st, eta, rho, rows, out):
        """Run ``certify`` on ``rows`` (returns the rows it could not certify).  A batch with one
        noise level tries PILOT_QUERIES rows first; if most fail, the rest go straight to the
        dense engine (the fallback decides early, without paying for searches or cell bounds)."""
        if self.tol is None or rows.size <= 2 * PILOT_QUERIES or not np.all(st[rows] == st[rows[0]]):
            return certify(y, st, eta, rho, rows, out)
        pilot = rows[:PILOT_QUERIES]
        failed = certify(y, st, eta, rho, pilot, out)
        if 2 * failed.size > pilot.size:
            return np.concatenate([failed, rows[PILOT_QUERIES:]])
        return np.concatenate([failed, certify(y, st, eta, rho, rows[PILOT_QUERIES:], out)])

    def _knn_rows(self, y, st, eta, rho, rows, out):
        parts, bounds, path, k_used, sets = out
        k_search = self.k_max if self.k == "auto" else self.k
        nb = self.index.search(y[rows], k_search)
        k_search = nb.k_used
        ids, sq = nb.ids, nb.sqdist
        s2 = 2.0 * st[rows] ** 2
        lw = np.zeros(ids.shape) if self.data.log_w is None else self.data.log_w[ids]
        logits = lw - sq / s2[:, None]
        certified = self.index.certified
        prefixes = [k_search] if self.k != "auto" else sorted({max(1, k_search // f) for f in (8, 4, 2, 1)})
        deflate = 1.0 - 8.0 * (self.dim + 4) * _U64
        choice = np.full(rows.size, len(prefixes) - 1)
        chosen = np.zeros(rows.size, dtype=bool)
        r2_at = np.empty((len(prefixes), rows.size))
        for j, kp in enumerate(prefixes):
            r2 = nb.r_k if kp == k_search else np.minimum(sq[:, kp] * deflate, nb.r_k)
            r2_at[j] = r2
            if not certified or self.tol is None:
                continue
            log_out = self._prior.log_outside(ids, kp)
            log_ratio = log_out - np.maximum(r2, 0.0) / s2 - _lse(logits[:, :kp])
            ok = (log_ratio <= np.log(rho[rows])) & ~chosen
            choice[ok] = j
            chosen |= ok
        kp_row = np.asarray(prefixes)[choice]
        r2 = np.maximum(r2_at[choice, np.arange(rows.size)], 0.0)
        mask = np.arange(k_search)[None, :] < kp_row[:, None]
        seg = _backends.Segments(np.concatenate([[0], np.cumsum(kp_row)]).astype(np.int64),
                                 np.ascontiguousarray(ids[mask]), np.ones(int(kp_row.sum()), dtype=np.int64))
        p = gathered_partials(self, y[rows], st[rows], self.data.points, self.data.log_w, seg)
        if certified:
            log_out = self._prior.log_outside(ids, kp_row)
            with np.errstate(divide="ignore"):
                log_t = log_out - r2 / s2
                log_t = np.where(np.isinf(r2), -np.inf, log_t)
                log_g = np.where(np.isinf(r2), -np.inf, log_out + _log_g(np.sqrt(r2), st[rows]))
            b = self._finish_bounds(p, y[rows], st[rows], log_t, log_g, kp_row)
            ok = self._meets(b, eta[rows])
            name = "knn"
        else:
            b = np.full((3, rows.size), np.nan)
            ok = np.ones(rows.size, dtype=bool)
            name = "uncertified"
        good = rows[ok]
        _scatter(parts, good, take(p, ok))
        bounds[:, good] = b[:, ok]
        path[good], k_used[good] = name, kp_row[ok]
        for i in np.flatnonzero(ok):
            sets[rows[i]] = {"ids": ids[i, : kp_row[i]].copy(), "r": float(np.sqrt(r2[i])),
                             "y": y[rows[i]].astype(np.float64)}  # fmt: skip
        return rows[~ok]

    # -- IVF branch and bound -------------------------------------------------------------------
    def _ivf(self, y, st, eta, rho, rows, out, cache=None):
        left = []
        for b0 in range(0, rows.size, _IVF_BLOCK):
            left.append(self._ivf_block(y, st, eta, rho, rows[b0 : b0 + _IVF_BLOCK], out, cache))
        return np.concatenate(left) if left else rows[:0]

    def _ivf_block(self, y, st, eta, rho, rows, out, cache):
        parts, bounds, path, k_used, sets = out
        idx = self.index
        yb = y[rows]
        sb = st[rows]
        nearest = np.empty(rows.size, dtype=np.int64)  # each query's own cell: its nearest centroid
        low2 = idx.cell_lower_bounds(yb, nearest=nearest)  # (B, nlist) squared distance lower bounds per cell
        nlist = low2.shape[1]
        probed = np.zeros(low2.shape, dtype=np.uint8)
        if self.tol is None:
            npr = min(nlist, idx.nprobe)
            first = np.argpartition(low2, npr - 1, axis=1)[:, :npr] if npr < nlist else \
                np.tile(np.arange(nlist), (rows.size, 1))
            np.put_along_axis(probed, first, 1, axis=1)
        else:
            probed[np.arange(rows.size), nearest] = 1
            if cache is not None:  # warm start: the cells that certified this row last time
                for i, r in enumerate(rows):
                    prev = cache.entry(r)
                    if prev is not None and "cells" in prev:
                        probed[i, prev["cells"]] = 1
        log_cut = self._cells_log_cut(rho[rows])
        p = self._marked_partial(yb, sb, probed, nearest, log_cut)
        too_many = np.zeros(rows.size, dtype=bool)
        if self.tol is not None:
            p, too_many = self._ivf_select(p, yb, sb, rho[rows], low2, probed, log_cut)
        log_t, log_g = _tail_sums(low2, self._log_cell_mass, sb, probed, self._threads(low2.size))
        scanned = self._marked_rows(probed)
        b = self._finish_bounds(p, yb, sb, log_t, log_g, scanned, log_cut)
        ok = self._meets(b, eta[rows]) & ~too_many & np.isfinite(p.m)
        good = rows[ok]
        p = dataclasses.replace(p, top1=self._original_rows(p.top1))
        _scatter(parts, good, take(p, ok))
        bounds[:, good] = b[:, ok]
        path[good] = "ivf-certified"
        k_used[good] = scanned[ok]
        if cache is not None:
            for i in np.flatnonzero(ok):
                sets[rows[i]] = {"cells": np.flatnonzero(probed[i]), "low": np.sqrt(low2[i]),
                                 "y": yb[i].astype(np.float64)}  # fmt: skip
        return rows[~ok]

    def _ivf_select(self, p, yb, sb, rho, low2, probed, log_cut):
        """Probe more cells (marked in ``probed``) until each query's unprobed tail is at most
        rho S_K / 2; returns (partial over the probed cells, queries over the scan budget).

        A query whose first cell missed its near neighbours has a tiny S_K, which makes every
        cell look necessary: such queries first scan the cells of their IVF_RETRY_CELLS nearest
        centroids, and the selection is made again."""
        budget = max(IVF_SCAN_FRACTION * self.n_train, 4.0 * self.n_train / low2.shape[1])  # >= 4 mean cells
        for attempt in (0, 1):
            with np.errstate(divide="ignore"):
                thr = np.log(rho / 2.0) + self._log_s(p)  # leave out at most rho S_K / 2 of tail mass
            before = probed.copy()
            hopeless = _select_cells(low2, self._log_cell_mass, sb, thr, self._cell_sizes, budget, probed,
                                     self._threads(low2.size))  # fmt: skip
            over = self._marked_rows(probed) > budget
            probed[over] = before[over]
            too_many = hopeless | over
            retry = attempt == 0 and bool(hopeless.any())
            if retry:
                h = np.flatnonzero(hopeless)
                k = min(IVF_RETRY_CELLS, low2.shape[1])
                key = np.where(before[h].astype(bool), np.inf, self.index.centroid_sq_distances(yb[h]))
                nearest = np.argpartition(key, k - 1, axis=1)[:, :k]
                widened = probed[h]
                np.put_along_axis(widened, nearest, 1, axis=1)
                probed[h] = widened
            extra = probed & ~before
            if extra.any():
                p = merge(p, self._cells_partial(yb, sb, extra, log_cut, p.m, start_max=p.m))
                p = dataclasses.replace(p, log_mass=self.data.log_mass)
            if not retry:
                break
        return p, too_many

    def _cells_partial(self, yb, sb, cells: np.ndarray, log_cut: float, known_max=None, start_max=None) -> Partial:
        """Exact partial of each query over the rows of its selected cells ((B, nlist) mask),
        terms below (max - log_cut) skipped; with ``known_max`` (B,) (a logit the query's partial
        reaches), rows below known_max - log_cut are never read where key windows pay.
        ``start_max`` (B,): for a result merged into a partial of at least that max (the
        ``start_max`` of :func:`~nnscore.backends.partials_cells`).  top1 indexes the cell-sorted
        copy."""
        data = self.data
        floor = None if known_max is None else self._cells.window_floor(known_max, log_cut)
        work = 4.0 * float(np.sum(self._marked_rows(cells))) * data.dim
        return _backends.partials_cells(self.backend, np.ascontiguousarray(yb), sb, self._cells, cells,
                                        self._threads(work), log_w_shift=data.log_w_shift,
                                        log_mass=data.log_mass, log_cut=log_cut, floor=floor,
                                        start_max=start_max)  # fmt: skip

    def _marked_partial(self, yb, sb, cells: np.ndarray, own: np.ndarray, log_cut: float) -> Partial:
        """Exact partial of each query over its marked cells ((B, nlist) uint8, ``own`` (B,) among
        them), terms below (max - log_cut) skipped: cell ``own[i]`` (where the query's near
        neighbours are) first, by key scan or with key windows from the scan's max
        (:func:`key_scan_partials`), then the others with windows from the own cell's max.
        top1 indexes the cell-sorted copy."""
        p, _ = key_scan_partials(self.backend, self._cells, yb, sb, own, self.data.log_w_shift, self.data.log_mass,
                                 log_cut, self._threads,
                                 lambda rows, marked, known: (self._cells_partial(yb[rows], sb[rows], marked, log_cut,
                                                                                  known), 0))  # fmt: skip
        others = cells.copy()
        others[np.arange(others.shape[0]), own] = 0
        if others.any():
            p = dataclasses.replace(merge(p, self._cells_partial(yb, sb, others, log_cut, p.m, start_max=p.m)),
                                    log_mass=self.data.log_mass)  # fmt: skip
        return p

    def _marked_rows(self, cells: np.ndarray) -> np.ndarray:
        """(B,) rows of the cells marked in ``cells`` ((B, nlist) uint8) per query."""
        return _marked_rows(cells, self._cell_sizes, self._threads(float(cells.size)))

    def _cells_log_cut(self, rho) -> float:
        """The skip threshold of the IVF scans: the skipped terms (<= N of them, each below
        e^-log_cut of the max) may carry a quarter of the smallest tail ratio rho a query of the
        block allows (:meth:`_finish_bounds` counts them), and never more than the kernels' default."""
        default = _backends.skip_log_cut(self.n_train, self.dtype)
        rho_min = float(np.min(rho)) if np.size(rho) else math.inf
        if not 0.0 < rho_min < math.inf:
            return default
        return min(default, math.log(self.n_train) + math.log(4.0 / rho_min))

    # -- sampler cache --------------------------------------------------------------------------
    def _from_cache(self, y, st, eta, rho, cache, rows, out):
        """Certify rows with their cached candidate set (science.md §3.3): every excluded row was
        at distance >= r (kNN) or >= L_c (IVF cell c) from the query y_s of the search, so it is
        at distance >= r - ||y - y_s|| from y.  Returns the rows that still need a search."""
        parts, bounds, path, k_used, sets = out
        hits = np.asarray([i for i in rows if cache.entry(i) is not None], dtype=np.int64)
        if not hits.size:
            return rows
        entries = [cache.entry(i) for i in hits]
        y_old = np.stack([e["y"] for e in entries])
        moved = np.sqrt(np.sum((y[hits].astype(np.float64) - y_old) ** 2, axis=1)) * (1.0 + 1e-12)
        s2 = 2.0 * st[hits] ** 2
        log_cut = None  # the kernels' default (kNN lists)
        if self.index.kind == "ivf":
            cells = np.zeros((hits.size, self.index.nlist), dtype=np.uint8)
            low = np.stack([e["low"] for e in entries])  # (H, nlist) distance lower bounds at y_s
            for i, e in enumerate(entries):
                cells[i, e["cells"]] = 1
            log_cut = self._cells_log_cut(rho[hits])
            own = np.argmin(np.where(cells.astype(bool), low, np.inf), axis=1)  # the nearest cell scanned then
            p = self._marked_partial(y[hits], st[hits], cells, own, log_cut)
            p = dataclasses.replace(p, top1=self._original_rows(p.top1))
            low = np.maximum(low - moved[:, None], 0.0)
            log_t, log_g = _tail_sums(low * low, self._log_cell_mass, st[hits], cells, self._threads(low.size))
            n_terms = self._marked_rows(cells)
        else:
            ids_list = [e["ids"] for e in entries]
            n_terms = np.array([a.size for a in ids_list])
            seg = _backends.Segments(np.concatenate([[0], np.cumsum(n_terms)]).astype(np.int64),
                                     np.concatenate(ids_list).astype(np.int64),
                                     np.ones(int(n_terms.sum()), dtype=np.int64))  # fmt: skip
            p = gathered_partials(self, y[hits], st[hits], self.data.points, self.data.log_w, seg)
            r = np.maximum(np.array([e["r"] for e in entries]) - moved, 0.0)
            padded = np.zeros((hits.size, int(n_terms.max())), dtype=np.int64)  # ragged -> prefixes
            padded[np.arange(padded.shape[1])[None, :] < n_terms[:, None]] = np.concatenate(ids_list)
            log_out = self._prior.log_outside(padded, n_terms)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_t = np.where(np.isinf(r), -np.inf, log_out - r * r / s2)
                log_g = np.where(np.isinf(r), -np.inf, log_out + _log_g(r, st[hits]))
        b = self._finish_bounds(p, y[hits], st[hits], log_t, log_g, n_terms, log_cut)
        ok = self._meets(b, eta[hits]) & np.isfinite(p.m)
        good = hits[ok]
        _scatter(parts, good, take(p, ok))
        bounds[:, good] = b[:, ok]
        path[good], k_used[good] = "knn-cached", n_terms[ok]
        for i in good:
            sets[i] = cache.entry(i)  # keep the search's point and radii: r' is always from the search
        return np.setdiff1d(rows, good)

    def _original_rows(self, top1_sorted: np.ndarray) -> np.ndarray:
        """IVF: map row indices of the cell-sorted copy back to training row ids (-1 stays)."""
        return np.where(top1_sorted >= 0, self._order[np.maximum(top1_sorted, 0)], -1)


class KNNSamplerCache(ScoreModel):
    """A :class:`KNNScore` that remembers each query row's candidate set between calls.

    Row i of every call is taken to be the same sample (as in a sampler's loop); a call with a
    different number of rows starts afresh.  For kNN indexes a cached list certifies the moved
    query with the radius ``r - ||y - y_search||`` (science.md §3.3: no excluded point can have
    come closer than that); only rows that fail are searched again (path "knn-cached" vs "knn").
    For IVF the cached cells are rescanned and the other cells' distance bounds from the search
    are lowered by the same ``||y - y_search||`` (no new bound computation); a row that fails is
    searched again, its previous cells seeding the probe set.  ``stats`` counts hits and searches.
    """

    def __init__(self, model: KNNScore):
        self.model = model
        self.schedule = model.schedule
        self.shape = model.shape
        self.dtype = model.dtype
        self.backend = model.backend
        self.data = model.data
        self._sets: list = []
        self.stats = {"calls": 0, "queries": 0, "cached": 0, "searched": 0, "exact": 0}

    @property
    def train(self):
        return self.model.train

    def entry(self, i):
        """Row i's cached candidate set (a dict), or None."""
        return self._sets[i] if i < len(self._sets) else None

    def reset(self) -> None:
        self._sets = []

    def evaluate(self, x, t) -> ScoreResult:
        n_q = np.shape(x)[0] if np.ndim(x) else 0
        if len(self._sets) != n_q:
            self._sets = [None] * n_q
        res = self.model._evaluate(x, t, cache=self)
        self._sets = list(self._last_sets)
        self.stats["calls"] += 1
        self.stats["queries"] += n_q
        for name, key in (("knn-cached", "cached"), ("exact", "exact")):
            self.stats[key] += int(np.sum(res.path == name))
        self.stats["searched"] += int(np.sum((res.path == "knn") | (res.path == "ivf-certified")))
        return res

    def _partials_ve(self, y, sigma):  # pragma: no cover - evaluate is overridden
        raise TypeError("KNNSamplerCache: use evaluate")

    def __repr__(self) -> str:
        return f"KNNSamplerCache({self.model!r}, stats={self.stats})"


def _scatter(parts: list, rows: np.ndarray, p: Partial) -> None:
    """Record that ``p`` holds the partials of ``rows`` (in order)."""
    if rows.size:
        parts.append((rows, p))
