"""Training-set nearest-neighbour index on faiss, with certified exclusion radii.

``TrainingIndex(train).search(y, k)`` returns the k nearest training rows of every query, their
squared distances recomputed in float64 difference form ``sum((y - x)**2)`` from the stored rows,
and a *certified* radius ``r_k`` (squared): every training row **not** returned has squared
distance ``>= r_k`` to its query (science.md §3.1-3.3).  ``r_k = inf`` when all N rows are returned.

Floating-point margin (flat and IVF)
------------------------------------
faiss ranks the float32 copies ``x~ = fl32(x - c)``, ``y~ = fl32(y - c)`` (``c`` the float64 centre
of the data; centring shrinks the margin) by distances ``D^`` computed in float32, either in GEMM
form ``||y~||^2 + ||x~||^2 - 2<y~, x~>`` or in difference form.  With ``u = 2**-24`` and
``gamma_n = n u / (1 - n u)``, for any summation order, FMA or not,

* float32 evaluation:   ``|D^ - ||y~ - x~||^2| <= gamma_{d+2} (||y~|| + ||x~||)^2``
  (dot product and norms each within ``gamma_d`` of their absolute sums, two more roundings to
  combine; the difference form is within ``gamma_{d+2} ||y~ - x~||^2``, which is smaller);
* float32 casts:        ``|.|y~ - x~||^2 - ||y - x||^2| <= (2u + u^2)(||y|| + ||x||)^2``.

With ``(a + b)^2 <= 2(a^2 + b^2)`` and ``||v~|| <= (1 + u)||v||`` the total error of one reported
distance is at most ``E = C_d (||y - c||^2 + max_j ||x_j - c||^2)`` where

    C_d = 2 (1+u)^2 gamma_{d+2} + 2 (2u + u^2) + 2 gamma64_{d+4}         (u64 = 2**-53)

(the last term covers the float64 centring and the float64 recomputation of the exact distances),
inflated by a factor ``1 + 1e-6``.  faiss returns the exact top-k of its own ``D^``, so an excluded
``j`` satisfies ``||y - x_j||^2 >= D^_j - E >= D^_(k) - E >= d_(k)^2 - 2E``; we report

    r_k = d_(k)^2 - 2 E        (d_(k)^2 = k-th recomputed float64 squared distance),

which is the §3.3 form ``d_(k)^2 - 2 gamma u (||y||^2 + max ||x||^2)`` with ``gamma`` ~ 2(d + 2).

IVF adds the cell bound: every row of an unprobed cell c has squared distance ``>= L_c^2`` of
:meth:`TrainingIndex.cell_lower_bounds` (ball bound ``||y - mu_c|| - R_c`` and Voronoi-bisector
bounds, rounding bounded), and ``r_k = min(d_(k)^2 - 2E, min_{c unprobed} L_c^2)``.  HNSW gives no certificate: ``r_k = nan`` and
``certified = False``.

k larger than N is clamped silently (documented, no warning): ``search`` returns ``k_used =
min(k, N)`` columns.  faiss's ``-1`` padding is never used as an index: a row that faiss cannot fill
(an IVF probe with fewer than k points, an HNSW miss) is re-solved exactly by float64 brute force.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .._rng import check_rng
from .._threads import effective_n_threads, single_threaded_blas
from .._validation import as_float_array, as_rows, check_finite

__all__ = ["TrainingIndex", "Neighbours", "fp_margin_coefficient"]

_FORMAT_VERSION = 1
_KINDS = ("flat", "ivf", "hnsw")
_AUTO_FLAT_MAX = 9_999  # "auto": IVF from 10 000 rows (a flat search costs a dense pass)


def scan_nlist(n: int) -> int:
    """Number of IVF cells for cell scans (``EmpiricalScore(cells="auto")``, ``KNNScore``): sqrt(N)/2.

    Whole cells are scanned, so fewer, larger cells than a search index's 4 sqrt(N) cost less in
    per-cell bounds and merges.  Measured on bench/knn.py's data (N = 10^6 image patches, d = 64,
    M = 1024, tol 1e-4): KNNScore took 0.055-0.061 / 0.076-0.084 / 0.25-0.27 s at sigma = 1e-4 /
    1e-3 / 1e-2 with 500 cells, 0.076 / 0.094 / 0.32 s with 1000, 0.089 / 0.12 / 0.26 s with 250,
    and 0.17 / 0.16 / 0.51 s with 4000 (stop 16; README "Certified nearest neighbours").
    """
    return max(1, min(int(n), int(round(0.5 * math.sqrt(n)))))
_INDEX_FILE = "index.faiss"
_META_FILE = "meta.npz"
_U32 = 2.0**-24
_U64 = 2.0**-53
_R_SLACK = 1e-6  # multiplicative safety on E
_CHUNK = 4096  # query rows per faiss / recompute block
_BISECTOR_REFS = 4  # nearest centroids each IVF cell bound is taken against (the best one is kept)
_GRAM_MAX_NLIST = 16384  # the compiled bounds keep an (nlist, nlist) float32 matrix: <= 1 GiB


def _core_module():
    """The compiled core, or None (then NumPy computes the cell bounds)."""
    from ..backends import HAS_CORE, _core

    return _core if HAS_CORE else None


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("TrainingIndex needs faiss: pip install faiss-cpu") from exc
    return faiss


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def fp_margin_coefficient(d: int) -> float:
    """``C_d`` of the module docstring: ``E = C_d (||y-c||^2 + max||x-c||^2)`` bounds one faiss distance."""
    c = 2.0 * (1.0 + _U32) ** 2 * _gamma(d + 2, _U32) + 2.0 * (2.0 * _U32 + _U32**2) + 2.0 * _gamma(d + 4, _U64)
    return c * (1.0 + _R_SLACK)


@dataclass(frozen=True)
class Neighbours:
    """Result of :meth:`TrainingIndex.search`.

    ids: (M, k_used) int64 training row ids, nearest first.  sqdist: (M, k_used) float64 squared
    distances (difference form, float64), ascending.  r_k: (M,) float64 certified squared radius
    (``inf`` when ``k_used == N``; ``nan`` when uncertified).  k_used: ``min(k, N)``.
    """

    ids: np.ndarray
    sqdist: np.ndarray
    r_k: np.ndarray
    k_used: int
    certified: bool


class _Threads:
    """faiss.omp_set_num_threads for the duration of a call, restored afterwards."""

    def __init__(self, faiss, n: int):
        self.faiss, self.n = faiss, n

    def __enter__(self):
        self.old = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        self.faiss.omp_set_num_threads(self.old)
        return False


def _ivf_lists(faiss, ivf):
    """(list_of_id_arrays, stored float32 vectors (N, d)) read from an IndexIVFFlat's inverted lists."""
    invlists = ivf.invlists
    n, d = ivf.ntotal, ivf.d
    vecs = np.empty((n, d), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    lists = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size == 0:
            lists.append(np.empty(0, dtype=np.int64))
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy().astype(np.int64)
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size).copy()
        if ids.min() < 0 or ids.max() >= n or seen[ids].any():
            raise ValueError("index: inverted lists hold ids that are not a permutation of 0..ntotal-1")
        seen[ids] = True
        vecs[ids] = codes.view(np.float32).reshape(size, d)
        lists.append(ids)
    if not seen.all():
        raise ValueError("index: inverted lists do not hold every id 0..ntotal-1")
    return lists, vecs


