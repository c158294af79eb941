"""The memory scheduler: the policy loop of paper section 6, on one named Python thread.

Every `tick` seconds it
  1. advances each VM's idle sampler (uvm.sampler) by the VM's run time;
  2. reads free machine memory and moves the reclamation state (uvm.policy.states);
  3. every `target_period` seconds, or at once when the state gets worse, asks the
     allocation policy for targets: machine memory less the high threshold's free memory,
     plus the frames page sharing saved, shared among the VMs (uvm.policy.allocation);
  4. reclaims toward the targets as the state says: in soft, by setting balloon targets
     (paging only VMs whose balloon is absent, disabled or full); in hard, by paging too,
     with victims from the victim policy; in low, also by blocking VMs above their target
     (their workloads pause between steps, as if descheduled) until memory frees. In high
     it reclaims nothing but lets balloons of VMs below their target deflate.
Paging per tick is bounded (1/16 of machine memory), taken from the VMs furthest above
their targets first. The targets also go to the C core, whose own evictions (no free frame
on a fault, the background reclaim) then take frames of VMs above their target first.

The C core needs none of this to be safe: when no frame is free the pager evicts random
pages itself, and a background thread keeps a few frames (under 1%) free. The scheduler
only decides who gives memory back before it comes to that, and it may be late."""

from __future__ import annotations

import errno
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from uvm.errors import SwapFull, VMStopped
from uvm.policy.allocation import AllocationPolicy, IdleTax, VMInfo, check_tax_rate
from uvm.policy.estimate import ActivityEstimator, PaperEstimator
from uvm.policy.states import STATES, ReclaimStates, Thresholds
from uvm.policy.victims import RandomVictims, VictimPolicy
from uvm.periods import check_seconds
from uvm.sampler import DEFAULT_PERIOD, DEFAULT_SIZE, IdleSampler, check_size

PAGING_SHARE = 16      # the scheduler pages at most 1/16 of machine memory per tick

if TYPE_CHECKING:
    from uvm.machine import Machine
    from uvm.vm import VM


