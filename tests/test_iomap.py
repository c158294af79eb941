"""I/O page remapping: guest disk I/O into high pages bounces and is counted; hot pages move
into low frames and bounce no more; every byte of a moved page survives (and every other
page's), whatever happens to it next (writes, ballooning, the VM's end)."""

from __future__ import annotations

import hashlib

import pytest

import uvm
import uvm.guest
from workloads import FileServer

PG = 4096


def content(ppn: int) -> bytes:
    h = hashlib.blake2b(str(ppn).encode(), digest_size=64).digest()
    return h * (PG // 64)


def test_a_remap_keeps_every_byte_and_frees_the_home_frame(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB", low_memory="64KiB")            # 16 low frames
    vm = m.create_vm("g", memory="4MiB")
    for p in range(64):
        vm.write(p * PG, content(p))
    vm.io.threshold = 2
    used = m.stats()["frames_used"]
    for _ in range(3):
        assert vm.io.dma(range(20)) == 20                    # 20 high pages: 20 copies each time
    assert [vm.page_state(p) for p in range(20)] == ["low"] * 16 + ["resident"] * 4
    assert vm.io.stats()["io_remapped"] == 16 and vm.io.stats()["io_no_room"] == 4
    assert m.low_stats() == (16, 0)
    assert m.stats()["frames_used"] == used and m.stats()["frames_free"] == 8192 - used
    assert [vm.read(p * PG, PG) for p in range(64)] == [content(p) for p in range(64)]
    assert vm.io.dma(range(16)) == 0 and vm.io.stats()["io_direct"] == 16    # direct now
    for p in range(20, 64):
        vm.write(p * PG, content(p % 4))                     # duplicates of low pages 0..3
    m.share_now()                                            # the scanner passes low pages by
    assert [vm.page_state(p) for p in range(16)] == ["low"] * 16
    assert all(vm.page_state(p) == "shared" for p in range(20, 64))
    assert [vm.read(p * PG, PG) for p in range(20)] == [content(p) for p in range(20)]
    vm.write(3 * PG + 5, b"new")                             # the guest writes a low page
    assert vm.read(3 * PG, 8) == content(3)[:5] + b"new"
    m.check()
    vm.balloon_pages([3, 4])                                 # ballooning frees the low frame
    assert vm.page_state(3) == "ballooned" and m.low_stats() == (16, 2)
    assert vm.read(3 * PG, PG) == bytes(PG)
    assert [vm.read(p * PG, PG) for p in range(5, 64)] == [content(p if p < 20 else p % 4)
                                                            for p in range(5, 64)]
    m.check()
    m.destroy_vm(vm)
    assert m.low_stats() == (16, 16)
    m.check()


def test_remapping_reduces_the_copies_of_a_file_server(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    copies = {}
    for remap in (False, True):
        m = make_machine("48MiB", low_memory="8MiB")
        vm = m.create_vm("g", memory="4MiB")
        uvm.guest.boot(vm, disk="24MiB", disk_dir=str(tmp_path), disk_latency=0, balloon=False)
        vm.io.remap, vm.io.bounce_cost, vm.io.threshold = remap, 0.0, 2
        w = FileServer(clients=4, files=128, file_size="64KiB", seed=3)    # 8 MiB of files
        w.start(vm)
        for _ in range(400):
            w.step(vm)
        st = vm.io.stats()
        copies[remap] = st["io_bounces"]
        assert (st["io_remapped"] > 0) == remap and (st["io_direct"] > 0) == remap
        hot = [p for p, c in vm.io.copies.items() if c > 2]
        assert len(hot) > 100 and st["io_hot"] == len(hot)
        assert all(vm.page_state(p) == "low" for p in hot) == remap     # room for every one
        w.verify(vm)                                         # every byte of every file
        m.check()
    assert copies[True] < 0.75 * copies[False], copies      # the same I/O, a third fewer copies


def test_without_low_memory_nothing_bounces_and_bad_sizes_name_the_field(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    vm.write(0, b"x")
    assert vm.io.dma([0] * 50) == 0 and vm.page_state(0) == "resident"
    with pytest.raises(ValueError, match=r"^low_memory: '16MiB' is not below the machine's memory"):
        make_machine("16MiB", low_memory="16MiB")
    with pytest.raises(ValueError, match=r"^low_memory: "):
        make_machine("16MiB", low_memory="lots")
    with pytest.raises(ValueError, match=r"^threshold: expected an integer >= 0"):
        vm.io.threshold = -1
    with pytest.raises(ValueError, match=r"^bounce_cost: must be a number of seconds"):
        vm.io.bounce_cost = 5
