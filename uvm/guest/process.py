"""Toy processes of the guest OS: a virtual page space whose pages are guest pages while
resident (on the OS's LRU list), blocks of the guest's swap area while swapped out, or
pinned (never reclaimed). Every access goes through the OS lock, so the pages an access
faulted in stay put until it is done."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from uvm._binding import ffi, lib
from uvm.errors import VMStopped
from uvm.guest.kernel import ZERO_PAGE, GuestOS
from uvm.sizes import PAGE_SIZE


class Process:
    def __init__(self, os: GuestOS, name: str) -> None:
        self.os = os
        self.name = name
        self.size = 0                           # virtual pages allocated so far
        self.resident: dict[int, int] = {}      # vpn -> ppn, on the OS's LRU list
        self.swap: dict[int, int] = {}          # vpn -> block of the guest's swap area
        self.pinned: dict[int, int] = {}        # vpn -> ppn, never reclaimed
        with os.lock:
            os.processes.append(self)

    def __repr__(self) -> str:
        return f"<Process {self.name!r} in {self.os.vm.name!r}: {self.size} pages>"

    def alloc(self, pages: int) -> range:
        """Grows the address space by `pages` pages (backed on first touch); returns their VPNs."""
        if pages < 0:
            raise ValueError(f"pages: must be >= 0, got {pages}")
        first, self.size = self.size, self.size + pages
        return range(first, self.size)

    def _check(self, vpn: int) -> None:
        if not 0 <= vpn < self.size:
            raise ValueError(f"vpn: {vpn} is outside {self!r}")

    def _fault_in(self, vpn: int, fresh: list[tuple[int, int]] | None = None) -> int:
        """The PPN of vpn, faulting it in (zeroed, or from swap); marks it busy. With
        `fresh`, a new page is not zeroed here but listed (vpn, ppn) for _zero to clear
        with the others in one call. Caller holds the OS lock."""
        os = self.os
        ppn = self.pinned.get(vpn)
        if ppn is None:
            ppn = self.resident.get(vpn)
            if ppn is not None:
                os.anon_lru.move_to_end((self, vpn))
            else:
                self._check(vpn)
                block = self.swap.get(vpn)
                if block is not None:
                    ppn = os.swap_in(block)
                    del self.swap[vpn]
                elif fresh is not None:
                    ppn = os.alloc_page()
                    fresh.append((vpn, ppn))
                else:
                    ppn = os.alloc_filled(ZERO_PAGE)
                self.resident[vpn] = ppn
                os.anon_lru[(self, vpn)] = ppn
        os.busy.add(ppn)
        return ppn

    def swapped_out(self, vpn: int, block: int) -> None:
        """The OS wrote vpn to swap block `block` (reclaim calls this, holding the lock)."""
        del self.resident[vpn]
        self.swap[vpn] = block

    def _fault_in_all(self, vpns: Sequence[int]) -> list[int]:
        """The PPNs of vpns, faulting each in; the new pages are zeroed together, in one C
        call. (Per page, each zeroing released and re-took the GIL: with another Python
        thread busy, a guest filling its memory waited for the GIL's switch interval, 5 ms,
        once per page and filled at 1-4 MiB/s instead of 18.) If a step fails, the pages it
        took go back to the free list. Caller holds the OS lock."""
        fresh: list[tuple[int, int]] = []
        try:
            ppns = [self._fault_in(v, fresh) for v in vpns]
            if fresh and lib.guest_zero_pages(self.os.vm._base, ffi.new("uint64_t[]", [p for _, p in fresh]),
                                              len(fresh)) < 0:
                raise VMStopped(self.os.vm.name, self.os.vm.stopped or "memory access failed")
        except BaseException:
            for vpn, ppn in fresh:
                del self.resident[vpn]
                del self.os.anon_lru[(self, vpn)]
            self.os.release([p for _, p in fresh])
            raise
        return ppns

    def touch(self, vpns: Sequence[int], write_fraction: float, rng: Any) -> int:
        """Touches one word of each page (a write with probability write_fraction), in C;
        returns pages touched. rng is a uint64_t[1] cffi array (the C loop's state)."""
        with self.os.lock:
            try:
                ppns = ffi.new("uint64_t[]", self._fault_in_all(vpns))
                r = lib.wl_touch_pages(self.os.vm._base, ppns, len(vpns), write_fraction, rng)
            finally:
                self.os.busy.clear()
        if r < 0:
            raise VMStopped(self.os.vm.name, self.os.vm.stopped or "memory access failed")
        return int(r)

    def read(self, vpn: int) -> bytes:
        with self.os.lock:
            try:
                return self.os.vm.read(self._fault_in(vpn) * PAGE_SIZE, PAGE_SIZE)
            finally:
                self.os.busy.clear()

    def write(self, vpn: int, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise ValueError(f"offset: [{offset}, {offset + len(data)}) is not within one page")
        with self.os.lock:
            try:
                self.os.vm.write(self._fault_in(vpn) * PAGE_SIZE + offset, data)
            finally:
                self.os.busy.clear()

    def pin(self, vpns: Iterable[int]) -> None:
        """Faults the pages in and pins them: the OS will never reclaim them (nor can the
        balloon take them), until unpin."""
        with self.os.lock:
            try:
                vpns = list(vpns)
                for v, ppn in zip(vpns, self._fault_in_all(vpns)):
                    if v in self.resident:
                        del self.resident[v]
                        del self.os.anon_lru[(self, v)]
                        self.pinned[v] = ppn
                        self.os.pinned.add(ppn)
            finally:
                self.os.busy.clear()

    def unpin(self, vpns: Iterable[int]) -> None:
        with self.os.lock:
            for v in vpns:
                ppn = self.pinned.pop(v, None)
                if ppn is not None:
                    self.os.pinned.discard(ppn)
                    self.resident[v] = ppn
                    self.os.anon_lru[(self, v)] = ppn

    def exit(self) -> None:
        """Frees every page and swap block of the process."""
        with self.os.lock:
            for v in self.resident:
                del self.os.anon_lru[(self, v)]
            self.os.release(list(self.resident.values()) + list(self.pinned.values()))
            for block in self.swap.values():
                self.os.disk.free(block)
            self.os.swap_used -= len(self.swap)
            self.resident.clear()
            self.pinned.clear()
            self.swap.clear()
            if self in self.os.processes:
                self.os.processes.remove(self)
