"""Swap read-ahead (Machine(swap_readahead=N)): a swap-in also brings in the swapped pages
of its aligned block of N pages with one read; every byte comes back, it never evicts to
make room for a guess, and it is off by default."""

from __future__ import annotations

import hashlib

import pytest

import uvm

PAGE = 4096


def content(ppn: int) -> bytes:
    """A page of its own: half random bytes, half text (compressible, as real pages are)."""
    noise = b"".join(hashlib.sha256(b"%d/%d" % (ppn, i)).digest() for i in range(PAGE // 2 // 32))
    text = (b"page %06d " % ppn) * (PAGE // 2 // 12)
    return noise + text + bytes(PAGE - len(noise) - len(text))


def fill(vm: uvm.VM, pages: int) -> None:
    for p in range(pages):
        vm.write(p * PAGE, content(p))


def test_sequential_reread_reads_ahead_and_every_byte_comes_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with uvm.Machine(memory="4MiB", swap_dir=tmp_path, swap_readahead=8) as m:
        vm = m.create_vm("g", "1MiB")
        fill(vm, 64)
        vm.evict(range(64))
        assert vm.stats()["swapped"] == 64
        for p in range(64):
            assert vm.read(p * PAGE, PAGE) == content(p), f"page {p}"
        st = vm.stats()
        assert st["swapins"] == 64 and st["swapped"] == 0
        assert st["swapins_ahead"] == 64 - 64 // 8      # one demand swap-in per block of 8
        m.check()


def test_off_by_default_and_settable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with uvm.Machine(memory="4MiB", swap_dir=tmp_path) as m:
        assert m.swap_readahead == 1
        vm = m.create_vm("g", "1MiB")
        fill(vm, 16)
        vm.evict(range(16))
        assert vm.read(0, PAGE) == content(0)
        assert vm.stats()["swapins_ahead"] == 0 and vm.stats()["swapped"] == 15
        m.swap_readahead = 16
        assert vm.read(PAGE, PAGE) == content(1)
        assert vm.stats()["swapins_ahead"] == 14 and vm.stats()["swapped"] == 0
        for p in range(16):
            assert vm.read(p * PAGE, PAGE) == content(p)


def test_read_ahead_never_evicts_to_make_room(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only frames free beyond the low water take read-ahead pages: with few free, fewer
    pages come in, nothing is written to swap for them, and every byte is still right."""
    with uvm.Machine(memory=64 * PAGE, swap_dir=tmp_path, reclaim=False, swap_readahead=32) as m:
        vm = m.create_vm("g", 128 * PAGE)
        fill(vm, 128)                   # 64 frames: half of it is swapped out on demand
        resident = [p for p in range(128) if vm.page_state(p) == "resident"]
        swapped = [p for p in range(128) if vm.page_state(p) == "swapped"]
        assert len(resident) + len(swapped) == 128 and len(swapped) >= 64
        vm.evict(resident[:6])          # six frames free (the low water is 2)
        before = m.stats()["swapouts"]
        block = swapped[0] - swapped[0] % 32
        vm.read(swapped[0] * PAGE, PAGE)
        st = vm.stats()
        assert m.stats()["swapouts"] == before, "read-ahead evicted a page"
        assert 0 < st["swapins_ahead"] <= 6 - 1 - 2
        assert m.stats()["frames_free"] >= 2
        for p in range(128):
            assert vm.read(p * PAGE, PAGE) == content(p), f"page {p} (block {block})"


@pytest.mark.parametrize("bad", [0, 33, True, 2.0, "8"])
def test_bad_readahead_is_a_clear_error(bad: object, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"^swap_readahead: must be an integer from 1 \(off\) to 32"):
        uvm.Machine(memory="1MiB", swap_dir=tmp_path, swap_readahead=bad)  # type: ignore[arg-type]
    with uvm.Machine(memory="1MiB", swap_dir=tmp_path) as m:
        with pytest.raises(ValueError, match="^swap_readahead: "):
            m.swap_readahead = bad  # type: ignore[assignment]
        assert m.swap_readahead == 1
