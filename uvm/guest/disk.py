"""The guest's virtual disk: a real file (unlinked, or private 0600 at a path of your
choosing) of 4 KiB blocks, with a latency model, so that guest I/O costs what a disk costs
rather than what the host's page cache costs. The guest OS keeps its files and its swap
area on it. Data moves through bounce buffers (bytes), never through guest addresses.

The file's space is reserved when the disk is made (fallocate, as the host's swap file is),
so a filesystem that fills later cannot fail a guest write; a disk that does not fit is a
ValueError naming `disk` at boot. A request that fails anyway (an I/O error, or a fault
injected with `inject_fault`) raises DiskError and changes nothing the guest OS relies on:
the OS keeps the pages it meant to write, and the blocks it meant to read."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Sequence

from uvm.errors import UvmError
from uvm.sizes import PAGE_SIZE, format_size

DEFAULT_LATENCY = 200e-6        # seconds per request (a fast SSD, or a disk with a cache)
DEFAULT_BANDWIDTH = 400e6       # bytes per second
# a disk that seeks, as the paper's servers had: a 7,200 rpm disk's average rotational delay
# (4.2 ms) plus a short seek, and its sequential transfer rate. What the file-server
# experiments boot their guests with (boot(disk_latency=HDD_LATENCY, ...)).
HDD_LATENCY = 5e-3
HDD_BANDWIDTH = 100e6

# inject_fault kinds: which requests fail, and with what errno
INJECTIONS = {"disk-write": ("write", errno.EIO), "disk-read": ("read", errno.EIO),
              "disk-full": ("write", errno.ENOSPC)}


class DiskFull(UvmError):
    """The guest's virtual disk has no free block left."""


class DiskError(UvmError):
    """A read or write request to a guest's virtual disk failed. Nothing was lost: the
    pages a write was for stay in guest memory (still dirty), the blocks a read was for
    stay on the disk; the operation may be retried."""

    def __init__(self, vm: str, op: str, err: int, where: str) -> None:
        super().__init__(f"VM {vm!r}: a {op} of the guest's virtual disk ({where}) failed: "
                         f"{os.strerror(err)}; nothing was lost (the guest keeps its pages)")
        self.vm = vm
        self.errno = err


