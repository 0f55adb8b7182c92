"""Shared checks of the device backends (torch on any device, cuda): tensors in, tensors out,
against the independent float64 oracle (conftest.ref_f64) with the CPU engine's tolerances
(test_empirical.assert_matches_oracle).  Imported by test_torch_backend.py and test_cuda.py."""
from __future__ import annotations

import numpy as np

import nnscore as ns
from conftest import data_radius, nn_spacing, ref_f64
from test_empirical import assert_matches_oracle

#: sigma / (median nearest-neighbour spacing): from every-logit-underflows to far beyond R.
SIGMA_FACTORS = [1e-8, 1e-4, 1e-2, 1.0, 10.0, 1e2, 1e3]


def make_train(rng, n, d, dtype, offset=0.0):
    return (rng.standard_normal((n, d)) + offset).astype(dtype)


def queries(rng, train, sigma, m=12):
    """Noisy copies of training points, exact training points and far-away points."""
    n, d = train.shape
    idx = rng.integers(0, n, m)
    x = train[idx].astype(np.float64) + sigma * rng.standard_normal((m, d))
    x[: m // 4] = train[idx[: m // 4]]
    x[-2:] = train.mean(0) + 50.0 * (np.abs(train).max() + 1.0) * rng.standard_normal((2, d)) / np.sqrt(d)
    return x.astype(train.dtype)


def to_numpy_result(res):
    """The array fields of a tensor ScoreResult as NumPy (for the oracle comparison)."""
    import torch

    class R:
        pass

    out = R()
    for k, v in vars(res).items():
        setattr(out, k, v.detach().cpu().numpy() if torch.is_tensor(v) else v)
    return out


def check_accuracy_matrix(backend, device, dtype, d, n, seed, *, weights=False, check=assert_matches_oracle,
                          **options):
    """Tensor evaluate over SIGMA_FACTORS vs the oracle; returns the number of evaluations."""
    import torch

    rng = np.random.default_rng([seed, d, n])
    train = make_train(rng, n, d, dtype, offset=3.0)
    w = rng.uniform(0.1, 2.0, n) if weights else None
    R, s = data_radius(train), nn_spacing(train)
    model = ns.EmpiricalScore(torch.from_numpy(train).to(device), weights=None if w is None else torch.from_numpy(w),
                              backend=backend)
    count = 0
    for f in SIGMA_FACTORS:
        x = queries(rng, train, f * s)
        res = model.evaluate(torch.from_numpy(x).to(device), f * s, **options)
        assert res.denoised.device == torch.device(device) if device != "cuda" else res.denoised.is_cuda
        got, ref = to_numpy_result(res), ref_f64(train, x, f * s, weights=w)
        what = f"{backend} {np.dtype(dtype).name} d={d} n={n} sigma={f:g}s"
        check(got, ref, x, dtype, R, what=what)
        if check is assert_matches_oracle:  # tr Cov, tolerance of test_empirical.test_posterior_variance
            dist2 = np.sum((x.astype(np.float64) - ref["denoised"]) ** 2, axis=1)
            atol = (1e-6 if np.dtype(dtype) == np.float32 else 1e-10) * R**2 + 64 * np.finfo(float).eps * dist2
            err = np.abs(got.posterior_variance - ref["posterior_variance"])
            assert np.all(err <= atol), f"{what}: tr Cov error {err.max():.3e}"
        count += 1
    return count
