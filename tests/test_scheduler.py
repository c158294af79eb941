"""The memory policy on real guests: admission control, idle sampling by watched pages
(nothing lost, the estimate tracks a working set that changes), the idle memory tax moving
memory to the active VM, victim policies, and blocking in the low state."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

import uvm
from uvm.policy import ColdVictims, LastPeriod, RandomVictims, Thresholds
from uvm.sampler import IdleSampler
from uvm.workloads import Fill, Idle, Verify, WorkingSet

MIB = 1 << 20
Make = Callable[..., uvm.Machine]


def test_admission_control_refuses_what_cannot_be_guaranteed(make_machine: Make) -> None:
    m = make_machine("8MiB", swap_size="16MiB")
    m.create_vm("a", memory="12MiB", min="6MiB")
    with pytest.raises(ValueError, match=r"^min: VM 'b' needs 4.0 MiB .* only 2.0 MiB of 8.0 MiB is unreserved"):
        m.create_vm("b", memory="8MiB", min="4MiB")
    # 6 MiB of a's max - min and 8 MiB more is 14 MiB of 16: fits; 11 MiB more does not
    m.create_vm("b", memory="8MiB", min="0")
    with pytest.raises(ValueError, match=r"^memory: VM 'c' cannot be backed: its max - min \(3.0 MiB\) must fit in swap, and only 2.0 MiB"):
        m.create_vm("c", memory="3MiB")
    with pytest.raises(ValueError, match="^min: 2.0 MiB is more than the VM's memory"):
        m.create_vm("c", memory="1MiB", min="2MiB")
    with pytest.raises(ValueError, match="^shares: must be an integer"):
        m.create_vm("c", memory="1MiB", shares=0)
    with pytest.raises(ValueError, match="^min: "):
        m.create_vm("c", memory="1MiB", min="-1")
    m.destroy_vm("a")                       # its reservations are free again
    m.create_vm("c", memory="6MiB", min="4MiB")
    with pytest.raises(ValueError, match="^policy: expected a uvm.MemoryPolicy"):
        uvm.Machine("1MiB", policy="yes")  # type: ignore[arg-type]


def test_watched_pages_lose_nothing_and_report_touches(make_machine: Make) -> None:
    m = make_machine("16MiB")
    vm = m.create_vm("g", memory="8MiB")
    vm.run(Fill(seed=7)).join(30)
    watched = vm.watch_random(500)
    assert len(watched) == 500 and len(set(watched)) == 500
    assert vm.watched(watched) == ["untouched"] * 500
    touched = watched[:100]
    for i, p in enumerate(touched):         # reads and writes, each seen
        if i % 2:
            vm.memory[p * 4096 + 8] = vm.memory[p * 4096 + 8]
        else:
            assert vm.memory[p * 4096 + 8] is not None
    gone = watched[100:150]
    assert vm.evict(gone) == 50
    status = vm.watched(watched)
    assert status[:100] == ["touched"] * 100
    assert status[100:150] == ["gone"] * 50
    assert status[150:] == ["untouched"] * 350
    assert vm.stats()["watch_touched"] == 100
    m.check()                               # watched pages are resident, flagged
    vm.run(Verify(seed=7)).join(30)         # every byte, the watched and swapped ones too
    assert vm.watched(gone) == ["touched"] * 50     # swapped back in by the touch
    m.check()


def test_watch_names_bad_ppns(make_machine: Make) -> None:
    m = make_machine("4MiB")
    vm = m.create_vm("g", memory="1MiB")
    with pytest.raises(ValueError, match=r"^ppns: every PPN must be in \[0, 256\)"):
        vm.watch([256])
    assert vm.watch_random(10) == [] and vm.random_resident(10) == []


def run_phase(vm: uvm.VM, sampler: IdleSampler, set_pages: int, seconds: float,
              period: float) -> list[float]:
    """Runs a working set of set_pages for `seconds`, ticking the sampler once a period;
    returns the estimates after each tick."""
    run = vm.run(WorkingSet(size=set_pages * 4096, pattern="random", write_fraction=0.2, seed=3))
    seen = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(period)
            sampler.tick(period)
            seen.append(sampler.active)
    finally:
        run.stop()
        run.join(10)
    return seen


@pytest.mark.slow
def test_sampler_tracks_a_changing_working_set(make_machine: Make) -> None:
    """f is the fraction of resident pages in use. After the fast average has settled (3
    periods), the estimate is within 10 points of it as the set grows; as it shrinks, the
    fast average is within 10 points after 3 periods and the estimate (held up by the slow
    average, by design) gets there after ~15."""
    m = make_machine("64MiB")
    vm = m.create_vm("g", memory="16MiB")
    vm.run(Fill(seed=1)).join(30)
    pages = vm.pages
    sampler = IdleSampler(vm, period=0.15, size=100)
    sampler.tick(0.0)
    for fraction in (0.25, 0.75):           # growing
        seen = run_phase(vm, sampler, int(pages * fraction), 1.5, 0.15)
        settled = seen[3:]
        assert abs(statistics.median(settled) - fraction) <= 0.10, (fraction, seen)
    seen = run_phase(vm, sampler, int(pages * 0.25), 1.2, 0.15)     # shrinking
    fast = sampler.estimator.fast  # type: ignore[attr-defined]
    assert abs(fast - 0.25) <= 0.10, (fast, seen)
    seen = run_phase(vm, sampler, int(pages * 0.25), 2.5, 0.15)
    assert abs(statistics.median(seen[-5:]) - 0.25) <= 0.10, seen
    assert sampler.periods >= 30


def tax_run(make_machine: Make, tau: float) -> dict[str, int]:
    """Two VMs with equal shares on a machine that cannot hold both: one busy, one idle
    after touching its memory. Returns each one's target at the end."""
    policy = uvm.MemoryPolicy(tax_rate=tau, sample_period=0.5, target_period=0.5, tick=0.1)
    m = make_machine("32MiB", policy=policy)
    busy = m.create_vm("busy", memory="24MiB")
    idle = m.create_vm("idle", memory="24MiB")
    idle.run(Idle(touch="20MiB")).workload
    time.sleep(1.0)
    busy.run(WorkingSet(size="20MiB", pattern="random", seed=5))
    time.sleep(5.0)
    st = {vm.name: vm.stats() for vm in (busy, idle)}
    assert st["idle"]["active"] < 0.2 and st["busy"]["active"] > 0.8
    assert m.stats()["state"] in ("high", "soft", "hard", "low")
    snap = next(m.watch(0))
    assert snap.state == snap.machine["state"] and {v.name for v in snap.vms} == {"busy", "idle"}
    return {k: v["target"] for k, v in st.items()}


