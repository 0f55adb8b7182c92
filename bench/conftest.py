"""pytest-benchmark configuration for nnscore: `pytest bench/ --benchmark-only`.

Large sizes run only with --bench-large.  Threads are pinned (NNSCORE_NUM_THREADS, default 2).
Each benchmark records build_info and its throughput in extra_info.
"""
import os

import pytest

os.environ.setdefault("NNSCORE_NUM_THREADS", "2")


def pytest_addoption(parser):
    parser.addoption("--bench-large", action="store_true", help="include N = 1e6 sizes")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-large"):
        return
    skip = pytest.mark.skip(reason="large size: pass --bench-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "large: benchmark of a large size (needs --bench-large)")
