"""The cuda backend on a real GPU (skipped cleanly without one): the fused kernels against the
float64 oracle with the CPU engine's tolerances (fp32-exact mode), TF32 with its stated looser
tolerance, edge cases, the gathered-rows kernel, streams, dtypes, devices, compute-sanitizer."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nnscore as ns  # noqa: E402
from nnscore import backends as nb  # noqa: E402

from conftest import data_radius, ref_f64  # noqa: E402
from device_checks import check_accuracy_matrix, make_train, queries  # noqa: E402

CUDA_OK, CUDA_REASON = nb.backend_status()["cuda"]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unavailable: {CUDA_REASON}")]
DTYPES = [np.float32, np.float64]
U32 = np.finfo(np.float32).eps / 2

#: TF32 mode (tf32=True): GEMM-form logits are trusted up to 1e-3 (cuda_backend.TF32_FAST_TOL),
#: so D is within 4e-3 R and log p within 2e-3 + 1e-6 |log p| (stated in docs/cuda.md).
TF32_D_TOL, TF32_LP_ABS = 4e-3, 2e-3


def assert_matches_tf32(res, ref, x, dtype, R, what=""):
    D, D_ref = res.denoised.reshape(len(x), -1), ref["denoised"]
    err = np.linalg.norm(D - D_ref, axis=1)
    tol = TF32_D_TOL * R + 2 * U32 * np.linalg.norm(D_ref, axis=1)
    assert np.all(err <= tol), f"{what}: D error {err.max():.3e} > {tol.min():.3e}"
    err_lp = np.abs(res.log_density - ref["log_density"])
    assert np.all(err_lp <= TF32_LP_ABS + 1e-6 * np.abs(ref["log_density"])), f"{what}: log p error {err_lp.max():.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n", [(1, 300), (3, 2000), (64, 700), (784, 100), (3072, 40)])
def test_accuracy_matrix_exact_fp32(dtype, d, n, seed):
    check_accuracy_matrix("cuda", "cuda", dtype, d, n, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_weights_and_offset(dtype, seed):
    check_accuracy_matrix("cuda", "cuda", dtype, 8, 300, seed, weights=True)


@pytest.mark.parametrize("d,n", [(3, 2000), (64, 700), (784, 100)])
def test_tf32_within_stated_tolerance(d, n, seed):
    check_accuracy_matrix("cuda", "cuda", np.float32, d, n, seed, check=assert_matches_tf32, tf32=True)


def test_fp32_accumulation(seed):
    rng = np.random.default_rng(seed)
    train = make_train(rng, 3000, 32, np.float32)
    x = queries(rng, train, 0.3)
    res = ns.EmpiricalScore(torch.from_numpy(train).cuda(), backend="cuda").evaluate(
        torch.from_numpy(x).cuda(), 0.3, accumulate="fp32")
    ref = ref_f64(train, x, 0.3)
    err = np.linalg.norm(res.denoised.cpu().numpy() - ref["denoised"], axis=1)
    assert np.all(err <= 1e-4 * (data_radius(train) + np.linalg.norm(x, axis=1)))


def test_many_splits_agree_with_torch_backend(seed):
    rng = np.random.default_rng(seed)
    train = torch.from_numpy(make_train(rng, 50_000, 16, np.float32)).cuda()
    x = train[:40] + 0.05
    diag = {}
    a = ns.EmpiricalScore(train, backend="cuda").evaluate(x, 0.2, diagnostics=diag)
    b = ns.EmpiricalScore(train, backend="torch").evaluate(x, 0.2)
    assert diag["splits"][0] > 1
    torch.testing.assert_close(a.denoised, b.denoised, rtol=0, atol=2e-5)
    torch.testing.assert_close(a.log_density, b.log_density, rtol=1e-6, atol=1e-5)


def test_edge_cases_d1_n1_duplicates_underflow():
    one = ns.EmpiricalScore(torch.ones(1, 3, device="cuda"), backend="cuda").evaluate(torch.zeros(2, 3, device="cuda"), 1e-9)
    assert torch.isfinite(one.log_density).all() and one.top1.tolist() == [0, 0]
    torch.testing.assert_close(one.denoised, torch.ones(2, 3, device="cuda"))
    train = torch.tensor([[0.0], [1.0], [1.0], [2.0]], dtype=torch.float64, device="cuda")
    res = ns.EmpiricalScore(train, backend="cuda").evaluate(torch.tensor([[1.0], [1.5]], dtype=torch.float64,
                                                                        device="cuda"), 1e-6)
    assert res.top1.tolist() == [1, 1]
    torch.testing.assert_close(res.denoised[:, 0].cpu(), torch.tensor([1.0, 4.0 / 3.0], dtype=torch.float64))
    far = ns.EmpiricalScore(train, backend="cuda").evaluate(torch.full((1, 1), 1e4, dtype=torch.float64,
                                                                      device="cuda"), 1e-8)
    assert far.top1.item() == 3 and torch.isfinite(far.log_density).all()


def test_segments_kernel_matches_reference(seed):
    rng = np.random.default_rng(seed)
    points = make_train(rng, 500, 24, np.float32)
    y = points[:30] + 0.05 * rng.standard_normal((30, 24)).astype(np.float32)
    sigma = rng.uniform(1e-4, 2.0, 30)
    seg = nb.Segments.from_ids(rng.integers(0, 500, (30, 17)))
    log_w = np.log(rng.uniform(0.5, 1.5, 500))
    got = nb.partials_segments("cuda", y, sigma, points, log_w, seg, 1)
    ref = nb.partials_segments("reference", y, sigma, points, log_w, seg, 1)
    np.testing.assert_array_equal(got.top1, ref.top1)
    np.testing.assert_allclose(got.m, ref.m, rtol=1e-14)
    for k in ("z", "q", "z2"):
        np.testing.assert_allclose(getattr(got, k), getattr(ref, k), rtol=1e-12)
    np.testing.assert_allclose(got.v, ref.v, rtol=1e-12, atol=1e-14)


def test_side_stream_dtype_and_device_round_trip():
    rng = np.random.default_rng(3)
    train = torch.from_numpy(make_train(rng, 4000, 64, np.float32)).cuda()
    model = ns.EmpiricalScore(train, backend="auto")
    assert model.backend == "cuda"
    x = train[:100] + 0.1
    expect = model.evaluate(x, 0.5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = model.evaluate(x, 0.5)
    side.synchronize()
    assert torch.equal(got.denoised, expect.denoised) and torch.equal(got.top1, expect.top1)
    assert got.denoised.is_cuda and got.denoised.dtype == torch.float32 and got.log_density.dtype == torch.float64
    assert model.evaluate(x.double(), 0.5).denoised.dtype == torch.float64
    with pytest.raises(ValueError, match=r"^x: .*device"):
        model.evaluate(x.cpu(), 0.5)
    host = model.evaluate(x.cpu().numpy(), 0.5)  # NumPy queries: NumPy results
    np.testing.assert_allclose(host.denoised, expect.denoised.cpu().numpy(), rtol=0, atol=1e-6)


def test_cupy_round_trip():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    train = make_train(rng, 500, 8, np.float32)
    model = ns.EmpiricalScore(cupy.asarray(train), backend="auto")
    assert model.backend == "cuda"
    res = model.evaluate(cupy.asarray(train[:5] + 0.1), 0.3)
    assert isinstance(res.denoised, cupy.ndarray)
    ref = ref_f64(train, train[:5] + 0.1, 0.3)
    np.testing.assert_allclose(cupy.asnumpy(res.denoised), ref["denoised"], atol=1e-5 * data_radius(train))


@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer is not on PATH")
def test_compute_sanitizer_memcheck_clean(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, torch, nnscore as ns\n"
        "from nnscore import backends as nb\n"
        "rng = np.random.default_rng(0)\n"
        "for d, n in [(1, 37), (33, 130), (100, 65)]:\n"
        "    tr = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).cuda()\n"
        "    m = ns.EmpiricalScore(tr, backend='cuda')\n"
        "    for s in (1e-6, 0.3, 1e3):\n"
        "        for tf32 in (False, True):\n"
        "            m.evaluate(tr[:33] + 0.01, s, tf32=tf32)\n"
        "    y = tr[:9].cpu().numpy(); seg = nb.Segments.from_ids(rng.integers(0, n, (9, 5)))\n"
        "    nb.partials_segments('cuda', y, np.full(9, 0.5), tr.cpu().numpy(), None, seg, 1)\n"
        "torch.cuda.synchronize()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(ns.__file__).parents[1]))
    proc = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", sys.executable,
                           str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
