"""The toy guest OS: its own swap round-trips bytes exactly, and its reclaim goes in the
order an OS's does (clean cache pages, then least recently used process pages)."""

from __future__ import annotations

import hashlib
import os
import stat
import time

import pytest

import uvm.guest
from uvm.guest import GuestOutOfMemory

PG = 4096


def content(tag: str, vpn: int) -> bytes:
    """A distinct, half-incompressible 4 KiB for each page."""
    h = hashlib.blake2b(f"{tag}:{vpn}".encode(), digest_size=64).digest()
    return (f"{tag} {vpn} ".encode() * 700)[:2048] + h * 32


def test_guest_swap_round_trips_bytes_exactly(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")            # 256 pages
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    p = gos.spawn("big")
    vpns = p.alloc(600)                             # more than the guest has: it must swap
    for v in vpns:
        p.write(v, content("p", v))
    st = vm.stats()
    assert st["guest_swapouts"] >= 600 - 256 and st["guest_swap_used"] > 0
    for v in reversed(vpns):
        assert p.read(v) == content("p", v), f"vpn {v}"
    st = vm.stats()
    assert st["guest_swapins"] > 300 and st["guest_free"] + st["guest_process"] == 256 - st["guest_memmap"]
    p.exit()
    assert vm.stats()["guest_swap_used"] == 0 and vm.stats()["guest_free"] == 256 - 4


def test_reclaim_drops_clean_cache_before_process_pages(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="1MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    f = gos.create_file("data", 100)
    p = gos.spawn("proc")
    vpns = p.alloc(100)
    for v in vpns:
        p.write(v, content("p", v))
    for i in range(100):                            # cache is more recent than the process
        assert gos.cache.read(f, i).startswith(b"data:%08d;" % i)
    assert vm.stats()["guest_cache"] == 100
    q = gos.spawn("newcomer")
    for v in q.alloc(100):                          # 56 free pages, then 44 from reclaim
        q.write(v, b"x" * PG)
    st = vm.stats()
    assert st["guest_swapouts"] == 0 and st["guest_cache"] < 100
    for v in q.alloc(120):                          # the rest of the cache, then swapping
        q.write(v, b"y" * PG)
    st = vm.stats()
    assert st["guest_cache"] == 0 and st["guest_swapouts"] > 0
    assert all(v in p.swap for v in range(10))      # the least recently used went first
    for v in vpns:
        assert p.read(v) == content("p", v)


def test_dirty_cache_pages_are_written_back_not_lost(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="512KiB")          # 128 pages
    gos = uvm.guest.boot(vm, disk="4MiB", disk_dir=str(tmp_path), disk_latency=0)
    f = gos.create_file("log", 300)
    for i in range(300):
        gos.cache.write(f, i, b"new %d " % i, offset=100)
    for i in range(300):
        page = gos.cache.read(f, i)
        assert page[100:100 + len(b"new %d " % i)] == b"new %d " % i
        assert page[:13] == b"log:%08d;" % i       # the rest of the page came from the disk
    assert vm.stats()["guest_disk_writes"] > 0


def test_pinned_pages_are_never_reclaimed(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="512KiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0)
    p = gos.spawn("driver")
    vpns = p.alloc(100)
    for v in vpns:
        p.write(v, content("pin", v))
    p.pin(vpns)
    q = gos.spawn("hog")
    for v in q.alloc(200):
        q.write(v, b"h" * PG)
    assert p.swap == {} and vm.stats()["guest_pinned"] == 100
    assert [p.read(v) for v in vpns] == [content("pin", v) for v in vpns]
    assert len(gos.alloc(1000, pin=True)) == 128 - 100 - 2  # all but the pinned and memmap
    with pytest.raises(GuestOutOfMemory):
        gos.alloc_page()
    assert [p.read(v) for v in vpns] == [content("pin", v) for v in vpns]


def test_the_virtual_disk_is_a_private_file(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="512KiB")
    path = tmp_path / "disk.img"
    uvm.guest.boot(vm, disk_file=str(path), disk="4MiB")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.stat(path).st_size == 4 << 20
    m.destroy_vm(vm)
    assert not path.exists()


def test_the_page_frame_array_is_sized_by_configured_memory(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A guest configured at 8 MiB and ballooned to 4 has less left than one configured at
    4: its page-frame array is twice the size, and its balloon keeps a list of its PPNs."""
    m = make_machine("32MiB")
    big = m.create_vm("big", memory="8MiB")                  # 2048 pages
    small = m.create_vm("small", memory="4MiB")
    bos = uvm.guest.boot(big, disk_dir=str(tmp_path), disk_latency=0, balloon_period=0.02)
    sos = uvm.guest.boot(small, disk_dir=str(tmp_path), disk_latency=0)
    assert (len(bos.memmap), len(sos.memmap)) == (32, 16)    # 64 bytes per 4 KiB page
    for ppn in bos.memmap:                                   # written: an entry per PPN
        page = big.read(ppn * PG, PG)
        for k in range(PG // 64):
            entry = int.from_bytes(page[k * 64:k * 64 + 8], "little")
            assert entry == (ppn * 64 + k) << 12 | 1 and page[k * 64 + 8:k * 64 + 64] == bytes(56)
        assert big.page_state(ppn) == "resident"
    big.balloon.target = 1024
    deadline = time.monotonic() + 30
    while big.balloon.size < 1024:
        assert time.monotonic() < deadline, "the balloon never reached its target"
        time.sleep(0.01)
    assert bos.stats()["guest_free"] == 2048 - 1024 - 32 - 2 < sos.stats()["guest_free"] == 1024 - 16
    assert [len(uvm.guest.boot(m.create_vm(f"v{s}", memory="4MiB"), disk_dir=str(tmp_path),
                               page_struct=s).memmap) for s in (0, 8, 2048)] == [0, 2, 512]
    with pytest.raises(ValueError, match=r"^page_struct: must be 0\.\.4096 bytes per page, got 5000"):
        uvm.guest.boot(m.create_vm("bad", memory="4MiB"), page_struct=5000)
