"""Helpers shared by the tests (import as `from helpers import ...`)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
from pathlib import Path

import uvm


def open_machine_memfds() -> set[str]:
    """The fds (as /proc/self/fd paths) of every open uvm machine memfd."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:uvm-machine"):
                found.add(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return found


def memfd_pages_from_outside() -> int:
    """Resident pages of every uvm machine memfd in this process, from fstat(2) on
    /proc/self/fd: the kernel's count, not uvm's."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:uvm-machine"):
                total += os.stat(f"/proc/self/fd/{fd}").st_blocks * 512 // 4096
        except OSError:
            continue
    return total


class BudgetSampler:
    """Samples a machine's resident frames on a thread while a test runs."""

    def __init__(self, machine: uvm.Machine, frames: int) -> None:
        self.machine = machine
        self.frames = frames
        self.max_seen = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="budget-sampler", daemon=True)

    def _main(self) -> None:
        while not self._stop.is_set():
            self.max_seen = max(self.max_seen, memfd_pages_from_outside(),
                                self.machine.stats()["frames_used"])
            self.samples += 1
            self._stop.wait(0.002)

    def __enter__(self) -> BudgetSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def file_mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def uvm_cmd(*args: str) -> list[str]:
    """The `uvm` script that installing the package put beside this interpreter."""
    script = shutil.which("uvm", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                       os.environ.get("PATH", "")]))
    assert script is not None, "no `uvm` script: install the package (pip install -e .)"
    return [script, *args]


def import_path() -> str:
    """PYTHONPATH for a child process that must import the uvm and workloads this process
    imported (a tree built in place while developing, or the installed package, as in CI;
    never a checkout's unbuilt uvm/), then the caller's own PYTHONPATH."""
    import uvm
    import workloads

    where = [str(Path(mod.__file__ or "").resolve().parent.parent) for mod in (uvm, workloads)]
    return os.pathsep.join(dict.fromkeys(filter(None, [*where, os.environ.get("PYTHONPATH")])))
