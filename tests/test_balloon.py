"""The balloon driver inside a guest OS: it inflates and deflates while workloads run and
nothing they own is lost; it cannot take pages the guest pinned; a guest without a working
driver is paged by the host instead; bad targets are clear errors."""

from __future__ import annotations

import io
import time

import pytest

import uvm.guest
from uvm.balloon import reclaim
from workloads import GuestChecked, GuestWorkingSet

PG = 4096
FAST = 0.02         # balloon polling period for tests (seconds)


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_inflate_and_deflate_while_workloads_run_lose_nothing(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="16MiB")                   # 4096 pages
    uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    checked = GuestChecked("4MiB", seed=7)
    runs = [vm.run(checked), vm.run(GuestWorkingSet("6MiB", pattern="zipf", seed=3))]
    wait_for(lambda: checked.written)
    vm.balloon.target = 2600
    wait_for(lambda: vm.balloon.size == 2600)
    st = vm.stats()
    assert st["ballooned"] == 2600 and st["balloon_size"] == 2600
    assert st["resident"] <= 4096 - 2600
    assert st["guest_swapouts"] > 0                          # the guest chose what to page out
    time.sleep(0.3)                                          # the workloads run squeezed
    vm.balloon.target = 0
    wait_for(lambda: vm.balloon.size == 0)
    assert vm.stats()["ballooned"] == 0
    time.sleep(0.2)
    for r in runs:
        r.stop()
    for r in runs:
        assert r.join(30) > 0                                # re-raises a content mismatch
    checked.verify_all()
    assert vm.stats()["balloon_touched"] == 0
    m.check()


