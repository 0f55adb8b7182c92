"""Version and environment report: ``ns.show_versions()`` and ``nnscore info``."""
from __future__ import annotations

import importlib.metadata
import platform
import sys

__all__ = ["__version__", "info_dict", "show_versions"]


def _version() -> str:
    try:
        return importlib.metadata.version("nnscore")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        try:
            from . import _core

            return str(_core.build_info()["version"])
        except ImportError:
            return "unknown"


__version__ = _version()


def _module_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_dict() -> dict:
    """Everything ``show_versions`` prints, as a dict."""
    from . import backends
    from ._threads import cpu_count, effective_n_threads

    info: dict = {
        "nnscore": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": _module_version("numpy"),
        "numba": _module_version("numba"),
        "faiss-cpu": _module_version("faiss-cpu"),
        "torch": _module_version("torch"),
        "threads": {"cpus_available": cpu_count(), "default_n_threads": effective_n_threads(None)},
    }
    if backends.HAS_CORE:
        build = dict(backends._core.build_info())
        build["simd_used"] = backends.SIMD_LEVELS[backends.simd_level()]
        info["core"] = build
    else:
        info["core"] = None
    info["backends"] = {
        name: ("available" if ok else f"unavailable: {reason}") for name, (ok, reason) in backends.backend_status().items()
    }
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "version")} for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def format_info(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def show_versions(file=None) -> None:
    """Print nnscore's version, compiled backends, SIMD levels, threads and dependency versions."""
    print(format_info(info_dict()), file=file or sys.stdout)
