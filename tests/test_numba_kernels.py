"""numba dense partials vs the float64 NumPy oracle (``partials_dense_reference``)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

numba = pytest.importorskip("numba")

from nnscore.backends import numba_kernels as nk  # noqa: E402
from nnscore.backends.numba_kernels import is_available, partials_dense_numba  # noqa: E402
from nnscore.backends.reference import partials_dense_reference  # noqa: E402
from nnscore.exceptions import BackendUnavailableError  # noqa: E402

pytestmark = pytest.mark.numba

DTYPES = [np.float64, np.float32]
FIELDS = ("m", "z", "v", "q", "z2", "top1")


def _data(rng, m, n, d, dtype, scale=1.0):
    y = (scale * rng.standard_normal((m, d))).astype(dtype)
    x = (scale * rng.standard_normal((n, d))).astype(dtype)
    return y, x


def _reference(y, x, sigma, log_weights=None):
    # The oracle on the very same (possibly float32) values, widened exactly to float64.
    return partials_dense_reference(
        np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64), sigma, log_weights
    )


def _ref_logits(y, x, sigma, log_weights=None):
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    diff = x[None, :, :] - y[:, None, :]
    logits = -np.einsum("mnd,mnd->mn", diff, diff) / (2.0 * sigma[:, None] ** 2)
    if log_weights is not None:
        logits = logits + log_weights[None, :]
    return logits


def _assert_matches(p, r, y, x, sigma, log_weights=None):
    """z, v, q, z2 are each relative to their own exp(m): compare them directly."""
    n_q, d = np.shape(y)
    assert p.m.shape == (n_q,) and p.z.shape == (n_q,) and p.q.shape == (n_q,)
    assert p.z2.shape == (n_q,) and p.top1.shape == (n_q,) and p.v.shape == (n_q, d)
    for name in ("m", "z", "v", "q", "z2"):
        assert getattr(p, name).dtype == np.float64, name
    assert p.top1.dtype == np.int64
    if n_q == 0:
        return
    x64 = np.asarray(x, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(x64))) + float(np.max(np.abs(y64))))
    zmax = float(np.max(r.z))
    assert np.all(np.isfinite(p.m)) and np.all(np.isfinite(p.z))
    assert_allclose(p.m, r.m, rtol=1e-12, atol=1e-12)
    assert_allclose(p.z, r.z, rtol=1e-10, atol=1e-12)
    assert_allclose(p.v, r.v, rtol=1e-10, atol=1e-10 * zmax * scale)
    assert_allclose(p.q, r.q, rtol=1e-10, atol=1e-10 * zmax * scale**2 * d)
    assert_allclose(p.z2, r.z2, rtol=1e-10, atol=1e-12)
    differs = np.flatnonzero(p.top1 != r.top1)
    if differs.size:
        logits = _ref_logits(y, x, sigma, log_weights)
        for j in differs:
            top = logits[j].max()
            assert logits[j, p.top1[j]] >= top - 1e-12 * max(1.0, abs(top)), (
                f"query {j}: top1 {p.top1[j]} vs reference {r.top1[j]} is not a near-tie"
            )


def _assert_identical(a, b):
    for name in FIELDS:
        assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --------------------------------------------------------------------------------------------
# shapes x dtypes x weights (per-query sigmas spanning 0.1 .. 10 x the data scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("m", [0, 1, 5, 33])
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("d", [1, 3, 64])
def test_matches_reference_shapes(d, n, m, weighted, dtype):
    rng = np.random.default_rng([d, n, m, weighted, np.dtype(dtype).itemsize])
    y, x = _data(rng, m, n, d, dtype)
    sigma = np.sqrt(d) * 10.0 ** rng.uniform(-1.0, 1.0, size=m)
    lw = rng.normal(scale=2.0, size=n) if weighted else None
    p = partials_dense_numba(y, x, sigma, lw)
    r = _reference(y, x, sigma, lw)
    _assert_matches(p, r, y, x, sigma, lw)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_empty_queries(n_threads):
    for d in (1, 5):
        p = partials_dense_numba(
            np.zeros((0, d), np.float32), np.ones((4, d), np.float32), np.zeros(0), None, n_threads
        )
        assert p.v.shape == (0, d)
        for name in ("m", "z", "q", "z2", "top1"):
            assert getattr(p, name).shape == (0,)
        assert p.top1.dtype == np.int64 and p.m.dtype == np.float64


def test_empty_queries_do_not_touch_kernels(monkeypatch):
    def boom():
        raise AssertionError("kernel requested for M = 0")

    monkeypatch.setattr(nk, "_get_kernels", boom)
    p = partials_dense_numba(np.zeros((0, 3)), np.ones((2, 3)), np.zeros(0))
    assert p.v.shape == (0, 3)


# --------------------------------------------------------------------------------------------
# sigma regimes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("d", [1, 3, 64])
def test_tiny_sigma_is_nearest_neighbour(d, n_threads, dtype):
    rng = np.random.default_rng([7, d, n_threads])
    scale = 3.0
    y, x = _data(rng, 4, 500, d, dtype, scale=scale)
    sigma = np.full(4, 1e-6 * scale)
    p = partials_dense_numba(y, x, sigma, n_threads=n_threads)
    r = _reference(y, x, sigma)
    _assert_matches(p, r, y, x, sigma)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    sq = ((x64[None, :, :] - y64[:, None, :]) ** 2).sum(-1)
    nn = np.argmin(sq, axis=1)
    for name in ("m", "z", "v", "q", "z2"):
        assert np.all(np.isfinite(getattr(p, name))), name
    assert_array_equal(p.top1, nn)
    assert_allclose(p.z, 1.0, rtol=1e-14)
    assert_allclose(p.z2, 1.0, rtol=1e-14)
    assert_allclose(p.v, x64[nn] - y64, rtol=1e-12, atol=1e-300)
    assert_allclose(p.q, sq[np.arange(4), nn], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("m", [1, 6])
def test_medium_sigma(m, weighted, dtype):
    rng = np.random.default_rng([11, m, weighted])
    y, x = _data(rng, m, 2000, 16, dtype)
    sigma = np.full(m, 1.5)
    lw = rng.normal(size=2000) if weighted else None
    p = partials_dense_numba(y, x, sigma, lw)
    r = _reference(y, x, sigma, lw)
    _assert_matches(p, r, y, x, sigma, lw)
    assert np.all(p.z > 1.5)  # genuinely mixed weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_huge_sigma_uniform_weights(n_threads, dtype):
    rng = np.random.default_rng([13, n_threads])
    n = 700
    y, x = _data(rng, 3, n, 5, dtype)
    sigma = np.full(3, 1e6)
    p = partials_dense_numba(y, x, sigma, n_threads=n_threads)
    r = _reference(y, x, sigma)
    _assert_matches(p, r, y, x, sigma)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert_allclose(p.z, n, rtol=1e-9)
    assert_allclose(p.z2, n, rtol=1e-9)
    assert_allclose(p.v, (x64[None] - y64[:, None]).sum(1), rtol=1e-8, atol=1e-8 * n)


def test_mixed_sigma_per_query():
    rng = np.random.default_rng(17)
    y, x = _data(rng, 9, 400, 4, np.float64)
    sigma = np.array([1e-6, 1e-3, 0.1, 0.5, 1.0, 3.0, 100.0, 1e4, 1e6])
    p = partials_dense_numba(y, x, sigma)
    _assert_matches(p, _reference(y, x, sigma), y, x, sigma)


# --------------------------------------------------------------------------------------------
# duplicates, queries on training points, ties, masked points


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("sigma_value", [1e-6, 0.7])
def test_duplicates_and_queries_on_training_points(sigma_value, n_threads, dtype):
    rng = np.random.default_rng([19, n_threads])
    base = rng.standard_normal((300, 6)).astype(dtype)
    x = np.ascontiguousarray(np.concatenate([base, base[:50], base[:10]]))  # 0..9 thrice
    y = np.ascontiguousarray(x[[3, 20, 299, 0]])
    sigma = np.full(4, sigma_value)
    p = partials_dense_numba(y, x, sigma, n_threads=n_threads)
    r = _reference(y, x, sigma)
    _assert_matches(p, r, y, x, sigma)
    assert_array_equal(p.top1, [3, 20, 299, 0])  # first copy of the exact match
    assert_array_equal(p.m, 0.0)
    if sigma_value < 1e-3:
        assert_array_equal(p.z, [3.0, 2.0, 1.0, 3.0])
        assert_array_equal(p.z2, [3.0, 2.0, 1.0, 3.0])
        assert_array_equal(p.v, 0.0)
        assert_array_equal(p.q, 0.0)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_exact_ties_pick_smallest_index(n_threads):
    y = np.zeros((1, 2))
    sigma = np.ones(1)
    x = np.array([[3.0, 3.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [2.0, 2.0]])
    p = partials_dense_numba(y, x, sigma, n_threads=n_threads)
    assert p.top1[0] == 1
    _assert_matches(p, _reference(y, x, sigma), y, x, sigma)
    # Many queries (query-parallel schedule) with the same ties.
    yq = np.zeros((8, 2))
    pq = partials_dense_numba(yq, x, np.ones(8), n_threads=n_threads)
    assert_array_equal(pq.top1, 1)


@pytest.mark.parametrize("n_threads", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tie_across_chunks_large_n(dtype, n_threads):
    rng = np.random.default_rng(23)
    n, d = 5000, 8
    x = (10.0 + rng.random((n, d))).astype(dtype)
    x[100] = 0.0
    x[4900] = 0.0
    x[100, 0], x[4900, 0] = 0.5, -0.5
    y = np.zeros((1, d), dtype)
    sigma = np.full(1, 0.3)
    p = partials_dense_numba(y, x, sigma, n_threads=n_threads)
    assert p.top1[0] == 100
    _assert_matches(p, _reference(y, x, sigma), y, x, sigma)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_masked_points_minus_inf_log_weights(n_threads):
    rng = np.random.default_rng(29)
    y, x = _data(rng, 1, 3000, 4, np.float64)
    lw = rng.normal(size=3000)
    lw[:1500] = -np.inf  # whole leading chunks contribute nothing
    lw[2000:2100] = -np.inf
    sigma = np.full(1, 0.8)
    p = partials_dense_numba(y, x, sigma, lw, n_threads=n_threads)
    r = _reference(y, x, sigma, lw)
    _assert_matches(p, r, y, x, sigma, lw)
    assert p.top1[0] >= 1500


# --------------------------------------------------------------------------------------------
# schedules, determinism, thread state


def _spy_kernels(monkeypatch):
    nk._get_kernels()  # compile/bind first
    calls = {"by_queries": 0, "by_chunks": 0}
    spied = dict(nk._kernels)
    for name in calls:
        def wrapper(*args, _f=spied[name], _name=name):
            calls[_name] += 1
            return _f(*args)

        spied[name] = wrapper
    monkeypatch.setattr(nk, "_kernels", spied)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
def test_few_queries_path_matches_reference(monkeypatch, dtype):
    calls = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(31)
    y, x = _data(rng, 1, 5000, 32, dtype)
    lw = rng.normal(size=5000)
    sigma = np.full(1, 2.0)
    p = partials_dense_numba(y, x, sigma, lw, n_threads=2)
    assert calls == {"by_queries": 0, "by_chunks": 1}
    _assert_matches(p, _reference(y, x, sigma, lw), y, x, sigma, lw)
    p1 = partials_dense_numba(y, x, sigma, lw, n_threads=1)
    assert calls == {"by_queries": 1, "by_chunks": 1}
    _assert_matches(p1, _reference(y, x, sigma, lw), y, x, sigma, lw)


@pytest.mark.parametrize("m", [1, 3, 33])
def test_deterministic_and_thread_count_independent(m):
    rng = np.random.default_rng([37, m])
    y, x = _data(rng, m, 5000, 16, np.float32)
    lw = rng.normal(size=5000)
    sigma = rng.uniform(0.5, 3.0, size=m)
    for n_threads in (None, 1, 2):
        a = partials_dense_numba(y, x, sigma, lw, n_threads=n_threads)
        b = partials_dense_numba(y, x, sigma, lw, n_threads=n_threads)
        _assert_identical(a, b)
    p1 = partials_dense_numba(y, x, sigma, lw, n_threads=1)
    p2 = partials_dense_numba(y, x, sigma, lw, n_threads=2)
    for name in ("m", "z", "v", "q", "z2"):
        assert_allclose(getattr(p2, name), getattr(p1, name), rtol=1e-12, atol=1e-12, err_msg=name)
    assert_array_equal(p1.top1, p2.top1)


def test_thread_setting_is_restored():
    before = numba.get_num_threads()
    y = np.zeros((1, 2))
    x = np.ones((10, 2))
    for n_threads in (1, 2, 64):
        partials_dense_numba(y, x, np.ones(1), n_threads=n_threads)
        assert numba.get_num_threads() == before
    with pytest.raises(ValueError):
        partials_dense_numba(y, x, np.ones(1), n_threads=0)
    assert numba.get_num_threads() == before


def test_availability(monkeypatch):
    assert is_available() == (True, "")
    monkeypatch.setattr(nk, "_availability", None)
    monkeypatch.setattr(nk, "_kernels", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` raise ImportError
    ok, reason = is_available()
    assert not ok and "pip install numba" in reason
    with pytest.raises(BackendUnavailableError, match="pip install numba"):
        partials_dense_numba(np.zeros((1, 2)), np.ones((3, 2)), np.ones(1))
