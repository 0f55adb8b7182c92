"""Score models: the ``evaluate(x, t) -> ScoreResult`` contract and its implementations."""
from .base import ScoreModel
from .empirical import EmpiricalScore
from .result import ScoreResult

__all__ = ["ScoreModel", "EmpiricalScore", "ScoreResult"]
