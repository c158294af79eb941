"""The randomized soak (issue 8): several overcommitted VMs with sharing, the memory policy,
a guest running the toy OS with its balloon driver, and faults injected, driven by a seeded
random sequence of operations against a model of every byte.

Run it by hand (the test runs it the same way, in a child process, so that a hang is killed
and reported instead of wedging pytest):

    PYTHONPATH=$PWD python tests/soak.py --seed 7 --steps 600     # replay seed 7
    PYTHONPATH=$PWD python tests/soak.py --seed 7 --seconds 600   # soak for ten minutes
    PYTHONPATH=$PWD python tests/soak.py --seed 7 --steps 600 --trace   # print every op

Why a seeded loop and not hypothesis: the soak must run for a given wall-clock time, every
operation must be timed by a watchdog that can report a hang of the pager (a hung C call
cannot be interrupted), and the machine's own threads (the pager's reclaimer, the sharing
scanner, the policy, the balloon driver) make no run exactly repeatable, so hypothesis'
shrinking would chase a moving target. Instead the operation sequence is a function of the
seed and of the model alone; a failure prints the seed and the last operations, and
`--steps` replays up to the failing step. What the threads do in between differs from run
to run: a replay usually, not always, fails the same way (run it a few times).

Model: for every page the soak wrote, the bytes it must read back (a page never written
reads as zeros; one the host ballooned reads as zeros). A VM is *stopped* only by an
injected fault (or, under the map-count gate, for want of a mapping); from then on each of its pages reads back as the model says or raises
VMStopped (docs/faults.md: a stopped VM keeps its swapped slots and resident pages), never
other bytes and never a hang. Every other VM must read back exactly.

Operations that hit a defect still open when this was written are gated by name (GATES);
the lead adds the name to FIXED once the fix is merged (UVM_SOAK_ENABLE=a,b turns them on
for one run). No assertion depends on a gate: a gate only decides whether an operation runs.
"""

from __future__ import annotations

import argparse
import collections
import errno
import faulthandler
import hashlib
import mmap
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvm
import uvm.guest
from uvm.guest.disk import DiskFull
from uvm.guest.process import Process
from workloads import Fill, GuestWorkingSet, Run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import BudgetSampler  # noqa: E402

# the clear errors guest disk I/O may raise while the disk is in trouble (DiskError: from
# defect 2's fix, where a failed request loses nothing; before it, the OSError itself)
GUEST_IO_ERRORS: tuple[type[BaseException], ...] = (
    OSError, DiskFull, *[c for c in [getattr(uvm.guest, "DiskError", None)] if c is not None])

PAGE = uvm.PAGE_SIZE
FRAMES = 384                    # machine memory: 1.5 MiB, overcommitted about 3x
MAX_VMS = 5
OP_LIMIT = float(os.environ.get("UVM_SOAK_OP_LIMIT", "5"))   # seconds an operation may take
MAP_LIMIT = max(OP_LIMIT, 30)   # for some 60,000 mmap or munmap calls: not what is timed
SHARED_KINDS = 6                # contents that recur across VMs (sharing merges them)
TMPFS_BYTES = 4 << 20           # the guest disks' filesystem when "disk-full" is on

# Operations gated because they hit an open defect of issue 8 (the item number first).
GATES = {
    "stopped-fault": "1: a fault of a stopped VM on a shared or write-protected page never "
                     "returns (a write to one; also a read of a merged zero page); gated: no "
                     "access to a VM known to be stopped, no write while a fault is armed",
    "pager-hold-gil": "3: pager-hold, then a plain vm.memory write (GIL held) deadlocks",
    "disk-full": "2: the guest OS loses data when its virtual disk's filesystem fills (and "
                 "the disk faults injected through vm.os.disk.inject_fault, that fix's API)",
    "map-count": "5: near vm.max_map_count (mappings made by the application) sharing fails "
                 "and VMs are stopped ('no machine frame could be freed')",
    "map-limit-errors": "new (found by the soak, seed 602 with the gates above on): with no "
                        "mapping to spare, create_vm says 'memory: no address space left for "
                        "another 512.0 KiB VM', and balloon_pages returns a partial count as "
                        "success when unsharing a page fails (pages after it stay unballooned); "
                        "gated: no VM created and no host ballooning while the mappings are held",
}
FIXED: set[str] = {"stopped-fault", "pager-hold-gil", "map-count", "disk-full",
                   "map-limit-errors"}     # their fixes are merged

# what must be undone even when the watchdog ends the process (os._exit runs no finally)
ON_HANG: list[Callable[[], None]] = []


def enabled_gates() -> set[str]:
    extra = {g for g in os.environ.get("UVM_SOAK_ENABLE", "").split(",") if g}
    unknown = extra - GATES.keys()
    if unknown:
        raise ValueError(f"UVM_SOAK_ENABLE: unknown gate(s) {sorted(unknown)}; known: {sorted(GATES)}")
    return FIXED | extra


class SoakFailure(AssertionError):
    """The soak found a defect (the message says which operation and what was wrong)."""


