"""Nothing lost: known bytes pushed through demand paging and back, every byte compared,
with the budget of resident frames checked from outside while it runs."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

import uvm
from helpers import BudgetSampler, memfd_pages_from_outside
from workloads import Fill, Verify, WorkingSet

MACHINE = "8MiB"
FRAMES = 2048


def page_pattern(vm_tag: int, ppn: int) -> bytes:
    """4 KiB distinct per (VM, page), mixing compressible and incompressible parts."""
    seed = hashlib.blake2b(f"{vm_tag}:{ppn}".encode(), digest_size=64).digest()
    text = (f"vm {vm_tag} page {ppn} " * 256).encode()[:2048]
    return text + seed * 32


@pytest.mark.parametrize("fault_around", [1, 16])
def test_python_pattern_twice_machine_memory(make_machine, fault_around: int) -> None:  # type: ignore[no-untyped-def]
    m = make_machine(MACHINE, fault_around=fault_around)
    vm = m.create_vm("big", memory="16MiB")
    with BudgetSampler(m, FRAMES) as budget:
        for p in range(vm.pages):
            vm.memory[p * 4096:(p + 1) * 4096] = page_pattern(1, p)
        for p in reversed(range(vm.pages)):          # read back in the other order
            assert vm.memory[p * 4096:(p + 1) * 4096] == page_pattern(1, p), f"page {p}"
    assert budget.samples >= 3 and budget.max_seen <= FRAMES
    st = vm.stats()
    assert st["swapouts"] > vm.pages // 2 and st["swapins"] > 0 and st["stopped"] == 0


def test_numpy_writes_while_holding_the_gil(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine(MACHINE)
    vm = m.create_vm("np", memory="16MiB")
    words = np.frombuffer(vm.memory, dtype=np.uint64)
    expected = np.arange(words.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    words[:] = expected                  # one C loop, GIL held, faulting on every page
    assert np.array_equal(words, expected)
    assert m.stats()["frames_used"] <= FRAMES
    del words


def test_c_workload_twice_machine_memory(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine(MACHINE)
    vm = m.create_vm("big", memory="16MiB")
    with BudgetSampler(m, FRAMES) as budget:
        vm.run(Fill(seed=11)).join(60)
        vm.run(Verify(seed=11)).join(60)
    assert budget.max_seen <= FRAMES
    assert vm.stats()["swapins"] > 0


def test_two_vms_at_once(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine(MACHINE, reclaim=False)     # quiet at the end: counts compared exactly
    a = m.create_vm("a", memory="12MiB")
    b = m.create_vm("b", memory="12MiB")
    errors: list[BaseException] = []

    def python_guest() -> None:
        try:
            for p in range(b.pages):
                b.memory[p * 4096:(p + 1) * 4096] = page_pattern(2, p)
            for p in range(b.pages):
                assert b.memory[p * 4096:(p + 1) * 4096] == page_pattern(2, p), f"b page {p}"
        except BaseException as e:
            errors.append(e)

    with BudgetSampler(m, FRAMES) as budget:
        t = threading.Thread(target=python_guest, name="guest-b")
        t.start()
        a.run(Fill(seed=5)).join(60)
        a.run(Verify(seed=5)).join(60)
        t.join(120)
    assert not errors, errors
    assert budget.max_seen <= FRAMES
    assert memfd_pages_from_outside() == m.stats()["frames_used"]


def test_fresh_vm_sees_only_zeros_after_dirty_frames_freed(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("4MiB")
    dirty = m.create_vm("dirty", memory="6MiB")
    dirty.run(Fill(seed=3)).join(30)          # resident frames and swap slots full of data
    m.destroy_vm(dirty)
    assert m.stats()["frames_used"] == 0 and m.stats()["swap_pages"] == 0
    fresh = m.create_vm("fresh", memory="6MiB")   # reuses the same memfd slice
    data = np.frombuffer(fresh.memory, dtype=np.uint64)
    assert not data.any()
    fresh.evict()
    assert not data.any()
    del data


def test_writes_racing_with_eviction(make_machine) -> None:  # type: ignore[no-untyped-def]
    """A guest keeps writing counters while the host evicts at random: every write lands."""
    m = make_machine("2MiB")
    vm = m.create_vm("race", memory="3MiB")
    counters = np.frombuffer(vm.memory, dtype=np.uint64)
    per_page = 512
    stop = threading.Event()
    evicted = [0]

    def evictor() -> None:
        while not stop.is_set():
            evicted[0] += vm.evict_random(16)

    t = threading.Thread(target=evictor, name="evictor")
    t.start()
    try:
        for rnd in range(1, 6):
            for p in range(vm.pages):
                counters[p * per_page + rnd % per_page] = rnd * 100000 + p
    finally:
        stop.set()
        t.join()
    assert evicted[0] > 0
    for p in range(vm.pages):
        for rnd in range(1, 6):
            assert counters[p * per_page + rnd] == rnd * 100000 + p
    del counters


def test_working_set_runs_and_reports_progress(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("4MiB")
    vm = m.create_vm("ws", memory="8MiB")
    run = vm.run(WorkingSet(size="6MiB", pattern="zipf"))
    import time
    time.sleep(0.5)
    rate = run.ops_per_s
    run.stop()
    assert run.join(10) > 0 and rate > 0
    with pytest.raises(ValueError, match="^size: "):
        vm.run(WorkingSet(size="9MiB"))
    with pytest.raises(ValueError, match="^pattern: "):
        WorkingSet(size="1MiB", pattern="zig")


def test_fault_around_fills_neighbours(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB", fault_around=16)
    vm = m.create_vm("fa", memory="1MiB")
    vm.memory[5 * 4096] = 1
    st = vm.stats()
    assert st["faults_missing"] == 1 and st["resident"] == 16 and st["fault_around"] == 15
    m.fault_around = 1
    vm.memory[100 * 4096] = 1
    assert vm.stats()["resident"] == 17
    with pytest.raises(ValueError, match="^fault_around: "):
        m.fault_around = 65


def test_guest_memory_exceeding_machine_memory_by_far(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB", swap_size="64MiB")
    vm = m.create_vm("huge", memory="32MiB")
    with BudgetSampler(m, 256) as budget:
        vm.run(Fill(seed=9)).join(60)
        vm.run(Verify(seed=9)).join(60)
    assert budget.max_seen <= 256
    assert isinstance(vm, uvm.VM)


def test_ops_per_s_while_the_run_records_its_progress(make_machine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """ops_per_s is read by the live view, sweeps and stats while the run's own thread
    appends progress marks: reading must never see the marks change under it (a sweep
    trial failed with "deque mutated during iteration"). Here a thread appends marks as fast
    as it can, as the run's thread does at each step, and the interpreter switches threads
    as often as it can: a reader that iterates the live deque fails within the second."""
    import sys
    import time

    import workloads.base

    monkeypatch.setattr(workloads.base, "RATE_WINDOW", 10.0)     # read every mark
    m = make_machine("8MiB")
    vm = m.create_vm("a", memory="4MiB")
    run = vm.run(WorkingSet(size="2MiB", pattern="random"))
    stop = threading.Event()

    def mark() -> None:
        while not stop.is_set():
            run._marks.append((time.monotonic(), run.ops))

    writer = threading.Thread(target=mark, name="test-marks")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    writer.start()
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            assert run.ops_per_s >= 0.0
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(old)
        run.stop()
        run.join(10)
