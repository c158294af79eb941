"""The guest's virtual disk: a real file (unlinked, or private 0600 at a path of your
choosing) of 4 KiB blocks, with a latency model, so that guest I/O costs what a disk costs
rather than what the host's page cache costs. The guest OS keeps its files and its swap
area on it. Data moves through bounce buffers (bytes), never through guest addresses."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from uvm.errors import UvmError
from uvm.sizes import PAGE_SIZE

DEFAULT_LATENCY = 200e-6        # seconds per request (a fast SSD, or a disk with a cache)
DEFAULT_BANDWIDTH = 400e6       # bytes per second


class DiskFull(UvmError):
    """The guest's virtual disk has no free block left."""


class VirtualDisk:
    """`blocks` blocks of PAGE_SIZE bytes. Each request (a read or write of one or more
    blocks) sleeps latency + bytes / bandwidth."""

    def __init__(self, blocks: int, directory: str | None = None, path: str | None = None,
                 latency: float = DEFAULT_LATENCY, bandwidth: float = DEFAULT_BANDWIDTH) -> None:
        if latency < 0:
            raise ValueError(f"disk_latency: must be >= 0 seconds, got {latency!r}")
        if bandwidth <= 0:
            raise ValueError(f"disk_bandwidth: must be > 0 bytes per second, got {bandwidth!r}")
        self.blocks = blocks
        self.latency = latency
        self.bandwidth = bandwidth
        self.path = path
        if path is not None:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            where = directory or os.environ.get("TMPDIR", "/var/tmp")
            self.fd = os.open(where, os.O_TMPFILE | os.O_RDWR, 0o600)
        os.ftruncate(self.fd, blocks * PAGE_SIZE)
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self.reads = 0          # requests
        self.writes = 0
        self.used = 0           # blocks allocated

    def alloc(self) -> int:
        """Returns a free block; DiskFull if there is none."""
        with self._lock:
            if self._free:
                b = self._free.pop()
            elif self._next < self.blocks:
                b, self._next = self._next, self._next + 1
            else:
                raise DiskFull(f"the guest's virtual disk is full ({self.blocks} blocks)")
            self.used += 1
            return b

    def free(self, block: int) -> None:
        with self._lock:
            self._free.append(block)
            self.used -= 1

    def _wait(self, nblocks: int) -> None:
        delay = self.latency + nblocks * PAGE_SIZE / self.bandwidth
        if delay > 0:
            time.sleep(delay)

    def read(self, block: int) -> bytes:
        """Reads one block (one request)."""
        self._wait(1)
        self.reads += 1
        return os.pread(self.fd, PAGE_SIZE, block * PAGE_SIZE)

    def write(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Writes blocks in one request (the OS clusters its writes)."""
        if not writes:
            return
        self._wait(len(writes))
        self.writes += 1
        for block, data in writes:
            os.pwrite(self.fd, data, block * PAGE_SIZE)

    def preload(self, block: int, data: bytes) -> None:
        """Puts data on the disk as if it had always been there (no latency): file images."""
        os.pwrite(self.fd, data, block * PAGE_SIZE)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.path is not None:
                os.unlink(self.path)
