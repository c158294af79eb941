"""I/O page remapping (paper section 7): devices reach only low machine memory, so guest
I/O into a page backed by a high frame goes through a low bounce frame, a copy; the host
counts the copies per page and remaps the hot ones into low frames.

A machine made with `low_memory` (Machine(low_memory="8MiB")) reserves that many frames at
the bottom of machine memory (cext/lowmem.c); every VM's home frames lie above them, so
every page starts high. `vm.io` is the host's end of the VM's emulated disk controller: the
guest OS tells it which PPNs each disk request reads into or writes from (`dma`). For each
page that is not low it charges a bounce copy: counted (per page, and in all) and charged
`bounce_cost` seconds (the copy, and the bounce frame's management, on the I/O path). With
`remap` on, a page whose copies exceed `threshold` is moved into a free low frame
(vm_lowmem_remap: its content copied there, its guest address re-mapped, its home frame
freed; the guest sees the same bytes at the same PPN), and its later I/O is direct. A
machine without low memory has none of this: every frame is reachable, nothing bounces.

Low pages are held in memory (eviction and sharing pass them by) until the VM balloons
them or goes; the frame budget counts them."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from uvm._binding import lib

if TYPE_CHECKING:
    from uvm.vm import VM

DEFAULT_BOUNCE_COST = 20e-6     # seconds per bounce copy
DEFAULT_THRESHOLD = 8           # copies after which a page is hot


class IoRemap:
    """The host's view of one VM's disk I/O (`vm.io`): bounce copies and remapping."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.remap = True
        self._threshold = DEFAULT_THRESHOLD
        self._bounce_cost = DEFAULT_BOUNCE_COST
        self.copies: Counter[int] = Counter()   # bounce copies per PPN
        self.bounces = 0        # bounce copies in all
        self.direct = 0         # page transfers that needed none (low pages)
        self.remapped = 0       # pages moved into low frames
        self.no_room = 0        # hot pages left high: no low frame was free
        self._lock = threading.Lock()

    @property
    def threshold(self) -> int:
        """Copies after which a page is remapped (settable, >= 0)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"threshold: expected an integer >= 0, got {value!r}")
        self._threshold = value

    @property
    def bounce_cost(self) -> float:
        """Seconds charged per bounce copy (settable, 0..1)."""
        return self._bounce_cost

    @bounce_cost.setter
    def bounce_cost(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"bounce_cost: must be a number of seconds in [0, 1], got {value!r}")
        self._bounce_cost = float(value)

    def dma(self, ppns: Iterable[int]) -> int:
        """The device transfers these pages (a disk request's): each high page costs a
        bounce copy, and hot ones are remapped. Returns the bounce copies charged."""
        if not self.vm.machine.low_frames:
            return 0
        bounced = 0
        with self._lock:
            for ppn in ppns:
                if self.vm.page_state(ppn) == "low":
                    self.direct += 1
                    continue
                bounced += 1
                self.copies[ppn] += 1
                if self.remap and self.copies[ppn] > self._threshold:
                    self._move(ppn)
            self.bounces += bounced
        if bounced and self._bounce_cost:
            time.sleep(bounced * self._bounce_cost)
        return bounced

    def _move(self, ppn: int) -> None:
        """Moves hot page ppn into a low frame if one is free (counted either way)."""
        with self.vm._core() as m:
            r = lib.vm_lowmem_remap(m, self.vm._slot, ppn)
        if r == 1:
            self.remapped += 1
        elif r == 0:
            self.no_room += 1
        elif r != -errno.EAGAIN:            # not resident now: it stays high, tried again later
            raise OSError(-r, f"VM {self.vm.name!r}: remapping page {ppn} into low memory "
                              f"failed: {os.strerror(-r)}")

    def stats(self) -> dict[str, int]:
        """io_bounces, io_direct, io_remapped, io_no_room, and io_hot (pages copied more
        than `threshold` times)."""
        return {"io_bounces": self.bounces, "io_direct": self.direct,
                "io_remapped": self.remapped, "io_no_room": self.no_room,
                "io_hot": sum(c > self._threshold for c in self.copies.values())}
