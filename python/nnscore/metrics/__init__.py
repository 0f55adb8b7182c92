"""Memorisation, novelty and manifold metrics of generated samples (science.md §4.7).

Nearest-neighbour queries go through faiss (exact flat index, distances recomputed in float64);
no samples x training matrix is ever formed.
"""
from .manifold import distance_to_manifold, lateral_novelty, uniformity_circle
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
]
