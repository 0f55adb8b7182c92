"""Shared fixtures and the float64 oracle of the exact-engine tests.

* ``seed``: 0 by default; ``NNSCORE_TESTS_SEED="0-9"`` (or ``"3"``, ``"1,4,7"``) parametrises
  every test that uses it over that range.
* ``backend``: every backend of ``nnscore.available_backends()``.
* The run fails up front when the compiled core is missing (``nnscore.HAS_CORE`` False),
  unless ``NNSCORE_ALLOW_NO_CORE=1``.
* ``ref_f64``: an independent float64 implementation (plain NumPy + scipy's logsumexp) of every
  quantity of ``ScoreResult``; it never calls nnscore.
"""
from __future__ import annotations

import os

# Pinned before nnscore (and numba) are imported: deterministic, 2-core friendly defaults.
os.environ.setdefault("NNSCORE_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

import nnscore  # noqa: E402

try:  # hypothesis profiles (test_properties.py): "nnscore" is derandomized, so runs reproduce;
    # NNSCORE_HYPOTHESIS_PROFILE=explore searches 1000 random examples per property instead.
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("nnscore", derandomize=True, deadline=None, max_examples=40, print_blob=True)
    _hsettings.register_profile("explore", derandomize=False, deadline=None, max_examples=1000, print_blob=True)
    _hsettings.load_profile(os.environ.get("NNSCORE_HYPOTHESIS_PROFILE", "nnscore"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


def _parse_seeds(spec: str) -> list[int]:
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds or [0]


SEEDS = _parse_seeds(os.environ.get("NNSCORE_TESTS_SEED", "0"))


def pytest_configure(config):
    if not nnscore.HAS_CORE and os.environ.get("NNSCORE_ALLOW_NO_CORE") != "1":
        from nnscore.backends import CORE_IMPORT_ERROR

        raise pytest.UsageError(
            "nnscore's compiled core is not importable (nnscore.HAS_CORE is False: "
            f"{CORE_IMPORT_ERROR}); build it, or set NNSCORE_ALLOW_NO_CORE=1 to test without it"
        )


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def seed(request) -> int:
    return int(request.param)


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(params=nnscore.available_backends())
def backend(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------
# The float64 oracle
# ---------------------------------------------------------------------------------------------


def ref_f64(train, x, sigma, weights=None, alpha=1.0) -> dict:
    """Every ScoreResult quantity of the mixture sum_i pi_i N(x; a x_i, s^2 I), in float64.

    ``train`` (N, ...) and ``x`` (M, ...) are widened exactly to float64 and flattened;
    ``sigma`` is s (the schedule's noise scale; sigma itself for VE) and ``alpha`` is a, each a
    scalar or (M,).  Logits are formed in difference form in x-coordinates,
    l_i = log pi_i - ||x - a x_i||^2 / (2 s^2), so this is the general-schedule formula, not
    the VE-normalised one the library uses.  Returns a dict with ``denoised`` (M, d),
    ``score`` (M, d), ``log_density``, ``divergence``, ``posterior_variance``, ``n_eff``,
    ``max_weight``, ``sigma_tilde`` (M,), ``logits`` (M, N) and ``top1_sets`` (the argmax
    index sets within a relative logit tolerance of 1e-12, i.e. the exact-tie groups).
    """
    tr = np.asarray(train, dtype=np.float64)
    tr = tr.reshape(tr.shape[0], -1)
    xq = np.asarray(x, dtype=np.float64)
    xq = xq.reshape(xq.shape[0], -1)
    n, d = tr.shape
    m = xq.shape[0]
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (m,)).astype(np.float64)
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (m,)).astype(np.float64)
    if weights is None:
        log_pi = np.full(n, -np.log(n))
    else:
        w = np.asarray(weights, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_pi = np.log(w) - np.log(w.sum())
    # Posterior means are taken about the data mean c: the weights multiply x_i - c, whose size
    # is the spread R of the data rather than its offset.
    c = tr.mean(axis=0)
    trc = tr - c
    diff = a[:, None, None] * tr[None, :, :] - xq[:, None, :]  # (M, N, d): a x_i - x
    sq = np.einsum("mnd,mnd->mn", diff, diff)
    logits = log_pi[None, :] - sq / (2.0 * s[:, None] ** 2)
    lse = logsumexp(logits, axis=1) if m else np.zeros(0)
    lam = np.exp(logits - lse[:, None]) if m else np.zeros((0, n))
    denoised = c[None, :] + lam @ trc
    dev = trc[None, :, :] - (denoised - c)[:, None, :]  # x_i - D
    trace_cov = np.einsum("mn,mnd,mnd->m", lam, dev, dev)
    log_density = lse - 0.5 * d * np.log(2.0 * np.pi * s * s)
    divergence = (a * a * trace_cov / (s * s) - d) / (s * s)
    score = (a[:, None] * denoised - xq) / (s * s)[:, None]
    lmax = logits.max(axis=1) if m else np.zeros(0)
    tol = 1e-12 * np.maximum(1.0, np.abs(lmax))
    top1_sets = [set(np.flatnonzero(logits[i] >= lmax[i] - tol[i]).tolist()) for i in range(m)]
    return {
        "denoised": denoised,
        "score": score,
        "log_density": log_density,
        "divergence": divergence,
        "posterior_variance": trace_cov,
        "n_eff": 1.0 / np.sum(lam * lam, axis=1),
        "max_weight": lam.max(axis=1) if m else np.zeros(0),
        "sigma_tilde": s / a,
        "logits": logits,
        "lam": lam,
        "top1_sets": top1_sets,
    }


def data_radius(train) -> float:
    """R = max_i ||x_i - mean|| in float64."""
    tr = np.asarray(train, dtype=np.float64)
    tr = tr.reshape(tr.shape[0], -1)
    return float(np.sqrt(np.max(np.sum((tr - tr.mean(axis=0)) ** 2, axis=1))))


def nn_spacing(train) -> float:
    """Median distance of a training point to its nearest other (distinct) training point."""
    tr = np.asarray(train, dtype=np.float64)
    tr = tr.reshape(tr.shape[0], -1)
    if tr.shape[0] < 2:
        return 1.0
    k = min(tr.shape[0], 1000)
    sub = tr[:k]
    nsub = np.einsum("ij,ij->i", sub, sub)
    ntr = np.einsum("ij,ij->i", tr, tr)
    sq = nsub[:, None] + ntr[None, :] - 2.0 * (sub @ tr.T)
    sq[np.arange(k), np.arange(k)] = np.inf
    # Duplicates: the GEMM form leaves ~1e-16 (|x_i|^2 + |x_j|^2) of rounding where it is 0.
    sq[sq <= 1e-12 * (nsub[:, None] + ntr[None, :])] = np.inf
    best = np.sqrt(np.maximum(np.min(sq, axis=1), 0.0))
    best = best[np.isfinite(best)]
    return float(np.median(best)) if best.size else 1.0