def _open(size: int, field: str, where: str) -> int:
    """Opens the disk's file, `size` bytes with its space reserved: a new private file at
    `where` (field disk_file), or an unlinked one in directory `where` (field disk_dir);
    ValueError naming disk or `field` if it cannot be."""
    home = os.path.dirname(os.path.abspath(where)) if field == "disk_file" else where
    try:
        room = os.statvfs(home)
    except OSError as e:
        raise ValueError(f"{field}: {where!r}: {e.strerror}") from None
    free = room.f_bavail * room.f_frsize
    if size > free:
        raise ValueError(f"disk: a {format_size(size)} virtual disk does not fit in {home!r} "
                         f"({format_size(free)} free; make the disk smaller or choose another "
                         f"{field})")
    try:
        if field == "disk_file":
            fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            fd = os.open(where, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        raise ValueError(f"{field}: cannot create the virtual disk in {where!r}: {e.strerror}") from None
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.close(fd)
        if field == "disk_file":
            os.unlink(where)
        raise ValueError(f"disk: cannot reserve a {format_size(size)} virtual disk in {home!r}: "
                         f"{e.strerror} (make the disk smaller or choose another {field})") from None
    return fd


class VirtualDisk:
    """`blocks` blocks of PAGE_SIZE bytes, of VM `vm` (the name, for errors). Each request
    (a read or write of one or more blocks) sleeps latency + bytes / bandwidth."""

    def __init__(self, blocks: int, directory: str | None = None, path: str | None = None,
                 latency: float = DEFAULT_LATENCY, bandwidth: float = DEFAULT_BANDWIDTH,
                 vm: str = "?") -> None:
        if latency < 0:
            raise ValueError(f"disk_latency: must be >= 0 seconds, got {latency!r}")
        if bandwidth <= 0:
            raise ValueError(f"disk_bandwidth: must be > 0 bytes per second, got {bandwidth!r}")
        self.blocks = blocks
        self.latency = latency
        self.bandwidth = bandwidth
        self.path = path
        self.vm = vm
        if path is not None:
            self.fd, self.where = _open(blocks * PAGE_SIZE, "disk_file", path), path
        else:
            directory = directory or os.environ.get("TMPDIR") or "/var/tmp"
            self.fd = _open(blocks * PAGE_SIZE, "disk_dir", directory)
            self.where = f"an unlinked file in {directory}"
        st = os.fstat(self.fd)
        self._ident = (st.st_dev, st.st_ino)
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._io = threading.Lock()     # one syscall at a time, and close waits for it
        self._inject = {kind: 0 for kind in INJECTIONS}
        self.reads = 0          # requests
        self.writes = 0
        self.errors = 0         # requests that failed
        self.used = 0           # blocks allocated

    def inject_fault(self, kind: str, count: int = 1) -> None:
        """Fault injection for tests and labs: 'disk-write' / 'disk-read' make the next
        `count` write / read requests fail with EIO, 'disk-full' the next `count` writes
        fail with ENOSPC (as if the filesystem had filled despite the reservation)."""
        if kind not in INJECTIONS:
            raise ValueError(f"kind: must be one of {sorted(INJECTIONS)}, got {kind!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count: expected an integer >= 0, got {count!r}")
        with self._lock:
            self._inject[kind] = count

    def _injected(self, op: str) -> int:
        """The errno an injected fault gives this `op` request, or 0 (consumes one)."""
        with self._lock:
            for kind, (what, err) in INJECTIONS.items():
                if what == op and self._inject[kind] > 0:
                    self._inject[kind] -= 1
                    return err
        return 0

    def _fail(self, op: str, err: int) -> DiskError:
        self.errors += 1
        return DiskError(self.vm, op, err, self.where)

    def free_blocks(self) -> int:
        """Blocks not allocated (alloc would succeed that many times)."""
        return self.blocks - self.used

    def alloc(self) -> int:
        """Returns a free block; DiskFull if there is none."""
        with self._lock:
            if self._free:
                b = self._free.pop()
            elif self._next < self.blocks:
                b, self._next = self._next, self._next + 1
            else:
                raise DiskFull(f"VM {self.vm!r}: the guest's virtual disk is full "
                               f"({self.blocks} blocks)")
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
        """Reads one block (one request); DiskError if it fails."""
        return self.read_run(block, 1)

    def read_run(self, block: int, n: int) -> bytes:
        """Reads n consecutive blocks from `block` in one request (one positioning delay,
        then the transfer: a readahead cluster); DiskError if it fails."""
        self._wait(n)
        self.reads += 1
        err = self._injected("read")
        if not err:
            try:
                with self._io:
                    data = os.pread(self._fd(), n * PAGE_SIZE, block * PAGE_SIZE)
                if len(data) == n * PAGE_SIZE:
                    return data
                err = errno.EIO             # short read: the file is not what we made
            except OSError as e:
                err = e.errno or errno.EIO
        raise self._fail("read", err)

    def _fd(self) -> int:
        """The file's descriptor, for a syscall made under the I/O lock: EBADF once the
        disk is closed (never a number the process has since given to another file)."""
        if self.fd < 0:
            raise OSError(errno.EBADF, "the virtual disk is closed (its VM was destroyed)")
        return self.fd

    def write(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Writes blocks in one request (the OS clusters its writes); DiskError if any
        fails (then some of the blocks may hold the new data, some the old)."""
        if not writes:
            return
        self._wait(len(writes))
        self.writes += 1
        err = self._injected("write")
        if not err:
            err = self._pwrite(writes)
        if err:
            raise self._fail("write", err)

    def _pwrite(self, writes: Sequence[tuple[int, bytes]]) -> int:
        """Writes the blocks; returns 0, or the errno of the first that failed."""
        for block, data in writes:
            try:
                with self._io:
                    if os.pwrite(self._fd(), data, block * PAGE_SIZE) != len(data):
                        return errno.ENOSPC     # a short write: no room for the rest
            except OSError as e:
                return e.errno or errno.EIO
        return 0

    def preload(self, block: int, data: bytes) -> None:
        """Puts data on the disk as if it had always been there (no latency, no fault
        injection): file images. DiskError if the write fails."""
        err = self._pwrite([(block, data)])
        if err:
            raise self._fail("write", err)

    def close(self) -> None:
        """Closes the disk and removes its file at `path`, if it is still the one made
        here (someone may have replaced it since: that file is not ours to remove)."""
        with self._io:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            if self.path is not None:
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    return
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.path)
