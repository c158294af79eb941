"""Workloads that write and check known content: the "nothing lost" programs."""

from __future__ import annotations

from typing import ClassVar

from uvm._binding import ffi, lib
from uvm.errors import UvmError
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_guarded, check_seed

CHUNK_PAGES = 256


class _PageRange(Workload):
    """Pages [start, start + size) of a VM, walked in chunks."""

    SIZE_PARAM: ClassVar[str] = "size"     # the size parameter's name, for error messages

    def __init__(self, size: int | str | None = None, seed: int = 1, start: int = 0) -> None:
        self.pages = None if size is None else parse_pages(size, self.SIZE_PARAM)
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start: expected a page number >= 0, got {start!r}")
        self.seed = check_seed(seed)
        self.first = start
        self._next = start

    def start(self, vm: VM) -> None:
        if self.pages is None:
            self.pages = vm.pages - self.first
        if self.first + self.pages > vm.pages:
            raise ValueError(f"{self.SIZE_PARAM}: {self.pages * PAGE_SIZE} bytes from page {self.first} "
                             f"do not fit in VM {vm.name!r} ({vm.size} bytes)")
        self._next = self.first

    def _chunk(self) -> tuple[int, int] | None:
        assert self.pages is not None
        end = self.first + self.pages
        if self._next >= end:
            return None
        n = min(CHUNK_PAGES, end - self._next)
        first, self._next = self._next, self._next + n
        return first, n


class Fill(_PageRange):
    """Writes a pattern distinct for every page (a function of seed and PPN); one op per page."""

    kind: ClassVar[str] = "fill"

    def step(self, vm: VM) -> int | None:
        c = self._chunk()
        if c is None:
            return None
        return check_guarded(vm, lib.wl_fill(vm._base, c[0], c[1], self.seed))


class Verify(_PageRange):
    """Checks the pattern Fill wrote; raises UvmError naming the first page that differs."""

    kind: ClassVar[str] = "verify"

    def step(self, vm: VM) -> int | None:
        c = self._chunk()
        if c is None:
            return None
        bad_page = ffi.new("uint64_t *")
        bad = check_guarded(vm, lib.wl_verify(vm._base, c[0], c[1], self.seed, bad_page))
        if bad:
            raise UvmError(f"VM {vm.name!r}: {bad} page(s) lost their content, first PPN {bad_page[0]}")
        return c[1]
