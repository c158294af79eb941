"""Shared fixtures. The suite needs userfaultfd: if this process cannot have it, the run
stops at once with the reason (it never skips itself into green)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import uvm
from uvm.errors import UserfaultfdUnavailable


# Child Python processes the tests start (`python -c ...`, the uvm command, Ray's workers)
# must import the installed uvm, as pytest itself does, never the source tree in the current
# directory (a checkout's uvm/ has no built C core): -c and a script would put that directory
# first on sys.path. PYTHONSAFEPATH (Python 3.11+) tells every child not to.
os.environ["PYTHONSAFEPATH"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (whole experiments, a full default "
                          "run, a Ray cluster): the whole suite, as CI runs it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Plain `pytest` is the quick suite: tests marked slow are deselected (reported as
    such, never skipped into green) unless --slow is given or UVM_STRESS is set."""
    if config.getoption("--slow") or os.environ.get("UVM_STRESS"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_configure(config: pytest.Config) -> None:
    try:
        uvm.Machine(memory="1MiB").close()
    except UserfaultfdUnavailable as e:
        pytest.exit(f"uvm's tests need userfaultfd: {e}", returncode=3)


# The fault path: pager threads (the default) or the faulting thread's own SIGBUS handler
# (Machine(fault_path="thread"), still experimental: a soak run hung once on it, not yet
# understood). The suite runs on the default path, or on the one $UVM_FAULT_PATH names
# (UVM_FAULT_PATH=thread pytest runs everything on it); UVM_FAULT_PATHS=both runs the core's
# regression tests on both paths, as CI will once the thread path is the default.
# tests/test_fault_path.py tests the thread path's mechanisms on both paths in every run.
BOTH_FAULT_PATHS = {"test_hardening_core", "test_faults", "test_model", "test_guest_model",
                    "test_paging", "test_sharing", "test_soak", "test_pagers"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if os.environ.get("UVM_FAULT_PATHS") == "both" and metafunc.module.__name__ in BOTH_FAULT_PATHS:
        metafunc.parametrize("fault_path_env", ["pager", "thread"], indirect=True)


@pytest.fixture(autouse=True)
def fault_path_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The fault path this test's machines take by default (subprocesses inherit it)."""
    path: str | None = getattr(request, "param", None)
    if path is not None:
        monkeypatch.setenv("UVM_FAULT_PATH", path)
    return path


@pytest.fixture
def make_machine(tmp_path: Path) -> Iterator[Callable[..., uvm.Machine]]:
    """Creates machines (swap in the test's tmp dir) and closes them after the test."""
    made: list[uvm.Machine] = []

    def make(memory: Any = "16MiB", **kw: Any) -> uvm.Machine:
        kw.setdefault("swap_dir", tmp_path)
        m = uvm.Machine(memory=memory, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture(autouse=True)
def no_machine_left_open() -> Iterator[None]:
    """Every test closes the machines it made: none may hold machine memory afterwards."""
    from helpers import open_machine_memfds

    before = open_machine_memfds()
    yield
    leaked = open_machine_memfds() - before
    assert not leaked, f"machine memfd(s) still open after the test: {sorted(leaked)}"
