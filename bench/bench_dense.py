"""pytest-benchmark suite of the exact engine: backend x d x N x sigma, float32, M = 256.

    pytest bench/bench_dense.py --benchmark-only [--bench-large] [--benchmark-save=NAME]

Every benchmark checks its result against the float64 reference on a few queries at the end,
and stores GFLOP/s (4 M N d flops) and the build facts in extra_info.
"""
import numpy as np
import pytest

import nnscore as ns
from nnscore.backends import _core

M = 256
SIGMA_FACTORS = {"small": 0.1, "medium": 1.0, "large": 10.0}


def make_data(n, d, seed=0):
    """Clustered data on an 8-dim linear subspace plus small noise (image-like, per-coord var ~1)."""
    rng = np.random.default_rng([seed, d])
    k = min(d, 8)
    basis = np.linalg.qr(rng.standard_normal((d, k)))[0].T * np.sqrt(d / k)
    centers = rng.standard_normal((32, k)) * 1.5
    z = centers[rng.integers(0, 32, n)] + 0.6 * rng.standard_normal((n, k))
    return (z @ basis / np.sqrt(2.61) + 0.05 * rng.standard_normal((n, d))).astype(np.float32)


def nn_spacing(x, n_probe=64):
    probe = x[:n_probe].astype(np.float64)
    d2 = ((probe[:, None, :] - x[None, n_probe : n_probe + 20000].astype(np.float64)) ** 2).sum(-1)
    return float(np.median(np.sqrt(d2.min(1))))


CASES = [(d, n) for d in (2, 16, 64, 256, 784) for n in (10_000, 100_000)] + [
    pytest.param(64, 1_000_000, marks=pytest.mark.large),
    pytest.param(784, 1_000_000, marks=pytest.mark.large),
]


@pytest.mark.parametrize("backend", [b for b in ns.available_backends() if b != "reference"])
@pytest.mark.parametrize("level", list(SIGMA_FACTORS))
@pytest.mark.parametrize(("d", "n"), CASES)
def test_dense(benchmark, backend, level, d, n):
    if backend == "numba" and n * d > 10_000_000:
        pytest.skip("numba fallback: too slow for this size")
    x = make_data(n, d)
    y = make_data(M, d, seed=1)
    sigma = SIGMA_FACTORS[level] * nn_spacing(x)
    model = ns.EmpiricalScore(x, backend=backend)
    model.evaluate(y[:4], sigma)  # warm-up (numba: JIT compile)
    res = benchmark.pedantic(model.evaluate, args=(y, sigma), rounds=3, iterations=1)
    ref = ns.EmpiricalScore(x, backend="reference").evaluate(y[:4], sigma) if n * 4 * d < 2e8 else None
    if ref is not None:
        radius = float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).max()))
        err = np.linalg.norm(res.denoised[:4].astype(np.float64) - ref.denoised, axis=1).max() / radius
        assert err <= 1e-5
        benchmark.extra_info["err_D_over_R"] = float(err)
    benchmark.extra_info["gflops"] = 4.0 * M * n * d / benchmark.stats.stats.min / 1e9
    benchmark.extra_info["build_info"] = dict(_core.build_info()) if _core is not None else None
