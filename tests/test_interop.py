"""faiss (its own OpenMP runtime), torch and nnscore in one process, imported in both orders:
no duplicate-runtime abort, and faiss search and nnscore scoring both work afterwards."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nnscore

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(nnscore.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip

SCRIPT = """
import importlib, numpy as np
mods = {order!r}.split(",")
for m in mods:
    importlib.import_module(m)
import faiss, nnscore as ns
x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
index = faiss.IndexFlatL2(16); index.add(x)
_, ids = index.search(x[:5], 1)
assert (ids[:, 0] == np.arange(5)).all()
res = ns.EmpiricalScore(x).evaluate(x[:5] + 0.01, 0.1)
assert np.isfinite(res.denoised).all()
if "torch" in mods:
    import torch
    t = torch.from_numpy(x[:5] + 0.01)
    assert np.isfinite(ns.EmpiricalScore(x).evaluate(t, 0.1).denoised).all()
print("ok")
"""


@pytest.mark.parametrize("order", ["faiss,nnscore", "nnscore,faiss", "torch,faiss,nnscore", "nnscore,faiss,torch"])
def test_import_orders(order):
    if "torch" in order:
        pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(order=order)], capture_output=True, text=True,
                          env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
