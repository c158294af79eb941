"""A guest: its guest-physical memory, its counters, and the workloads running in it."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from uvm._binding import ffi, lib
from uvm.balloon import BalloonChannel
from uvm.iomap import IoRemap
from uvm.errors import NO_MAPPING, SwapFull, UvmError, VMStopped, map_count, stop_reason
from uvm.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from uvm.guest.kernel import GuestOS
    from uvm.sampler import IdleSampler
    from uvm.machine import Machine
    from workloads.base import Run, Workload

PAGE_STATES = {lib.PM_NONE: "none", lib.PM_RESIDENT: "resident", lib.PM_SWAPPED: "swapped",
               lib.PM_ZERO: "zero", lib.PM_SHARED: "shared", lib.PM_BALLOONED: "ballooned",
               lib.PM_LOW: "low"}

VM_STAT_FIELDS = [f for f, _ in ffi.typeof("struct uvm_vm_stats").fields]
DEFAULT_SHARES = 1000
NO_TARGET = 2**64 - 1
WATCH_STATUS = {lib.WATCH_UNTOUCHED: "untouched", lib.WATCH_TOUCHED: "touched",
                lib.WATCH_GONE: "gone"}


def check_shares(value: object) -> int:
    """Returns shares; ValueError unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
        raise ValueError(f"shares: must be an integer from 1 to 10**9, got {value!r}")
    return value


def check_count(value: object, name: str = "count") -> int:
    """Returns a count (an int >= 0); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
    return value


def vm_dict(st: Any) -> dict[str, Any]:
    """A VM's counters (struct uvm_vm_stats) as a plain dict."""
    return {f: int(getattr(st, f)) for f in VM_STAT_FIELDS}


