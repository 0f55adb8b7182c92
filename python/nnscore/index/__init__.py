"""Training-set nearest-neighbour indexes (faiss) with certified exclusion radii (science.md §3)."""
from __future__ import annotations

from .faiss_index import Neighbours, TrainingIndex, fp_margin_coefficient, scan_nlist

__all__ = ["TrainingIndex", "Neighbours", "fp_margin_coefficient", "scan_nlist"]
