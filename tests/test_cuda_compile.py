"""Compile-only check of the CUDA sources: needs nvcc, no GPU and no driver (skipped without nvcc).

Each csrc/cuda/*.cu is compiled to an sm_80 object and to compute_90 PTX (the architectures of
the wheel), and the pybind11 glue (a host .cpp) is syntax-checked against the plain C++ API
header, so a CUDA-less CI (NNSCORE_CUDA=OFF) still catches code that no longer compiles.
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_sources_exist():
    assert {p.name for p in CUDA_SOURCES} >= {"dense.cu", "subset.cu"}


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_nvcc_sm80_object_and_compute90_ptx(source, tmp_path):
    base = [NVCC, "-std=c++17", "-O3", "-Werror", "all-warnings", "-I", str(ROOT / "csrc" / "cuda")]
    _run(base + ["-gencode", "arch=compute_80,code=sm_80", "-c", str(source), "-o", str(tmp_path / "k.o")], tmp_path)
    assert (tmp_path / "k.o").stat().st_size > 0
    _run(base + ["-arch=compute_90", "-ptx", str(source), "-o", str(tmp_path / "k.ptx")], tmp_path)
    ptx = (tmp_path / "k.ptx").read_text()
    assert ".target sm_90" in ptx and ".entry" in ptx


def test_binding_glue_compiles_without_cuda_headers(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    _run([cxx, "-std=c++17", "-fsyntax-only", "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
          str(ROOT / "csrc" / "bindings" / "module_cuda.cpp")], tmp_path)


def test_api_header_and_kernels_include_no_python():
    """The .cu files and their API header stay free of Python (the glue is a separate .cpp)."""
    for path in [ROOT / "csrc" / "cuda" / "api.hpp", *CUDA_SOURCES]:
        includes = [line for line in path.read_text().splitlines() if line.startswith("#include")]
        assert includes, path
        assert not any("pybind11" in line or "Python.h" in line for line in includes), path
        if path.name == "api.hpp":
            assert not any("cuda" in line for line in includes), "api.hpp must compile without the CUDA toolkit"


def test_built_module_accepts_the_adapters_arguments(monkeypatch):
    """With ``_cuda`` built but no GPU: the adapter's calls reach the kernels' launch (a CUDA
    error, not a TypeError), so the Python argument lists match the pybind11 signatures."""
    cuda_mod = pytest.importorskip("nnscore._cuda")
    torch = pytest.importorskip("torch")
    if cuda_mod.device_count() > 0:
        pytest.skip("a GPU is present: tests/test_cuda.py runs the kernels")
    import numpy as np

    from nnscore import backends as nb
    from nnscore.backends import cuda_backend
    from nnscore.backends.torch_backend import TorchTrainingData

    monkeypatch.setattr(cuda_backend, "current_stream_handle", lambda device: 0)
    monkeypatch.setattr(cuda_backend, "split_plan", lambda *a: (2, cuda_mod.dense_tile_rows()))
    data = TorchTrainingData.prepare(torch.randn(100, 5), torch.rand(100))
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda_backend.partials_dense_cuda(torch.randn(3, 5), torch.ones(3, dtype=torch.float64), data,
                                         fast_tol=5e-6, log_cut=30.0)
    seg = nb.Segments.from_ids(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda_backend.partials_segments_cuda(torch.randn(3, 5), torch.ones(3, dtype=torch.float64), data.points, None,
                                            *(torch.from_numpy(a) for a in (seg.offsets, seg.start, seg.length)))
    assert cuda_mod.dense_tile_rows() == 64 and cuda_mod.runtime_version()
