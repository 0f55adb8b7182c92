"""Distances to the nearest training points: memorisation fraction, exact copies, novelty."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import as_float_array, as_rows, check_finite

__all__ = [
    "NearestTrain",
    "nearest_train",
    "median_nn_spacing",
    "memorization_fraction",
    "memorized_absolute",
    "novelty",
]


@dataclass(frozen=True)
class NearestTrain:
    """d1 <= d2: float64 distances of each sample to its two nearest training points; idx (M, 2)."""

    d1: np.ndarray
    d2: np.ndarray
    idx: np.ndarray


def _rows(a, name: str) -> np.ndarray:
    arr = as_float_array(a, name)
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected an array of shape (M, d) or (M, *shape), got ndim={arr.ndim}")
    check_finite(arr, name)
    return as_rows(arr, name)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("nearest-neighbour metrics need faiss: pip install faiss-cpu") from exc
    return faiss


def nearest_train(samples, train, k: int = 2, n_candidates: int = 8) -> NearestTrain:
    """Exact distances from each sample to its k (= 1 or 2) nearest training points.

    faiss (flat L2 index, float32 GEMM form) proposes ``n_candidates`` neighbours; their
    distances are recomputed in float64 difference form and re-sorted, so ties and near-copies
    are resolved at float64 precision.
    """
    if k not in (1, 2):
        raise ValueError(f"k: expected 1 or 2, got {k!r}")
    x = _rows(samples, "samples")
    tr = _rows(train, "train")
    if tr.shape[0] == 0:
        raise ValueError("train: the training set is empty")
    if x.shape[1] != tr.shape[1]:
        raise ValueError(f"samples: dimension {x.shape[1]} does not match train's {tr.shape[1]}")
    n_c = int(min(max(n_candidates, k), tr.shape[0]))
    if x.shape[0] == 0:
        empty = np.zeros(0)
        return NearestTrain(empty, empty, np.zeros((0, 2), dtype=np.int64))
    faiss = _faiss()
    index = faiss.IndexFlatL2(tr.shape[1])
    index.add(np.ascontiguousarray(tr, dtype=np.float32))
    _, cand = index.search(np.ascontiguousarray(x, dtype=np.float32), n_c)
    x64 = x.astype(np.float64)
    dist = np.empty(cand.shape)
    for j in range(n_c):  # n_c (<= 8) passes of (M, d): no M x N matrix
        diff = tr[cand[:, j]].astype(np.float64) - x64
        dist[:, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.argsort(dist, axis=1, kind="stable")
    dist = np.take_along_axis(dist, order, axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    d2 = dist[:, 1] if n_c > 1 else np.full(x.shape[0], np.inf)
    idx = np.stack([cand[:, 0], cand[:, 1] if n_c > 1 else np.full(x.shape[0], -1)], axis=1).astype(np.int64)
    return NearestTrain(dist[:, 0], d2, idx)


def median_nn_spacing(train) -> float:
    """s_X: the median distance of a training point to its nearest other training point."""
    tr = _rows(train, "train")
    if tr.shape[0] < 2:
        raise ValueError("train: need at least 2 points for a nearest-neighbour spacing")
    nt = nearest_train(tr, tr, k=2)
    # each point finds itself first (distance 0); duplicates give spacing 0, as they should
    return float(np.median(nt.d2))


def memorization_fraction(samples, train, ratio: float = 1.0 / 3.0, nearest: NearestTrain | None = None) -> float:
    """Fraction of samples with d1/d2 < ratio (Yoon et al. 2023; Gu et al. 2023, arXiv 2310.02664)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected 0 < ratio <= 1, got {ratio!r}")
    nt = nearest if nearest is not None else nearest_train(samples, train, k=2)
    if nt.d1.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(nt.d2 > 0, nt.d1 / nt.d2, np.where(nt.d1 == 0, 0.0, np.inf))
    return float(np.mean(r < ratio))


def memorized_absolute(samples, train, eps: float | None = None, nearest: NearestTrain | None = None) -> float:
    """Fraction of samples within ``eps`` of a training point (default 1e-3 x median NN spacing)."""
    if eps is None:
        eps = 1e-3 * median_nn_spacing(train)
    elif not eps >= 0:
        raise ValueError(f"eps: expected a non-negative number, got {eps!r}")
    nt = nearest if nearest is not None else nearest_train(samples, train, k=1)
    return float(np.mean(nt.d1 <= eps)) if nt.d1.size else 0.0


def novelty(samples, train, nearest: NearestTrain | None = None, spacing: float | None = None) -> np.ndarray:
    """d1(x) / s_X per sample: distance to the nearest training point in units of s_X."""
    nt = nearest if nearest is not None else nearest_train(samples, train, k=1)
    s = median_nn_spacing(train) if spacing is None else float(spacing)
    if not s > 0:
        raise ValueError("train: the median nearest-neighbour spacing is 0 (duplicated points); pass spacing=")
    return nt.d1 / s
