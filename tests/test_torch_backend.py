"""The pure-torch backend (CPU tensors here; any torch device): accuracy against the float64
oracle with the CPU engine's tolerances, tensors in / tensors out, bad input, chunked memory."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import nnscore as ns  # noqa: E402
from nnscore import backends as nb  # noqa: E402
from nnscore.backends import torch_backend as tb  # noqa: E402

from conftest import data_radius, ref_f64  # noqa: E402
from device_checks import check_accuracy_matrix, make_train  # noqa: E402

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n", [(1, 300), (3, 500), (64, 200), (784, 40)])
def test_accuracy_matrix(dtype, d, n, seed):
    assert check_accuracy_matrix("torch", "cpu", dtype, d, n, seed) == 7


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_weights_and_offset(dtype, seed):
    check_accuracy_matrix("torch", "cpu", dtype, 8, 300, seed, weights=True)


def test_many_chunks_match_one_chunk(seed):
    """A tiny working memory (many chunks over N and query blocks) changes nothing but rounding."""
    rng = np.random.default_rng(seed)
    train = make_train(rng, 2000, 16, np.float32)
    x = torch.from_numpy(train[:50] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32))
    model = ns.EmpiricalScore(torch.from_numpy(train), backend="torch")
    small_diag, big_diag = {}, {}
    small = model.evaluate(x, 0.05, working_memory=64 * 1024, diagnostics=small_diag)
    big = model.evaluate(x, 0.05, diagnostics=big_diag)
    q_block, rows = small_diag["tile"]
    assert rows < 2000 and q_block * rows * tb.BYTES_PER_TILE_ENTRY <= 64 * 1024  # chunked
    assert big_diag["tile"][1] == 2000  # one chunk under the default budget
    torch.testing.assert_close(small.denoised, big.denoised, rtol=0, atol=1e-6)
    torch.testing.assert_close(small.log_density, big.log_density, rtol=1e-12, atol=1e-9)
    assert torch.equal(small.top1, big.top1)


def test_tile_shape_respects_budget():
    for m, n, d, budget in [(1, 10**7, 3072, 256 * 2**20), (10**5, 10**6, 64, 2**20), (5, 3, 2, 1)]:
        q_block, rows = tb.tile_shape(m, n, d, budget)
        assert 1 <= q_block <= tb.MAX_QUERY_BLOCK and 1 <= rows <= n
        assert rows == 1 or q_block * rows * tb.BYTES_PER_TILE_ENTRY <= budget


def test_paths_fast_and_exact():
    """Large sigma uses GEMM-form logits only; small sigma recomputes near the max exactly."""
    rng = np.random.default_rng(1)
    train = torch.from_numpy(make_train(rng, 500, 32, np.float32))
    model = ns.EmpiricalScore(train, backend="torch")
    diag = {}
    model.evaluate(train[:10] + 0.1, 1e3, diagnostics=diag)
    assert int(diag["n_exact"].sum()) == 0
    model.evaluate(train[:10] + 1e-3, 1e-3, diagnostics=diag)
    assert (diag["n_exact"] >= 1).all() and (diag["n_exact"] < 500).all()


def test_tensors_in_tensors_out():
    rng = np.random.default_rng(2)
    train = torch.from_numpy(make_train(rng, 100, 12, np.float32)).reshape(100, 3, 4)
    model = ns.EmpiricalScore(train, backend="torch")
    assert model.data.points.device == train.device and torch.is_tensor(model.train)
    x = train[:5] + 0.05
    res = model.evaluate(x, torch.tensor(0.3, dtype=torch.float64))
    assert res.denoised.shape == (5, 3, 4) and res.denoised.dtype == torch.float32
    assert res.score.shape == (5, 3, 4) and res.score.dtype == torch.float32
    for name in ("log_density", "divergence", "posterior_variance", "n_eff", "max_weight", "sigma"):
        val = getattr(res, name)
        assert torch.is_tensor(val) and val.dtype == torch.float64 and val.shape == (5,), name
    assert res.top1.dtype == torch.int64 and res.backend == "torch"
    # float64 queries against float32 training data: results in the query dtype
    assert model.evaluate(x.double(), 0.3).denoised.dtype == torch.float64
    # NumPy queries through the torch backend: NumPy results, same values
    res_np = model.evaluate(x.numpy(), 0.3)
    assert isinstance(res_np.denoised, np.ndarray)
    np.testing.assert_allclose(res_np.denoised, res.denoised.numpy(), rtol=0, atol=1e-7)
    # empty queries
    empty = model.evaluate(x[:0], 0.3)
    assert empty.denoised.shape == (0, 3, 4) and empty.log_density.shape == (0,)


def test_numpy_training_data_and_other_schedule(seed):
    rng = np.random.default_rng(seed)
    train = make_train(rng, 200, 5, np.float64)
    x = rng.standard_normal((7, 5))
    ref = ns.EmpiricalScore(train, schedule="vp", backend="reference").evaluate(x, 0.4)
    got = ns.EmpiricalScore(train, schedule="vp", backend="torch").evaluate(torch.from_numpy(x), 0.4)
    np.testing.assert_allclose(got.denoised.numpy(), ref.denoised, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.score.numpy(), ref.score, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.log_density.numpy(), ref.log_density, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(got.divergence.numpy(), ref.divergence, rtol=1e-8, atol=1e-8)


def test_duplicates_ties_n1_d1():
    train = torch.tensor([[0.0], [1.0], [1.0], [2.0]], dtype=torch.float64)
    res = ns.EmpiricalScore(train, backend="torch").evaluate(torch.tensor([[1.0], [1.5]], dtype=torch.float64), 1e-6)
    assert res.top1.tolist() == [1, 1]  # exact ties: the lowest index
    # 1.5 is equidistant from the duplicated 1 and from 2: weights 2 : 1
    torch.testing.assert_close(res.denoised[:, 0], torch.tensor([1.0, 4.0 / 3.0], dtype=torch.float64))
    one = ns.EmpiricalScore(torch.ones(1, 3), backend="torch").evaluate(torch.zeros(2, 3), 1e-9)
    assert torch.isfinite(one.log_density).all() and torch.equal(one.top1, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(one.denoised, torch.ones(2, 3))


def test_fp32_accumulation_is_close(seed):
    rng = np.random.default_rng(seed)
    train = make_train(rng, 300, 16, np.float32)
    x = train[:10] + 0.1
    model = ns.EmpiricalScore(torch.from_numpy(train), backend="torch")
    a = model.evaluate(torch.from_numpy(x), 0.5, accumulate="fp32")
    ref = ref_f64(train, x, 0.5)
    R = data_radius(train)
    # float32 sums of w (x - c): documented as looser, ~1e-6 of |y - c| + R
    assert np.linalg.norm(a.denoised.numpy() - ref["denoised"], axis=1).max() <= 1e-4 * R


def test_segments_match_reference(seed):
    rng = np.random.default_rng(seed)
    points = make_train(rng, 300, 6, np.float32)
    y = points[:20] + 0.05 * rng.standard_normal((20, 6)).astype(np.float32)
    sigma = rng.uniform(1e-3, 2.0, 20)
    ids = rng.integers(0, 300, (20, 9))
    seg = nb.Segments.from_ids(ids)
    log_w = np.log(rng.uniform(0.5, 1.5, 300))
    log_w[ids[3]] = -np.inf  # a query without positive-weight rows: the empty partial
    got = nb.partials_segments("torch", y, sigma, points, log_w, seg, 1)
    ref = nb.partials_segments("reference", y, sigma, points, log_w, seg, 1)
    np.testing.assert_array_equal(got.top1, ref.top1)
    np.testing.assert_allclose(got.m, ref.m, rtol=1e-14)  # both float64 difference form (-inf too)
    for k in ("z", "q", "z2"):
        np.testing.assert_allclose(getattr(got, k), getattr(ref, k), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got.v, ref.v, rtol=1e-12, atol=1e-14)


def test_auto_picks_device_backends_for_cuda_arrays():
    class FakeCudaArray:  # what CuPy exposes; resolve only looks at the protocol
        __cuda_array_interface__ = {}

    expected = "cuda" if nb.backend_status()["cuda"][0] else "torch"
    assert nb.resolve("auto", like=FakeCudaArray()) == expected
    assert nb.resolve("auto", like=torch.zeros(2, 2)) == nb.resolve("auto")  # host tensors: cpp/numba
    assert "torch" in ns.available_backends()


def test_import_does_not_import_torch():
    code = "import sys, nnscore; nnscore.available_backends(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture
def model():
    return ns.EmpiricalScore(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), backend="torch")


def test_device_mismatch_names_x(model):
    with pytest.raises(ValueError, match=r"^x: .*device"):
        model.evaluate(torch.zeros(3, 4, device="meta"), 0.5)


@pytest.mark.parametrize("bad,exc", [(torch.zeros(3, 4, dtype=torch.bool), TypeError),
                                     (torch.zeros(3, 4, dtype=torch.complex64), TypeError),
                                     (torch.zeros(3, 5), ValueError),
                                     (torch.zeros(4), ValueError),
                                     (torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), ValueError)])
def test_bad_queries_name_x(model, bad, exc):
    with pytest.raises(exc, match=r"^x: "):
        model.evaluate(bad, 0.5)


def test_bad_training_and_options():
    with pytest.raises(ValueError, match=r"^train: "):
        ns.EmpiricalScore(torch.zeros(0, 3), backend="torch")
    with pytest.raises(ValueError, match=r"^train: .*inf"):
        ns.EmpiricalScore(torch.tensor([[0.0, float("inf")]]), backend="torch")
    with pytest.raises(TypeError, match=r"^train: "):
        ns.EmpiricalScore(torch.zeros(3, 2, dtype=torch.complex128), backend="torch")
    with pytest.raises(ValueError, match=r"^weights: "):
        ns.EmpiricalScore(torch.zeros(3, 2), weights=torch.tensor([1.0, -1.0, 1.0]), backend="torch")
    with pytest.raises(ValueError, match=r"^weights: "):
        ns.EmpiricalScore(torch.zeros(3, 2), weights=torch.ones(2), backend="torch")
    model = ns.EmpiricalScore(torch.zeros(3, 2), backend="torch")
    with pytest.raises(ValueError, match=r"^accumulate: "):
        model.evaluate(torch.zeros(1, 2), 1.0, accumulate="fp16")
    with pytest.raises(ValueError, match=r"^t: "):
        model.evaluate(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match=r"^tf32: "):
        model.evaluate(torch.zeros(1, 2), 1.0, tf32=True)
    with pytest.raises(TypeError, match=r"^evaluate: "):
        ns.EmpiricalScore(np.zeros((3, 2)), backend="cpp").evaluate(np.zeros((1, 2)), 1.0, accumulate="fp64")


@pytest.mark.parametrize("sigma", [0.05, 5.0], ids=["knn", "dense-fallback"])
def test_knn_score_runs_its_kernels_through_torch(sigma):
    """Host models built on EmpiricalScore keep their NumPy logic; only the kernels change."""
    rng = np.random.default_rng(5)
    train = make_train(rng, 2000, 8, np.float32)
    x = train[:6] + 0.01
    a = ns.KNNScore(train, backend="torch", tol=1e-4).evaluate(x, sigma)
    b = ns.KNNScore(train, backend="cpp", tol=1e-4).evaluate(x, sigma)
    assert isinstance(a.denoised, np.ndarray) and a.backend == "torch"
    np.testing.assert_array_equal(a.path, b.path)
    np.testing.assert_allclose(a.denoised, b.denoised, rtol=0, atol=1e-5 * data_radius(train))
