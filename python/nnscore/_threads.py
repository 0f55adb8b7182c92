"""Effective thread count: NNSCORE_NUM_THREADS, else the CPUs this process may run on."""
from __future__ import annotations

import contextlib
import functools
import os

__all__ = ["effective_n_threads", "single_threaded_blas"]


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def effective_n_threads(n_threads: int | None = None, work: float | None = None) -> int:
    """Threads to use for a call; small problems (``work`` flops below ~4e6) run on one."""
    if n_threads is None:
        env = os.environ.get("NNSCORE_NUM_THREADS")
        n_threads = int(env) if env else cpu_count()
    elif not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1:
        raise ValueError(f"n_threads: expected a positive int or None, got {n_threads!r}")
    if work is not None and work < 4e6:
        return 1
    return n_threads


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return ThreadpoolController()


def single_threaded_blas():
    """Context manager: BLAS on one thread for the enclosed calls.  For small products just
    before the C++ kernels: OpenBLAS worker threads keep spinning for a while after a call and
    take the cores the kernels' own threads need (measured: ~17% of the CPU of an IVF
    evaluation on 2 cores)."""
    ctl = _blas_controller()
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")
