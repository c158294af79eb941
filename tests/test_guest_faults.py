"""Faults of the guest OS's virtual disk: its space is reserved at boot (a disk that does not
fit is a clear error naming `disk`), and every guest I/O path is transactional: a failed
write leaves the pages where they were (resident, on the LRU list, dirty), a failed read
leaves the block; the error reaches the workload naming the VM and the disk, the balloon
driver survives it, and once the disk works again every byte is there."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import uvm.guest
from uvm.guest import DiskError, GuestOutOfMemory
from workloads import GuestChecked

PG = 4096
FAST = 0.02


def content(tag: str, v: int) -> bytes:
    line = f"{tag}:{v};".encode()
    return (line * (PG // len(line) + 1))[:PG]


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def fds_under(path: Path) -> list[str]:
    """This process's open files under path (the disk's file is unlinked: '(deleted)')."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (a real filesystem that fills), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the fault-injection tests cover the rest)")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_disk_that_does_not_fit_its_filesystem_fails_at_boot(small_tmpfs: Path, make_machine) -> None:  # type: ignore[no-untyped-def]
    """The issue's reproducer: a 32 MiB guest (a 64 MiB disk by default) with its disk on an
    8 MiB tmpfs holding a 3 MiB file. It used to boot, and lose pages when the tmpfs filled
    under the guest's swap-out; now the space is reserved at boot, which says why it cannot."""
    (small_tmpfs / "other").write_bytes(b"x" * (3 << 20))
    m = make_machine("64MiB")
    vm = m.create_vm("g", memory="32MiB")
    with pytest.raises(ValueError, match=r"^disk: a 64\.0 MiB virtual disk does not fit in .*small.* "
                                         r"\(5\.0 MiB free; .*disk_dir\)"):
        uvm.guest.boot(vm, disk_dir=str(small_tmpfs))
    assert vm.os is None and fds_under(small_tmpfs) == []
    # 4 MiB fits next to the file, reserved at once: filling the filesystem afterwards
    # (another program's file takes the rest) cannot fail a guest write
    gos = uvm.guest.boot(vm, disk="4MiB", disk_dir=str(small_tmpfs), disk_latency=0)
    with pytest.raises(OSError, match="No space left"):
        with open(small_tmpfs / "more", "wb") as f:
            f.write(b"y" * (2 << 20))
    assert os.statvfs(small_tmpfs).f_bavail == 0
    q = gos.spawn("q")
    for v in q.alloc(1024):
        q.write(v, content("q", v))
    p = gos.spawn("p")
    written = []
    with pytest.raises(GuestOutOfMemory, match="its swap area is full"):
        for v in p.alloc(12000):            # 47 MiB through 32 MiB and a 4 MiB swap area
            p.write(v, content("t", v))
            written.append(v)
    assert len(written) >= 8192 - 64 - len(gos.memmap)      # 128 pages: the page-frame array
    assert gos.disk.errors == 0 and vm.stats()["guest_swapouts"] >= 1024 - 32
    q.exit()                                # room to swap p's pages in again
    assert [p.read(v) for v in written] == [content("t", v) for v in written]
    m.destroy_vm(vm)
    assert fds_under(small_tmpfs) == []


@pytest.mark.parametrize("disk, reason", [(2**63 - 1, r".* is too large \(at most 1.0 TiB\)"),
                                          ("100TiB", r".* is too large \(at most 1.0 TiB\)"),
                                          ("900GiB", r"a .* virtual disk does not fit in")])
