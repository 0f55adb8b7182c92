"""Peak memory of the exact engine is O((N + M) d): no M x N matrix, no copy of the training set.

N = 400_000 points in d = 16 (float32: 25.6 MB) and M = 512 queries: an M x N float64 matrix
would take 1.6 GB.  Two checks: tracemalloc (NumPy's allocations are traced) for the Python
side, and an address-space limit (RLIMIT_AS) in a subprocess for everything, C++ included.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import nnscore as ns

N, M, D = 400_000, 512, 16
MB = 1 << 20
SIGMAS = (1.0, 10.0)  # float32 selection path (difference form) and fast (GEMM-form) path

pytestmark = pytest.mark.skipif(not ns.HAS_CORE, reason="the cpp backend needs the compiled core")


@pytest.fixture(scope="module")
def big_problem():
    rng = np.random.default_rng(20240)
    train = rng.standard_normal((N, D), dtype=np.float32)
    x = (train[rng.integers(0, N, size=M)] + 0.5 * rng.standard_normal((M, D))).astype(np.float32)
    return train, x


def test_tracemalloc_peak_is_linear(big_problem):
    train, x = big_problem
    ns.EmpiricalScore(train[:10], backend="cpp")  # imports done outside the traced region
    outputs = 2 * M * D * 4 + M * D * 8 + 10 * M * 8  # denoised, score, v (float64), per-query arrays
    side = N * 8  # one float64 array of length N (half squared norms)
    budget = 4 * (outputs + side) + 4 * MB
    matrix = M * N * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        model = ns.EmpiricalScore(train, backend="cpp")
        prep_peak = tracemalloc.get_traced_memory()[1] - base
        for sigma in SIGMAS:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            res = model.evaluate(x, sigma)
            peak = tracemalloc.get_traced_memory()[1] - base
            assert peak < budget, f"sigma={sigma}: traced peak {peak / MB:.1f} MB > {budget / MB:.1f} MB"
            assert peak < matrix / 100
            assert np.all(np.isfinite(res.log_density))
            del res
    finally:
        tracemalloc.stop()
    # Preparing the model: O(N) float64 side arrays and bounded chunks, no copy of the points.
    assert prep_peak < budget, f"preparation peak {prep_peak / MB:.1f} MB > {budget / MB:.1f} MB"
    assert prep_peak < train.nbytes  # a float64 (or even float32) copy of train would exceed this
    assert np.shares_memory(model.train, train)


_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import nnscore as ns

    N, M, D = {N}, {M}, {D}
    rng = np.random.default_rng(7)
    train = rng.standard_normal((N, D), dtype=np.float32)
    x = (train[rng.integers(0, N, size=M)] + 0.5 * rng.standard_normal((M, D))).astype(np.float32)
    model = ns.EmpiricalScore(train, backend="cpp", n_threads=2)
    model.evaluate(x[:2], 1.0)  # warm up: thread stacks and malloc arenas exist before the limit

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    limit = vm_bytes() + {headroom}
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    # Control: the limit must forbid an M x N float64 matrix, or this test proves nothing.
    try:
        big = np.ones((M, N))
    except MemoryError:
        pass
    else:
        sys.exit("control failed: an (M, N) float64 matrix fits under the limit")
    for sigma in {sigmas}:
        res = model.evaluate(x, sigma)
        assert np.all(np.isfinite(res.log_density)), sigma
        assert res.denoised.shape == (M, D)
    print("OK", limit)
    """
)


def test_address_space_limit(big_problem):
    """The whole evaluation (C++ included) fits in 600 MB of extra address space."""
    code = _CHILD.format(N=N, M=M, D=D, headroom=600 * MB, sigmas=SIGMAS)
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(ns.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("OK")