@pytest.mark.slow
def test_idle_memory_tax_moves_memory_to_the_active_vm(make_machine: Make) -> None:
    even = tax_run(make_machine, 0.0)
    assert abs(even["busy"] - even["idle"]) <= 0.1 * even["busy"], even
    taxed = tax_run(make_machine, 0.75)
    assert taxed["busy"] >= 0.98 * 5120, taxed     # all its working set (20 MiB)
    assert taxed["busy"] > 1.25 * even["busy"] and taxed["idle"] < 0.75 * even["idle"]


def test_cold_victims_prefer_untouched_pages(make_machine: Make) -> None:
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="16MiB")
    vm.run(Fill(seed=2)).join(30)
    hot = vm.pages // 4
    run = vm.run(WorkingSet(size=hot * 4096, pattern="random", write_fraction=0.0, seed=9))
    try:
        cold, rand = ColdVictims(lookahead=8), RandomVictims()
        cold.choose(vm, 200)                # no history yet: random, and watches a batch
        time.sleep(0.5)                     # the hot set is touched meanwhile
        picked = cold.choose(vm, 200)
        baseline = rand.choose(vm, 200)
    finally:
        run.stop()
        run.join(10)
    assert len(picked) == 200
    assert sum(p >= hot for p in picked) >= 0.97 * 200
    assert sum(p >= hot for p in baseline) < 0.9 * 200     # random takes hot pages too
    vm.run(Verify(seed=2, size=vm.size)).join(30)


def test_low_state_blocks_vms_above_target_and_loses_nothing(make_machine: Make) -> None:
    """Thresholds so high that a VM larger than the machine drives it into the low state:
    the VM is blocked while above its target, runs again when memory frees, and finishes
    writing and reading every page."""
    policy = uvm.MemoryPolicy(thresholds=Thresholds(high=0.6, soft=0.5, hard=0.4, low=0.3),
                              estimator=LastPeriod, sample_period=0.2, target_period=0.2,
                              tick=0.05)
    m = make_machine("8MiB", policy=policy)
    vm = m.create_vm("big", memory="16MiB")
    run = vm.run(Fill(seed=4))
    states, blocked = set(), 0
    while not run.done:
        states.add(m.stats()["state"])
        blocked += vm.blocked
        time.sleep(0.01)
    run.join()
    assert "low" in states and blocked > 0
    assert vm.stats()["host_paged"] > 0
    vm.run(Verify(seed=4)).join(60)
    assert m.memfd_pages() <= 2048
    m.close()
    assert not vm.blocked


def test_vms_come_and_go_under_the_scheduler(make_machine: Make) -> None:
    """Creating and destroying VMs while the scheduler samples, retargets and pages them
    (tick 10 ms, so it races every step): nothing breaks, the survivors lose nothing."""
    policy = uvm.MemoryPolicy(sample_period=0.05, target_period=0.02, tick=0.01,
                              sample_size=200)
    m = make_machine("4MiB", policy=policy)
    keep = m.create_vm("keep", memory="3MiB")
    keep.run(Fill(seed=11)).join(30)
    for i in range(12):
        vm = m.create_vm(f"tmp{i}", memory="2MiB")
        vm.run(Fill(seed=i)).join(30)
        time.sleep(0.03)
        m.destroy_vm(vm)
    keep.run(Verify(seed=11)).join(30)
    assert m.scheduler is not None and m.scheduler.error is None
    m.check()
    m.close()                               # re-raises a scheduler error, if there was one


