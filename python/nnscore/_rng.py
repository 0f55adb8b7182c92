"""Random generators: ``rng`` accepts None | int | Generator (SPEC 7); global state is never touched."""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["check_rng"]


def check_rng(rng, name: str = "rng") -> np.random.Generator:
    """``None | int | SeedSequence | BitGenerator | Generator`` -> Generator (global state untouched)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(rng)
    if isinstance(rng, bool) or not isinstance(rng, numbers.Integral):
        raise TypeError(f"{name}: expected None, an int seed or a numpy Generator, got {type(rng).__name__}")
    if int(rng) < 0:
        raise ValueError(f"{name}: seeds must be non-negative, got {int(rng)}")
    return np.random.default_rng(int(rng))