@dataclass
class MemoryPolicy:
    """How the machine shares its memory (Machine(policy=MemoryPolicy(...))). `allocation`
    defaults to IdleTax(tax_rate); `estimator` makes one estimator per VM."""
    tax_rate: float = 0.75
    allocation: AllocationPolicy | None = None
    victims: VictimPolicy = field(default_factory=RandomVictims)
    estimator: Callable[[], ActivityEstimator] = PaperEstimator
    thresholds: Thresholds = field(default_factory=Thresholds)
    sample_period: float = DEFAULT_PERIOD
    sample_size: int = DEFAULT_SIZE
    target_period: float = 5.0
    tick: float = 0.25

    def __post_init__(self) -> None:
        check_tax_rate(self.tax_rate)
        check_seconds(self.sample_period, "sample_period")
        check_size(self.sample_size)
        check_seconds(self.target_period, "target_period")
        check_seconds(self.tick, "tick")
        for name, cls in (("allocation", AllocationPolicy), ("victims", VictimPolicy)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ValueError(f"{name}: expected a {cls.__name__}, got {value!r}")
        if not isinstance(self.thresholds, Thresholds):
            raise ValueError(f"thresholds: expected a Thresholds, got {self.thresholds!r}")
        if not callable(self.estimator):
            raise ValueError(f"estimator: expected a class or factory of ActivityEstimator, "
                             f"got {self.estimator!r}")


@dataclass
class VMPolicyState:
    """What the scheduler last decided for one VM (shown in stats and the live view)."""
    target: int
    allocated: int = 0
    reclaim: str = "none"       # none, balloon, paging or both (swap-full, swap-error or
                                # map-limit: its paging failed, the pages stayed): last tick
    paged: int = 0              # pages the scheduler paged out of it, in all


class MemoryScheduler:
    """Runs a MemoryPolicy on a machine (Machine(policy=...) starts one)."""

    def __init__(self, machine: Machine, policy: MemoryPolicy) -> None:
        self.machine = machine
        self.policy = policy
        self.allocation = policy.allocation or IdleTax(policy.tax_rate)
        self.states = ReclaimStates(policy.thresholds)
        self.free = 1.0
        self.error: BaseException | None = None
        self.vm_state: dict[str, VMPolicyState] = {}
        self._targets_at = float("-inf")
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="uvm-memsched", daemon=True)
        self._thread.start()

    @property
    def state(self) -> str:
        return self.states.state

    @property
    def tax_rate(self) -> float:
        """tau of the allocation policy, if it has one (settable at run time)."""
        return float(getattr(self.allocation, "tax_rate", 0.0))

    @tax_rate.setter
    def tax_rate(self, tau: float) -> None:
        if not hasattr(self.allocation, "tax_rate"):
            raise ValueError(f"tax_rate: the allocation policy {type(self.allocation).__name__} "
                             f"has no tax rate")
        self.allocation.tax_rate = check_tax_rate(tau)
        self._targets_at = float("-inf")

    def attach(self, vm: VM) -> None:
        """A new VM: give it a sampler and a target (its max until the next recompute)."""
        vm.sampler = IdleSampler(vm, self.policy.estimator(), self.policy.sample_period,
                                 self.policy.sample_size)
        with self._lock:
            self.vm_state[vm.name] = VMPolicyState(target=vm.max)
        self._targets_at = float("-inf")

    def detach(self, vm: VM) -> None:
        with self._lock:
            self.vm_state.pop(vm.name, None)
        self.policy.victims.forget(vm)
        self._targets_at = float("-inf")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for vm in self.machine.vms:
            vm._unblock()
            vm._set_target(None)

    def _main(self) -> None:
        try:
            while not self._stop.wait(self.policy.tick):
                self.step()
        except BaseException as e:      # re-raised by Machine.close()
            if not self.machine.closed:
                self.error = e
        finally:
            for vm in self.machine.vms:
                vm._unblock()

    # -- one tick -------------------------------------------------------------------------

    def step(self) -> None:
        """One pass of the loop (the thread calls it every tick; tests may call it too)."""
        now = time.monotonic()
        dt, self._last = now - self._last, now
        vms = [vm for vm in self.machine.vms if vm.sampler is not None]
        for vm in vms:
            if not vm.blocked:
                try:
                    vm.sampler.tick(dt)  # type: ignore[union-attr]
                except VMStopped:
                    pass                        # destroyed meanwhile
        totals, stats = self.machine.stats_with_vms(vms)
        self.free = totals["frames_free"] / totals["frames_total"]
        before = self.state
        state = self.states.update(self.free)
        worse = STATES.index(state) > STATES.index(before)
        if worse or now - self._targets_at >= self.policy.target_period:
            self._targets_at = now
            self._retarget(vms, stats, totals)
        self._reclaim(vms, stats, totals)

    def _retarget(self, vms: list[VM], stats: list[dict[str, Any]], totals: dict[str, Any]) -> None:
        infos = [VMInfo(vm.name, vm.shares, vm.min, vm.max, allocated(st), demand(vm, st),
                        vm.sampler.active)  # type: ignore[union-attr]
                 for vm, st in zip(vms, stats)]
        # Targets are in the currency of `allocated`, which counts a shared frame once for
        # every VM that maps it: the frames sharing saved are available on top of machine
        # memory. Without them the targets of VMs that share add up to less than they hold
        # in real frames, and they would be reclaimed from a machine with memory to spare.
        frames = totals["frames_total"]
        available = frames - high_frames(self.policy.thresholds, frames) + totals["saved"]
        targets = self.allocation.targets(infos, available)
        with self._lock:
            for vm in vms:
                if vm.name in self.vm_state:
                    target = max(vm.min, min(vm.max, int(targets[vm.name])))
                    self.vm_state[vm.name].target = target
                    vm._set_target(target)

    def _reclaim(self, vms: list[VM], stats: list[dict[str, Any]], totals: dict[str, Any]) -> None:
        state = self.state
        budget = max(1, totals["frames_total"] // PAGING_SHARE)
        order = []
        for vm, st in zip(vms, stats):
            ps = self.vm_state.get(vm.name)
            if ps is None:
                continue
            ps.allocated = allocated(st)
            ps.reclaim = "none"
            excess = ps.allocated - ps.target
            order.append((excess, vm, ps))
            if state == "high" or not vm.balloon.active:
                if excess < 0 and vm.balloon.target > 0:        # room again: deflate
                    vm.balloon.target = max(0, vm.balloon.target + excess)
                continue
            want = max(0, min(vm.balloon.max_pages, vm.balloon.size + excess))
            vm.balloon.target = want
            if excess > 0 and want > vm.balloon.size:
                ps.reclaim = "balloon"
        order.sort(key=lambda x: -x[0])
        for excess, vm, ps in order:
            if state == "low" and excess > 0:
                vm._block()
            else:
                vm._unblock()
            if state == "high" or excess <= 0 or budget <= 0:
                continue
            can_balloon = vm.balloon.active and vm.balloon.target < vm.balloon.max_pages
            if state == "soft" and can_balloon:
                continue
            try:
                if state == "soft":             # paging instead of the balloon
                    paged = vm.balloon.page_instead(min(excess, budget), partial(self._page, vm))
                else:
                    paged = self._page(vm, min(excess, budget))
            except SwapFull:
                ps.reclaim = "swap-full"        # the pages stay; the C core copes or stops it
                continue
            except VMStopped:
                continue                        # destroyed meanwhile
            except OSError as e:
                # the victims stay resident; try again next tick. EIO: the swap device failed
                # the write (swap_errors counts it); EMFILE: no mapping left to unshare one
                if e.errno not in (errno.EIO, errno.EMFILE):
                    raise
                ps.reclaim = "swap-error" if e.errno == errno.EIO else "map-limit"
                continue
            budget -= paged
            ps.paged += paged
            ps.reclaim = "both" if ps.reclaim == "balloon" else "paging" if paged else ps.reclaim

    def _page(self, vm: VM, count: int) -> int:
        """Pages out up to count pages of vm that the victim policy picks; returns how many."""
        victims = self.policy.victims.choose(vm, count)
        return vm.evict(victims[:count]) if victims else 0

    # -- for stats ------------------------------------------------------------------------

    def vm_stats(self, vm: VM) -> dict[str, Any]:
        with self._lock:
            ps = self.vm_state.get(vm.name)
        if ps is None:
            return {}
        sampler = vm.sampler
        return {"target": ps.target, "allocated": ps.allocated, "reclaim": ps.reclaim,
                "host_paged": ps.paged, "active": round(sampler.active, 4) if sampler else 1.0}


def allocated(st: dict[str, Any]) -> int:
    """Machine memory a VM holds: its resident pages and the pages it maps shared."""
    return int(st["resident"]) + int(st["sharing"])


def demand(vm: VM, st: dict[str, Any]) -> int:
    """Pages a VM would hold unconstrained: what it holds, what the host paged out of it,
    and what its balloon took; never more than its max."""
    return min(vm.max, allocated(st) + int(st["swapped"]) + int(st["ballooned"]))


def high_frames(thresholds: Thresholds, frames: int) -> int:
    """Free frames the high threshold asks for (rounded up, so that reaching it is high)."""
    return math.ceil(thresholds.high * frames)