def test_a_touched_ballooned_page_is_zero_and_accounted(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    p = gos.spawn("p")
    for v in p.alloc(500):
        p.write(v, b"\xab" * PG)
    p.exit()                                                 # its pages go back, dirty
    vm.balloon.target = 600
    wait_for(lambda: vm.balloon.size == 600)
    ppn = vm.balloon.ppns()[0]
    assert vm.page_state(ppn) == "ballooned"
    assert vm.read(ppn * PG, PG) == bytes(PG)               # a misbehaving guest reads zeros
    assert vm.stats()["balloon_touched"] == 1


def test_a_touched_ballooned_page_pops_the_balloon_and_it_inflates_again(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="8MiB")                    # 2048 pages
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    checked = GuestChecked("3MiB", seed=7)                  # 768 pages of known data
    checked.start(vm)
    while not checked.written:
        checked.step(vm)
    vm.balloon.target = 900
    wait_for(lambda: vm.balloon.size == 900)
    assert vm.stats()["balloon_pops"] == 0
    held = vm.balloon.ppns()
    touched = held[len(held) // 2]
    vm.write(touched * PG + 100, b"broken promise")          # the guest touches one anyway
    wait_for(lambda: vm.stats()["balloon_pops"] == 1)
    wait_for(lambda: vm.balloon.size == 900)                 # inflated again from the target
    st = vm.stats()
    assert st["balloon_pops"] == 1 and st["balloon_touched"] == 1
    assert st["ballooned"] == 900                            # every page it holds is the host's
    assert all(vm.page_state(p) == "ballooned" for p in vm.balloon.ppns())
    driver = vm.balloon.driver
    assert driver is not None and len(driver.list_pages) == 2        # 512 PPNs a page
    assert len(gos.pinned) == 902 and not set(gos.free) & set(vm.balloon.ppns())
    listed = b"".join(vm.read(p * PG, PG) for p in driver.list_pages)
    assert [int.from_bytes(listed[i * 8:i * 8 + 8], "little") for i in range(900)] == \
        vm.balloon.ppns()                                    # its list is in guest memory
    checked.verify_all()                                     # every byte of the process's data
    time.sleep(10 * FAST)
    assert vm.stats()["balloon_pops"] == 1                   # one touch, one pop
    m.check()


def test_the_balloon_cannot_take_pinned_pages(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="8MiB")                    # 2048 pages
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    p = gos.spawn("pinner")
    vpns = p.alloc(1200)
    for v in vpns:
        p.write(v, v.to_bytes(4, "little") * 1024)
    p.pin(vpns)
    pinned = set(p.pinned.values())
    vm.balloon.max_fraction = 0.9
    vm.balloon.target = 1800
    driver = vm.balloon.driver
    assert driver is not None
    wait_for(lambda: driver.stuck > 0)
    assert len(gos.memmap) == 2048 * 64 // PG and len(driver.list_pages) == 2
    assert vm.balloon.size == 2048 - 1200 - len(gos.memmap) - len(driver.list_pages)
    assert not pinned & set(vm.balloon.ppns())
    assert all(p.read(v) == v.to_bytes(4, "little") * 1024 for v in vpns)
    assert vm.stats()["guest_swapouts"] == 0


@pytest.mark.parametrize("how", ["absent", "disabled"])
def test_without_a_working_balloon_the_host_pages(make_machine, tmp_path, how: str) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST,
                         balloon=how != "absent")
    if how == "disabled":
        assert vm.balloon.driver is not None and vm.balloon.active
        vm.balloon.driver.enabled = False
    assert not vm.balloon.active
    p = gos.spawn("p")
    for v in p.alloc(800):
        p.write(v, b"%d" % v * 100)
    assert reclaim(vm, 500) == "paging"
    time.sleep(5 * FAST)
    st = vm.stats()
    assert st["swapouts"] + st["swapouts_zero"] >= 500 and st["ballooned"] == 0
    assert all(p.read(v) == b"%d" % v * 100 + bytes(PG - len(b"%d" % v * 100)) for v in range(800))


def test_reclaim_balloons_when_it_can(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")                    # 1024 pages, balloon max 665
    uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    assert reclaim(vm, 300) == "balloon"
    wait_for(lambda: vm.balloon.size == 300)
    assert vm.stats()["swapouts"] == 0
    assert reclaim(vm, 500) == "both"                       # 365 by balloon, 135 by paging
    assert vm.balloon.target == vm.balloon.max_pages == 665


@pytest.mark.parametrize("bad", [-1, 666, "10", True, 1.5])
def test_bad_targets_are_clear_errors(make_machine, bad: object) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    with pytest.raises(ValueError, match="^target: "):
        vm.balloon.target = bad
    with pytest.raises(ValueError, match="^max_fraction: "):
        vm.balloon.max_fraction = 1.5


def test_inflation_slows_down_when_the_guest_must_reclaim(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from uvm.balloon import MAX_RATE, MIN_RATE

    m = make_machine("32MiB")
    easy, hard = m.create_vm("easy", memory="8MiB"), m.create_vm("hard", memory="8MiB")
    for vm in (easy, hard):
        uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)
    assert hard.os is not None
    p = hard.os.spawn("hog")
    for v in p.alloc(2000):                                  # nearly all of its 2048 pages
        p.write(v, b"%d" % v)
    for vm in (easy, hard):
        vm.balloon.target = 1200
    wait_for(lambda: easy.balloon.size == hard.balloon.size == 1200)
    assert easy.balloon.driver is not None and hard.balloon.driver is not None
    assert easy.balloon.driver.hard == 0 and easy.balloon.driver.rate == MAX_RATE
    assert hard.balloon.driver.hard > 0 and hard.balloon.driver.rate < MAX_RATE
    assert hard.balloon.driver.rate >= MIN_RATE
    assert hard.stats()["guest_swapouts"] >= 1200 - 48


def page_content(p: int) -> bytes:
    return (b"page %d|" % p * 600)[:PG]


@pytest.mark.parametrize("how", ["no-os", "absent", "disabled"])
def test_a_target_without_a_driver_makes_the_host_page_instead(make_machine, tmp_path, how: str) -> None:  # type: ignore[no-untyped-def]
    """A balloon target on a VM whose balloon cannot inflate (no guest OS, booted without
    the driver, or the driver disabled) used to be accepted and do nothing. The host pages
    the VM down to what the balloon would have left it, counts it as paged instead of
    ballooned (stats, live view), and the C core takes from this VM first from then on;
    every byte comes back."""
    from rich.console import Console

    from uvm import live

    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")                    # 1024 pages
    if how != "no-os":
        uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST,
                       balloon=how == "disabled")
    if how == "disabled":
        assert vm.balloon.driver is not None
        vm.balloon.driver.enabled = False
    assert not vm.balloon.active
    for p in range(vm.pages):
        vm.write(p * PG, page_content(p))
    vm.balloon.target = 600
    st = vm.stats()
    assert st["resident"] + st["sharing"] <= 1024 - 600
    assert st["balloon_paged"] >= 600 and st["swapouts"] + st["swapouts_zero"] >= 600
    assert st["ballooned"] == st["balloon_size"] == 0 and st["balloon_target"] == 600
    sample = live.take_sample(m, 0.0, 1.0)
    paged = f"{st['balloon_paged'] * PG / 2**20:.1f}"
    assert f"paged instead of ballooned {paged} MiB" in "\n".join(live.plain_lines(sample))
    out = io.StringIO()
    Console(file=out, width=200).print(live.live_view(sample, "t"))
    assert f"0.0 +{paged} paged" in out.getvalue()          # the balloon column of its row
    assert [vm.read(p * PG, PG) for p in range(vm.pages)] == [page_content(p) for p in range(vm.pages)]
    vm.balloon.target = 0                                    # nothing to give back: no-op
    assert vm.stats()["balloon_paged"] == st["balloon_paged"]
    m.check()


def test_after_a_target_without_a_driver_the_host_takes_from_that_vm_first(make_machine) -> None:  # type: ignore[no-untyped-def]
    """The guest touches its pages back in after the host paged it: when memory runs
    short later, the C core's own evictions take from it (above its target) first."""
    m = make_machine("8MiB", swap_size="32MiB")             # 2048 frames
    a, b = m.create_vm("a", memory="4MiB"), m.create_vm("b", memory="6MiB")
    for p in range(a.pages):
        a.write(p * PG, page_content(p))
    a.balloon.target = 600                                   # a may hold 424 pages
    assert [a.read(p * PG, PG) for p in range(a.pages)] == [page_content(p) for p in range(a.pages)]
    assert a.stats()["resident"] == 1024                     # all back in: memory was free
    for p in range(b.pages):                                 # 1536 more pages: 512 too many
        b.write(p * PG, page_content(p))
    sa, sb = a.stats(), b.stats()
    assert sb["swapouts"] + sb["swapouts_zero"] <= 32, sb    # taken from a, not from b
    assert sa["resident"] <= 1024 - 450
    assert [a.read(p * PG, PG) for p in range(a.pages)] == [page_content(p) for p in range(a.pages)]
    assert [b.read(p * PG, PG) for p in range(b.pages)] == [page_content(p) for p in range(b.pages)]


def test_a_driver_whose_report_fails_gives_the_pages_back_and_says_why(make_machine, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=FAST)

    def refuse(ppns: object) -> int:
        raise OSError(5, "VM 'g': ballooning failed: Input/output error")

    monkeypatch.setattr(vm, "balloon_pages", refuse)
    vm.balloon.target = 300
    driver = vm.balloon.driver
    assert driver is not None
    wait_for(lambda: not driver.running)
    st = vm.stats()
    assert st["balloon_error"] == "[Errno 5] VM 'g': ballooning failed: Input/output error"
    assert st["guest_pinned"] == 0 and st["guest_free"] == 1024 - 16 and vm.balloon.size == 0
    assert st["guest_memmap"] == 16                          # 64 bytes per page, never freed
    assert not vm.balloon.active                             # the host would page instead


def test_a_target_the_host_cannot_page_instead_is_refused(make_machine) -> None:  # type: ignore[no-untyped-def]
    """No driver and no room in swap: neither can take the pages, so the target is refused
    with the reason, and stays what it was; every byte stays."""
    from uvm.errors import SwapFull

    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="4MiB")
    for p in range(vm.pages):
        vm.write(p * PG, page_content(p))
    m.inject_fault("swap-full", 10**6)
    with pytest.raises(SwapFull, match=r"^target: refused: VM 'g' has no working balloon driver "
                                       r"and the host cannot page it instead \(.*swap file is full"):
        vm.balloon.target = 600
    assert vm.balloon.target == 0
    m.inject_fault("swap-full", 0)
    assert [vm.read(p * PG, PG) for p in range(vm.pages)] == [page_content(p) for p in range(vm.pages)]
    vm.balloon.target = 600                                  # room again: paged instead
    assert vm.stats()["balloon_paged"] >= 600
