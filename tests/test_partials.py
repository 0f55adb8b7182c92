"""nnscore.partials: the merge algebra with empty partials, finalize errors, pickling."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore.partials import Partial, empty_partial, finalize_partial, merge, reduce_partials

PARTIAL_FIELDS = ("m", "z", "v", "q", "z2", "top1")


def _assert_partials_equal(a: Partial, b: Partial):
    for name in PARTIAL_FIELDS:
        assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.log_mass == b.log_mass


def _no_nan(p: Partial):
    for name in PARTIAL_FIELDS:
        assert not np.any(np.isnan(getattr(p, name))), name
    assert not np.isnan(p.log_mass)


@pytest.fixture
def some_partial(rng, backend):
    train = rng.standard_normal((30, 4))
    x = train[:5] + 0.2 * rng.standard_normal((5, 4))
    return ns.partial_reduce(x, train, 0.3, backend=backend, index_offset=7), x


def test_merge_with_empty_is_identity(some_partial):
    p, _ = some_partial
    e = empty_partial(p.n_queries, p.dim)
    for merged in (merge(p, e), merge(e, p)):
        _no_nan(merged)
        _assert_partials_equal(merged, p)


def test_merge_of_empties_stays_empty():
    e = empty_partial(3, 2)
    merged = merge(e, e)
    _no_nan(merged)
    assert np.all(merged.m == -np.inf)
    assert_array_equal(merged.z, 0.0)
    assert_array_equal(merged.v, 0.0)
    assert_array_equal(merged.top1, -1)
    assert merged.log_mass == -np.inf


def test_merge_with_partially_empty_rows(some_partial):
    """Rows that are empty on one side take the other side's row, never NaN."""
    p, _ = some_partial
    e = empty_partial(p.n_queries, p.dim)
    rows = np.array([True, False, True, False, False])
    mixed = Partial(
        m=np.where(rows, p.m, e.m), z=np.where(rows, p.z, e.z), v=np.where(rows[:, None], p.v, e.v),
        q=np.where(rows, p.q, e.q), z2=np.where(rows, p.z2, e.z2), top1=np.where(rows, p.top1, e.top1),
        log_mass=p.log_mass,
    )
    flipped = Partial(
        m=np.where(~rows, p.m, e.m), z=np.where(~rows, p.z, e.z), v=np.where(~rows[:, None], p.v, e.v),
        q=np.where(~rows, p.q, e.q), z2=np.where(~rows, p.z2, e.z2), top1=np.where(~rows, p.top1, e.top1),
        log_mass=-np.inf,
    )
    for merged in (merge(mixed, flipped), merge(flipped, mixed)):
        _no_nan(merged)
        for name in PARTIAL_FIELDS:
            assert_array_equal(getattr(merged, name), getattr(p, name), err_msg=name)
        assert merged.log_mass == p.log_mass


def test_merge_with_extreme_max_differences():
    """exp(m_a - m_b) underflows or is huge: scaling stays finite and exact on the larger side."""
    a = Partial(m=np.array([0.0, -1e300]), z=np.array([2.0, 1.0]), v=np.array([[1.0], [2.0]]),
                q=np.array([3.0, 4.0]), z2=np.array([2.0, 1.0]), top1=np.array([0, 1]), log_mass=0.0)
    b = Partial(m=np.array([-1e300, 0.0]), z=np.array([1.0, 5.0]), v=np.array([[7.0], [8.0]]),
                q=np.array([1.0, 2.0]), z2=np.array([1.0, 3.0]), top1=np.array([10, 11]), log_mass=1.0)
    merged = merge(a, b)
    _no_nan(merged)
    assert_array_equal(merged.m, [0.0, 0.0])
    assert_array_equal(merged.z, [2.0, 5.0])
    assert_array_equal(merged.v, [[1.0], [8.0]])
    assert_array_equal(merged.top1, [0, 11])
    assert_allclose(merged.log_mass, np.logaddexp(0.0, 1.0), rtol=1e-15)


def test_finalize_of_all_empty_partial_raises():
    e = empty_partial(4, 3)
    with pytest.raises(ValueError):
        finalize_partial(e)
    with pytest.raises(ValueError):
        ns.finalize(e, np.zeros((4, 3)), 1.0)
    # One empty row is enough.
    p = ns.partial_reduce(np.zeros((2, 3)), np.ones((3, 3)), 1.0)
    half = Partial(m=np.array([p.m[0], -np.inf]), z=np.array([p.z[0], 0.0]), v=np.stack([p.v[0], np.zeros(3)]),
                   q=np.array([p.q[0], 0.0]), z2=np.array([p.z2[0], 0.0]), top1=np.array([p.top1[0], -1]),
                   log_mass=p.log_mass)
    with pytest.raises(ValueError):
        ns.finalize(half, np.zeros((2, 3)), 1.0)


