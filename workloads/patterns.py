"""Workloads that touch memory in patterns: a working-set loop and an idle guest."""

from __future__ import annotations

import time
from typing import ClassVar

from uvm._binding import ffi, lib
from uvm.seeds import new_seed
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_fraction, check_guarded, check_seed
from workloads.memory import Fill

PATTERNS = {"sequential": 0, "random": 1, "zipf": 2}
OPS_PER_STEP = 4096


def check_pattern(value: object) -> str:
    """Returns an access pattern's name; ValueError unless it is one of PATTERNS."""
    if not isinstance(value, str) or value not in PATTERNS:
        raise ValueError(f"pattern: must be one of {sorted(PATTERNS)}, got {value!r}")
    return value


class WorkingSet(Workload):
    """Touches pages of a working set of `size` bytes forever (until stopped): one op is
    one page touched, a write with probability `write_fraction`. Patterns: sequential,
    random (uniform), zipf (s = 1: a few pages very hot, a long cold tail). The sequence of
    pages and of reads and writes is a function of `seed` (default: drawn from the OS, then
    kept in `self.seed`)."""

    kind: ClassVar[str] = "working-set"

    def __init__(self, size: int | str, pattern: str = "random", write_fraction: float = 0.5,
                 seed: int | None = None) -> None:
        self.set_pages = parse_pages(size, "size")
        self.pattern = check_pattern(pattern)
        self.write_fraction = check_fraction(write_fraction, "write_fraction")
        self.seed = new_seed() if seed is None else check_seed(seed)
        self._rng = ffi.new("uint64_t[2]", [self.seed or 1, 0])

    def start(self, vm: VM) -> None:
        if self.set_pages > vm.pages:
            raise ValueError(f"size: the working set ({self.set_pages * PAGE_SIZE} bytes) is "
                             f"larger than VM {vm.name!r} ({vm.size} bytes)")

    def step(self, vm: VM) -> int | None:
        return check_guarded(vm, lib.wl_touch(vm._base, self.set_pages, PATTERNS[self.pattern],
                                              self.write_fraction, OPS_PER_STEP, self._rng))


class Idle(Fill):
    """Touches (writes) `touch` bytes of memory once, then sleeps until stopped."""

    kind: ClassVar[str] = "idle"
    SIZE_PARAM: ClassVar[str] = "touch"
    NAP = 0.1

    def __init__(self, touch: int | str | None = None, seed: int = 1) -> None:
        super().__init__(size=touch, seed=seed)

    def step(self, vm: VM) -> int | None:
        n = super().step(vm)
        if n is None:
            time.sleep(self.NAP)
            return 0
        return n