def content(kind: str, *key: object) -> bytes:
    """A page of known bytes: 'zero', 'shared' (key: the kind number; the same in every
    VM) or 'unique' (key: anything distinct), half text and half hash, so that it
    compresses a little but not to nothing."""
    if kind == "zero":
        return bytes(PAGE)
    tag = " ".join(map(str, key))
    h = hashlib.blake2b(f"{kind}:{tag}".encode(), digest_size=64).digest()
    return (f"{kind} {tag} ".encode() * (2048 // (len(kind) + len(tag) + 2) + 1))[:2048] + h * 32


@dataclass
class Guest:
    """One VM and its model. Plain VMs: PPN -> bytes. A guest OS VM: the model is of its
    process's pages (VPN -> bytes); the guest decides which PPNs hold them."""
    vm: uvm.VM
    proc: Process | None = None
    pages: dict[int, bytes] = field(default_factory=dict)
    maybe: dict[int, set[bytes]] = field(default_factory=dict)   # a write that failed: old or new
    stopped: str | None = None
    background: Run | None = None       # a guest workload in another process of its OS
    disk_trouble: bool = False          # its disk failed requests since the workload started

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def size(self) -> int:
        """Pages the model covers (a process's pages, or the VM's)."""
        return self.proc.size if self.proc is not None else self.vm.pages

    def expected(self, page: int) -> set[bytes]:
        return self.maybe.get(page) or {self.pages.get(page, bytes(PAGE))}

    def read(self, page: int) -> bytes:
        if self.proc is not None:
            return self.proc.read(page)
        return self.vm.read(page * PAGE, PAGE)

    def write(self, page: int, data: bytes) -> None:
        if self.proc is not None:
            self.proc.write(page, data)
        else:
            self.vm.write(page * PAGE, data)


class Watchdog:
    """Times every operation: one that runs longer than `limit` seconds fails the soak
    with the operation, the recent operations and every thread's stack, then ends the
    process (a hung pager call cannot be interrupted). If the hang holds the GIL, the
    faulthandler's C thread does it instead, a little later (stacks only)."""

    def __init__(self, limit: float, history: collections.deque[str], seed: int) -> None:
        self.limit = limit
        self.history = history
        self.seed = seed
        self._op: str | None = None
        self._limit = limit
        self._started = 0.0
        self._backstop = False
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="soak-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def op(self, what: str, limit: float | None = None, backstop: bool = True) -> Iterator[None]:
        """Times one operation (`limit` seconds, default the watchdog's). The backstop
        starts a thread each time: not when the process has no mapping to spare for one."""
        self._limit = limit or self.limit
        self._backstop = backstop
        if backstop:
            faulthandler.dump_traceback_later(2 * self._limit + 5, exit=True)
        with self._cond:
            self._op, self._started = what, time.monotonic()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._op = None
            faulthandler.cancel_dump_traceback_later()

    def progress(self) -> None:
        """A bulk operation (verify-all) finished one of its parts: its clock starts again.
        A hang is an operation that makes no progress for `limit` seconds; one that makes
        progress slowly is not (each of verify-all's page reads may wait the GIL's 5 ms
        switch interval while a guest workload thread runs: 1,500 pages took over 5 s)."""
        now = time.monotonic()
        with self._cond:
            if now - self._started < 1.0:
                return
            self._started = now
        if self._backstop:
            faulthandler.dump_traceback_later(2 * self._limit + 5, exit=True)

    def _main(self) -> None:
        with self._cond:
            while not self._stop:
                if self._op is None:
                    self._cond.wait()
                    continue
                left = self._started + self._limit - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                print(f"\nSOAK HANG: seed {self.seed}: operation {self._op!r} still running after "
                      f"{self._limit:.0f} s", file=sys.stderr)
                print_history(self.history)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                print_native_threads()
                sys.stderr.flush()
                for undo in ON_HANG:
                    undo()
                os._exit(3)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()


def print_native_threads() -> None:
    """Every thread of this process as the kernel sees it (name, state, wait channel,
    system call), C pager threads included, and their C stacks when gdb is installed."""
    print("threads (tid, name, state, wchan, syscall):", file=sys.stderr)
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        info = []
        for f in ("comm", "stat", "wchan", "syscall"):
            try:
                with open(f"/proc/self/task/{tid}/{f}") as fh:
                    text = fh.read().strip()
            except OSError as e:
                text = f"({e.strerror})"
            info.append(text.split(") ")[1].split()[0] if f == "stat" and ") " in text else text)
        print("   ", tid, *info, file=sys.stderr)
    try:
        out = subprocess.run(["gdb", "-p", str(os.getpid()), "-batch", "-nx",
                              "-ex", "thread apply all bt 12"],
                             capture_output=True, text=True, timeout=60)
        print(out.stdout, file=sys.stderr)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"(no C stacks: {e})", file=sys.stderr)


def print_history(history: collections.deque[str]) -> None:
    print(f"last {len(history)} operations (step, op, arguments):", file=sys.stderr)
    for line in history:
        print("  " + line, file=sys.stderr)


@contextmanager
def small_filesystem(size: int) -> Iterator[str]:
    """A tmpfs of `size` bytes, to run the guests' virtual disks out of space."""
    where = tempfile.mkdtemp(prefix="uvm-soak-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "uvm-soak", where],
                   check=True)

    def unmount() -> None:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)
    ON_HANG.append(unmount)
    try:
        yield where
    finally:
        ON_HANG.remove(unmount)
        unmount()