def test_reduce_partials(some_partial):
    p, _ = some_partial
    with pytest.raises(ValueError, match=r"^parts\b"):
        reduce_partials([])
    _assert_partials_equal(reduce_partials([p]), p)
    e = empty_partial(p.n_queries, p.dim)
    _assert_partials_equal(reduce_partials([e, p, e]), p)


def test_merge_shape_mismatch(some_partial):
    p, _ = some_partial
    with pytest.raises(ValueError):
        merge(p, empty_partial(p.n_queries + 1, p.dim))
    with pytest.raises(ValueError):
        merge(p, empty_partial(p.n_queries, p.dim + 1))


def test_partial_pickle_round_trip(some_partial):
    p, x = some_partial
    q = pickle.loads(pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL))
    assert isinstance(q, Partial)
    _assert_partials_equal(q, p)
    for name in PARTIAL_FIELDS:
        assert getattr(q, name).dtype == getattr(p, name).dtype
    # The round-tripped partial finalizes to the same result.
    a, b = ns.finalize(p, x, 0.3), ns.finalize(q, x, 0.3)
    assert_array_equal(a.denoised, b.denoised)
    assert_array_equal(a.log_density, b.log_density)
    e = pickle.loads(pickle.dumps(empty_partial(2, 3)))
    assert np.all(e.m == -np.inf) and e.log_mass == -np.inf


def test_partial_fields_and_dtypes(some_partial):
    p, _ = some_partial
    assert p.n_queries == 5 and p.dim == 4
    for name in ("m", "z", "q", "z2"):
        assert getattr(p, name).shape == (5,) and getattr(p, name).dtype == np.float64
    assert p.v.shape == (5, 4) and p.v.dtype == np.float64
    assert p.top1.dtype == np.int64
    assert np.all(p.top1 >= 7)  # index_offset applied
    assert_allclose(p.log_mass, np.log(30.0), rtol=1e-15)  # default weights: 1 per point
    assert np.all(p.z >= 1.0)  # the max term contributes exp(0) = 1
    assert np.all(p.z2 <= p.z * p.z)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("schedule,t", [("ve", 0.4), ("vp", 0.3), ("flow", 0.6), ("cfdm", 0.7)])
def test_sharded_finalize_equals_evaluate(backend, dtype, schedule, t, rng):
    """3 shards (uneven, index_offset), merged in two orders, finalized == evaluate on the union."""
    n, d, m = 700, 6, 9
    train = rng.standard_normal((n, d)).astype(dtype)
    w = rng.uniform(0.2, 3.0, size=n)
    sched = ns.schedules.get_schedule(schedule)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    x = (a * train[rng.integers(0, n, m)] + s * rng.standard_normal((m, d))).astype(dtype)
    bounds = [0, 100, 101, n]
    parts = [ns.partial_reduce(x, train[lo:hi], t, schedule, weights=w[lo:hi], index_offset=lo, backend=backend)
             for lo, hi in zip(bounds[:-1], bounds[1:])]
    want = ns.EmpiricalScore(train, weights=w, schedule=schedule, backend=backend).evaluate(x, t)
    R = float(np.max(np.linalg.norm(train - train.mean(axis=0), axis=1)))
    y = x.astype(np.float64) / a
    for merged in (merge(merge(parts[0], parts[1]), parts[2]), merge(parts[2], merge(parts[1], parts[0]))):
        got = ns.finalize(merged, x, t, schedule)
        assert got.denoised.dtype == dtype and got.denoised.shape == (m, d)
        err = np.linalg.norm(got.denoised.astype(np.float64) - want.denoised, axis=1)
        if dtype == np.float32:
            # Twice the float32 parity tolerance (both sides are within 1e-5 R of the truth),
            # plus u32 |y|: evaluate rounds y = x / a to float32, finalize forms it in float64.
            tol = 2e-5 * R + 6e-8 * (np.linalg.norm(y, axis=1) + np.linalg.norm(want.denoised, axis=1))
            assert np.all(err <= tol)
            assert_allclose(got.log_density, want.log_density, rtol=2e-6, atol=2e-5)
        else:
            # Only the merge order and the shard centres differ: float64 rounding of R and |y|.
            assert np.all(err <= 1e-11 * (R + np.linalg.norm(y, axis=1)))
            assert_allclose(got.log_density, want.log_density, rtol=1e-12, atol=1e-12)
            assert_allclose(got.divergence, want.divergence, rtol=1e-8)
        assert_array_equal(got.top1, want.top1)  # random data: no ties
        assert_allclose(got.sigma, want.sigma, rtol=1e-15)
