"""Input validation (every error names its argument), empty queries, and memory layouts."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore.exceptions import BackendUnavailableError

FIELDS = ("denoised", "score", "log_density", "divergence", "posterior_variance", "n_eff", "top1",
          "max_weight", "sigma")


@pytest.fixture
def train(rng):
    return rng.standard_normal((20, 3))


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 3))


# ---------------------------------------------------------------------------------------------
# errors naming the argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_train(train, bad):
    train[3, 1] = bad
    with pytest.raises(ValueError, match=r"^train\b.*(NaN|inf)"):
        ns.EmpiricalScore(train)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x(backend, train, x, bad):
    x[2, 0] = bad
    model = ns.EmpiricalScore(train, backend=backend)
    with pytest.raises(ValueError, match=r"^x\b.*(NaN|inf)"):
        model.evaluate(x, 1.0)
    with pytest.raises(ValueError, match=r"^x\b"):
        ns.partial_reduce(x, train, 1.0, backend=backend)


def test_train_ndim_1():
    with pytest.raises(ValueError, match=r"^train\b"):
        ns.EmpiricalScore(np.arange(5.0))
    with pytest.raises(ValueError, match=r"^train\b"):
        ns.EmpiricalScore(np.float64(1.0))


def test_x_ndim_1(train):
    model = ns.EmpiricalScore(train)
    with pytest.raises(ValueError, match=r"^x\b"):
        model.evaluate(np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"^x\b"):
        model.evaluate(np.float64(0.0), 1.0)


def test_mismatched_dimension(train):
    model = ns.EmpiricalScore(train)
    with pytest.raises(ValueError, match=r"^x\b"):
        model.evaluate(np.zeros((2, 4)), 1.0)
    with pytest.raises(ValueError, match=r"^x\b"):
        model.evaluate(np.zeros((2, 3, 1)), 1.0)
    image_model = ns.EmpiricalScore(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"^x\b"):
        image_model.evaluate(np.zeros((2, 3, 2)), 1.0)


def test_empty_training_set():
    with pytest.raises(ValueError, match=r"^train\b"):
        ns.EmpiricalScore(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"^train\b"):
        ns.EmpiricalScore(np.zeros((4, 0)))


@pytest.mark.parametrize(
    "value",
    [np.ones((3, 2), dtype=np.complex128), np.ones((3, 2), dtype=object), np.ones((3, 2), dtype=bool),
     np.array([["a", "b"], ["c", "d"], ["e", "f"]])],
    ids=["complex", "object", "bool", "str"],
)
def test_unsupported_dtypes(value):
    with pytest.raises(TypeError, match=r"^train\b"):
        ns.EmpiricalScore(value)
    model = ns.EmpiricalScore(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"^x\b"):
        model.evaluate(value, 1.0)


def test_integer_and_half_inputs_are_accepted():
    model = ns.EmpiricalScore(np.arange(6).reshape(3, 2))  # integers become float64
    assert model.dtype == np.float64
    half = ns.EmpiricalScore(np.arange(6, dtype=np.float16).reshape(3, 2))  # float16 -> float32
    assert half.dtype == np.float32
    res = model.evaluate(np.array([[0, 1]]), 1.0)
    assert res.denoised.dtype == np.float64


@pytest.mark.parametrize("t", [0.0, -1.0, -1e-300])
def test_non_positive_sigma(train, x, t):
    model = ns.EmpiricalScore(train)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x, t)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x, np.array([1.0, 1.0, t, 1.0]))


@pytest.mark.parametrize("t", [np.nan, np.inf])
def test_non_finite_t(train, x, t):
    model = ns.EmpiricalScore(train)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x, t)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x, np.array([1.0, t, 1.0, 1.0]))


def test_t_of_wrong_shape(train, x):
    model = ns.EmpiricalScore(train)
    for t in (np.ones(3), np.ones(5), np.ones((4, 1)), np.ones((1, 4))):
        with pytest.raises(ValueError, match=r"^t\b"):
            model.evaluate(x, t)


def test_t_of_wrong_type(train, x):
    model = ns.EmpiricalScore(train)
    with pytest.raises(TypeError, match=r"^t\b"):
        model.evaluate(x, 1.0 + 2.0j)
    with pytest.raises(TypeError, match=r"^t\b"):
        model.evaluate(x, "1.0")


@pytest.mark.parametrize("schedule,t", [("flow", 1.5), ("flow", 1.0), ("flow", 0.0), ("vp", 1.2),
                                        ("cfdm", 1.0), ("vp-cosine", 1.0), ("edm", -0.5)])
def test_t_outside_schedule_domain(train, x, schedule, t):
    model = ns.EmpiricalScore(train, schedule=schedule)
    with pytest.raises(ValueError, match=r"^t\b"):
        model.evaluate(x, t)


def test_unknown_schedule(train):
    with pytest.raises(ValueError, match=r"^schedule\b"):
        ns.EmpiricalScore(train, schedule="nope")
    with pytest.raises(TypeError, match=r"^schedule\b"):
        ns.EmpiricalScore(train, schedule=3)


def test_bad_weights(train):
    n = train.shape[0]
    w = np.ones(n)
    w[4] = -0.5
    with pytest.raises(ValueError, match=r"^weights\b"):
        ns.EmpiricalScore(train, weights=w)
    with pytest.raises(ValueError, match=r"^weights\b"):
        ns.EmpiricalScore(train, weights=np.zeros(n))
    for shape in ((n - 1,), (n + 1,), (n, 1), ()):
        with pytest.raises(ValueError, match=r"^weights\b"):
            ns.EmpiricalScore(train, weights=np.ones(shape))
    w = np.ones(n)
    w[0] = np.nan
    with pytest.raises(ValueError, match=r"^weights\b"):
        ns.EmpiricalScore(train, weights=w)
    with pytest.raises(TypeError, match=r"^weights\b"):
        ns.EmpiricalScore(train, weights=np.ones(n, dtype=complex))


def test_unknown_backend(train):
    with pytest.raises(ValueError, match=r"^backend\b"):
        ns.EmpiricalScore(train, backend="fortran")
    with pytest.raises(TypeError, match=r"^backend\b"):
        ns.EmpiricalScore(train, backend=None)


def test_unavailable_backend_names_itself(train, monkeypatch):
    from nnscore import backends

    monkeypatch.setattr(backends, "backend_status",
                        lambda: {"cpp": (False, "broken on purpose"), "numba": (True, ""), "reference": (True, "")})
    with pytest.raises(BackendUnavailableError, match="cpp.*broken on purpose"):
        ns.EmpiricalScore(train, backend="cpp")


@pytest.mark.parametrize("n_threads", [0, -1, 1.5, True, "2"])
def test_bad_n_threads(train, n_threads):
    with pytest.raises(ValueError, match=r"^n_threads\b"):
        ns.EmpiricalScore(train, n_threads=n_threads)


def test_partial_reduce_bad_index_offset(train, x):
    with pytest.raises(ValueError, match=r"^index_offset\b"):
        ns.partial_reduce(x, train, 1.0, index_offset=-1)
    with pytest.raises(ValueError, match=r"^index_offset\b"):
        ns.partial_reduce(x, train, 1.0, index_offset=1.0)


def test_finalize_bad_arguments(train, x):
    p = ns.partial_reduce(x, train, 1.0)
    with pytest.raises(TypeError, match=r"^partial\b"):
        ns.finalize("not a partial", x, 1.0)
    with pytest.raises(ValueError, match=r"^x\b"):
        ns.finalize(p, x[:2], 1.0)
    with pytest.raises(ValueError, match=r"^t\b"):
        ns.finalize(p, x, -1.0)


# ---------------------------------------------------------------------------------------------
# empty queries
# ---------------------------------------------------------------------------------------------


def test_empty_queries(backend):
    """M = 0 gives empty results of the right shapes and dtypes (per the evaluate docstring)."""
    for dtype in (np.float32, np.float64):
        for shape in ((3,), (2, 2)):
            train = np.ones((5, *shape), dtype=dtype)
            model = ns.EmpiricalScore(train, backend=backend)
            x = np.zeros((0, *shape), dtype=dtype)
            for t in (1.0, np.ones(0)):
                res = model.evaluate(x, t)
                assert res.denoised.shape == (0, *shape) and res.denoised.dtype == dtype
                assert res.score.shape == (0, *shape) and res.score.dtype == dtype
                for name in ("log_density", "divergence", "posterior_variance", "n_eff", "max_weight",
                             "sigma"):
                    arr = getattr(res, name)
                    assert arr.shape == (0,) and arr.dtype == np.float64, name
                assert res.top1.shape == (0,) and res.top1.dtype == np.int64
            p = ns.partial_reduce(x, train, 1.0, backend=backend)
            assert p.v.shape == (0, int(np.prod(shape)))
            assert ns.finalize(p, x, 1.0).denoised.shape == (0, *shape)


# ---------------------------------------------------------------------------------------------
# memory layouts: same results as the contiguous case, no needless copies
# ---------------------------------------------------------------------------------------------


def _assert_same(a, b):
    for name in FIELDS:
        assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


LAYOUTS = {
    "strided_rows": lambda a: np.repeat(a, 2, axis=0)[::2],  # x[::2]: row stride 2 d
    "fortran": np.asfortranarray,
    "readonly": _readonly,
    "negative_stride": lambda a: a[::-1].copy()[::-1],
    "column_slice": lambda a: np.concatenate([a, a], axis=1)[:, : a.shape[1]],  # row stride 2 d
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_give_contiguous_results(backend, dtype, layout, rng):
    f = LAYOUTS[layout]
    train = rng.standard_normal((300, 7)).astype(dtype)
    x = (train[:9] + 0.3 * rng.standard_normal((9, 7))).astype(dtype)
    expect = ns.EmpiricalScore(train, backend=backend, n_threads=1).evaluate(x, 0.4)
    tv, xv = f(train), f(x)
    assert_array_equal(tv, train)
    assert_array_equal(xv, x)
    if layout != "readonly":
        assert not (tv.flags.c_contiguous and xv.flags.c_contiguous), "layout helper made a C array"
    got = ns.EmpiricalScore(tv, backend=backend, n_threads=1).evaluate(xv, 0.4)
    _assert_same(got, expect)
    # Mixed: contiguous train, odd x and vice versa.
    _assert_same(ns.EmpiricalScore(train, backend=backend, n_threads=1).evaluate(xv, 0.4), expect)
    _assert_same(ns.EmpiricalScore(tv, backend=backend, n_threads=1).evaluate(x, 0.4), expect)


def test_image_shaped_non_contiguous(backend, rng):
    train = rng.standard_normal((50, 4, 4))
    x = train[:6] + 0.2
    expect = ns.EmpiricalScore(train, backend=backend).evaluate(x, 0.5)
    tv = np.ascontiguousarray(np.swapaxes(train, 1, 2)).swapaxes(1, 2)  # (N, 4, 4) not C-ordered
    xv = np.ascontiguousarray(np.swapaxes(x, 1, 2)).swapaxes(1, 2)
    assert not tv.flags.c_contiguous
    got = ns.EmpiricalScore(tv, backend=backend).evaluate(xv, 0.5)
    _assert_same(got, expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memmap_train(backend, dtype, tmp_path, rng):
    train = rng.standard_normal((400, 6)).astype(dtype)
    path = tmp_path / "train.npy"
    np.save(path, train)
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap)
    x = (train[:5] + 0.1).astype(dtype)
    expect = ns.EmpiricalScore(train, backend=backend).evaluate(x, 0.3)
    model = ns.EmpiricalScore(mm, backend=backend)
    assert np.shares_memory(model.train, mm)  # rows are contiguous: no copy
    _assert_same(model.evaluate(x, 0.3), expect)
    del model, mm


def test_no_needless_copy_of_train(rng):
    train = rng.standard_normal((100, 8)).astype(np.float32)
    model = ns.EmpiricalScore(train)
    assert np.shares_memory(model.train, train)
    assert model.train.dtype == np.float32
    # (N, *shape) and row-strided views are kept as views too.
    img = rng.standard_normal((10, 2, 4)).astype(np.float32)
    assert np.shares_memory(ns.EmpiricalScore(img).train, img)
    wide = rng.standard_normal((10, 16)).astype(np.float32)
    assert np.shares_memory(ns.EmpiricalScore(wide[:, :8]).train, wide)
    assert np.shares_memory(ns.EmpiricalScore(wide[::2]).train, wide)
    # float64 train is kept as float64, uncopied.
    t64 = rng.standard_normal((10, 3))
    assert np.shares_memory(ns.EmpiricalScore(t64).train, t64)


def test_inputs_are_not_modified(backend, rng):
    train = rng.standard_normal((40, 5))
    x = train[:3] + 0.1
    t = np.full(3, 0.5)
    copies = (train.copy(), x.copy(), t.copy())
    ns.EmpiricalScore(train, backend=backend).evaluate(x, t)
    for a, b in zip((train, x, t), copies):
        assert_array_equal(a, b)


def test_list_inputs(rng):
    train = rng.standard_normal((10, 2))
    x = train[:2] + 0.1
    a = ns.EmpiricalScore(train.tolist()).evaluate(x.tolist(), [0.5, 0.7])
    b = ns.EmpiricalScore(train).evaluate(x, np.array([0.5, 0.7]))
    assert_allclose(a.denoised, b.denoised, rtol=0, atol=0)
