"""Toy programs that run on the guest OS (uvm.guest) as its processes: their memory is the
OS's to manage, so ballooning and guest-level paging apply to it. The VM must have booted
its OS (uvm.guest.boot) before one starts."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import ClassVar

from uvm._binding import ffi
from uvm.errors import UvmError
from uvm.guest.pagecache import File
from uvm.guest.process import Process
from uvm.periods import check_seconds
from uvm.seeds import new_seed
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_fraction, check_seed
from workloads.patterns import check_pattern

PAGES_PER_STEP = 256
MAX_COUNT = 1 << 16     # files, operations per step, writes between syncs: more is a mistake


def guest_process(vm: VM, name: str) -> Process:
    """A new process in vm's guest OS; ValueError if the VM has not booted one."""
    if vm.os is None:
        raise ValueError(f"vm: VM {vm.name!r} has no guest OS (boot it first: uvm.guest.boot(vm))")
    return vm.os.spawn(name)


def pick(rng: random.Random, pattern: str, set_pages: int, cursor: int, n: int) -> list[int]:
    """n pages of a walk over set_pages: sequential from cursor, uniform, or zipf (s = 1,
    ranks spread over the set by a fixed odd stride, as the C loop does)."""
    if pattern == "sequential":
        return [(cursor + k) % set_pages for k in range(n)]
    if pattern == "random":
        return [rng.randrange(set_pages) for _ in range(n)]
    return [((int(set_pages ** rng.random()) - 1) * 2654435761) % set_pages for _ in range(n)]


def _phases(phases: object) -> list[tuple[float, int]]:
    """GuestWorkingSet's phases as (seconds, pages); ValueError naming the phase unless each
    is a pair [seconds > 0, size]."""
    if phases is None:
        return []
    if isinstance(phases, (str, bytes)) or not isinstance(phases, Sequence):
        raise ValueError(f"phases: expected a list of [seconds, size] pairs, got {phases!r}")
    out = []
    for i, phase in enumerate(phases):
        if isinstance(phase, (str, bytes)) or not isinstance(phase, Sequence) or len(phase) != 2:
            raise ValueError(f"phases[{i}]: expected a pair [seconds, size], got {phase!r}")
        out.append((check_seconds(phase[0], f"phases[{i}][0]"), parse_pages(phase[1], f"phases[{i}][1]")))
    return out


def _seed(seed: int | None) -> int:
    """The seed given, or one drawn from the OS."""
    return new_seed() if seed is None else check_seed(seed)


class GuestWorkingSet(Workload):
    """A process touching a working set forever (one op is one page touched, a write with
    probability write_fraction). `phases` is a cycle of (seconds, size): the working set
    changes size every so many seconds; without phases it is `size` throughout."""

    kind: ClassVar[str] = "guest-working-set"

    def __init__(self, size: int | str, pattern: str = "random", write_fraction: float = 0.5,
                 phases: Sequence[tuple[float, int | str]] | None = None, seed: int | None = None) -> None:
        self.set_pages = parse_pages(size, "size")
        self.pattern = check_pattern(pattern)
        self.write_fraction = check_fraction(write_fraction, "write_fraction")
        self.phases = _phases(phases)
        self.seed = _seed(seed)
        self._rng = random.Random(self.seed)
        self._crng = ffi.new("uint64_t[1]", [self.seed | 1])
        self._cursor = 0
        self._elapsed = 0.0
        self.proc: Process | None = None

    def start(self, vm: VM) -> None:
        most = max([self.set_pages] + [z for _, z in self.phases])
        if most > vm.pages:
            raise ValueError(f"size: the working set ({most * PAGE_SIZE} bytes) is larger than "
                             f"VM {vm.name!r} ({vm.size} bytes)")
        self.proc = guest_process(vm, self.kind)
        self.proc.alloc(most)
        self._t0: float | None = None

    def current_set(self, t: float) -> int:
        """The working set's size (pages) at t seconds into the run."""
        if not self.phases:
            return self.set_pages
        t %= sum(s for s, _ in self.phases)
        for s, z in self.phases:
            if t < s:
                return z
            t -= s
        return self.phases[-1][1]

    def step(self, vm: VM) -> int | None:
        assert self.proc is not None
        now = time.monotonic()
        self._t0 = now if self._t0 is None else self._t0
        set_pages = self.current_set(now - self._t0)
        vpns = pick(self._rng, self.pattern, set_pages, self._cursor, PAGES_PER_STEP)
        self._cursor = (self._cursor + PAGES_PER_STEP) % set_pages
        return self.proc.touch(vpns, self.write_fraction, self._crng)


