"""The guest OS's page cache over its virtual disk: files are lists of disk blocks; a cached
block lives in a guest page; one LRU list (oldest first). Reads miss to the disk through a
bounce buffer; writes dirty the cached page and reach the disk when it is written back
(sync, or reclaim)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from uvm.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from uvm.guest.kernel import GuestOS


class File:
    """A file of the guest: `blocks[i]` is the disk block of its page i."""

    def __init__(self, name: str, blocks: list[int]) -> None:
        self.name = name
        self.blocks = blocks

    def __repr__(self) -> str:
        return f"<File {self.name!r} {len(self.blocks)} pages>"

    @property
    def pages(self) -> int:
        return len(self.blocks)


class CachePage:
    __slots__ = ("ppn", "dirty")

    def __init__(self, ppn: int) -> None:
        self.ppn = ppn
        self.dirty = False


class PageCache:
    def __init__(self, os: GuestOS) -> None:
        self.os = os
        self.pages: OrderedDict[tuple[File, int], CachePage] = OrderedDict()
        self.dirty = 0
        self.hits = 0
        self.misses = 0

    def create(self, name: str, pages: int, content: bytes | None = None) -> File:
        """Creates a file of `pages` pages on the disk, each holding `content` (default: a
        pattern naming the file and page), as if it had been written long ago."""
        return self._preloaded(name, [content if content is not None else file_page(name, i)
                                      for i in range(pages)])

    def create_data(self, name: str, data: bytes) -> File:
        """Creates a file holding `data` (its last page padded with zeros) on the disk, as
        if it had been written long ago."""
        pad = data + bytes(-len(data) % PAGE_SIZE)
        return self._preloaded(name, [pad[i:i + PAGE_SIZE] for i in range(0, len(pad), PAGE_SIZE)])

    def _preloaded(self, name: str, pages: list[bytes]) -> File:
        disk = self.os.disk
        blocks: list[int] = []
        try:
            for page in pages:
                blocks.append(disk.alloc())
                disk.preload(blocks[-1], page)
        except BaseException:               # DiskFull, DiskError: no file, no block taken
            for b in blocks:
                disk.free(b)
            raise
        return File(name, blocks)

    def allocate(self, name: str, pages: int) -> File:
        """Creates a file of `pages` blocks without writing them (a new file its creator
        is about to write whole, through the cache); DiskFull takes no block."""
        blocks: list[int] = []
        try:
            for _ in range(pages):
                blocks.append(self.os.disk.alloc())
        except BaseException:
            for b in blocks:
                self.os.disk.free(b)
            raise
        return File(name, blocks)

    def unlink(self, f: File) -> None:
        """Deletes f: its cached pages are dropped (dirty ones unwritten: the data is gone)
        and its blocks freed."""
        with self.os.lock:
            for index in range(f.pages):
                cp = self.pages.pop((f, index), None)
                if cp is not None:
                    self.dirty -= cp.dirty
                    self.os.free.append(cp.ppn)
            for b in f.blocks:
                self.os.disk.free(b)
            f.blocks = []

    def read_range(self, f: File, first: int, n: int) -> bytes:
        """Pages first..first+n-1 of f through the cache. The pages it misses are read as
        runs of consecutive blocks, one disk request per run (readahead), before any page
        is taken: a failed read leaves the cache as it was."""
        if n < 0 or not 0 <= first <= first + n <= f.pages:
            raise ValueError(f"index: pages [{first}, {first + n}) are not within {f!r}")
        with self.os.lock:
            out: list[bytes] = []
            missing: list[int] = []
            for index in range(first, first + n):
                cp = self.pages.get((f, index))
                if cp is None:
                    missing.append(index)
                    out.append(b"")
                else:
                    self.pages.move_to_end((f, index))
                    self.hits += 1
                    out.append(self.os.vm.read(cp.ppn * PAGE_SIZE, PAGE_SIZE))
            runs: list[list[int]] = []
            for index in missing:
                if runs and runs[-1][-1] == index - 1 and f.blocks[index] == f.blocks[index - 1] + 1:
                    runs[-1].append(index)
                else:
                    runs.append([index])
            data = [self.os.disk.read_run(f.blocks[run[0]], len(run)) for run in runs]
            filled: list[int] = []
            for run, blob in zip(runs, data):
                for k, index in enumerate(run):
                    page = blob[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                    self.misses += 1
                    filled.append(self.os.alloc_filled(page))
                    self.pages[(f, index)] = CachePage(filled[-1])
                    out[index - first] = page
            self.os.vm.io.dma(filled)       # the device's transfer into those pages
            return b"".join(out)

    def _page(self, f: File, index: int, whole: bool) -> CachePage:
        """The cached page of (f, index), read from the disk on a miss unless the caller
        overwrites it whole. Caller holds the OS lock."""
        if not 0 <= index < f.pages:
            raise ValueError(f"index: page {index} is outside {f!r}")
        key = (f, index)
        cp = self.pages.get(key)
        if cp is not None:
            self.pages.move_to_end(key)
            self.hits += 1
            return cp
        self.misses += 1
        # read before taking a page: a failed read leaves the cache as it was
        if whole:
            cp = CachePage(self.os.alloc_page())
        else:
            cp = CachePage(self.os.alloc_filled(self.os.disk.read(f.blocks[index])))
            self.os.vm.io.dma([cp.ppn])
        self.pages[key] = cp
        return cp

    def read(self, f: File, index: int) -> bytes:
        """Page `index` of f, through the cache."""
        with self.os.lock:
            return self.os.vm.read(self._page(f, index, False).ppn * PAGE_SIZE, PAGE_SIZE)

    def write(self, f: File, index: int, data: bytes, offset: int = 0) -> None:
        """Writes data at offset into page `index` of f, through the cache (a write-back cache)."""
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise ValueError(f"offset: [{offset}, {offset + len(data)}) is not within one page")
        with self.os.lock:
            cp = self._page(f, index, offset == 0 and len(data) == PAGE_SIZE)
            self.os.vm.write(cp.ppn * PAGE_SIZE + offset, data)
            if not cp.dirty:
                cp.dirty = True
                self.dirty += 1

    def _writeback(self, victims: list[tuple[tuple[File, int], CachePage]]) -> None:
        """Writes the pages to their blocks in one request; they stay dirty if it fails."""
        self.os.vm.io.dma([cp.ppn for _, cp in victims])
        self.os.disk.write([(f.blocks[i], self.os.vm.read(cp.ppn * PAGE_SIZE, PAGE_SIZE))
                            for (f, i), cp in victims])
        for _, cp in victims:
            cp.dirty = False
        self.dirty -= len(victims)

    def sync(self) -> int:
        """Writes every dirty page back (one request); returns how many."""
        with self.os.lock:
            victims = [(k, cp) for k, cp in self.pages.items() if cp.dirty]
            self._writeback(victims)
            return len(victims)

    def _drop(self, victims: list[tuple[tuple[File, int], CachePage]]) -> int:
        for key, cp in victims:
            del self.pages[key]
            self.os.free.append(cp.ppn)
        return len(victims)

    def drop_clean(self, n: int) -> int:
        """Drops up to n clean pages, least recently used first; returns how many."""
        victims: list[tuple[tuple[File, int], CachePage]] = []
        for key, cp in self.pages.items():
            if len(victims) == n:
                break
            if not cp.dirty:
                victims.append((key, cp))
        return self._drop(victims)

    def drop_dirty(self, n: int) -> int:
        """Writes back up to n dirty pages (least recently used first) and drops them."""
        victims = [(k, cp) for k, cp in self.pages.items() if cp.dirty][:n]
        self._writeback(victims)
        return self._drop(victims)


def file_page(name: str, index: int) -> bytes:
    """The initial content of page `index` of file `name`: a recognizable line, repeated."""
    line = f"{name}:{index:08d};".encode()
    return (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE]
