"""Faults on the pager: full swap, swap I/O errors, closing under a blocked guest. Each
must fail in its defined way (the VM stops with a clear reason; see docs/faults.md) and
lose nothing that was not meant to be discarded."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import uvm
from workloads import Fill, Verify


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, to run a swap file out of real disk space."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "uvm-test", str(where)],
                   check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_swap_space_is_reserved_at_creation(small_disk: Path) -> None:
    with pytest.raises(ValueError, match="^swap_size: no room for a 4.0 MiB swap file"):
        uvm.Machine(memory="1MiB", swap_dir=small_disk)
    assert os.listdir(small_disk) == []
    with uvm.Machine(memory="1MiB", swap_size="256KiB", swap_dir=small_disk) as m:
        assert os.statvfs(small_disk).f_bfree * os.statvfs(small_disk).f_frsize < 512 * 1024 - 256 * 1024
        vm = m.create_vm("a", memory="1200KiB", min="960KiB")   # max - min fits in swap
        vm.run(Fill(seed=1)).join(30)
        vm.run(Verify(seed=1)).join(30)
        with pytest.raises(ValueError, match="^memory: .*cannot be backed"):
            m.create_vm("b", memory="20KiB")   # 16 KiB of swap left unreserved


def test_swap_full_stops_only_the_faulting_vm(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB", reclaim=False)
    keep = m.create_vm("keep", memory="64KiB")
    keep.run(Fill(seed=1)).join(30)                 # 16 pages, resident
    hog = m.create_vm("hog", memory="2MiB")
    m.inject_fault("swap-full", 1_000_000)          # the swap device is full from now on
    run = hog.run(Fill(seed=2))
    with pytest.raises(uvm.VMStopped, match="swap file is full"):
        run.join(30)
    assert hog.stopped and "swap file is full" in hog.stopped
    with pytest.raises(uvm.VMStopped):
        hog.read(hog.size - 4096, 8)
    # the other VM is not stopped by what happened to hog, and the budget held
    assert keep.stopped is None
    st = m.stats()
    assert st["frames_used"] <= st["frames_total"] and st["swap_pages"] == 0
    # the device has room again: hog stays stopped (its guest saw the error) but nothing
    # it or keep wrote is lost; destroying hog frees its frames for others
    m.inject_fault("swap-full", 0)
    done = hog.stats()["resident"]
    assert done > 0
    m.destroy_vm(hog)
    keep.run(Verify(seed=1)).join(30)
    again = m.create_vm("again", memory="2MiB")
    again.run(Fill(seed=3)).join(30)
    again.run(Verify(seed=3)).join(30)
    keep.run(Verify(seed=1)).join(30)


def test_transient_write_error_loses_nothing(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB")
    vm = m.create_vm("a", memory="4MiB")
    vm.run(Fill(seed=4, size="1MiB")).join(30)
    m.inject_fault("swap-write", 1)                 # one batch write fails, then retried
    vm.run(Fill(seed=4, start=256)).join(30)
    assert vm.stopped is None
    assert m.stats()["swap_errors"] >= 1
    vm.run(Verify(seed=4)).join(30)


def test_persistent_write_error_stops_the_vm_cleanly(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB", swap_size="5MiB")
    other = m.create_vm("other", memory="256KiB")
    other.run(Fill(seed=6)).join(30)
    vm = m.create_vm("a", memory="4MiB")
    vm.run(Fill(seed=5, size="896KiB")).join(30)    # machine now full
    m.inject_fault("swap-write", 1_000_000)
    with pytest.raises(uvm.VMStopped, match="I/O error"):
        vm.run(Fill(seed=5, start=224)).join(30)
    m.inject_fault("swap-write", 0)
    # pages whose write failed are still resident and intact; the resident VM runs on
    assert other.stopped is None
    other.run(Verify(seed=6)).join(30)
    ok = [p for p in range(224) if vm.page_state(p) == "resident"]
    assert ok


def test_swap_read_error_stops_the_vm_and_keeps_the_slot(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB")
    vm = m.create_vm("a", memory="1MiB")
    vm.write(0, b"precious")
    vm.evict([0])
    m.inject_fault("swap-read", 1)
    with pytest.raises(uvm.VMStopped, match="I/O error"):
        vm.read(0, 8)
    assert vm.page_state(0) == "swapped" and m.stats()["swap_pages"] == 1


@pytest.mark.slow
def test_close_while_a_guest_is_blocked_in_a_fault(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB")
    vm = m.create_vm("a", memory="1MiB")
    m.inject_fault("pager-hold", 1, timeout=60)     # held past close()'s 5 s wait for runs
    run = vm.run(Fill(seed=1))
    time.sleep(0.3)
    assert not run.done and run.ops == 0            # blocked in its first fault
    closer = threading.Thread(target=m.close, name="closer")
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "close() hung"
    assert run.wait(10), "the blocked guest was not released"
    with pytest.raises(uvm.VMStopped, match="machine was closed"):
        run.join()


def test_python_thread_blocked_in_guarded_read_gets_an_error(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB")
    vm = m.create_vm("a", memory="1MiB")
    m.inject_fault("pager-hold", 1)
    outcome: list[BaseException | bytes] = []

    def reader() -> None:
        try:
            outcome.append(vm.read(4096, 4))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=reader, name="reader")
    t.start()
    time.sleep(0.2)
    m.close()
    t.join(10)
    assert not t.is_alive() and isinstance(outcome[0], uvm.VMStopped)
