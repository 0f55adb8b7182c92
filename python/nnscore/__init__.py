"""nnscore: exact, certified and smoothed empirical diffusion scores at scale.

Quick start::

    import nnscore as ns
    model = ns.EmpiricalScore(train, schedule="ve")
    res = model.evaluate(x, t)          # res.denoised, res.score, res.log_density, ...

``import nnscore`` loads NumPy and tries the compiled core; numba, faiss and torch are imported
only by the functions that use them.
"""
from __future__ import annotations

import logging as _logging

from . import datasets, metrics, plotting, sampling, schedules
from .index import TrainingIndex
from ._info import __version__, show_versions
from .backends import HAS_CORE, available_backends
from .exceptions import BackendUnavailableError, FallbackWarning, NNScoreWarning, PrecisionWarning
from .partials import Partial, merge, reduce_partials
from .sampling import sample
from .scores import (
    AnisotropicGaussianKernel,
    CFDMScore,
    CoarseScore,
    EmpiricalScore,
    HybridScore,
    GaussianKernel,
    ImportanceSampledScore,
    KDEScore,
    KNNSamplerCache,
    KNNScore,
    ManifoldKernel,
    PiecewiseLinearScore,
    ScoreModel,
    ScoreResult,
    SmoothedScore,
    StratifiedScore,
    TangentKernel,
    TemperedScore,
)
from .scores.shards import finalize, partial_reduce

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "__version__",
    "show_versions",
    "schedules",
    "HAS_CORE",
    "available_backends",
    "BackendUnavailableError",
    "FallbackWarning",
    "NNScoreWarning",
    "PrecisionWarning",
    "Partial",
    "merge",
    "reduce_partials",
    "partial_reduce",
    "finalize",
    "EmpiricalScore",
    "ScoreModel",
    "ScoreResult",
    "SmoothedScore",
    "KDEScore",
    "TemperedScore",
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
    "metrics",
    "datasets",
    "sampling",
    "sample",
    "plotting",
    "TrainingIndex",
]
