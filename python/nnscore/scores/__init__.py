"""Score models: the ``evaluate(x, t) -> ScoreResult`` contract and its implementations."""
from .base import ScoreModel
from .cfdm import CFDMScore
from .coarse import CoarseScore, HybridScore
from .density import KDEScore, TemperedScore
from .empirical import EmpiricalScore
from .knn import KNNSamplerCache, KNNScore
from .kernels import AnisotropicGaussianKernel, GaussianKernel, Kernel, ManifoldKernel, TangentKernel
from .piecewise import PiecewiseLinearScore
from .result import ScoreResult
from .smoothed import SmoothedScore
from .stochastic import ImportanceSampledScore, StratifiedScore

__all__ = [
    "ScoreModel",
    "EmpiricalScore",
    "ScoreResult",
    "SmoothedScore",
    "KDEScore",
    "TemperedScore",
    "Kernel",
    "GaussianKernel",
    "AnisotropicGaussianKernel",
    "TangentKernel",
    "ManifoldKernel",
    "PiecewiseLinearScore",
    "CFDMScore",
    "CoarseScore",
    "HybridScore",
    "KNNScore",
    "KNNSamplerCache",
    "ImportanceSampledScore",
    "StratifiedScore",
]
