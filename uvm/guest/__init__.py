"""The toy guest OS a VM can boot: a page allocator over its PPNs with its own reclaim, a
page cache over a virtual disk, guest-level swap, toy processes, and the balloon driver.

    vm = m.create_vm("g", memory="64MiB")
    gos = uvm.guest.boot(vm)                 # vm.os is gos from now on
    p = gos.spawn("worker")
    vpns = p.alloc(1000)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uvm.balloon import DEFAULT_PERIOD, BalloonDriver, check_period
from uvm.guest.disk import DEFAULT_BANDWIDTH, DEFAULT_LATENCY, DiskError, DiskFull, VirtualDisk
from uvm.guest.kernel import PAGE_STRUCT, GuestOS, GuestOutOfMemory
from uvm.guest.pagecache import File
from uvm.guest.process import Process
from uvm.sizes import parse_pages

if TYPE_CHECKING:
    from uvm.vm import VM

__all__ = ["boot", "GuestOS", "GuestOutOfMemory", "Process", "File", "VirtualDisk", "DiskFull",
           "DiskError"]


def boot(vm: VM, *, disk: int | str | None = None, disk_dir: str | None = None,
         disk_file: str | None = None, disk_latency: float = DEFAULT_LATENCY,
         disk_bandwidth: float = DEFAULT_BANDWIDTH, balloon: bool = True,
         balloon_period: float = DEFAULT_PERIOD, page_struct: int = PAGE_STRUCT) -> GuestOS:
    """Boots the toy OS in vm (vm.os), with a virtual disk of `disk` bytes (default: twice
    the VM's memory, for files and swap): an unlinked file in `disk_dir` ($TMPDIR), or a new
    private (0600) file at `disk_file`, removed when the VM goes. With balloon=True (the
    default) the balloon driver starts, polling vm.balloon every `balloon_period` seconds;
    with balloon=False the guest has none and the host must page it. The disk's space is
    reserved now: a disk that does not fit is a ValueError naming `disk`. The OS takes a
    page-frame array of `page_struct` bytes per PPN (default 64, as Linux's struct page; 0:
    none) from its memory at boot: a guest's overhead grows with its configured memory."""
    if vm.os is not None:
        raise ValueError(f"vm: VM {vm.name!r} has already booted its OS")
    check_period(balloon_period)
    blocks = 2 * vm.pages if disk is None else parse_pages(disk, "disk")
    vdisk = VirtualDisk(blocks, disk_dir, disk_file, disk_latency, disk_bandwidth, vm.name)
    try:
        gos = GuestOS(vm, vdisk, page_struct)
    except BaseException:
        vdisk.close()
        raise
    vm._attach_os(gos)
    if balloon:
        BalloonDriver(gos, vm.balloon, balloon_period)
    return gos