SOFT_ONLY = Thresholds(high=0.30, soft=0.25, hard=0.02, low=0.01)   # a wide soft band


def watch_states(m: uvm.Machine, vm: uvm.VM, timeout: float = 60.0) -> tuple[list[str], int]:
    """Polls the reclamation state until it has gone from high to something worse and back
    to high (or timeout); returns the states seen, in order without repeats, and the largest
    balloon (or host paging instead) seen on vm."""
    seen, most = ["high"], 0
    end = time.monotonic() + timeout
    while time.monotonic() < end and not (len(seen) > 2 and seen[-1] == "high"):
        state = m.stats()["state"]
        if state != seen[-1]:
            seen.append(state)
        st = vm.stats()
        most = max(most, st["balloon_size"] + st["balloon_paged"])
        time.sleep(0.01)
    return seen, most


def test_soft_state_inflates_the_guests_balloon_until_memory_is_free_again(make_machine: Make, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A guest with the toy OS and its balloon driver writes 26 MiB on a 32 MiB machine:
    free memory falls to under 25%, into the (wide) soft band. The scheduler reclaims by
    ballooning alone: the balloon inflates, the guest pages its own memory out, free memory
    comes back and the state returns to high; the host pages nothing and no byte is lost.
    If reclamation did nothing, free memory would stay at 19% and the state soft."""
    import uvm.guest
    from workloads import GuestChecked

    policy = uvm.MemoryPolicy(thresholds=SOFT_ONLY, estimator=LastPeriod, sample_period=0.2,
                              target_period=0.2, tick=0.05)
    m = make_machine("32MiB", policy=policy)
    vm = m.create_vm("guest", memory="28MiB")
    uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon_period=0.02)
    checked = GuestChecked("26MiB", seed=3)
    run = vm.run(checked)
    states, most = watch_states(m, vm)
    assert states[:3] == ["high", "soft", "high"], states
    st = vm.stats()
    assert most > 0 and st["guest_swapouts"] > 0
    assert st["host_paged"] == st["balloon_paged"] == st["swapouts"] == 0
    run.stop()
    run.join(30)
    checked.verify_all()
    m.check()


def test_soft_state_pages_a_vm_that_cannot_balloon_instead(make_machine: Make) -> None:
    """The same pressure from a VM without a guest OS (no balloon driver): in the soft
    state the scheduler pages it instead, counted as balloon_paged, until memory is free
    again; every byte comes back."""
    policy = uvm.MemoryPolicy(thresholds=SOFT_ONLY, estimator=LastPeriod, sample_period=0.2,
                              target_period=0.2, tick=0.05)
    m = make_machine("32MiB", policy=policy)
    vm = m.create_vm("plain", memory="28MiB")
    run = vm.run(Fill(seed=8, size="26MiB"))
    states, most = watch_states(m, vm)
    run.join(30)
    assert states[:3] == ["high", "soft", "high"], states
    st = vm.stats()
    assert most > 0 and st["balloon_paged"] > 0 and st["balloon_size"] == 0
    assert st["host_paged"] >= st["balloon_paged"] and st["swapouts"] + st["swapouts_zero"] > 0
    vm.run(Verify(seed=8, size="26MiB")).join(60)
    m.check()


def test_targets_hand_out_the_memory_sharing_saved(make_machine: Make) -> None:
    """A VM's allocation counts every page it maps shared, so the targets must count the
    frames sharing saved as available too: two 2 MiB VMs holding the same 2 MiB use half of
    a 4 MiB machine, and neither is over its target. (Before, the targets added up to
    machine memory less the high threshold, 962 pages, against 1024 pages of allocation:
    both VMs counted as over target, to be reclaimed from a machine half free.)"""
    policy = uvm.MemoryPolicy(target_period=0.05, tick=0.05)
    m = make_machine("4MiB", sharing=True, share_rate=0, policy=policy)
    a, b = m.create_vm("a", memory="2MiB"), m.create_vm("b", memory="2MiB")
    data = b"".join((b"page %d " % p * 600)[:4096] for p in range(512))
    a.memory[:] = data
    half = len(data) // 2
    for part in (slice(0, half), slice(half, len(data))):      # never more than 768 frames
        b.memory[part] = data[part]
        m.share_now()
        m.share_now()
    st = m.stats()
    assert (st["frames_used"], st["sharing"], st["saved"]) == (512, 1024, 512), st
    deadline = time.monotonic() + 10            # wait for a tick after the merge ...
    while [vm.stats()["allocated"] for vm in (a, b)] != [512, 512] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)                             # ... and a few retargets after it
    targets = [vm.stats()["target"] for vm in (a, b)]
    assert targets == [512, 512], targets
    for vm in (a, b):
        assert vm.read(0, len(data)) == data
