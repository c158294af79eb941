"""The pager and the compressed swap, as pytest-benchmark benchmarks (bench_core.py's
sections 1-4 at the default placement; the script adds the other pager placements,
per-touch percentiles and the disturbance check). Each ratio is against a baseline measured
in the same test, never against a number written down: extra_info has both and the ratio."""

from __future__ import annotations

import ctypes
import statistics
from typing import Any

import pytest

from bench_core import (CLASSES, GUEST_CPU, PAGE, Pages, expected_bytes, kernel_touch, pct, pinned,
                        time_touch)
from uvm.pytest_plugin import UvmBench


def kernel_first_touch(touch: ctypes.CDLL, pages: Pages, anon: bool, random_order: bool,
                       rounds: int) -> float:
    """Median ns/page of the kernel's own first touch over `rounds` fresh mappings."""
    return float(statistics.median(kernel_touch(touch, pages, anon, random_order, 1000)[0]
                                   for _ in range(rounds)))


FAULT_PATHS = ["pager", "thread"]     # pager threads, or the faulting thread itself (issue 10)


@pytest.mark.parametrize("fault_path", FAULT_PATHS)
@pytest.mark.parametrize("order", ["sequential", "random"])
@pytest.mark.parametrize("fault_around", [1, 16, 64])
def test_first_touch(uvm_bench: UvmBench, touch: ctypes.CDLL, region_pages: int, rounds: int,
                     order: str, fault_around: int, fault_path: str) -> None:
    """Touch every page of a fresh VM once (one 8-byte store): missing faults served by the
    pager. Target: random order, fault_around 1, within 4x the kernel's shmem first touch;
    sequential with fault-around no slower than the kernel."""
    n = region_pages
    pages = Pages(touch, n)
    pages.set_order(order == "random", 1000)
    m = uvm_bench.machine("256MiB" if n <= 1 << 14 else 4 * n * PAGE, swap_size=n * PAGE,
                          fault_around=fault_around, fault_path=fault_path)
    vms: list[Any] = []

    def fresh_vm() -> tuple[tuple[int], dict[str, Any]]:
        if vms:
            m.destroy_vm(vms.pop())
        vms.append(m.create_vm("first-touch", n * PAGE))
        return (vms[-1].address,), {}

    def touch_all(address: int) -> int:
        return int(touch.touch_pages(address, pages.order, n, None, 1))

    with pinned(GUEST_CPU):
        uvm_bench(touch_all, setup=fresh_vm, rounds=rounds, warmup_rounds=1)
    st = vms[-1].stats()
    assert st["zero_fills"] == n and not st["swapouts"], st      # nothing evicted, none missed
    kernel = kernel_first_touch(touch, pages, False, order == "random", rounds)
    uvm_bench.extra_info.update(pages=n, faults=st["faults_missing"],
                                kernel_shmem_ns_per_page=round(kernel, 1),
                                kernel_anon_ns_per_page=round(
                                    kernel_first_touch(touch, pages, True, order == "random", rounds), 1))
    if uvm_bench.median is not None:
        per_page = uvm_bench.median * 1e9 / n
        uvm_bench.extra_info.update(ns_per_page=round(per_page, 1),
                                    ratio_to_kernel_shmem=round(per_page / kernel, 3),
                                    target_ratio=4.0 if fault_around == 1 else 1.0)


