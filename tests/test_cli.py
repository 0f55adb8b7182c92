"""``nnscore info`` (module and console entry point) and ``ns.show_versions``."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import nnscore as ns
from nnscore import cli


def _run(*args):
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(ns.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "nnscore", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _version_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("nnscore:")]
    assert len(lines) == 1, text
    return lines[0].split(":", 1)[1].strip()


def test_module_info():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    version = _version_line(proc.stdout)
    assert version and version != "unknown"
    # In-process version: "unknown" only when the core is forced off (NNSCORE_ALLOW_NO_CORE runs).
    assert version == ns.__version__ or not ns.HAS_CORE
    assert "simd" in proc.stdout
    assert "backends" in proc.stdout


def test_module_info_json():
    proc = _run("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"core", "backends", "nnscore"} <= set(info)
    assert info["nnscore"] == ns.__version__ or not ns.HAS_CORE
    assert set(info["backends"]) == {"cpp", "numba", "cuda", "torch", "reference"}
    for name in ns.available_backends():
        assert info["backends"][name] == "available"
    core = info["core"]
    if core is not None:  # the child's own view (the core may be forced off in this process)
        assert core["simd_detected"] in core["simd_compiled"]
        assert core["simd_used"] in core["simd_compiled"]
        assert info["backends"]["cpp"] == "available"
    else:
        assert info["backends"]["cpp"].startswith("unavailable")


def test_bad_command_exits_non_zero():
    proc = _run("no-such-command")
    assert proc.returncode != 0
    assert proc.stderr.strip()
    assert _run().returncode != 0  # a command is required


def test_console_entry_point_in_process(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"core", "backends"} <= set(info)
    assert (info["core"] is None) == (not ns.HAS_CORE)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert ns.__version__ in out
    if ns.HAS_CORE:
        assert "simd" in out


def test_show_versions_to_stringio():
    buf = io.StringIO()
    assert ns.show_versions(file=buf) is None
    text = buf.getvalue()
    assert ns.__version__ in text
    assert "numpy" in text and "backends" in text


def test_show_versions_defaults_to_stdout(capsys):
    ns.show_versions()
    assert ns.__version__ in capsys.readouterr().out


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
def test_simd_level_env_override(monkeypatch):
    from nnscore import backends

    detected = backends.simd_level()
    monkeypatch.setenv("NNSCORE_SIMD_LEVEL", "generic")
    assert backends.simd_level() == 0
    monkeypatch.setenv("NNSCORE_SIMD_LEVEL", "avx512")
    assert backends.simd_level() == detected  # only ever lowered
    monkeypatch.setenv("NNSCORE_SIMD_LEVEL", "sse9")
    with pytest.raises(ValueError, match="NNSCORE_SIMD_LEVEL"):
        backends.simd_level()