class FileCache(Workload):
    """In the spirit of dbench: `files` files of `file_size` on the guest's virtual disk,
    read and written a page at a time through the guest's page cache (one op is one page
    read, or a `write_size`-byte write into a page, a write with probability
    write_fraction), pages chosen by `pattern` over all the files; every `sync_every` ops
    the dirty pages are written back. Throughput depends on how much of the file set the
    guest can cache."""

    kind: ClassVar[str] = "file-cache"

    def __init__(self, files: int = 8, file_size: int | str = "4MiB", pattern: str = "zipf",
                 write_fraction: float = 0.2, write_size: int = 512, sync_every: int = 2000,
                 ops_per_step: int = 64, seed: int | None = None) -> None:
        if isinstance(files, bool) or not isinstance(files, int) or not 1 <= files <= MAX_COUNT:
            raise ValueError(f"files: expected a number of files from 1 to {MAX_COUNT}, got {files!r}")
        self.pattern = check_pattern(pattern)
        if isinstance(write_size, bool) or not isinstance(write_size, int) or not 1 <= write_size <= PAGE_SIZE:
            raise ValueError(f"write_size: must be 1..{PAGE_SIZE} bytes, got {write_size!r}")
        for name, value in (("sync_every", sync_every), ("ops_per_step", ops_per_step)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
                raise ValueError(f"{name}: expected an integer from 1 to {MAX_COUNT}, got {value!r}")
        self.nfiles = files
        self.file_pages = parse_pages(file_size, "file_size")
        self.write_fraction = check_fraction(write_fraction, "write_fraction")
        self.write_size = write_size
        self.sync_every = sync_every
        self.ops_per_step = ops_per_step
        self.seed = _seed(seed)
        self._rng = random.Random(self.seed)
        self._cursor = 0
        self._ops = 0
        self.files: list[File] = []

    def start(self, vm: VM) -> None:
        if vm.os is None:
            raise ValueError(f"vm: VM {vm.name!r} has no guest OS (boot it first: uvm.guest.boot(vm))")
        need = self.nfiles * self.file_pages
        if need > vm.os.disk.blocks - vm.os.disk.used:
            raise ValueError(f"files: {self.nfiles} files of {self.file_pages * PAGE_SIZE} bytes do "
                             f"not fit on VM {vm.name!r}'s virtual disk")
        self.files = [vm.os.create_file(f"file{i}", self.file_pages) for i in range(self.nfiles)]

    def step(self, vm: VM) -> int | None:
        assert vm.os is not None
        cache, total = vm.os.cache, self.nfiles * self.file_pages
        for page in pick(self._rng, self.pattern, total, self._cursor, self.ops_per_step):
            f, index = self.files[page // self.file_pages], page % self.file_pages
            if self._rng.random() < self.write_fraction:
                off = self._rng.randrange(PAGE_SIZE - self.write_size + 1)
                cache.write(f, index, self._rng.randbytes(self.write_size), off)
            else:
                cache.read(f, index)
            self._ops += 1
            if self._ops % self.sync_every == 0:
                cache.sync()
        self._cursor = (self._cursor + self.ops_per_step) % total
        return self.ops_per_step


class GuestChecked(Workload):
    """A process that owns `size` of data: it writes a distinct known content into every
    page, then keeps reading random pages back, checking every byte (one op is one page);
    a difference raises UvmError naming the page. `verify_all` checks them all."""

    kind: ClassVar[str] = "guest-checked"

    def __init__(self, size: int | str, seed: int = 1) -> None:
        self.pages = parse_pages(size, "size")
        self.seed = check_seed(seed)
        self._rng = random.Random(seed)
        self._written = 0
        self.proc: Process | None = None

    def content(self, vpn: int) -> bytes:
        line = f"{self.seed}/{vpn}|".encode()
        return (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE]

    def start(self, vm: VM) -> None:
        self.proc = guest_process(vm, self.kind)
        self.proc.alloc(self.pages)

    def _check(self, vpn: int) -> None:
        assert self.proc is not None
        if self.proc.read(vpn) != self.content(vpn):
            raise UvmError(f"{self.kind}: page {vpn} of the process lost its content")

    def step(self, vm: VM) -> int | None:
        assert self.proc is not None
        if self._written < self.pages:
            n = min(PAGES_PER_STEP, self.pages - self._written)
            for v in range(self._written, self._written + n):
                self.proc.write(v, self.content(v))
            self._written += n
            return n
        for _ in range(64):
            self._check(self._rng.randrange(self.pages))
        return 64

    @property
    def written(self) -> bool:
        return self._written == self.pages

    def verify_all(self) -> None:
        for v in range(self.pages):
            self._check(v)


class GuestIdle(Workload):
    """A process that writes `touch` of data once, then sleeps until stopped (its pages
    go cold: the guest's LRU knows it, the host does not)."""

    kind: ClassVar[str] = "guest-idle"
    NAP = 0.1

    def __init__(self, touch: int | str) -> None:
        self.pages = parse_pages(touch, "touch")
        self._written = 0
        self.proc: Process | None = None

    def start(self, vm: VM) -> None:
        self.proc = guest_process(vm, self.kind)
        self.proc.alloc(self.pages)

    def step(self, vm: VM) -> int | None:
        assert self.proc is not None
        if self._written == self.pages:
            time.sleep(self.NAP)
            return 0
        n = min(PAGES_PER_STEP, self.pages - self._written)
        for v in range(self._written, self._written + n):
            self.proc.write(v, v.to_bytes(8, "little") * (PAGE_SIZE // 8))
        self._written += n
        return n

    @property
    def written(self) -> bool:
        return self._written == self.pages