class VM:
    """One guest. `memory` is a writable memoryview of all of its guest-physical memory:
    Python, numpy or C may read and write it, and the pager serves every fault.

    Touching `memory` of a stopped VM raises SIGBUS, which kills the process like any bad
    memory access in C; code that must survive that uses `read`/`write` or a workload,
    which turn it into VMStopped. Asking for `memory` once the VM is stopped, destroyed or
    its machine closed raises VMStopped with the reason; a view taken before and kept
    (m = vm.memory) is released when the VM is destroyed or the machine closed, and then
    says only "operation forbidden on released memoryview"."""

    def __init__(self, machine: Machine, name: str, slot: int, base: Any, pages: int,
                 shares: int = DEFAULT_SHARES, min_pages: int = 0, share_salt: str | int | None = None,
                 share_domain: int = 0) -> None:
        self.machine = machine
        self.name = name
        self.pages = pages
        self.size = pages * PAGE_SIZE
        self.max = pages                    # the paper's max: the configured size, in pages
        self.min = min_pages                # guaranteed pages (reserved at admission)
        self._shares = check_shares(shares)
        self.share_salt = share_salt        # as given to create_vm (None: none)
        self.share_domain = share_domain    # its pages merge only with VMs' of the same domain
        self.sampler: IdleSampler | None = None     # set while a memory policy runs
        self._runnable = threading.Event()          # cleared while the VM is blocked
        self._runnable.set()
        self._slot = slot
        self._base = base
        self._runs: list[Run] = []
        self._destroyed = False
        self._share_rate: float | None = None
        self._lock = threading.Lock()
        self._memory = memoryview(ffi.buffer(base, self.size))
        self.os: GuestOS | None = None      # the toy guest OS, once booted (uvm.guest.boot)
        self.balloon = BalloonChannel(self)
        self.io = IoRemap(self)             # bounce copies and I/O page remapping

    def __repr__(self) -> str:
        return f"<VM {self.name!r} {self.size >> 20} MiB>"

    @property
    def memory(self) -> memoryview:
        """A writable view of all of the guest-physical memory; VMStopped (with the reason)
        once the VM is stopped, destroyed or its machine closed."""
        reason = self.stopped
        if reason is not None:
            raise VMStopped(self.name, reason)
        return self._memory

    @property
    def address(self) -> int:
        """The guest-physical memory's address in this process (PPN p at address + p * 4096)."""
        return int(ffi.cast("uintptr_t", self._base))

    @contextmanager
    def _core(self) -> Iterator[Any]:
        """The machine's C handle, for a call about this VM's slot: VMStopped if the VM was
        destroyed (its slot may belong to another VM by now)."""
        with self.machine._core() as m:
            if self._destroyed:
                raise VMStopped(self.name, "the VM was destroyed")
            yield m

    def stats(self) -> dict[str, Any]:
        """Counters: pages, resident, swapped, zero, ballooned, faults by kind, swap-ins,
        swap-outs...; balloon_target, balloon_size, balloon_paged (paged instead),
        balloon_pops, balloon_errors and balloon_error; shares, min, max and blocked; with a
        memory policy, target, allocated, active (f), reclaim and host_paged; and with a
        guest OS its own counters (guest_free, guest_cache, guest_swapins, ...)."""
        return self._with_guest(vm_dict(self._core_stats()))

    def _core_stats(self) -> Any:
        """The C core's counters of this VM (struct uvm_vm_stats); stopped = ENOENT once it
        was destroyed, ESHUTDOWN once its machine was closed."""
        st = ffi.new("struct uvm_vm_stats *")
        try:
            with self.machine._core() as m:     # destroy_vm holds it too: no slot reuse race
                if self._destroyed:
                    st.stopped = errno.ENOENT
                else:
                    lib.vm_stats(m, self._slot, st)
        except UvmError:
            st.stopped = errno.ESHUTDOWN
        return st

    def _with_guest(self, d: dict[str, Any]) -> dict[str, Any]:
        """Adds the balloon's (balloon_target, balloon_size, balloon_paged, balloon_pops,
        balloon_errors, balloon_error), the memory policy's (shares, min, max, target, allocated,
        active, reclaim, blocked) and the guest OS's counters (guest_free, guest_cache,
        guest_swapins, ...) to the host's."""
        d.update(self.balloon.stats())
        d.update(shares=self._shares, min=self.min, max=self.max, blocked=int(self.blocked))
        sched = self.machine.scheduler
        d.update(sched.vm_stats(self) if sched is not None else {})
        if self.os is not None:
            d.update(self.os.stats())
        return d

    def _attach_os(self, gos: GuestOS) -> None:
        self.os = gos

    @property
    def stopped(self) -> str | None:
        """None while the VM runs; otherwise why it was stopped."""
        return self.stop_reason(int(self._core_stats().stopped))

    @staticmethod
    def stop_reason(err: int) -> str | None:
        """Why a VM whose stats say stopped = err was stopped (None: it runs)."""
        if err == errno.ENOENT:
            return "the VM was destroyed"
        return stop_reason(err) if err else None

    def _check_range(self, offset: int, length: int) -> None:
        for name, value in (("offset", offset), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"offset/length: [{offset}, {offset + length}) is outside the VM's "
                             f"{self.size} bytes")

    def _raise_stopped(self) -> None:
        raise VMStopped(self.name, self.stopped or "memory access failed")

    def read(self, offset: int, length: int) -> bytes:
        """Reads guest memory; raises VMStopped instead of crashing if the VM is stopped."""
        self._check_range(offset, length)
        buf = ffi.new("char[]", length)
        if lib.guest_read(self._base + offset, buf, length) < 0:
            self._raise_stopped()
        return bytes(ffi.buffer(buf, length))

    def write(self, offset: int, data: bytes) -> None:
        """Writes guest memory; raises VMStopped instead of crashing if the VM is stopped."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data: expected bytes, got {type(data).__name__}")
        self._check_range(offset, len(data))
        if lib.guest_write(self._base + offset, ffi.from_buffer(data), len(data)) < 0:
            self._raise_stopped()

    @property
    def share_rate(self) -> float | None:
        """This VM's sharing scan rate in pages per second (None: the machine's default)."""
        return self._share_rate

    @share_rate.setter
    def share_rate(self, rate: float | None) -> None:
        from uvm.sharing import check_rate

        self._share_rate = None if rate is None else check_rate(rate, "share_rate")

    def page_state(self, ppn: int) -> str:
        """The pmap state of one page: 'none', 'resident', 'swapped', 'zero', 'shared',
        'ballooned' or 'low' (re-mapped into low memory: uvm/iomap.py)."""
        self._check_ppns([ppn], "ppn")
        with self._core() as m:
            r = lib.vm_page_state(m, self._slot, ppn)
        if r < 0:
            raise OSError(-r, f"VM {self.name!r}: {os.strerror(-r)}")
        return PAGE_STATES[r]

    def page_map(self) -> bytes:
        """The page map: one byte per PPN, read at one instant in one call: the pmap state
        (PAGE_STATES' codes) in bits 0..2, and flags MAP_ZERO_SHARED (shared onto the zero
        page), MAP_WATCHED (watched by idle sampling) and MAP_STOPPED (the VM was stopped).
        uvm.pagemap draws it."""
        out = ffi.new("uint8_t[]", max(1, self.pages))
        with self._core() as m:
            r = int(lib.vm_page_map(m, self._slot, out, self.pages))
        if r < 0:
            raise VMStopped(self.name, "the VM was destroyed")
        return bytes(ffi.buffer(out, self.pages))

    @property
    def shares(self) -> int:
        """The VM's claim on memory beyond its min, relative to other VMs' (settable)."""
        return self._shares

    @shares.setter
    def shares(self, value: int) -> None:
        self._shares = check_shares(value)

    @property
    def blocked(self) -> bool:
        """True while the memory scheduler blocks the VM (low state, above its target):
        its workloads pause between steps until memory frees."""
        return not self._runnable.is_set()

    def _block(self) -> None:
        self._runnable.clear()

    def _unblock(self) -> None:
        self._runnable.set()

    def wait_runnable(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds while the VM is blocked; returns whether it may run."""
        return self._runnable.wait(timeout)

    def _set_target(self, target: int | None) -> None:
        """Tells the C core this VM's min and the scheduler's target (None: no target), so
        that evictions it makes on its own take from VMs above their targets first."""
        try:
            with self._core() as m:
                lib.vm_set_limits(m, self._slot, self.min, NO_TARGET if target is None else target)
        except UvmError:
            pass                            # the VM or the machine is gone meanwhile

    def _check_ppns(self, ppns: list[int], name: str = "ppns") -> None:
        """ValueError naming `name` unless every entry is a PPN of this VM."""
        for p in ppns:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < self.pages:
                raise ValueError(f"{name}: every PPN must be in [0, {self.pages}) (a page of VM "
                                 f"{self.name!r}), got {p!r}")

    def _ppn_call(self, fn: Any, ppns: list[int], *extra: Any) -> tuple[int, Any]:
        self._check_ppns(ppns)
        arr = ffi.new("uint64_t[]", ppns)
        with self._core() as m:
            r = int(fn(m, self._slot, arr, len(ppns), *extra))
        if r < 0:
            raise OSError(-r, f"VM {self.name!r}: {os.strerror(-r)}")
        return r, arr

    def _pick(self, fn: Any, count: int) -> list[int]:
        """Calls a C function that writes up to `count` PPNs of this VM; returns them."""
        count = min(check_count(count), self.pages)
        out = ffi.new("uint64_t[]", max(1, count))
        with self._core() as m:
            n = int(fn(m, self._slot, count, out))
        return [int(out[i]) for i in range(max(0, n))]

    def random_resident(self, count: int) -> list[int]:
        """Up to `count` distinct resident PPNs, chosen uniformly at random."""
        return self._pick(lib.vm_pick_resident, count)

    def watch(self, ppns: Iterable[int]) -> list[int]:
        """Idle sampling's trick: unmaps these pages (their frames stay) so that the guest's
        next touch of each is seen; returns those watched (the resident ones)."""
        n, arr = self._ppn_call(lib.vm_watch, list(ppns))
        return [int(arr[i]) for i in range(n)]

    def watch_random(self, count: int) -> list[int]:
        """Watches up to `count` random resident pages; returns their PPNs."""
        return self._pick(lib.vm_watch_random, count)

    def watched(self, ppns: Iterable[int]) -> list[str]:
        """For pages watched earlier: 'touched' since, 'untouched', or 'gone' (left machine
        memory untouched)."""
        pages = list(ppns)
        status = ffi.new("uint8_t[]", max(1, len(pages)))
        self._ppn_call(lib.vm_watched, pages, status)
        return [WATCH_STATUS[status[i]] for i in range(len(pages))]

    def evict(self, ppns: Iterable[int] | None = None) -> int:
        """Pages the given PPNs (default: every resident page) out to swap, as the host's
        swap daemon would; returns how many were evicted."""
        pages = list(range(self.pages)) if ppns is None else list(ppns)
        self._check_ppns(pages)
        arr = ffi.new("uint64_t[]", pages)
        with self._core() as m:
            return self._evicted(lib.vm_evict(m, self._slot, arr, len(pages)))

    def evict_random(self, count: int) -> int:
        """Pages out `count` resident pages chosen at random; returns how many."""
        count = min(check_count(count), self.pages)
        with self._core() as m:
            return self._evicted(lib.vm_evict_random(m, self._slot, count))

    def balloon_pages(self, ppns: Iterable[int]) -> int:
        """The host's half of ballooning: frees whatever backs these PPNs (frame, swap slot,
        shared reference) without writing them anywhere, because the guest gave them up; a
        touch of one later gets a zero page and is counted (balloon_touched). Returns pages
        newly ballooned. The balloon driver calls this; labs may too."""
        return self._balloon_call(lib.vm_balloon, ppns)

    def unballoon_pages(self, ppns: Iterable[int]) -> int:
        """Returns ballooned PPNs to the guest (zero on next touch); returns how many."""
        return self._balloon_call(lib.vm_unballoon, ppns)

    def _balloon_call(self, fn: Any, ppns: Iterable[int]) -> int:
        pages = list(ppns)
        self._check_ppns(pages)
        with self._core() as m:
            r = int(fn(m, self._slot, ffi.new("uint64_t[]", pages), len(pages)))
        if r == -errno.EMFILE:
            raise OSError(-r, f"VM {self.name!r}: ballooning failed for a shared page: "
                              + NO_MAPPING.format(count=map_count())
                              + " (the other pages listed were ballooned)")
        if r < 0:
            raise OSError(-r, f"VM {self.name!r}: ballooning failed: {os.strerror(-r)}")
        return r

    def _evicted(self, r: int) -> int:
        if r == -errno.ENOSPC:
            raise SwapFull(f"VM {self.name!r}: the swap file is full; the pages stay resident")
        if r == -errno.EMFILE:
            raise OSError(-r, f"VM {self.name!r}: eviction of a shared page failed: "
                              + NO_MAPPING.format(count=map_count()))
        if r < 0:
            raise OSError(-r, f"VM {self.name!r}: eviction failed: {os.strerror(-r)}")
        return int(r)

    def run(self, workload: Workload) -> Run:
        """Starts a workload on its own named thread inside this VM; returns its Run."""
        from workloads.base import Run

        if self._destroyed:
            raise VMStopped(self.name, "the VM was destroyed")
        run = Run(self, workload)
        with self._lock:
            self._runs.append(run)
        run.start()
        return run

    def _retire(self) -> None:
        """Marks the VM destroyed and releases `memory` where nothing else holds it. Views
        derived from it (numpy arrays) stay valid Python objects: the C core leaves the
        range reserved and inaccessible, never reused."""
        self._destroyed = True
        self.balloon.stop_driver()
        if self.os is not None:
            self.os.shutdown()
        try:
            self._memory.release()
        except BufferError:
            pass

    @property
    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs)
