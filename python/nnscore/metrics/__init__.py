"""Memorisation, novelty, manifold, coverage and likelihood metrics (science.md §4.7).

Nearest-neighbour queries go through faiss (exact flat index, distances recomputed in float64);
no samples x training matrix is ever formed.
"""
from .likelihood import log_likelihood
from .manifold import (
    coverage,
    distance_to_manifold,
    fill_distance,
    lateral_novelty,
    n_eff_summary,
    score_error_split,
    uniformity_circle,
)
from .memorization import (
    NearestTrain,
    median_nn_spacing,
    memorization_fraction,
    memorized_absolute,
    nearest_train,
    novelty,
)

__all__ = [
    "NearestTrain",
    "nearest_train",
    "median_nn_spacing",
    "memorization_fraction",
    "memorized_absolute",
    "novelty",
    "distance_to_manifold",
    "lateral_novelty",
    "uniformity_circle",
    "fill_distance",
    "coverage",
    "score_error_split",
    "n_eff_summary",
    "log_likelihood",
]
