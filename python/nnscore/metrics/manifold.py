"""Fidelity and novelty along a manifold (science.md §4.7), given an oracle manifold object.

``manifold`` is any object with ``distance(x) -> (M,)`` (and, for the circle uniformity,
``intrinsic_coords(x) -> (M,)`` angles), e.g. those of ``nnscore.datasets``.
"""
from __future__ import annotations

import numpy as np

from .memorization import NearestTrain, _rows, nearest_train

__all__ = ["distance_to_manifold", "lateral_novelty", "uniformity_circle"]


def _distance(manifold, x: np.ndarray) -> np.ndarray:
    if not hasattr(manifold, "distance"):
        raise TypeError(f"manifold: expected an object with a distance(x) method, got {type(manifold).__name__}")
    return np.asarray(manifold.distance(x), dtype=np.float64).reshape(x.shape[0])


def distance_to_manifold(samples, manifold) -> dict:
    """dist(x, M) per sample and its summary: ``{"values", "mean", "median", "q95"}``."""
    x = _rows(samples, "samples")
    dist = _distance(manifold, x)
    if dist.size == 0:
        return {"values": dist, "mean": float("nan"), "median": float("nan"), "q95": float("nan")}
    return {
        "values": dist,
        "mean": float(dist.mean()),
        "median": float(np.median(dist)),
        "q95": float(np.quantile(dist, 0.95)),
    }


def lateral_novelty(samples, train, manifold, nearest: NearestTrain | None = None) -> np.ndarray:
    """sqrt(d1^2 - dist(x, M)^2): novelty *along* the manifold (FPHDP App. G.2), clipped at 0."""
    x = _rows(samples, "samples")
    nt = nearest if nearest is not None else nearest_train(x, train, k=1)
    dist = _distance(manifold, x)
    return np.sqrt(np.maximum(nt.d1**2 - dist**2, 0.0))


def uniformity_circle(angles, n_bins: int = 32) -> dict:
    """Uniformity of angles on a circle (LSHH): histogram deviation vs its noise floor, KS, W1.

    Returns ``{"max_dev", "noise_floor", "ks", "w1"}``: ``max_dev`` is the largest absolute
    deviation of the normalised histogram (mean 1) from 1, ``noise_floor`` = 2 sqrt(n_bins / n);
    ``ks`` the Kolmogorov-Smirnov distance to the uniform law on [0, 2 pi); ``w1`` the circular
    1-Wasserstein distance to uniform (minimised over the cut point), in radians.
    """
    a = np.mod(np.asarray(angles, dtype=np.float64).ravel(), 2 * np.pi)
    n = a.size
    if n == 0:
        raise ValueError("angles: need at least one angle")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    hist, _ = np.histogram(a, bins=n_bins, range=(0.0, 2 * np.pi))
    dens = hist * n_bins / n
    u = np.sort(a) / (2 * np.pi)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    ks = float(max(np.max(ecdf_hi - u), np.max(u - ecdf_lo)))
    # Circular W1 on the unit-length circle: the integral of |F(t) - t - c| minimised over c
    # (c = the median of F(t) - t), by the midpoint rule on a grid finer than the samples.
    n_grid = max(4096, 4 * n)
    grid = (np.arange(n_grid) + 0.5) / n_grid
    diff = np.searchsorted(u, grid, side="right") / n - grid
    w1 = float(np.mean(np.abs(diff - np.median(diff))) * 2 * np.pi)
    return {
        "max_dev": float(np.max(np.abs(dens - 1.0))),
        "noise_floor": float(2.0 * np.sqrt(n_bins / n)),
        "ks": ks,
        "w1": w1,
    }
