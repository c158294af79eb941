"""The host's half of ballooning (C core): a ballooned page costs no frame and no swap slot,
whatever backed it before (a frame, a swap slot, a shared frame); a touch of one gets a zero
page and is counted; every other byte is kept."""

from __future__ import annotations

import pytest

from helpers import memfd_pages_from_outside

PG = 4096


def fill(vm, pages: range) -> None:  # type: ignore[no-untyped-def]
    for p in pages:
        vm.write(p * PG, bytes([p % 251 + 1]) * PG)


def intact(vm, pages: range) -> None:  # type: ignore[no-untyped-def]
    for p in pages:
        assert vm.read(p * PG, PG) == bytes([p % 251 + 1]) * PG, f"page {p}"


def test_ballooned_pages_free_their_frames(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB", reclaim=False)
    vm = m.create_vm("g", memory="4MiB")
    fill(vm, range(vm.pages))
    used, outside = m.stats()["frames_used"], memfd_pages_from_outside()
    assert vm.balloon_pages(range(100, 400)) == 300
    assert m.stats()["frames_used"] == used - 300
    assert memfd_pages_from_outside() <= outside - 300
    st = vm.stats()
    assert st["ballooned"] == 300 and st["resident"] == vm.pages - 300 and st["swapouts"] == 0
    assert vm.page_state(100) == "ballooned" and vm.page_state(99) == "resident"
    assert vm.balloon_pages([150, 150, 500]) == 1         # already ballooned pages count once
    m.check()
    intact(vm, range(0, 100))
    intact(vm, range(501, vm.pages))


def test_touching_a_ballooned_page_gives_zeros_and_is_counted(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB", reclaim=False)
    vm = m.create_vm("g", memory="1MiB")
    fill(vm, range(vm.pages))
    vm.balloon_pages(range(10, 20))
    assert vm.read(12 * PG, PG) == bytes(PG)
    assert vm.read(15 * PG + 7, 1) == b"\0"
    st = vm.stats()
    assert st["balloon_touched"] == 2 and st["ballooned"] == 8
    assert vm.page_state(12) == "resident"
    m.check()
    intact(vm, range(0, 10))
    intact(vm, range(20, vm.pages))


def test_ballooning_swapped_and_shared_pages_frees_slots_and_references(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB", reclaim=False)
    vm = m.create_vm("g", memory="1MiB")
    fill(vm, range(0, 128))
    for p in range(128, 192):                   # identical pages: they will be shared
        vm.write(p * PG, b"same" * 1024)
    assert vm.evict(range(0, 64)) == 64
    m.share_now()
    m.share_now()
    assert vm.stats()["sharing"] == 64 and m.stats()["swap_pages"] == 64
    assert vm.balloon_pages(range(32, 160)) == 128
    st, ms = vm.stats(), m.stats()
    assert st["swapped"] == 32 and ms["swap_pages"] == 32
    assert st["sharing"] == 32 and ms["shared_frames"] == 1
    assert st["ballooned"] == 128 and st["swapouts"] == 64
    m.check()
    intact(vm, range(0, 32))
    for p in range(160, 192):
        assert vm.read(p * PG, PG) == b"same" * 1024


def test_unballooned_pages_are_zero_and_uncounted(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB", reclaim=False)
    vm = m.create_vm("g", memory="1MiB")
    fill(vm, range(vm.pages))
    vm.balloon_pages(range(0, 50))
    assert vm.unballoon_pages(range(0, 60)) == 50
    st = vm.stats()
    assert st["ballooned"] == 0 and vm.page_state(3) == "none"
    assert vm.read(3 * PG, PG) == bytes(PG) and vm.stats()["balloon_touched"] == 0
    m.check()


def test_bad_ppns_are_rejected(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB")
    vm = m.create_vm("g", memory="1MiB")
    with pytest.raises(ValueError, match="ppns"):
        vm.balloon_pages([vm.pages])
    with pytest.raises(ValueError, match="ppns"):
        vm.unballoon_pages([-1])


def test_fault_around_next_to_a_remapped_page(make_machine) -> None:  # type: ignore[no-untyped-def]
    """Found by the model test: a shared page ballooned is re-mapped onto its home frame (a
    mapping of its own); a fault there must not fill ahead across into the next mapping."""
    m = make_machine("1MiB", fault_around=4, reclaim=False)
    vm = m.create_vm("g", memory=3 * PG)
    vm.balloon_pages([2])
    vm.read(0, PG)                          # fills pages 0 and 1 (2 is ballooned)
    m.share_now()                           # both zero: shared
    vm.balloon_pages([1])
    vm.unballoon_pages([2])
    vm.write(PG, b"\1")                     # page 1: zero-filled, page 2 (PM_NONE) beyond it
    assert vm.read(PG, 2) == b"\1\0" and vm.stopped is None
    assert vm.read(2 * PG, PG) == bytes(PG)
    m.check()


def test_swap_latency_is_charged_per_request(make_machine) -> None:  # type: ignore[no-untyped-def]
    import time

    with pytest.raises(ValueError, match="^swap_latency: "):
        make_machine("1MiB", swap_latency=-1)
    m = make_machine("8MiB", reclaim=False, swap_latency=0.005)
    vm = m.create_vm("g", memory="1MiB")
    fill(vm, range(10))
    start = time.monotonic()
    assert vm.evict(range(10)) == 10        # one clustered write: one request
    for p in range(10):                     # ten reads: ten requests
        vm.read(p * PG, 1)
    assert time.monotonic() - start >= 11 * 0.005
    intact(vm, range(10))
