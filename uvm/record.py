"""The run record: the header that every output of uvm starts with, so that a results.json,
a timeline or a summary alone says what produced it and how to produce it again.

    from uvm import record
    head = record.header(kind="experiment", name="sharing", config=params, seed=7)
    ...                                         # the run
    head.finish(partial=False)                  # its duration, and whether it was cut short
    json.dumps({"record": head.to_json(), ...})

The header holds: uvm's version and the git commit it was built from; the host (Python,
kernel, CPU model and count, memory) and the userfaultfd mode; the fault path; the full
configuration after defaults were applied; the run's seed and the seeds derived from it;
the command line; the start time; and, once the run ends, its duration and a partial flag.
docs/record.md documents every field; `uvm schema record` prints its JSON Schema.

The commit: an installed uvm reads it from uvm/_build.json, which setup.py writes into the
built package when it is built from a git checkout (`pip install .` from a clone); a uvm run
from its source tree (PYTHONPATH, an editable install) asks git about that tree. Neither:
null."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from uvm import __version__
from uvm._binding import lib
from uvm.machine import FaultPath, resolve_fault_path
from uvm.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from uvm.machine import Machine

BUILD_FILE = "_build.json"
SOURCE_TREE = Path(__file__).resolve().parent.parent

Mode = Literal["privileged", "user", "unavailable"]


def described(description: str, deterministic: bool = False, default: Any = ...) -> Any:
    """A model field with its meaning and whether the same command with the same seed gives
    the same value (in the JSON Schema as "deterministic"; docs/record.md's last column)."""
    return Field(default, description=description,
                 json_schema_extra={"deterministic": deterministic})


class Build(BaseModel):
    """Which uvm ran."""
    model_config = ConfigDict(extra="forbid")
    version: str = described("uvm's version", True)
    commit: str | None = described("git commit uvm was built or run from (null: unknown)", True)
    dirty: bool | None = described("true if tracked files differed from that commit", True)


class Host(BaseModel):
    """Where it ran (fixed by the host, not by the seed)."""
    model_config = ConfigDict(extra="forbid")
    python: str = described("Python version, e.g. 3.11.7")
    kernel: str = described("the kernel's release (uname -r)")
    os: str = described("the operating system (uname -s)")
    cpu_model: str = described("CPU model name (/proc/cpuinfo)")
    cpu_count: int = described("CPUs of the host")
    cpus_usable: int = described("CPUs this process may run on (its affinity)")
    memory_bytes: int = described("the host's memory (MemTotal)")
    mode: Mode = described("userfaultfd mode: privileged (full: faults inside syscalls served "
                           "too), user (UFFD_USER_MODE_ONLY, unprivileged), or unavailable")


class Header(BaseModel):
    """The run record: what ran, where, how it was configured and seeded, and when."""
    model_config = ConfigDict(extra="forbid")
    kind: str = described("the command that produced it: run, experiment (and whatever "
                          "later commands record themselves as)", True)
    name: str = described("the scenario's or the experiment's name", True)
    uvm: Build
    host: Host
    fault_path: FaultPath = described(
        "how faults are served: pager threads reading userfaultfd events, or the faulting "
        "thread itself in a SIGBUS handler", True)
    page_size_bytes: int = described("the page size every `_pages` field counts in", True)
    command: list[str] = described("the command line (argv) that started the run", True)
    config: dict[str, Any] = described("the full configuration, every default filled in: a "
                                       "scenario's tables, or an experiment's parameters", True)
    seed: int = described("the run's seed (--seed); everything random derives from it", True)
    seeds: dict[str, int] = described("seeds derived from `seed`, by part (machine, each VM's "
                                      "workload, each repeat)", True)
    started: str = described("start time, ISO 8601 in UTC")
    duration_s: float | None = described("wall-clock run time, seconds (null until the run "
                                          "ends)", default=None)
    partial: bool | None = described("true if the run was cut short (Ctrl-C); null until the "
                                     "run ends", default=None)
    _t0: float = PrivateAttr(default_factory=time.monotonic)

    def finish(self, partial: bool) -> Header:
        """Records the duration since the header was made and whether the run was cut
        short; returns self."""
        self.duration_s = round(time.monotonic() - self._t0, 3)
        self.partial = partial
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def header(*, kind: str, name: str, config: dict[str, Any], seed: int,
           seeds: dict[str, int] | None = None, machine: Machine | None = None,
           argv: list[str] | None = None) -> Header:
    """The record of a run starting now. `config` is the configuration with every default
    filled in; `seeds` the seeds derived from `seed`; `machine`, if the run has one already,
    tells the userfaultfd mode and the fault path (else they are probed, the path being the
    one a new Machine would take); `argv` defaults to sys.argv."""
    return Header(kind=kind, name=name, uvm=build(), host=host(machine),
                  fault_path=machine.fault_path if machine else resolve_fault_path(None),
                  page_size_bytes=PAGE_SIZE,
                  command=list(sys.argv if argv is None else argv), config=config, seed=seed,
                  seeds=dict(seeds or {}),
                  started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  duration_s=None, partial=None)


@lru_cache(maxsize=1)
def build() -> Build:
    """uvm's version and the commit it was built from (see the module's docstring)."""
    try:
        text = (Path(__file__).parent / BUILD_FILE).read_text(encoding="utf-8")
    except OSError:
        return Build(version=__version__, **_source_commit())
    info = json.loads(text)
    return Build(version=__version__, commit=info.get("commit"), dirty=info.get("dirty"))


def _source_commit() -> dict[str, Any]:
    """The commit of the source tree uvm runs from, if it runs from a git checkout of its
    own (not from a site-packages that happens to sit inside some other repository)."""
    try:
        in_checkout = (SOURCE_TREE / "cext" / "build.py").is_file()
    except OSError:                 # e.g. a directory this user may not search
        in_checkout = False
    if not in_checkout:
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(SOURCE_TREE), *args], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def version_line() -> str:
    """`uvm --version`: e.g. "uvm 0.1.0 (commit 65ae0df, modified)"."""
    b = build()
    if b.commit is None:
        return f"uvm {b.version}"
    return f"uvm {b.version} (commit {b.commit[:12]}{', modified' if b.dirty else ''})"


def host(machine: Machine | None = None) -> Host:
    """The host: Python, kernel, CPUs, memory, and the userfaultfd mode (the machine's, or
    what a new machine would get)."""
    uname = platform.uname()
    return Host(python=platform.python_version(), kernel=uname.release, os=uname.system,
                cpu_model=_cpu_model() or uname.machine, cpu_count=os.cpu_count() or 1,
                cpus_usable=len(os.sched_getaffinity(0)), memory_bytes=_memory_bytes(),
                mode=_mode(machine))


def _mode(machine: Machine | None) -> Mode:
    if machine is not None:
        return "user" if machine.user_mode else "privileged"
    r = int(lib.machine_uffd_mode())
    return "unavailable" if r < 0 else "user" if r else "privileged"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return None


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