def test_absurd_disk_sizes_are_named(make_machine, tmp_path: Path, disk: object, reason: str) -> None:  # type: ignore[no-untyped-def]
    """Beyond the size parser's bound (the MPN space) or beyond the filesystem's free space:
    one line naming disk, and nothing half-booted."""
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")
    with pytest.raises(ValueError, match=rf"^disk: {reason}"):
        uvm.guest.boot(vm, disk=disk, disk_dir=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^disk_dir: .*nowhere.*No such file"):
        uvm.guest.boot(vm, disk_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"^disk_file: cannot create .*File exists"):
        uvm.guest.boot(vm, disk_file=str(tmp_path))
    with pytest.raises(ValueError, match=r"^balloon_period: "):
        uvm.guest.boot(vm, disk_dir=str(tmp_path), balloon_period=float("nan"))
    assert vm.os is None
    uvm.guest.boot(vm, disk_dir=str(tmp_path))             # and nothing half-booted


def test_failed_swap_writes_leave_the_pages_resident_and_lose_nothing(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")                    # 256 pages
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    p = gos.spawn("p")
    vpns = p.alloc(600)
    for v in vpns[:256 - 4]:                                 # every page in use (4: memmap)
        p.write(v, content("w", v))
    for kind, err in (("disk-full", "No space left on device"), ("disk-write", "Input/output error")):
        before = (dict(p.resident), dict(p.swap), list(gos.anon_lru), gos.disk.used, vm.stats())
        gos.disk.inject_fault(kind, 1)
        with pytest.raises(DiskError, match=rf"^VM 'g': a write of the guest's virtual disk \(an "
                                            rf"unlinked file in {tmp_path}\) failed: {err}; nothing was lost"):
            p.write(252, content("w", 252))                  # needs a page: reclaim swaps out
        after = vm.stats()
        assert (p.resident, p.swap, list(gos.anon_lru), gos.disk.used) == before[:4]
        assert after["guest_swapouts"] == before[4]["guest_swapouts"]
        assert after["guest_disk_errors"] == before[4]["guest_disk_errors"] + 1
    for v in vpns[250:]:                                     # the disk works again
        p.write(v, content("w", v))
    assert vm.stats()["guest_swap_used"] >= 600 - 256
    assert [p.read(v) for v in vpns] == [content("w", v) for v in vpns]


def test_failed_reads_keep_the_block_and_take_no_page(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    p = gos.spawn("p")
    vpns = p.alloc(400)
    for v in vpns:
        p.write(v, content("r", v))
    swapped = sorted(p.swap)
    assert len(swapped) > 100
    f = gos.create_file("data", 20)
    state = (dict(p.swap), gos.disk.used, len(gos.free), dict(gos.cache.pages))
    gos.disk.inject_fault("disk-read", 2)
    with pytest.raises(DiskError, match="a read of the guest's virtual disk"):
        p.read(swapped[0])                                   # swap-in
    with pytest.raises(DiskError, match="a read of the guest's virtual disk"):
        gos.cache.read(f, 3)                                 # page cache miss
    assert (p.swap, gos.disk.used, len(gos.free), gos.cache.pages) == state
    assert p.read(swapped[0]) == content("r", swapped[0])
    assert gos.cache.read(f, 3).startswith(b"data:00000003;")
    assert [p.read(v) for v in vpns] == [content("r", v) for v in vpns]


def test_failed_writeback_keeps_cache_pages_dirty(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="512KiB")                  # 128 pages
    gos = uvm.guest.boot(vm, disk="4MiB", disk_dir=str(tmp_path), disk_latency=0)
    f = gos.create_file("log", 100)
    for i in range(100):
        gos.cache.write(f, i, b"new %d " % i, offset=8)
    gos.disk.inject_fault("disk-write", 1)
    with pytest.raises(DiskError):
        gos.cache.sync()
    assert gos.cache.dirty == 100 and all(cp.dirty for cp in gos.cache.pages.values())
    gos.disk.inject_fault("disk-full", 1)
    q = gos.spawn("q")                                       # reclaim must write them back
    with pytest.raises(DiskError):
        for v in q.alloc(100):
            q.write(v, b"q" * PG)
    assert gos.cache.dirty == 100
    for v in q.alloc(100):
        q.write(v, b"q" * PG)
    for i in range(100):
        page = gos.cache.read(f, i)
        assert page[:8] == (b"log:%08d;" % i)[:8]          # the rest came from the disk
        assert page[8:8 + len(b"new %d " % i)] == b"new %d " % i


def test_a_full_swap_area_swaps_what_fits_and_loses_nothing(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The virtual disk's blocks run out in the middle of a swap-out batch: the pages that
    got a block go, the others stay (it used to raise DiskFull with them marked swapped)."""
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")                    # 256 pages
    gos = uvm.guest.boot(vm, disk="1000KiB", disk_dir=str(tmp_path), disk_latency=0)   # 250 blocks
    f = gos.create_file("f", 10)
    with pytest.raises(uvm.guest.DiskFull, match="VM 'g'"):
        gos.create_file("too-big", 300)
    assert gos.disk.used == 10                               # the failed file took no block
    q = gos.spawn("q")
    for v in q.alloc(64):
        q.write(v, content("q", v))
    p = gos.spawn("p")
    written = []
    with pytest.raises(GuestOutOfMemory, match="its swap area is full"):
        for v in p.alloc(1000):
            p.write(v, content("s", v))
            written.append(v)
    assert len(written) >= 256 + 240 - 64 - 32 and gos.disk.used == 250
    q.exit()                                                 # room to swap p's pages in
    assert [p.read(v) for v in written] == [content("s", v) for v in written]
    assert gos.cache.read(f, 9).startswith(b"f:00000009;")


@pytest.mark.slow
def test_full_disk_under_the_balloon_loses_nothing_and_the_driver_survives(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's scenario with the full filesystem injected: a 32 MiB guest running
    GuestChecked(20MiB), its balloon's target set to the maximum while every disk write
    fails with ENOSPC. The driver keeps running and reports the errors, a process that
    needs memory gets the error, and once space frees up the balloon reaches its target
    and every byte is still there."""
    m = make_machine("64MiB")
    vm = m.create_vm("g", memory="32MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    checked = GuestChecked(size="20MiB", seed=5)
    run = vm.run(checked)
    wait_for(lambda: checked.written)
    gos.disk.inject_fault("disk-full", 10**9)               # the filesystem is full
    vm.balloon.target = vm.balloon.max_pages
    driver = vm.balloon.driver
    assert driver is not None
    wait_for(lambda: vm.stats()["balloon_errors"] >= 2)
    st = vm.stats()
    assert driver.running and driver.error is None
    assert "No space left on device" in st["balloon_error"] and "VM 'g'" in st["balloon_error"]
    assert 0 < vm.balloon.size < vm.balloon.max_pages and st["guest_swapouts"] == 0
    hungry = vm.run(GuestChecked(size="4MiB", seed=6))       # needs pages the guest must swap for
    with pytest.raises(DiskError, match=r"^VM 'g': a write of the guest's virtual disk .* No space left"):
        hungry.join(30)
    assert not run.done
    gos.disk.inject_fault("disk-full", 0)                    # space frees up
    wait_for(lambda: vm.balloon.size == vm.balloon.max_pages)
    assert vm.stats()["guest_swapouts"] > 0 and driver.running
    run.stop()
    assert run.join(30) > 0                                  # re-raises a content mismatch
    checked.verify_all()
    vm.balloon.target = 0
    wait_for(lambda: vm.balloon.size == 0)
    checked.verify_all()
    m.check()


def test_guest_disk_io_after_its_vm_is_gone_touches_no_other_file(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A guest OS object outliving its VM (a lab's thread still holds it) must not read or
    write through a descriptor number the process has since given to another VM's disk."""
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    old_fd = gos.disk.fd
    m.destroy_vm(vm)
    other = m.create_vm("h", memory="1MiB")
    ogos = uvm.guest.boot(other, disk_dir=str(tmp_path), disk_latency=0)
    assert ogos.disk.fd == old_fd                           # the number was reused
    q = ogos.spawn("q")
    for v in q.alloc(400):
        q.write(v, content("h", v))
    with pytest.raises(DiskError, match=r"^VM 'g': a write .* Bad file descriptor"):
        gos.disk.write([(b, b"X" * PG) for b in range(ogos.disk.blocks)])
    with pytest.raises(DiskError, match=r"^VM 'g': a read .* Bad file descriptor"):
        gos.disk.read(0)
    assert [q.read(v) for v in range(400)] == [content("h", v) for v in range(400)]
