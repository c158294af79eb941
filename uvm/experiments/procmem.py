"""Real processes as a source of guest memory: start programs installed on this machine, each
with its own work, wait until each says it is ready, and read the pages each holds.

A process's pages are read from /proc/PID/mem over the readable regions of /proc/PID/maps,
keeping only the pages /proc/PID/pagemap says are present in RAM (a region's untouched pages
are not memory the process holds). Reading another process's memory needs root (or the
same user with ptrace allowed); the pages come back in the order of the maps.

`running(programs)` starts them and always stops them: on leaving the block, normally or by
an exception or KeyboardInterrupt, each gets its stdin closed (the programs exit on EOF),
then SIGTERM, then SIGKILL; each runs in a session of its own, so a Ctrl-C at the terminal
reaches uvm alone, which then stops them in that order."""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from uvm.sizes import PAGE_SIZE

PRESENT = 1 << 63
READY = b"ready"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Program:
    """A program to run: a `label`, its argv (argv[0] looked up on PATH), and text fed to
    its stdin at the start (stdin stays open: the program exits when it closes). It prints
    a line starting with "ready" once its work is set up."""
    label: str
    argv: tuple[str, ...]
    stdin: str = ""

    def path(self) -> str | None:
        """argv[0]'s full path, or None if it is not installed here."""
        return shutil.which(self.argv[0])


@dataclass
class Process:
    """A started program."""
    program: Program
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid


@contextmanager
def running(programs: Sequence[Program]) -> Iterator[list[Process]]:
    """Starts every program (all must be installed), waits until each is ready, yields them;
    stops them all on the way out (see the module). RuntimeError if one exits or does not
    become ready within READY_TIMEOUT_S."""
    procs: list[Process] = []
    try:
        for prog in programs:
            exe = prog.path()
            if exe is None:
                raise RuntimeError(f"{prog.argv[0]}: not installed")
            popen = subprocess.Popen([exe, *prog.argv[1:]], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
            procs.append(Process(prog, popen))
            assert popen.stdin is not None
            if prog.stdin:
                popen.stdin.write(prog.stdin.encode())
                popen.stdin.flush()
        for proc in procs:
            _wait_ready(proc)
        yield procs
    finally:
        stop(procs)


def _wait_ready(proc: Process) -> None:
    """Waits for the program's "ready" line."""
    out = proc.popen.stdout
    assert out is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = b""
    while READY not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([out], [], [], left)[0]:
            raise RuntimeError(f"{proc.program.label}: not ready after {READY_TIMEOUT_S:g} s")
        chunk = os.read(out.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{proc.program.label}: exited before it was ready "
                               f"(status {proc.popen.wait()})")
        seen += chunk


def stop(procs: Sequence[Process]) -> None:
    """Stops every process: stdin closed, then SIGTERM, then SIGKILL; waits for each."""
    for proc in procs:
        if proc.popen.stdin is not None:
            try:
                proc.popen.stdin.close()
            except OSError:
                pass
    for end in (_terminate, _kill):
        for proc in procs:
            if proc.popen.poll() is None:
                end(proc)
    for proc in procs:
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


def _terminate(proc: Process) -> None:
    """Gives the process a moment to exit on EOF, then SIGTERM."""
    try:
        proc.popen.wait(1.0)
    except subprocess.TimeoutExpired:
        proc.popen.terminate()
        try:
            proc.popen.wait(3.0)
        except subprocess.TimeoutExpired:
            pass


def _kill(proc: Process) -> None:
    proc.popen.kill()
    proc.popen.wait()


def pages(pid: int, limit: int) -> list[bytes]:
    """The pages process `pid` holds in RAM (at most `limit`), read from /proc/PID/mem over
    its readable mappings, in the order of /proc/PID/maps."""
    out: list[bytes] = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb", 0) as pagemap, \
            open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            for addr in _present(pagemap, start, end):
                try:
                    mem.seek(addr)
                    page = mem.read(PAGE_SIZE)
                except OSError:
                    continue
                if len(page) == PAGE_SIZE:
                    out.append(page)
                    if len(out) >= limit:
                        return out
    return out


def _present(f: BinaryIO, start: int, end: int) -> Iterator[int]:
    """Addresses of the pages in [start, end) that are present in RAM."""
    first, count = start // PAGE_SIZE, (end - start) // PAGE_SIZE
    step = 4096
    for base in range(0, count, step):
        n = min(step, count - base)
        try:
            f.seek((first + base) * 8)
            raw = f.read(n * 8)
        except OSError:
            return
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
            if entry & PRESENT:
                yield (first + base + i) * PAGE_SIZE
