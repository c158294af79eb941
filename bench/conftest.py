"""pytest-benchmark suites of uvm (`pytest bench/ --benchmark-only`, a quick size by default;
bench/README.md). The timing loops and page contents are the scripts' (bench_core.py's C
helper and pools, bench_sharing.py's image): one copy of each, imported from here (pytest
puts bench/ on sys.path for this conftest). uvm's fixtures come from its pytest plugin
(uvm/pytest_plugin.py), loaded here when uvm is not installed (installed, the entry point
has loaded it already and this is a no-op)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

import bench_core

pytest_plugins = ["uvm.pytest_plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uvm-bench", "uvm's benchmark suites (bench/)")
    group.addoption("--bench-region", type=int, default=16, metavar="MiB",
                    help="first-touch and swap-in region (default 16; the scripts' full size is 64)")
    group.addoption("--bench-rounds", type=int, default=3, metavar="N",
                    help="timed rounds of each benchmark (default 3)")


@pytest.fixture(scope="session")
def touch(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """bench/_touch.c compiled and loaded: the timing loops (ctypes drops the GIL)."""
    return bench_core.build_helper(str(tmp_path_factory.mktemp("touch")))


@pytest.fixture(scope="session")
def region_pages(request: pytest.FixtureRequest) -> int:
    mib: int = request.config.getoption("--bench-region")
    if not 1 <= mib <= 1024:
        raise pytest.UsageError(f"--bench-region: must be 1..1024 MiB, got {mib}")
    return mib << 8


@pytest.fixture(scope="session")
def rounds(request: pytest.FixtureRequest) -> int:
    n: int = request.config.getoption("--bench-rounds")
    if n < 1:
        raise pytest.UsageError(f"--bench-rounds: must be at least 1, got {n}")
    return n


class Pool:
    """bench_core's mixed page pool (zero, text, numeric, random), its address, and what
    the core should store for each of its pages."""

    def __init__(self, pages: int) -> None:
        self.data = bench_core.build_pool(pages)
        self.pages = pages
        self.expected = bench_core.expected_stored_lengths(self.data)
        self._buf = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        self.address = ctypes.addressof(self._buf)


@pytest.fixture(scope="session")
def pool() -> Iterator[Pool]:
    p = Pool(1024)
    yield p
    del p._buf