class TrainingIndex:
    """k-nearest-neighbour index over training rows with certified exclusion radii.

    Parameters: ``train`` (N, d) or (N, *shape) finite floats; ``kind`` "auto" (flat for N < 10 000,
    else IVF with ``nlist ~ 4 sqrt(N)``), "flat", "ivf" or "hnsw" (uncertified); ``metric`` "l2"
    only; ``n_threads`` for faiss (None: ``effective_n_threads()``); ``nlist``/``nprobe`` for IVF
    (``nlist="scan"``: :func:`scan_nlist`, for indexes whose cells are scanned whole);
    ``hnsw_m`` for HNSW; ``rng`` seeds the IVF training subsample and k-means.
    """

    def __init__(self, train, kind: str = "auto", metric: str = "l2", n_threads=None, nlist=None,
                 nprobe=None, hnsw_m: int = 32, rng=None):
        x = self._check_train(train, "train")
        if metric != "l2":
            raise ValueError(f"metric: only 'l2' is supported, got {metric!r}")
        if kind not in ("auto",) + _KINDS:
            raise ValueError(f"kind: expected 'auto', 'flat', 'ivf' or 'hnsw', got {kind!r}")
        n, d = x.shape
        if kind == "auto":
            kind = "flat" if n <= _AUTO_FLAT_MAX else "ivf"
        self._n_threads = effective_n_threads(n_threads)
        faiss = _faiss()
        center = x.mean(axis=0, dtype=np.float64)
        xc = np.empty(x.shape, dtype=np.float32)
        for s, e in _blocks(n, d):
            xc[s:e] = x[s:e] - center
        with _Threads(faiss, self._n_threads):
            if kind == "flat":
                index = faiss.IndexFlatL2(d)
                index.add(xc)
            elif kind == "ivf":
                if nlist is None:
                    nlist = max(1, min(n, int(round(4.0 * math.sqrt(n)))))
                elif isinstance(nlist, str) and nlist == "scan":
                    nlist = scan_nlist(n)
                nlist = self._check_pos_int(nlist, "nlist")
                if nlist > n:
                    raise ValueError(f"nlist: must be <= N={n}, got {nlist}")
                gen = check_rng(rng)
                n_sub = min(n, max(64 * nlist, 10_000))
                sub = np.sort(gen.choice(n, size=n_sub, replace=False)) if n_sub < n else np.arange(n)
                quantizer = faiss.IndexFlatL2(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
                index.cp.seed = int(gen.integers(0, 2**31 - 1))
                index.train(np.ascontiguousarray(xc[sub]))
                index.add(xc)
                index.own_fields = True
                quantizer.this.disown()
                index.nprobe = min(nlist, self._default_nprobe(nlist) if nprobe is None else self._check_pos_int(nprobe, "nprobe"))
            else:
                hnsw_m = self._check_pos_int(hnsw_m, "hnsw_m")
                index = faiss.IndexHNSWFlat(d, hnsw_m)
                index.add(xc)
        self._setup(index, x, kind, center)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_pos_int(v, name):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
        return int(v)

    @staticmethod
    def _default_nprobe(nlist):
        return max(1, int(math.ceil(math.sqrt(nlist))))

    @staticmethod
    def _check_train(train, name):
        x = as_rows(as_float_array(train, name), name)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name}: needs at least one row and one column, got shape {x.shape}")
        check_finite(x, name)
        return x

    def _setup(self, index, x, kind, center):
        faiss = _faiss()
        self._index = index
        self._train = x
        self.kind = kind
        self.metric = "l2"
        self.certified = kind != "hnsw"
        self.n, self.d = x.shape
        self._center = np.asarray(center, dtype=np.float64)
        self._max_sq = 0.0
        for s, e in _blocks(self.n, self.d):
            xc = x[s:e].astype(np.float64) - self._center
            self._max_sq = max(self._max_sq, float(np.max(np.einsum("ij,ij->i", xc, xc))))
        self._coef = fp_margin_coefficient(self.d)
        self._ivf = None
        if kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            lists, vecs = _ivf_lists(faiss, ivf)
            cent = ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64)
            radii = np.zeros(ivf.nlist)
            for lst, ids in enumerate(lists):
                for s, e in _blocks(ids.size, self.d):
                    diff = (x[ids[s:e]].astype(np.float64) - self._center) - cent[lst]
                    radii[lst] = max(radii[lst], math.sqrt(float(np.max(np.einsum("ij,ij->i", diff, diff)))))
            radii *= 1.0 + 8.0 * (self.d + 4) * _U64
            self._ivf = ivf
            self._centroids = cent
            self._radii = radii
            self._empty = np.array([ids.size == 0 for ids in lists])
            sizes = np.array([ids.size for ids in lists], dtype=np.int64)
            self._cell_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            self._cell_order = np.concatenate(lists).astype(np.int64)
            self._cell_slack = self._assignment_slack(faiss, ivf, vecs, lists, cent)
            del vecs

    def _assignment_slack(self, faiss, ivf, vecs, lists, cent):
        """(nlist,) s_c >= max over rows x of cell c of ||x - mu_c||^2 - min_{c' != c} ||x - mu_c'||^2.

        A row sits in the cell of (about) its nearest centroid, so s_c is usually <= 0 (stored as
        0); it is what the bisector bound of :meth:`cell_lower_bounds` must allow for.  From one
        float32 search of the stored rows for their two nearest centroids (``D1 <= D2``, every
        reported distance within ``E = C_d (||x~||^2 + max ||mu||^2)`` of the exact one): if the
        row's own cell is the nearest reported, ``s <= D1 - D2 + 2E`` (every other centroid is at
        reported distance >= D2); otherwise ``s <= ||x - mu_c||^2 (float64, raised) - D1 + E``.
        Rows whose quantizer is not flat (or an inexact one) get ``inf``: no bisector bound.
        """
        nlist = cent.shape[0]
        slack = np.zeros(nlist)
        if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat) or nlist < 2:
            slack[:] = np.inf
            return slack
        cell_of = np.empty(self.n, dtype=np.int64)
        for c, ids in enumerate(lists):
            cell_of[ids] = c
        max_cent_sq = float(np.max(np.einsum("ij,ij->i", cent, cent)))
        g64 = 2.0 * _gamma(self.d + 4, _U64)
        for s, e in _blocks(self.n, 64 * self.d):
            v = vecs[s:e]
            dist, lab = ivf.quantizer.search(v, 2)
            dist = dist.astype(np.float64)
            own = cell_of[s:e]
            xn = np.einsum("ij,ij->i", v.astype(np.float64), v.astype(np.float64))
            err = self._coef * (xn + max_cent_sq) * 1.01  # x~ vs x: C_d covers the casts too
            first = lab[:, 0] == own
            s_row = np.where(first, dist[:, 0] - dist[:, 1] + 2.0 * err, 0.0)
            if not first.all():
                rows = np.flatnonzero(~first)
                diff = v[rows].astype(np.float64) - cent[own[rows]]
                exact_own = np.einsum("ij,ij->i", diff, diff) * (1.0 + g64) + g64 * xn[rows]
                s_row[rows] = exact_own - dist[rows, 0] + err[rows]
            np.maximum.at(slack, own, s_row)
        return np.maximum(slack, 0.0)

    @classmethod
    def from_faiss(cls, index, train, n_threads=None):
        """Wrap an existing faiss L2 index (IndexFlatL2, IndexIVFFlat or IndexHNSWFlat) built on ``train``."""
        x = cls._check_train(train, "train")
        faiss = _faiss()
        if not isinstance(index, faiss.Index):
            raise ValueError(f"index: expected a faiss.Index, got {type(index).__name__}")
        if index.metric_type != faiss.METRIC_L2:
            raise ValueError("index: only METRIC_L2 indexes are supported")
        if isinstance(index, faiss.IndexFlat):
            kind = "flat"
        elif isinstance(index, faiss.IndexIVFFlat):
            kind = "ivf"
        elif isinstance(index, faiss.IndexHNSWFlat):
            kind = "hnsw"
        else:
            raise ValueError(f"index: unsupported faiss type {type(index).__name__} (Flat, IVFFlat, HNSWFlat)")
        if index.d != x.shape[1] or index.ntotal != x.shape[0]:
            raise ValueError(f"index: holds {index.ntotal} vectors of d={index.d}, train has shape {x.shape}")
        self = cls.__new__(cls)
        self._n_threads = effective_n_threads(n_threads)
        self._check_stored(index, kind, x, np.zeros(x.shape[1]), "index")
        self._setup(index, x, kind, np.zeros(x.shape[1]))
        return self

    @staticmethod
    def _check_stored(index, kind, x, center, name, n_sample=64):
        faiss = _faiss()
        n = x.shape[0]
        sample = np.unique(np.concatenate([[0, n - 1], np.linspace(0, n - 1, min(n, n_sample)).astype(np.int64)]))
        expect = (x[sample].astype(np.float64) - center).astype(np.float32)
        if kind == "ivf":
            _, vecs = _ivf_lists(faiss, faiss.extract_index_ivf(index))
            got = vecs[sample]
        else:
            got = np.stack([index.reconstruct(int(i)) for i in sample])
        if not np.array_equal(got, expect):
            raise ValueError(f"{name}: stored vectors differ from the train rows (built on other data?)")

    def check_rows(self, x, name: str, n_sample: int = 64) -> None:
        """ValueError naming ``name`` unless ``x`` (N, d) has the index's rows (compared on the
        first, last and ``n_sample`` evenly spaced rows)."""
        if self._train is x:
            return
        if tuple(np.shape(x)) != (self.n, self.d):
            raise ValueError(f"{name}: the index holds ({self.n}, {self.d}) rows, got {tuple(np.shape(x))}")
        n = self.n
        sample = np.unique(np.concatenate([[0, n - 1], np.linspace(0, n - 1, min(n, n_sample)).astype(np.int64)]))
        if not np.array_equal(np.asarray(self._train[sample]), np.asarray(x[sample])):
            raise ValueError(f"{name}: the index was built on other training rows")

    # ------------------------------------------------------------------ search
    @property
    def nprobe(self):
        return None if self._ivf is None else int(self._ivf.nprobe)

    @property
    def nlist(self):
        return None if self._ivf is None else int(self._ivf.nlist)

    def search(self, y, k: int, nprobe=None) -> Neighbours:
        """k nearest training rows of each query row of ``y`` ((M, d), (M, *shape) or (d,))."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k: expected a positive int, got {k!r}")
        if k <= 0:
            raise ValueError(f"k: must be >= 1, got {k}")
        q = as_float_array(y, "y")
        if q.ndim == 1:
            q = q.reshape(1, -1)
        q = as_rows(q, "y")
        if q.shape[1] != self.d:
            raise ValueError(f"y: expected rows of dimension d={self.d}, got {q.shape[1]}")
        check_finite(q, "y")
        k_used = int(min(k, self.n))
        if nprobe is not None:
            nprobe = self._check_pos_int(nprobe, "nprobe")
        m = q.shape[0]
        ids = np.empty((m, k_used), dtype=np.int64)
        sq = np.empty((m, k_used), dtype=np.float64)
        r_k = np.empty(m, dtype=np.float64)
        faiss = _faiss()
        with _Threads(faiss, self._n_threads):
            for s in range(0, m, _CHUNK):
                e = min(m, s + _CHUNK)
                ids[s:e], sq[s:e], r_k[s:e] = self._search_block(faiss, q[s:e], k_used, nprobe)
        return Neighbours(ids=ids, sqdist=sq, r_k=r_k, k_used=k_used, certified=self.certified)

    def _recompute(self, qc, ids):
        """float64 difference-form squared distances of centred queries to rows ``ids`` (>= 0)."""
        m, k = ids.shape
        out = np.empty((m, k))
        for s, e in _blocks(m, k * self.d):
            xc = self._train[ids[s:e].ravel()].astype(np.float64) - self._center
            diff = xc.reshape((e - s, k, self.d)) - qc[s:e, None, :]
            out[s:e] = np.einsum("mkd,mkd->mk", diff, diff)
        return out

    def _search_block(self, faiss, q, k, nprobe):
        qc = q.astype(np.float64) - self._center
        q32 = np.ascontiguousarray(qc.astype(np.float32))
        probed = None
        if self.kind == "ivf":
            ivf = self._ivf
            npr = min(ivf.nlist, ivf.nprobe if nprobe is None else nprobe)
            dq, probed = ivf.quantizer.search(q32, npr)
            saved = ivf.nprobe
            ivf.nprobe = npr  # faiss's wrapper checks Iq.shape == (n, nprobe); restored below
            try:
                _, ids = ivf.search_preassigned(q32, k, probed, dq)
            finally:
                ivf.nprobe = saved
        elif self.kind == "hnsw":
            old = self._index.hnsw.efSearch
            self._index.hnsw.efSearch = max(old, k)
            try:
                _, ids = self._index.search(q32, k)
            finally:
                self._index.hnsw.efSearch = old
        else:
            _, ids = self._index.search(q32, k)
        ids = np.asarray(ids, dtype=np.int64)
        bad = (ids < 0).any(axis=1)
        exact_rows = np.flatnonzero(bad)
        if exact_rows.size:
            ids[exact_rows] = 0  # placeholder, overwritten below; never used as a -1 index
        sq = self._recompute(qc, ids)
        order = np.argsort(sq, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)
        sq = np.take_along_axis(sq, order, axis=1)
        qn = np.einsum("ij,ij->i", qc, qc)
        margin = 2.0 * self._coef * (qn + self._max_sq)
        if k == self.n:
            r_k = np.full(q.shape[0], np.inf)
        else:
            r_k = sq[:, -1] - margin
            if probed is not None:
                r_k = np.minimum(r_k, self._cell_bound(q, probed))
        for row in exact_rows:
            ids[row], sq[row], r_k[row] = self._exact_row(qc[row], k)
        if self.kind == "hnsw":
            r_k = np.full(q.shape[0], np.nan)
        return ids, sq, r_k

    @property
    def cell_offsets(self):
        """IVF: (nlist + 1,) offsets of each cell's rows in :attr:`cell_order` (None otherwise)."""
        return None if self._ivf is None else self._cell_offsets

    @property
    def cell_order(self):
        """IVF: (N,) training row ids sorted by cell (None otherwise)."""
        return None if self._ivf is None else self._cell_order

    @property
    def center(self) -> np.ndarray:
        """(d,) float64 centre subtracted from the rows before they reach faiss."""
        return self._center

    def cell_lower_bounds(self, y, nearest=None):
        """IVF: certified squared lower bounds ``L_c^2`` on ``||y - x_j||^2`` for every row j of cell c.

        ``y`` (B, d) queries (data coordinates); ``nearest``, if given, a (B,) int64 array that
        receives each query's nearest centroid (the cell a row at y would be assigned to, where
        its near neighbours most likely are).  Returns (B, nlist) float64: the larger of the
        ball bound ``max(0, ||y - mu_c|| - R_c)`` and, with a flat quantizer, the bisector bound
        ``(||y - mu_c||^2 - ||y - mu_0||^2 - 2 E_a) / (2 ||mu_c - mu_0||)`` against the query's
        nearest centroid ``mu_0`` (every row of cell c was assigned to ``mu_c`` rather than
        ``mu_0`` up to the float32 slack ``E_a``), squared; ``inf`` for empty cells.  Every
        float64 quantity is bounded for rounding (GEMM-form distances lowered/raised by
        ``2 gamma64_{d+4} (||a||^2 + ||b||^2)``, results deflated).
        """
        if self._ivf is None:
            raise ValueError("cell_lower_bounds: the index is not IVF")
        qc = np.asarray(y, dtype=np.float64) - self._center
        cent, nlist = self._centroids, self._centroids.shape[0]
        g = 2.0 * _gamma(self.d + 4, _U64)
        deflate = 1.0 - 8.0 * (self.d + 4) * _U64
        cn = np.einsum("ij,ij->i", cent, cent)
        out = np.empty((qc.shape[0], nlist))
        core = _core_module()
        use_bisector = nlist > 1 and np.isfinite(self._cell_slack).all()
        for s, e in _blocks(qc.shape[0], nlist):
            q = qc[s:e]
            qn = np.einsum("ij,ij->i", q, q)
            if core is not None and (not use_bisector or nlist <= _GRAM_MAX_NLIST):
                with single_threaded_blas():
                    gram = q @ cent.T
                core.ivf_cell_bounds(gram, qn, cn, self._radii, self._cell_slack,
                                     self._inverse_gap_bounds() if use_bisector else None, _BISECTOR_REFS,
                                     g, deflate, out[s:e], self._n_threads,
                                     None if nearest is None else nearest[s:e])  # fmt: skip
                out[s:e, self._empty] = np.inf
                continue
            d2 = qn[:, None] + cn[None, :] - 2.0 * (q @ cent.T)
            if nearest is not None:
                nearest[s:e] = np.argmin(d2, axis=1)
            err = g * (qn[:, None] + cn[None, :])
            lo = np.maximum(d2 - err, 0.0)
            low = np.maximum(0.0, np.sqrt(lo) * deflate - self._radii[None, :])
            if use_bisector:
                rows = np.arange(e - s)
                n_ref = min(_BISECTOR_REFS, nlist)
                refs = np.argpartition(d2, n_ref - 1, axis=1)[:, :n_ref] if n_ref < nlist else \
                    np.tile(np.arange(nlist), (e - s, 1))
                for j in range(n_ref):
                    c0 = refs[:, j]
                    hi0 = d2[rows, c0] + err[rows, c0]
                    nu2 = cn[None, :] + cn[c0][:, None] - 2.0 * (cent[c0] @ cent.T)
                    nu = np.sqrt(np.maximum(nu2 + g * (cn[None, :] + cn[c0][:, None]), 0.0)) * (2.0 - deflate)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        hyp = (lo - hi0[:, None] - self._cell_slack[None, :]) / (2.0 * nu)
                    hyp = np.where((nu > 0) & np.isfinite(hyp), np.maximum(hyp, 0.0) * deflate, 0.0)
                    hyp[rows, c0] = 0.0
                    low = np.maximum(low, hyp)
            low = low * low * deflate
            low[:, self._empty] = np.inf
            out[s:e] = low
        return out

    def centroid_sq_distances(self, y) -> np.ndarray:
        """IVF: (B, nlist) float64 squared distances from the queries ``y`` (B, d) to the
        centroids (GEMM form, not certified: it ranks cells, it bounds nothing)."""
        if self._ivf is None:
            raise ValueError("centroid_sq_distances: the index is not IVF")
        q = np.asarray(y, dtype=np.float64) - self._center
        cent = self._centroids
        return np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", cent, cent)[None, :] - 2.0 * (q @ cent.T)

    def prepare_bounds(self) -> None:
        """Precompute what :meth:`cell_lower_bounds` needs once (IVF; a no-op otherwise)."""
        if self._ivf is not None and np.isfinite(self._cell_slack).all() and self.nlist <= _GRAM_MAX_NLIST:
            self._inverse_gap_bounds()

    def _inverse_gap_bounds(self) -> np.ndarray:
        """(nlist, nlist) float32 lower bounds of 1 / (2 ||mu_r - mu_c||), 0 on the diagonal and
        for coincident centroids (computed once; the distances raised by their float64 GEMM-form
        rounding bound, the float32 values rounded down)."""
        if getattr(self, "_inv_gap", None) is None:
            cent = self._centroids
            cn = np.einsum("ij,ij->i", cent, cent)
            g = 2.0 * _gamma(self.d + 4, _U64)
            nu2 = cn[:, None] + cn[None, :] - 2.0 * (cent @ cent.T)
            nu2 += g * (cn[:, None] + cn[None, :])
            nu = np.sqrt(np.maximum(nu2, 0.0)) * (1.0 + 8.0 * _U64)
            with np.errstate(divide="ignore"):
                inv = np.where(nu > 0, 0.5 / nu, 0.0) * (1.0 - 8.0 * _U64)
            np.fill_diagonal(inv, 0.0)
            inv32 = inv.astype(np.float32)
            self._inv_gap = np.where(inv32 > inv, np.nextafter(inv32, np.float32(0)), inv32)
        return self._inv_gap

    def _cell_bound(self, y, probed):
        """min over the unprobed cells of :meth:`cell_lower_bounds` (squared), inf if none."""
        low = self.cell_lower_bounds(y)
        np.put_along_axis(low, np.asarray(probed, dtype=np.int64).clip(0), np.inf, axis=1)
        return low.min(axis=1)

    def _exact_row(self, qrow, k):
        """float64 brute force for one centred query: (ids, sqdist, r_k)."""
        d2 = np.empty(self.n)
        for s, e in _blocks(self.n, self.d):
            diff = (self._train[s:e].astype(np.float64) - self._center) - qrow
            d2[s:e] = np.einsum("ij,ij->i", diff, diff)
        part = np.argpartition(d2, k - 1)[:k] if k < self.n else np.arange(self.n)
        part = part[np.argsort(d2[part], kind="stable")]
        if k == self.n:
            r = np.inf
        else:
            r = float(d2[part[-1]]) - 2.0 * self._coef * (float(qrow @ qrow) + self._max_sq)
        return part.astype(np.int64), d2[part], r

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write ``path/index.faiss`` (faiss.write_index) and ``path/meta.npz`` (no pickle)."""
        faiss = _faiss()
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        faiss.write_index(self._index, os.path.join(path, _INDEX_FILE))
        np.savez(
            os.path.join(path, _META_FILE),
            format_version=np.int64(_FORMAT_VERSION),
            kind=np.array(self.kind),
            metric=np.array(self.metric),
            shape=np.array([self.n, self.d], dtype=np.int64),
            center=self._center,
            train=np.ascontiguousarray(self._train),
        )

    @classmethod
    def load(cls, path, n_threads=None) -> "TrainingIndex":
        """Read a directory written by :meth:`save`; ValueError on a corrupt or inconsistent file."""
        faiss = _faiss()
        path = os.fspath(path)
        meta_path = os.path.join(path, _META_FILE)
        index_path = os.path.join(path, _INDEX_FILE)
        meta = _read_meta(meta_path)
        n, d = meta["shape"]
        try:
            index = faiss.read_index(index_path)
        except Exception as exc:  # faiss raises RuntimeError on corrupt input
            raise ValueError(f"path: cannot read faiss index {index_path!r}: {exc}") from None
        kind = meta["kind"]
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}[kind]
        if not isinstance(index, expected) or index.metric_type != faiss.METRIC_L2:
            raise ValueError(f"path: faiss index type {type(index).__name__} does not match kind {kind!r}")
        if index.ntotal != n or index.d != d:
            raise ValueError(f"path: faiss index holds {index.ntotal}x{index.d}, metadata says {n}x{d}")
        x, center = meta["train"], meta["center"]
        if not np.all(np.isfinite(x)) or not np.all(np.isfinite(center)):
            raise ValueError("path: metadata arrays hold non-finite values")
        self = cls.__new__(cls)
        self._n_threads = effective_n_threads(n_threads)
        try:
            self._check_stored(index, kind, x, center, "path")
        except ValueError as exc:
            raise ValueError(f"path: inconsistent files: {exc}") from None
        self._setup(index, x, kind, center)
        return self


def _blocks(n, width, budget=1 << 22):
    """(start, end) row blocks of at most ``budget`` elements (at least one row)."""
    step = max(1, budget // max(1, width))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _read_header(zf, name):
    """(shape, dtype, data_bytes) of an .npy member, read from its header only."""
    try:
        with zf.open(name + ".npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            header_len = fh.tell()
    except KeyError:
        raise ValueError(f"path: metadata lacks {name!r}") from None
    except Exception as exc:
        raise ValueError(f"path: corrupt metadata member {name!r}: {exc}") from None
    if dtype.hasobject or fortran:
        raise ValueError(f"path: metadata member {name!r} has a forbidden layout/dtype {dtype}")
    size = zf.getinfo(name + ".npy").file_size
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != header_len + nbytes:
        raise ValueError(f"path: metadata member {name!r} has {size - header_len} data bytes, header says {nbytes}")
    return shape, dtype


def _read_meta(meta_path):
    try:
        zf = zipfile.ZipFile(meta_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"path: cannot open metadata {meta_path!r}: {exc}") from None
    with zf:
        spec = {"format_version": ((), "i"), "kind": ((), "U"), "metric": ((), "U"), "shape": ((2,), "i")}
        for name, (shape, kinds) in spec.items():
            s, dt = _read_header(zf, name)
            if s != shape or dt.kind not in kinds or (dt.kind == "U" and dt.itemsize > 64):
                raise ValueError(f"path: metadata member {name!r} has shape {s} dtype {dt}")
        try:
            with np.load(meta_path, allow_pickle=False) as npz:
                version = int(npz["format_version"])
                kind, metric = str(npz["kind"]), str(npz["metric"])
                shape = tuple(int(v) for v in npz["shape"])
        except Exception as exc:
            raise ValueError(f"path: corrupt metadata: {exc}") from None
        if version != _FORMAT_VERSION:
            raise ValueError(f"path: unsupported format_version {version}")
        if kind not in _KINDS or metric != "l2":
            raise ValueError(f"path: bad kind/metric {kind!r}/{metric!r}")
        n, d = shape
        if n < 1 or d < 1:
            raise ValueError(f"path: bad shape {shape}")
        s, dt = _read_header(zf, "center")
        if s != (d,) or dt != np.float64:
            raise ValueError(f"path: 'center' has shape {s} dtype {dt}, expected ({d},) float64")
        s, dt = _read_header(zf, "train")
        if s != (n, d) or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"path: 'train' has shape {s} dtype {dt}, expected ({n}, {d}) float32/float64")
    try:
        with np.load(meta_path, allow_pickle=False) as npz:
            center = npz["center"]
            train = npz["train"]
    except Exception as exc:
        raise ValueError(f"path: corrupt metadata arrays: {exc}") from None
    return {"kind": kind, "shape": (n, d), "center": center, "train": train}
