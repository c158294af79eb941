"""A guest that boots an operating system image: identical content across guests, the
paper's main source of shareable memory.

The "image" is real bytes: the installed Python standard library's source files and
extension modules, laid into guest memory file by file, each file starting on a page
boundary, the way a guest's page cache holds the files it has read. Every guest booting the
same image holds the same pages, though not at the same guest-physical addresses: the order
in which a guest reads its files (and so where each file lands) depends on the guest's
seed. After the image come the guest's private data (distinct in every guest) and pages the
guest OS zeroed. Once booted, the guest keeps working on its private data and now and then
reads its page cache."""

from __future__ import annotations

import functools
import random
import sysconfig
from pathlib import Path
from typing import ClassVar

from uvm._binding import ffi, lib
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_fraction, check_guarded, check_seed

BOOT_CHUNK = 256            # pages written per step while booting
OPS_PER_STEP = 4096


@functools.lru_cache(maxsize=4)
def image_files(max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """The image: (name, page-padded bytes) of stdlib files, in a fixed order, up to
    max_bytes in all."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")) + \
        sorted((stdlib / "lib-dynload").glob("*.so"))
    files: list[tuple[str, bytes]] = []
    total = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data:
            continue
        padded = data + bytes(-len(data) % PAGE_SIZE)
        if total + len(padded) > max_bytes:
            break
        files.append((str(path.relative_to(stdlib)), padded))
        total += len(padded)
    if not files:
        raise ValueError("image: no readable standard library files found for the OS image")
    return tuple(files)


class OSImage(Workload):
    """Boots `image` bytes of the OS image, `private` bytes of private data and `zeroed`
    bytes of zeroed pages into the VM, then works on its private data (one op = one page
    touched, a write with probability `write_fraction`) and reads its page cache."""

    kind: ClassVar[str] = "os-image"

    def __init__(self, image: int | str = "16MiB", private: int | str = "8MiB",
                 zeroed: int | str = "4MiB", seed: int = 1, write_fraction: float = 0.3) -> None:
        self.image_pages = parse_pages(image, "image")
        self.private_pages = parse_pages(private, "private")
        self.zeroed_pages = parse_pages(zeroed, "zeroed")
        self.seed = check_seed(seed)
        self.write_fraction = check_fraction(write_fraction, "write_fraction")
        self._boot: list[tuple[str, int, bytes | None]] = []
        self._rng = ffi.new("uint64_t[2]", [seed * 0x9E3779B97F4A7C15 % (1 << 64) | 1, 0])
        self._reading = False

    @property
    def pages(self) -> int:
        return self.image_pages + self.private_pages + self.zeroed_pages

    def start(self, vm: VM) -> None:
        if self.pages > vm.pages:
            raise ValueError(f"image: image + private + zeroed ({self.pages * PAGE_SIZE} bytes) "
                             f"do not fit in VM {vm.name!r} ({vm.size} bytes)")
        files = list(image_files(self.image_pages * PAGE_SIZE))
        random.Random(self.seed).shuffle(files)     # this guest's reading order
        ppn = 0
        for _, data in files:
            for off in range(0, len(data), BOOT_CHUNK * PAGE_SIZE):
                chunk = data[off:off + BOOT_CHUNK * PAGE_SIZE]
                self._boot.append(("copy", ppn, chunk))
                ppn += len(chunk) // PAGE_SIZE
        self.image_pages = ppn                      # what the image really filled
        for first in range(0, self.private_pages, BOOT_CHUNK):
            self._boot.append(("private", ppn + first, None))
        ppn += self.private_pages
        for first in range(0, self.zeroed_pages, BOOT_CHUNK):
            self._boot.append(("zero", ppn + first, None))
        self._boot.reverse()                        # popped from the end, in order

    def step(self, vm: VM) -> int | None:
        if self._boot:
            return self._boot_step(vm)
        self._reading = not self._reading
        if self._reading:                           # read the page cache
            return check_guarded(vm, lib.wl_touch(vm._base, self.image_pages, 1, 0.0,
                                                  OPS_PER_STEP // 8, self._rng))
        base = vm._base + self.image_pages * PAGE_SIZE
        return check_guarded(vm, lib.wl_touch(base, self.private_pages, 2, self.write_fraction,
                                              OPS_PER_STEP, self._rng))

    def _boot_step(self, vm: VM) -> int:
        n = self._boot_chunk(vm, *self._boot[-1])
        self._boot.pop()            # only now: `booted` must mean "all of it is in memory"
        return n

    def _boot_chunk(self, vm: VM, what: str, ppn: int, data: bytes | None) -> int:
        if what == "copy":
            assert data is not None
            vm.write(ppn * PAGE_SIZE, data)
            return len(data) // PAGE_SIZE
        end = self.image_pages + self.private_pages + (self.zeroed_pages if what == "zero" else 0)
        n = min(BOOT_CHUNK, end - ppn)
        if what == "private":
            return check_guarded(vm, lib.wl_fill(vm._base, ppn, n, self.seed + 1))
        vm.write(ppn * PAGE_SIZE, bytes(n * PAGE_SIZE))
        return n

    @property
    def booted(self) -> bool:
        return not self._boot
