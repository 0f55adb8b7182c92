"""`nnscore demo`: every demo runs, passes its criteria at the default seed, and writes its figure."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nnscore
from nnscore import demos

# the subprocess imports the same nnscore as this process, whatever its working directory
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(nnscore.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nnscore", "demo", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=300)  # fmt: skip


def test_list():
    proc = run_cli("--list")
    assert proc.returncode == 0, proc.stderr
    for name in demos.DEMOS:
        assert name in proc.stdout


def test_default_demo_writes_figure(tmp_path):
    proc = run_cli(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all criteria passed" in proc.stdout
    png = tmp_path / "nnscore-demo-smoothing.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", [n for n in demos.DEMOS if n != demos.DEFAULT_DEMO])
def test_named_demo_json(tmp_path, name):
    out = tmp_path / "fig.png"
    proc = run_cli(name, "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["name"] == name
    assert payload["passed"] is True
    assert all(c["passed"] for c in payload["criteria"])
    if payload["figure"] is not None:
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "fig.png"
    out.write_bytes(b"keep")
    proc = run_cli("memorize", "--out", str(out))
    assert proc.returncode == 1
    assert "exists" in proc.stderr
    assert out.read_bytes() == b"keep"


def test_unknown_demo():
    proc = run_cli("no-such-demo")
    assert proc.returncode == 1
    assert "no-such-demo" in proc.stderr


@pytest.mark.parametrize("name", ["rate-separation", "geometric-bias"])
def test_demo_deterministic(name):
    def strip(rows):  # timings differ between runs
        return [{k: v for k, v in row.items() if k != "time s"} for row in rows]

    a, b = demos.run_demo(name), demos.run_demo(name)
    assert strip(a.rows) == strip(b.rows)
    assert [c.value for c in a.criteria] == [c.value for c in b.criteria]


def test_demo_parameters_from_flags(tmp_path):
    # science.md's flag names: --N is n_train; values are Python literals
    proc = run_cli("memorize", "--N", "8", "--n_samples", "50", "--steps", "20", "--json", "--out",
                   str(tmp_path / "m.png"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "N=8 " in json.loads(proc.stdout)["description"]


def test_unknown_demo_parameter():
    proc = run_cli("memorize", "--bogus", "1")
    assert proc.returncode == 1
    assert "bogus" in proc.stderr
    assert "n_train" in proc.stderr  # the message lists the demo's parameters