class Soak:
    """One soak run: `rng` drives the operations; `check` raises SoakFailure."""

    def __init__(self, seed: int, workdir: str, disk_dir: str, gates: set[str],
                 trace: bool = False, log: str | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.gates = gates
        self.trace = trace
        # every operation, as it starts: what a hang that holds the GIL leaves to read
        self.logfile = open(log, "w", buffering=1) if log else None
        self.disk_dir = disk_dir
        self.filler = os.path.join(disk_dir, "filler")
        self.history: collections.deque[str] = collections.deque(maxlen=60)
        self.step = 0
        self.created = 0
        self.generation = 0
        self.swap_armed = False         # an injected swap fault may still be pending
        self.armed_since_check = False  # armed at any time since the last check
        self.squeezed = False           # the guest disks' filesystem is full
        self.disk_armed = False         # an injected guest disk fault may still be pending
        self.mappings: list[mmap.mmap] = []     # the application's own, near the limit
        self.guests: dict[str, Guest] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.seen: dict[str, Any] = {"states": set(), "stops": 0, "most_sharing": 0,
                                     "largest_balloon": 0, "swap_errors": 0}
        policy = uvm.MemoryPolicy(sample_period=0.5, sample_size=20, target_period=1.0, tick=0.1)
        self.machine = uvm.Machine(memory=FRAMES * PAGE, swap_dir=workdir, sharing=True,
                                   share_rate=4000, share_rate_vm=2000, policy=policy)
        self.watchdog = Watchdog(OP_LIMIT, self.history, seed)

    # -- the driver ---------------------------------------------------------------------

    def ops(self) -> list[tuple[int, Callable[[], None]]]:
        """(weight, operation): the mix. Writes and reads dominate; faults are rarer."""
        mix = [(30, self.op_write), (8, self.op_write_run), (3, self.op_fill), (25, self.op_read),
               (12, self.op_guest_write), (12, self.op_guest_read), (8, self.op_evict),
               (4, self.op_evict_random), (4, self.op_share_now), (4, self.op_watch),
               (2, self.op_sample), (5, self.op_balloon_target), (3, self.op_host_balloon),
               (2, self.op_unballoon), (3, self.op_inject), (4, self.op_heal),
               (2, self.op_pager_hold), (2, self.op_destroy), (3, self.op_create),
               (1, self.op_destroy_running),
               (2, self.op_background), (1, self.op_knobs), (3, self.op_check), (1, self.op_verify_all)]
        if "disk-full" in self.gates:
            mix += [(2, self.op_squeeze_disk), (2, self.op_relieve_disk), (2, self.op_disk_inject)]
        if "map-count" in self.gates:
            mix += [(1, self.op_map_pressure)]
        return mix

    def run(self, steps: int | None, seconds: float | None) -> None:
        mix = self.ops()
        weights = [w for w, _ in mix]
        with BudgetSampler(self.machine, FRAMES) as budget:
            self.act("create", lambda: self.create(guest_os=True))
            for _ in range(2):
                self.act("create", lambda: self.create(guest_os=False))
            end = time.monotonic() + seconds if seconds is not None else None
            while (steps is None or self.step < steps) and (end is None or time.monotonic() < end):
                self.step += 1
                op = self.rng.choices(mix, weights)[0][1]
                op()
                self.after_op()
            self.act("heal", self.heal)
            self.act("relieve", self.relieve_disk)
            self.act("unmap", self.unmap, limit=MAP_LIMIT)
            self.act("verify-all", self.verify_all)
            self.act("check", self.check)
            self.act("destroy-all", self.destroy_all)
        if budget.max_seen > FRAMES:
            raise SoakFailure(f"machine memory exceeded its budget: {budget.max_seen} of {FRAMES} frames "
                              f"({budget.samples} samples)")

    def act(self, what: str, fn: Callable[[], None], limit: float | None = None) -> None:
        """Runs one operation under the watchdog, recorded for the failure report."""
        line = f"{self.step:6d} {what}"
        self.record(line)
        self.counts[what.split()[0]] += 1
        with self.watchdog.op(line, limit, backstop=not self.mappings):
            fn()

    def log(self, what: str) -> None:
        """Records something the soak saw (a VM stopped...)."""
        self.record(f"{self.step:6d}   {what}")

    def record(self, line: str) -> None:
        self.history.append(line)
        if self.trace:
            print(line, flush=True)
        if self.logfile is not None:
            self.logfile.write(line + "\n")

    def close(self) -> None:
        try:
            with self.watchdog.op("machine.close()"):
                self.machine.close()
        finally:
            self.watchdog.close()
            if self.logfile is not None:
                self.logfile.close()

    # -- choosing ----------------------------------------------------------------------

    def pick(self, *, plain: bool | None = None, running: bool = False) -> Guest | None:
        """A random VM (plain only / guest OS only / either), or None if there is none;
        `running`: not known to be stopped."""
        names = sorted(n for n, g in self.guests.items()
                       if (plain is None or (g.proc is None) == plain)
                       and not (running and g.stopped))
        return self.guests[self.rng.choice(names)] if names else None

    @property
    def armed(self) -> bool:
        """A fault may stop a VM now: one injected, or the mappings nearly all taken."""
        return self.swap_armed or bool(self.mappings)

    def may_read(self, g: Guest) -> bool:
        """Whether a read of g may run: one that faults on a stopped VM's merged zero page
        never returns until defect 1 is fixed."""
        return "stopped-fault" in self.gates or not self.is_stopped(g)

    def may_write(self, g: Guest) -> bool:
        """Whether a write to g may run: one that faults on a stopped VM's (or a VM about
        to stop's) write-protected page never returns until defect 1 is fixed."""
        return "stopped-fault" in self.gates or not (self.armed or self.is_stopped(g))

    def is_stopped(self, g: Guest) -> bool:
        """Asks the core: a guest's balloon driver may have stopped it in the background
        (its reclaim reads guest pages, which may need swap)."""
        if g.stopped is None and g.proc is not None:
            reason = g.vm.stopped
            if reason is not None:
                self.note_stopped(g, reason)
        return g.stopped is not None

    def new_content(self, g: Guest, page: int) -> bytes:
        r = self.rng.random()
        if r < 0.15:
            return content("zero")
        if r < 0.6:
            return content("shared", self.rng.randrange(SHARED_KINDS))
        self.generation += 1
        return content("unique", self.seed, g.name, page, self.generation)

    # -- operations ----------------------------------------------------------------------

    def op_write(self) -> None:
        g = self.pick(plain=True)
        if g is None or not self.may_write(g):
            return
        page = self.rng.randrange(g.size)
        if self.rng.random() < 0.25 and len(g.expected(page)) == 1:    # a few bytes changed
            old = bytearray(next(iter(g.expected(page))))
            off, n = self.rng.randrange(PAGE), self.rng.randrange(1, 64)
            old[off:off + n] = self.rng.randbytes(n)
            data = bytes(old[:PAGE])
        else:
            data = self.new_content(g, page)
        self.act(f"write {g.name} ppn={page} {data[:16]!r}", lambda: self.write(g, page, data))

    def op_write_run(self) -> None:
        """Consecutive pages of one shared content: sharing fodder."""
        g = self.pick(plain=True)
        if g is None or not self.may_write(g):
            return
        first = self.rng.randrange(g.size)
        n = min(self.rng.randrange(1, 16), g.size - first)
        data = content("shared", self.rng.randrange(SHARED_KINDS))

        def write_run() -> None:
            for p in range(first, first + n):
                if self.may_write(g):       # the VM may stop on the way
                    self.write(g, p, data)
        self.act(f"write-run {g.name} ppn={first}+{n} {data[:16]!r}", write_run)

    def op_fill(self) -> None:
        """Distinct content over many pages: memory pressure for the policy and the reclaimer."""
        g = self.pick(plain=True)
        if g is None or not self.may_write(g):
            return
        first = self.rng.randrange(g.size)
        n = min(self.rng.randrange(16, 128), g.size - first)
        self.generation += 1
        gen = self.generation

        def fill() -> None:
            for p in range(first, first + n):
                if self.may_write(g):
                    self.write(g, p, content("unique", self.seed, g.name, p, gen))
        self.act(f"fill {g.name} ppn={first}+{n} generation {gen}", fill)

    def op_guest_write(self) -> None:
        g = self.pick(plain=False)
        if g is None or not self.may_write(g) or self.disk_trouble:
            return
        page = self.rng.randrange(g.size)
        data = self.new_content(g, page)
        self.act(f"guest-write {g.name} vpn={page} {data[:16]!r}", lambda: self.write(g, page, data))

    def op_read(self) -> None:
        g = self.pick(plain=True)
        if g is not None and self.may_read(g):
            page = self.rng.randrange(g.size)
            self.act(f"read {g.name} ppn={page}", lambda: self.check_page(g, page))

    def op_guest_read(self) -> None:
        """A guest read may write too (the guest swaps the page in, or zero-fills it)."""
        g = self.pick(plain=False)
        if g is not None and self.may_write(g):
            page = self.rng.randrange(g.size)
            self.act(f"guest-read {g.name} vpn={page}", lambda: self.check_page(g, page))

    def op_evict(self) -> None:
        g = self.pick()
        if g is not None:
            ppns = [self.rng.randrange(g.vm.pages) for _ in range(self.rng.randrange(1, 48))]
            self.act(f"evict {g.name} {len(ppns)} pages from ppn={ppns[0]}",
                     lambda: self.tolerate_swap_fault(lambda: g.vm.evict(ppns)))

    def op_evict_random(self) -> None:
        g = self.pick()
        if g is not None:
            n = self.rng.randrange(1, 64)
            self.act(f"evict-random {g.name} {n}",
                     lambda: self.tolerate_swap_fault(lambda: g.vm.evict_random(n)))

    def op_share_now(self) -> None:
        self.act("share-now", lambda: self.machine.share_now() and None)

    def op_watch(self) -> None:
        """Idle sampling's trick by hand: unmap random resident pages, see them touched."""
        g = self.pick()
        if g is None:
            return
        n = self.rng.randrange(1, 20)

        def watch() -> None:
            watched = g.vm.watch_random(n)
            if g.proc is None and watched and self.may_read(g):
                self.check_page(g, watched[0])
            status = g.vm.watched(watched)
            if any(s not in ("touched", "untouched", "gone") for s in status):
                raise SoakFailure(f"watched() returned {status}")
        self.act(f"watch {g.name} {n}", watch)

    def op_sample(self) -> None:
        """A snapshot stream, as the live view reads it."""
        def sample() -> None:
            for snap in self.machine.watch(seconds=0.1, every=0.05):
                names = {v.name for v in snap.vms}
                if names != set(self.guests):
                    raise SoakFailure(f"snapshot shows VMs {sorted(names)}, live are {sorted(self.guests)}")
                if snap.machine["frames_used"] > FRAMES:
                    raise SoakFailure(f"snapshot: {snap.machine['frames_used']} frames used of {FRAMES}")
        self.act("sample", sample)

    def op_balloon_target(self) -> None:
        g = self.pick()     # a VM without a driver too: the host must page it instead
        if g is None:
            return
        target = self.rng.choice([0, self.rng.randrange(g.vm.balloon.max_pages + 1), g.vm.balloon.max_pages])
        self.act(f"balloon-target {g.name} {target}", lambda: self.set_balloon(g, target))

    def set_balloon(self, g: Guest, target: int) -> None:
        try:
            g.vm.balloon.target = target
        except ValueError as e:
            if g.proc is not None or not str(e).startswith("target:"):
                raise
            return          # a VM without a driver may refuse the target, naming it

    def op_host_balloon(self) -> None:
        """The host's half of ballooning, on a plain VM (as labs may): the pages read as zeros."""
        g = self.pick(plain=True)
        if g is None or (self.mappings and "map-limit-errors" not in self.gates):
            return
        ppns = sorted({self.rng.randrange(g.size) for _ in range(self.rng.randrange(1, 24))})

        def balloon() -> None:
            try:
                g.vm.balloon_pages(ppns)
                failed = False
            except OSError as e:    # a shared page it could not unshare: no mapping to spare
                if not (self.mappings and e.errno == errno.EMFILE):
                    raise
                failed = True
            for p in ppns:
                if g.vm.page_state(p) == "ballooned":
                    g.pages.pop(p, None)
                    g.maybe.pop(p, None)
            kept = [p for p in ppns if g.vm.page_state(p) != "ballooned"]
            if kept and not (failed and all(g.vm.page_state(p) == "shared" for p in kept)):
                raise SoakFailure(f"{g.name}: balloon_pages({ppns}) left {kept} not ballooned "
                                  f"({[g.vm.page_state(p) for p in kept]})")
        self.act(f"host-balloon {g.name} {ppns[:6]}...", balloon)

    def op_unballoon(self) -> None:
        g = self.pick(plain=True)
        if g is not None:
            ppns = [self.rng.randrange(g.size) for _ in range(self.rng.randrange(1, 24))]
            self.act(f"unballoon {g.name} {ppns[:6]}...", lambda: g.vm.unballoon_pages(ppns) and None)

    def op_inject(self) -> None:
        kind = self.rng.choice(["swap-write", "swap-read", "swap-full"])
        count = self.rng.choice([1, 2, 5, 50])
        if "stopped-fault" not in self.gates:       # see may_write: no writer while armed
            for g in list(self.guests.values()):
                if g.background is not None:
                    self.act(f"background-stop {g.name}", lambda: self.stop_background(g))
        self.swap_armed = self.armed_since_check = True
        self.act(f"inject {kind} {count}", lambda: self.machine.inject_fault(kind, count))

    def op_heal(self) -> None:
        self.act("heal", self.heal)

    def heal(self) -> None:
        for kind in ("swap-write", "swap-read", "swap-full"):
            self.machine.inject_fault(kind, 0)
        self.swap_armed = False
        if self.disk_armed:
            for g in self.guests.values():
                for kind in ("disk-write", "disk-read", "disk-full"):
                    if g.vm.os is not None:
                        g.vm.os.disk.inject_fault(kind, 0)
            self.disk_armed = False

    def op_pager_hold(self) -> None:
        """The pagers stop serving; a guest thread blocks in a fault; serving resumes and
        the write completes."""
        g = self.pick(plain=True, running=True)
        if g is None or self.armed or self.mappings:    # a new thread needs mappings
            return
        page = self.rng.randrange(g.size)
        data = self.new_content(g, page)
        plain = "pager-hold-gil" in self.gates and self.rng.random() < 0.5
        hold = self.rng.choice([0.01, 0.05, 0.2])
        self.act(f"pager-hold {g.name} ppn={page} {'vm.memory' if plain else 'vm.write'} {hold}s",
                 lambda: self.pager_hold(g, page, data, plain, hold))

    def pager_hold(self, g: Guest, page: int, data: bytes, plain: bool, hold: float) -> None:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                if plain:
                    g.vm.memory[page * PAGE:(page + 1) * PAGE] = data
                else:
                    g.vm.write(page * PAGE, data)
            except BaseException as e:
                errors.append(e)
        g.vm.evict([page])                  # so that the write must fault
        if plain:       # holding the GIL, the writer stops every thread: the hold must end by itself
            self.machine.inject_fault("pager-hold", 1, timeout=1.0)   # (API of defect 3's fix)
        else:
            self.machine.inject_fault("pager-hold", 1)
        writer = threading.Thread(target=write, name="soak-held-writer")
        try:
            writer.start()
            time.sleep(hold)
        finally:
            self.machine.inject_fault("pager-hold", 0)
        writer.join(OP_LIMIT)
        if writer.is_alive():
            raise SoakFailure(f"write to {g.name} ppn {page} still blocked {OP_LIMIT} s after the "
                              f"pagers resumed")
        if errors:
            raise errors[0]
        g.pages[page] = data
        g.maybe.pop(page, None)

    def op_destroy(self) -> None:
        if len(self.guests) > 1:
            g = self.pick()
            assert g is not None
            self.act(f"destroy {g.name}{' (stopped)' if g.stopped else ''}", lambda: self.destroy(g))

    def op_create(self) -> None:
        if len(self.guests) < MAX_VMS and (not self.mappings or "map-limit-errors" in self.gates):
            guest_os = self.rng.random() < 0.3 and not self.mappings   # its driver is a thread
            self.act(f"create {'guest-os' if guest_os else 'plain'}", lambda: self.create(guest_os))

    def op_background(self) -> None:
        """Starts or stops a workload in another process of a guest's OS, so the guest's
        own memory traffic competes with the soak's process, its balloon and the host."""
        g = self.pick(plain=False)
        if g is None:
            return
        if g.background is not None:
            self.act(f"background-stop {g.name}", lambda: self.stop_background(g))
        elif self.may_write(g) and not self.mappings:   # a thread needs mappings
            # at most 64 pages: one step holds its whole set (up to 256 touches) at once, and
            # a full balloon (65%) leaves 90 of the guest's 256 pages
            size = self.rng.choice([16, 32, 64])
            g.disk_trouble = self.disk_trouble
            self.act(f"background-start {g.name} {size} pages",
                     lambda: setattr(g, "background", g.vm.run(GuestWorkingSet(size * PAGE, seed=self.step))))

    def stop_background(self, g: Guest) -> None:
        """Stops g's workload: it must end at once, cleanly or with VMStopped (g stopped)."""
        run, g.background = g.background, None
        if run is None:
            return
        run.stop()
        if not run.wait(OP_LIMIT):
            raise SoakFailure(f"{run!r} did not stop within {OP_LIMIT} s")
        if isinstance(run.error, uvm.VMStopped):
            self.stopped(g, run.error)
        elif isinstance(run.error, GUEST_IO_ERRORS) and g.disk_trouble:
            pass                            # a clear error from the guest's disk
        elif run.error is not None:
            raise SoakFailure(f"{g.name}: its guest workload failed: {run.error!r}")
        assert isinstance(run.workload, GuestWorkingSet) and run.workload.proc is not None
        run.workload.proc.exit()            # its pages and swap blocks back to the guest

    def op_knobs(self) -> None:
        """Knobs a lab turns while guests run: fault-around, a VM's shares."""
        g = self.pick()
        pages = self.rng.choice([1, 4, 16, 64])
        shares = self.rng.choice([100, 1000, 5000])

        def turn() -> None:
            self.machine.fault_around = pages
            if g is not None:
                g.vm.shares = shares
        self.act(f"knobs fault_around={pages} shares of {g.name if g else '-'}={shares}", turn)

    def op_destroy_running(self) -> None:
        """A VM destroyed while its workload runs: the workload ends (done, or VMStopped)."""
        if len(self.guests) >= MAX_VMS or (self.armed and "stopped-fault" not in self.gates) \
                or self.mappings:           # a new thread needs mappings
            return
        delay = self.rng.choice([0.0, 0.005, 0.05])

        def go() -> None:
            self.created += 1
            vm = self.machine.create_vm(f"tmp{self.created}", memory=128 * PAGE)
            run = vm.run(Fill(seed=self.created))
            time.sleep(delay)
            self.machine.destroy_vm(vm)
            if not run.wait(OP_LIMIT):
                raise SoakFailure(f"{run!r} still running {OP_LIMIT} s after destroy_vm")
            if run.error is not None and not isinstance(run.error, uvm.VMStopped):
                raise run.error
        self.act(f"destroy-running after {delay}s", go)

    def op_check(self) -> None:
        self.act("check", self.check)

    def op_verify_all(self) -> None:
        self.act("verify-all", self.verify_all)

    def verify_all(self) -> None:
        for g in list(self.guests.values()):
            for page in range(g.size):
                if not self.may_read(g) or (g.proc is not None and not self.may_write(g)):
                    break                   # (guest reads write too: swap-in, zero-fill)
                self.check_page(g, page)
                self.watchdog.progress()

    @property
    def disk_trouble(self) -> bool:
        """Guest disk I/O may fail now (with a clear error, losing nothing)."""
        return self.squeezed or self.disk_armed

    def op_disk_inject(self) -> None:
        g = self.pick(plain=False)
        if g is not None and g.vm.os is not None:
            kind = self.rng.choice(["disk-write", "disk-read", "disk-full"])
            count = self.rng.choice([1, 3, 20])
            self.disk_armed = True
            self.note_disk_trouble()
            self.act(f"disk-inject {g.name} {kind} {count}",
                     lambda: g.vm.os.disk.inject_fault(kind, count))  # type: ignore[union-attr]

    def op_map_pressure(self) -> None:
        """The application maps memory of its own until the process is `spare` mappings short
        of vm.max_map_count (or unmaps it all again): sharing must degrade, never stop a VM."""
        if self.mappings:
            self.act("unmap", self.unmap, limit=MAP_LIMIT)
            return
        spare = self.rng.choice([60, 400, 3000])   # not enough for sharing's headroom
        self.act(f"map-pressure until {spare} mappings short of the limit", lambda: self.map(spare),
                 limit=MAP_LIMIT)

    def map(self, spare: int) -> None:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            used = sum(1 for _ in f)
        self.armed_since_check = True   # a copy-on-write break may find no mapping to spare
        for i in range(max(0, limit - used - spare)):   # alternate protections: no merging
            prot = mmap.PROT_READ if i % 2 else mmap.PROT_READ | mmap.PROT_WRITE
            self.mappings.append(mmap.mmap(-1, PAGE, prot=prot))

    def unmap(self) -> None:
        for m in self.mappings:
            m.close()
        self.mappings.clear()

    def op_squeeze_disk(self) -> None:
        if not self.squeezed:
            self.act("squeeze-disk", self.squeeze_disk)

    def op_relieve_disk(self) -> None:
        if self.squeezed:
            self.act("relieve-disk", self.relieve_disk)

    # -- mechanics -----------------------------------------------------------------------

    def create(self, guest_os: bool) -> None:
        self.created += 1
        name = f"{'g' if guest_os else 'vm'}{self.created}"
        pages = 256 if guest_os else self.rng.choice([64, 128, 256])
        reserved = self.rng.choice([0, 0, 16, 64])
        try:
            vm = self.machine.create_vm(name, memory=pages * PAGE, min=reserved * PAGE,
                                        shares=self.rng.choice([500, 1000, 2000]))
        except ValueError as e:             # admission control: swap or memory cannot back it
            if not (str(e).startswith("memory: ") and "cannot be backed" in str(e)) \
                    and not str(e).startswith("min: ") \
                    and not (self.mappings and "max_map_count" in str(e)):
                raise                       # (or no mapping to spare, said so)
            return
        g = Guest(vm)
        if guest_os:
            try:
                gos = uvm.guest.boot(vm, disk_dir=self.disk_dir, disk_latency=0, balloon_period=0.05)
            except ValueError as e:         # its disk may not fit on a full filesystem
                self.machine.destroy_vm(vm)
                if "disk-full" not in self.gates or not str(e).startswith("disk"):
                    raise
                return
            g.proc = gos.spawn("soak")
            g.proc.alloc(self.rng.choice([128, 256, 320]))   # more than RAM: the guest swaps
        self.guests[name] = g

    def destroy(self, g: Guest) -> None:
        self.stop_background(g)
        driver = g.vm.balloon.driver
        if driver is not None and driver.error is not None:
            self.driver_died(g)
        self.machine.destroy_vm(g.vm)
        del self.guests[g.name]

    def destroy_all(self) -> None:
        for g in list(self.guests.values()):
            self.destroy(g)
        st = self.machine.stats()
        if st["frames_used"] or st["swap_pages"] or st["shared_frames"]:
            raise SoakFailure(f"with every VM destroyed: frames_used {st['frames_used']}, "
                              f"swap_pages {st['swap_pages']}, shared_frames {st['shared_frames']}")
        self.machine.check()

    def write(self, g: Guest, page: int, data: bytes) -> None:
        old = g.expected(page)
        try:
            g.write(page, data)
        except uvm.VMStopped as e:
            g.maybe[page] = old | {data}
            self.stopped(g, e)
            return
        except GUEST_IO_ERRORS:
            if g.proc is None or not self.disk_trouble:
                raise
            g.maybe[page] = old | {data}    # guest disk full: a clear error, nothing lost
            return
        g.pages[page] = data
        g.maybe.pop(page, None)

    def check_page(self, g: Guest, page: int) -> None:
        try:
            got = g.read(page)
        except uvm.VMStopped as e:
            self.stopped(g, e)
            return
        except GUEST_IO_ERRORS:
            if g.proc is None or not self.disk_trouble:
                raise
            return
        want = g.expected(page)
        if got not in want:
            first = next(iter(want))
            at = next((i for i in range(PAGE) if got[i] != first[i]), 0)
            raise SoakFailure(f"{g.name} {'vpn' if g.proc else 'ppn'} {page} "
                              f"({g.vm.page_state(page) if g.proc is None else 'guest'}, "
                              f"stopped: {g.stopped}): byte {at} reads {got[at:at + 16]!r}, "
                              f"model says {first[at:at + 16]!r}")
        g.pages[page] = got
        g.maybe.pop(page, None)

    def stopped(self, g: Guest, e: uvm.VMStopped) -> None:
        """A VM raised VMStopped: only an injected fault may have stopped it, with its reason."""
        reason = g.vm.stopped
        if reason is None:
            raise SoakFailure(f"{g.name} raised {e} but vm.stopped is None")
        self.note_stopped(g, reason)

    def note_stopped(self, g: Guest, reason: str) -> None:
        if g.stopped is None:
            if not self.armed_since_check:
                raise SoakFailure(f"{g.name} stopped ({reason}) with no fault injected")
            if not any(r in reason for r in ("swap file is full", "I/O error", "max_map_count")):
                raise SoakFailure(f"{g.name} stopped for an unexpected reason: {reason}")
            self.log(f"{g.name} is stopped: {reason}")
            g.stopped = reason
            self.seen["stops"] += 1

    def driver_died(self, g: Guest) -> None:
        """g's balloon driver ended: fine if its VM was stopped (the driver's reclaim may be
        what stopped it, after the stats this check started from); a defect otherwise."""
        driver = g.vm.balloon.driver
        assert driver is not None
        if not (isinstance(driver.error, uvm.VMStopped) and self.is_stopped(g)):
            raise SoakFailure(f"{g.name}: the balloon driver died: {driver.error!r}")

    def tolerate_swap_fault(self, fn: Callable[[], object]) -> None:
        """An eviction may fail while a swap fault is armed (EIO, or SwapFull), or near the
        mapping limit (EMFILE: a shared victim cannot be unshared), never else."""
        try:
            fn()
        except uvm.SwapFull:
            if not self.swap_armed:
                raise
        except OSError as e:
            if not ((self.swap_armed and e.errno == errno.EIO)
                    or (self.mappings and e.errno == errno.EMFILE)):
                raise

    def squeeze_disk(self) -> None:
        with open(self.filler, "ab") as f:
            try:
                while True:
                    f.write(b"\xff" * (1 << 16))
                    f.flush()
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        self.squeezed = True
        self.note_disk_trouble()

    def note_disk_trouble(self) -> None:
        for g in self.guests.values():
            g.disk_trouble = True

    def relieve_disk(self) -> None:
        if os.path.exists(self.filler):
            os.unlink(self.filler)
        self.squeezed = False

    def after_op(self) -> None:
        """Cheap checks after every operation: the budget, and no VM stopped unseen."""
        used = self.machine.stats()["frames_used"]
        if used > FRAMES or self.machine.memfd_pages() > FRAMES:
            raise SoakFailure(f"machine memory over budget: {used} frames used, "
                              f"{self.machine.memfd_pages()} in the memfd, of {FRAMES}")

    def check(self) -> None:
        """The core's bookkeeping, the budget, counters that must add up, who is stopped."""
        m = self.machine
        for worker in (m.scheduler, m._scanner):
            if worker is not None and worker.error is not None:
                raise SoakFailure(f"a machine thread died: {worker.error!r}")
        m.check()
        vms = [g.vm for g in self.guests.values()]
        ms, vs = m.stats_with_vms(vms)
        if ms["frames_used"] > FRAMES or m.memfd_pages() > FRAMES:
            raise SoakFailure(f"over budget: {ms['frames_used']} frames used, {m.memfd_pages()} "
                              f"in the memfd, of {FRAMES}")
        self.seen["states"].add(ms["state"])
        self.seen["most_sharing"] = max(self.seen["most_sharing"], ms["sharing"])
        self.seen["swap_errors"] = max(self.seen["swap_errors"], ms["swap_errors"])
        self.seen["largest_balloon"] = max([self.seen["largest_balloon"]]
                                           + [v["balloon_size"] for v in vs])
        if ms["frames_used"] != sum(v["resident"] for v in vs) + ms["shared_frames"]:
            raise SoakFailure(f"frames_used {ms['frames_used']} != resident + shared frames: {ms}")
        if ms["swap_pages"] != sum(v["swapped"] for v in vs):
            raise SoakFailure(f"swap_pages {ms['swap_pages']} != the VMs' swapped pages")
        for g, v in zip(self.guests.values(), vs):
            total = v["resident"] + v["swapped"] + v["sharing"] + v["ballooned"] + v["zero"]
            if total > v["pages"]:
                raise SoakFailure(f"{g.name}: page states add up to {total} of {v['pages']}: {v}")
            reason = g.vm.stop_reason(v["stopped"])
            if reason is not None:
                self.note_stopped(g, reason)
            elif g.stopped is not None:
                raise SoakFailure(f"{g.name} was stopped ({g.stopped}) and now runs again")
            run = g.background
            if run is not None and run.done and not isinstance(run.error, uvm.VMStopped) \
                    and not (g.disk_trouble and isinstance(run.error, GUEST_IO_ERRORS)):
                raise SoakFailure(f"{g.name}: its guest workload ended: {run.error!r}")
            driver = g.vm.balloon.driver
            if driver is not None and (driver.error is not None or not driver.running):
                self.driver_died(g)
        self.armed_since_check = self.armed


def run_soak(seed: int, steps: int | None, seconds: float | None, trace: bool = False,
             log: str | None = None) -> Soak:
    """One soak; raises SoakFailure (after printing the seed and the last operations)."""
    gates = enabled_gates()
    with tempfile.TemporaryDirectory(prefix="uvm-soak-") as workdir:
        disks = small_filesystem(TMPFS_BYTES) if "disk-full" in gates else _plain_dir(workdir)
        with disks as disk_dir:
            soak = Soak(seed, workdir, disk_dir, gates, trace, log)
            try:
                soak.run(steps, seconds)
            except BaseException:
                print(f"\nSOAK FAILED: seed {seed} at step {soak.step} (gates on: "
                      f"{sorted(gates) or 'none'})", file=sys.stderr)
                print_history(soak.history)
                traceback.print_exc()
                sys.stderr.flush()
                raise
            finally:
                soak.close()
    return soak


@contextmanager
def _plain_dir(where: str) -> Iterator[str]:
    yield where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="uvm's randomized soak (see the module's docstring)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, help="operations to run (deterministic per seed)")
    p.add_argument("--seconds", type=float, help="run for this long instead")
    p.add_argument("--trace", action="store_true", help="print every operation as it runs")
    p.add_argument("--log", help="write every operation to this file as it starts")
    a = p.parse_args(argv)
    if (a.steps is None) == (a.seconds is None):
        p.error("give exactly one of --steps and --seconds")
    faulthandler.enable()
    started = time.monotonic()
    try:
        soak = run_soak(a.seed, a.steps, a.seconds, a.trace, a.log)
    except SoakFailure:
        return 1
    print(f"soak seed {a.seed}: {soak.step} operations in {time.monotonic() - started:.1f} s, "
          f"no defect found; seen: {soak.seen}; operations: {dict(sorted(soak.counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