@pytest.mark.parametrize("fault_path", FAULT_PATHS)
def test_swap_in(uvm_bench: UvmBench, touch: ctypes.CDLL, pool: Any, region_pages: int,
                 rounds: int, fault_path: str) -> None:
    """Read back every page of a VM evicted whole, in random order: 3/4 swap-ins (read,
    LZ4-decompress, UFFDIO_COPY), 1/4 zero pages (no slot: zero-filled again). Target: the
    swap-in p50 within 2x a zero-fill fault's p50, measured here on a fresh VM."""
    n = region_pages
    pages = Pages(touch, n)
    m = uvm_bench.machine("256MiB" if n <= 1 << 14 else 4 * n * PAGE, swap_size=2 * n * PAGE,
                          fault_path=fault_path)
    vm = m.create_vm("swap-in", n * PAGE)
    pages.set_order(False, 0)
    with pinned(GUEST_CPU):
        touch.copy_pages(vm.address, pool.address, pool.pages, pages.order, n, None)
    pages.set_order(True, 77)

    evictions = []

    def evict_all() -> tuple[tuple[()], dict[str, Any]]:
        evictions.append(vm.evict())
        assert evictions[-1] == n
        return (), {}

    def read_all() -> int:
        return int(touch.touch_pages(vm.address, pages.order, n, pages.ns, 0))

    s0 = vm.stats()
    with pinned(GUEST_CPU):
        uvm_bench(read_all, setup=evict_all, rounds=rounds)
    s1 = vm.stats()
    done = len(evictions)                    # rounds (1 with --benchmark-disable)
    assert s1["swapins"] - s0["swapins"] == done * (n - n // 4)
    assert s1["zero_fills"] - s0["zero_fills"] == done * (n // 4)
    lat = pages.latencies()                                     # the last round's touches
    swap = sorted(t for p, t in zip(pages.order, lat) if CLASSES[p % 4] != "zero")
    by_class = {c: pct(sorted(t for p, t in zip(pages.order, lat) if CLASSES[p % 4] == c), 0.5)
                for c in CLASSES}
    wall = ctypes.c_uint64()
    pages.set_order(False, 0)
    assert touch.check_pages(vm.address, pool.address, pool.pages, pages.order, n, None,
                             ctypes.byref(wall)) == 0          # every byte came back
    # the baseline: zero-fill faults (first touch, fault_around 1, random order), p50
    fresh = m.create_vm("zero-fill", n * PAGE)
    zero_fill = pct(sorted(time_touch(touch, fresh.address, pages, True, 1000)[1]), 0.5)
    uvm_bench.extra_info.update(pages=n, swapin_ns_p50=pct(swap, 0.5), swapin_ns_p99=pct(swap, 0.99),
                                swapin_ns_p50_by_class=by_class, zero_fill_ns_p50=zero_fill,
                                ratio_to_zero_fill=round(pct(swap, 0.5) / zero_fill, 3),
                                target_ratio=2.0)
    uvm_bench.record()


def test_overcommit_fill(uvm_bench: UvmBench, touch: ctypes.CDLL, pool: Any, rounds: int) -> None:
    """Write a guest 4x machine memory (64 MiB of mixed pages on 16 MiB): the pager pages out
    to make room. Then every page goes through the swap and is read back and compared; the
    compression ratio must equal what the system's liblz4 gives for the same pages."""
    mem_mib, vm_mib = 16, 64
    n = vm_mib << 8
    pages = Pages(touch, n)
    pages.set_order(False, 0)
    m = uvm_bench.machine(f"{mem_mib}MiB")
    vms: list[Any] = []

    def fresh_vm() -> tuple[tuple[int], dict[str, Any]]:
        if vms:
            m.destroy_vm(vms.pop())
        vms.append(m.create_vm("big", n * PAGE))
        return (vms[-1].address,), {}

    def fill(address: int) -> int:
        return int(touch.copy_pages(address, pool.address, pool.pages, pages.order, n, None))

    with pinned(GUEST_CPU):
        uvm_bench(fill, setup=fresh_vm, rounds=rounds)
    vm = vms[-1]
    vm.evict()
    st = m.stats()
    wall = ctypes.c_uint64()
    with pinned(GUEST_CPU):
        bad = touch.check_pages(vm.address, pool.address, pool.pages, pages.order, n, None,
                                ctypes.byref(wall))
    assert bad == 0
    expected = expected_bytes(pool.expected, n)
    if "liblz4" in expected:
        assert st["swap_bytes"] == expected["liblz4"]         # the core's LZ4, to the byte
    uvm_bench.extra_info.update(machine_mib=mem_mib, guest_mib=vm_mib,
                                compression_ratio_incl_zero=round(n * PAGE / st["swap_bytes"], 3),
                                read_guest_mb_per_s=round(n * PAGE / (wall.value / 1e9) / 1e6, 1))
    if uvm_bench.median is not None:
        uvm_bench.extra_info["fill_guest_mb_per_s"] = round(n * PAGE / uvm_bench.median / 1e6, 1)
    uvm_bench.record()


def test_stats_call(uvm_bench: UvmBench) -> None:
    """machine.stats() (a policy thread's call into the core, under the machine lock) on a
    machine holding a 4x overcommitted guest; extra_info has the host bookkeeping per guest
    page and per machine frame (target: at most 16 bytes each)."""
    m = uvm_bench.machine("16MiB")
    vm = m.create_vm("big", "64MiB")
    uvm_bench(m.stats)
    st = m.stats()
    frames = st["frames_total"]
    uvm_bench.extra_info["bytes_per"] = {
        "pmap_per_guest_page": st["pmap_bytes"] / vm.pages,
        "frame_table_per_frame": st["frame_table_bytes"] / frames,
        "frame_table_and_swap_map_per_frame": (st["frame_table_bytes"] + st["swap_map_bytes"]) / frames,
    }
    assert st["pmap_bytes"] / vm.pages <= 16 and st["frame_table_bytes"] / frames <= 16


def test_api_call_beside_a_guest_workload(uvm_bench: UvmBench) -> None:
    """vm.read of one resident page from the caller's thread while a guest workload runs
    in another (its thread holds the GIL between short C calls; workloads/base.py hands it
    over once a millisecond). extra_info: the same read with no workload running, measured
    in this test, and the ratio (before the hand-over: 0.8-13.5 ms against 25 us)."""
    import time

    import uvm.guest
    from workloads import GuestWorkingSet

    m = uvm_bench.machine("64MiB", reclaim=False)
    g = m.create_vm("busy", "4MiB")
    uvm.guest.boot(g)
    v = m.create_vm("reader", "1MiB")
    v.write(0, b"x" * PAGE)

    def read_alone(n: int = 2000) -> float:
        t = time.perf_counter()
        for _ in range(n):
            v.read(0, PAGE)
        return (time.perf_counter() - t) / n

    alone = statistics.median(read_alone() for _ in range(5))
    run = g.run(GuestWorkingSet(size=64 * PAGE, seed=1))
    try:
        time.sleep(0.1)
        uvm_bench(v.read, 0, PAGE)
        beside = statistics.median(read_alone(200) for _ in range(5))
    finally:
        run.stop()
        run.join()
    uvm_bench.extra_info.update(read_alone_us=round(alone * 1e6, 1),
                                read_beside_workload_us=round(beside * 1e6, 1),
                                ratio=round(beside / alone, 2), workload_ops=run.ops)
    uvm_bench.record()


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_swap_readahead(uvm_bench: UvmBench, touch: ctypes.CDLL, pool: Any, region_pages: int,
                        rounds: int, order: str) -> None:
    """Read back a VM evicted whole with swap_readahead=8, in order (the gain: one read and
    one fault for eight pages) and in random order (the cost: neighbours brought in early
    and, at this size, none wasted; on a tight machine they would take free frames). The
    baseline, swap_readahead=1 (off), is measured in this test: extra_info has both."""
    import time

    n = region_pages

    def setup_vm(readahead: int) -> tuple[Any, Pages]:
        pages = Pages(touch, n)
        m = uvm_bench.machine(4 * n * PAGE, swap_size=2 * n * PAGE, swap_readahead=readahead)
        vm = m.create_vm(f"readahead-{readahead}", n * PAGE)
        pages.set_order(False, 0)
        with pinned(GUEST_CPU):
            touch.copy_pages(vm.address, pool.address, pool.pages, pages.order, n, None)
        pages.set_order(order == "random", 77)
        return vm, pages

    def evict(vm: Any) -> tuple[tuple[()], dict[str, Any]]:
        assert vm.evict() == n
        return (), {}

    def read_all(vm: Any, pages: Pages) -> int:
        return int(touch.touch_pages(vm.address, pages.order, n, pages.ns, 0))

    base_vm, base_pages = setup_vm(1)
    off = []
    for _ in range(rounds):
        evict(base_vm)
        with pinned(GUEST_CPU):
            t = time.perf_counter()
            read_all(base_vm, base_pages)
            off.append(time.perf_counter() - t)
    vm, pages = setup_vm(8)
    s0 = vm.stats()
    with pinned(GUEST_CPU):
        uvm_bench(lambda: read_all(vm, pages), setup=lambda: evict(vm), rounds=rounds)
    s1 = vm.stats()
    wall = ctypes.c_uint64()
    pages.set_order(False, 0)
    assert touch.check_pages(vm.address, pool.address, pool.pages, pages.order, n, None,
                             ctypes.byref(wall)) == 0          # every byte came back
    swapins = s1["swapins"] - s0["swapins"]
    uvm_bench.extra_info.update(
        pages=n, swapins=swapins, swapins_ahead=s1["swapins_ahead"] - s0["swapins_ahead"],
        off_ns_per_page=round(statistics.median(off) * 1e9 / n, 1))
    if uvm_bench.median is not None:
        on = uvm_bench.median * 1e9 / n
        uvm_bench.extra_info.update(on_ns_per_page=round(on, 1),
                                    ratio_on_to_off=round(on / uvm_bench.extra_info["off_ns_per_page"], 3))
