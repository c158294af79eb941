"""The toy guest OS's memory manager: a page allocator over the VM's PPNs, pinning, and
reclaim as an OS does it when free pages run short: clean page-cache pages first (least
recently used first), then the least recently used process pages to the guest's own swap
area on its virtual disk, then dirty cache pages (written back, then dropped).

Its bookkeeping (free list, LRU lists, page tables) is ordinary Python objects; every page it
hands out is guest memory. One lock guards it all; a guest thread holds it while it touches
the pages it faulted in, so reclaim (on another thread, e.g. the balloon driver's) never
takes a page out from under a running access.

Every path that moves a page between memory and the virtual disk changes the bookkeeping
only after the disk request succeeded: a swap-out first takes blocks and writes, and only
then marks the pages swapped and frees them; a swap-in or cache miss first reads, then takes
a page. So a request that fails (DiskError) leaves everything as it was, and the error goes
to whoever needed the page: a workload's step, or the balloon driver, which survives it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from uvm.errors import UvmError
from uvm.guest.disk import DiskFull, VirtualDisk
from uvm.guest.pagecache import File, PageCache
from uvm.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from uvm.guest.process import Process
    from uvm.vm import VM

RECLAIM_BATCH = 32      # pages reclaimed at least, once reclaim runs (amortizes disk writes)
ZERO_PAGE = bytes(PAGE_SIZE)
PAGE_STRUCT = 64        # bytes of the page-frame array per PPN (Linux's struct page)

# Why a page-frame array. A real OS sizes some of its structures by the memory it was
# configured with, not by what it may use: Linux's mem_map holds a 64-byte struct page for
# every PPN, allocated at boot and never freed. That is why the paper's ballooned guest ran a
# little slower than one configured with the same memory: the ballooned guest keeps the
# array of the larger configuration (and the balloon driver's own list of its PPNs) out of
# what its balloon left it. The toy OS does the same: at boot it takes
# ceil(pages * page_struct / PAGE_SIZE) pages from its allocator for `memmap`, writes an
# entry per PPN into them (so they are real, resident, unshareable pages), and never frees
# them.


class GuestOutOfMemory(UvmError):
    """The guest OS could free no page: everything left is pinned or busy."""


class GuestOS:
    """The memory manager of the toy OS running in `vm`, with a virtual disk of `disk`
    blocks (see VirtualDisk) for files and swap."""

    def __init__(self, vm: VM, disk: VirtualDisk, page_struct: int = PAGE_STRUCT) -> None:
        if isinstance(page_struct, bool) or not isinstance(page_struct, int) or \
                not 0 <= page_struct <= PAGE_SIZE:
            raise ValueError(f"page_struct: must be 0..{PAGE_SIZE} bytes per page, got {page_struct!r}")
        self.vm = vm
        self.disk = disk
        self.lock = threading.RLock()
        self.free: list[int] = list(range(vm.pages - 1, -1, -1))    # pops low PPNs first
        self.memmap = self._memmap(page_struct)
        self.pinned: set[int] = set()
        self.busy: set[int] = set()         # faulted in for the access in progress
        self.anon_lru: OrderedDict[tuple[Process, int], int] = OrderedDict()   # oldest first
        self.cache = PageCache(self)
        self.processes: list[Process] = []
        self.swapins = 0
        self.swapouts = 0
        self.swap_used = 0
        self.reclaimed = 0          # pages freed by reclaim, all kinds
        self.double_paging = 0      # guest swap-outs of pages the host had swapped out

    def _memmap(self, page_struct: int) -> list[int]:
        """Takes the page-frame array's pages (the lowest PPNs) and writes an entry of
        `page_struct` bytes for every PPN into them; returns their PPNs."""
        n = -(-self.vm.pages * page_struct // PAGE_SIZE)
        if n >= self.vm.pages:
            raise ValueError(f"page_struct: a {page_struct}-byte entry per page leaves VM "
                             f"{self.vm.name!r} no memory")
        pages = [self.free.pop() for _ in range(n)]
        if n:
            entry = memoryview(bytearray(n * PAGE_SIZE))
            k = min(8, page_struct)         # flags and the PPN, as the entry's first word
            for ppn in range(n * PAGE_SIZE // page_struct):
                entry[ppn * page_struct:ppn * page_struct + k] = (ppn << 12 | 1).to_bytes(8, "little")[:k]
            self.vm.write(pages[0] * PAGE_SIZE, bytes(entry))     # PPNs 0..n-1: contiguous
        return pages

    def spawn(self, name: str) -> Process:
        """Starts a toy process (an empty address space; see Process.alloc)."""
        from uvm.guest.process import Process

        return Process(self, name)

    def create_file(self, name: str, pages: int, content: bytes | None = None) -> File:
        """Creates a file on the virtual disk (see PageCache.create)."""
        return self.cache.create(name, pages, content)

    def shutdown(self) -> None:
        """Closes the virtual disk (the VM is going away)."""
        self.disk.close()

    # -- allocation -------------------------------------------------------------------

    def alloc(self, n: int, pin: bool = False) -> list[int]:
        """Up to n free pages, reclaiming first if there are too few (fewer only when
        nothing more can be reclaimed). Pinned pages are never reclaimed."""
        with self.lock:
            if len(self.free) < n:
                self.reclaim(n - len(self.free))
            pages = [self.free.pop() for _ in range(min(n, len(self.free)))]
            if pin:
                self.pinned.update(pages)
            return pages

    def alloc_page(self) -> int:
        """One page, or GuestOutOfMemory."""
        pages = self.alloc(1)
        if not pages:
            full = ", its swap area is full" if not self.disk.free_blocks() else ""
            raise GuestOutOfMemory(f"VM {self.vm.name!r}: the guest OS has no page left to "
                                   f"reclaim ({len(self.pinned)} pinned{full})")
        return pages[0]

    def alloc_filled(self, data: bytes) -> int:
        """One page holding `data` (a bounce buffer), or GuestOutOfMemory; if the copy fails
        (the VM is stopped) the page goes back to the free list."""
        with self.lock:
            ppn = self.alloc_page()
            try:
                self.vm.write(ppn * PAGE_SIZE, data)
            except BaseException:
                self.free.append(ppn)
                raise
            return ppn

    def release(self, ppns: list[int]) -> None:
        """Gives pages back to the free list (unpinning them)."""
        with self.lock:
            self.pinned.difference_update(ppns)
            self.free.extend(ppns)

    # -- reclaim ----------------------------------------------------------------------

    def reclaim(self, need: int) -> int:
        """Frees at least `need` pages if it can (RECLAIM_BATCH at least); returns how many.
        A disk request that fails raises DiskError after the pages freed so far (clean
        cache pages: no I/O) went to the free list; the pages it was for stay as they were."""
        with self.lock:
            want = max(need, RECLAIM_BATCH)
            freed = 0
            try:
                freed = self.cache.drop_clean(want)
                if freed < want:
                    freed += self._swap_out(want - freed)
                if freed < want:
                    freed += self.cache.drop_dirty(want - freed)
            finally:
                self.reclaimed += freed
            return freed

    def _swap_out(self, n: int) -> int:
        """Writes up to n least recently used process pages to the guest's swap area in one
        request (fewer if the swap area has fewer free blocks); returns how many pages it
        freed. Transactional: the pages change owner only once the write succeeded; if it
        fails (DiskError) they stay resident, on the LRU list, and the blocks are freed."""
        victims: list[tuple[tuple[Process, int], int]] = []
        for key, ppn in self.anon_lru.items():
            if len(victims) == n:
                break
            if ppn not in self.busy:
                victims.append((key, ppn))
        blocks: list[int] = []
        try:
            for _ in victims:
                blocks.append(self.disk.alloc())
        except DiskFull:
            del victims[len(blocks):]       # the swap area is full: swap what fits
        try:
            writes, double = [], 0
            for block, (_, ppn) in zip(blocks, victims):
                # a measurement probe, not something a guest could know: was this page
                # swapped out by the host? If so, reading it now pages it in only to write
                # it out again
                double += self.vm.page_state(ppn) == "swapped"
                writes.append((block, self.vm.read(ppn * PAGE_SIZE, PAGE_SIZE)))
            self.vm.io.dma([ppn for _, ppn in victims])
            self.disk.write(writes)
        except BaseException:
            for block in blocks:
                self.disk.free(block)
            raise
        for ((proc, vpn), ppn), block in zip(victims, blocks):
            proc.swapped_out(vpn, block)
            del self.anon_lru[(proc, vpn)]
        self.free.extend(ppn for _, ppn in victims)
        self.double_paging += double
        self.swapouts += len(victims)
        self.swap_used += len(victims)
        return len(victims)

    def swap_in(self, block: int) -> int:
        """Reads a swapped process page back into a new page; returns its PPN. If the read,
        the allocation or the copy fails, the block keeps the page and no page is taken."""
        with self.lock:
            ppn = self.alloc_filled(self.disk.read(block))
            self.vm.io.dma([ppn])
            self.disk.free(block)
            self.swapins += 1
            self.swap_used -= 1
            return ppn

    def stats(self) -> dict[str, int]:
        """Guest-side counters (the guest's view: free pages, page cache, its own swap).
        Read without the OS lock, which is held across guest disk I/O: a stats reader (the
        live view, the memory scheduler) must never wait for the guest's disk. Each counter
        is exact; together they may straddle one guest operation."""
        return {"guest_free": len(self.free), "guest_cache": len(self.cache.pages),
                "guest_cache_dirty": self.cache.dirty, "guest_process": len(self.anon_lru),
                "guest_pinned": len(self.pinned), "guest_memmap": len(self.memmap),
                "guest_swapins": self.swapins,
                "guest_swapouts": self.swapouts, "guest_swap_used": self.swap_used,
                "guest_cache_hits": self.cache.hits, "guest_cache_misses": self.cache.misses,
                "guest_reclaimed": self.reclaimed, "guest_double_paging": self.double_paging,
                "guest_disk_reads": self.disk.reads, "guest_disk_writes": self.disk.writes,
                "guest_disk_errors": self.disk.errors}
