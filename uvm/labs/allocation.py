"""Lab allocation: the allocation policy with the idle memory tax (paper sections 5.1 and 5.2).

The grader needs no machine: it asks the student's policy for targets on seeded sets of
VMs (shares, min, max, demand, active fraction) and checks properties that any correct
min-funding revocation with an idle tax has, never one exact number: targets within
[min, max], nothing reclaimed that need not be and no more than machine memory handed
out, share-proportional at tau = 0, an idle VM losing memory to an active one as tau grows,
the revocation order equalizing rho, and more shares never meaning less memory."""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from types import ModuleType

from uvm.labs.base import Check, Feedback, Lab, Outcome, solution_class
from uvm.policy import AllocationPolicy, VMInfo

SCENARIOS = 40
TAUS = (0.0, 0.25, 0.5, 0.75, 0.9)


def _targets(module: ModuleType, tau: float, vms: Sequence[VMInfo], available: int) -> dict[str, int]:
    """The student's targets, or Feedback unless every VM has an integer one."""
    policy = solution_class(module, LAB, AllocationPolicy)(tax_rate=tau)
    out = policy.targets(list(vms), available)
    if not isinstance(out, dict):
        raise Feedback(f"targets() returned {type(out).__name__}, not a dict of name -> pages")
    for v in vms:
        t = out.get(v.name)
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise Feedback(f"targets() gave VM {v.name!r} {t!r}, not a whole number of pages")
    return {v.name: int(out[v.name]) for v in vms}


def _random_vms(rng: random.Random) -> tuple[list[VMInfo], int]:
    """2 to 5 VMs and the pages available to them (every min fits; often overcommitted)."""
    vms = []
    for i in range(rng.randint(2, 5)):
        size = rng.randrange(256, 4097)
        low = rng.choice([0, rng.randrange(size // 2)])
        demand = rng.randrange(low, size + 1)
        vms.append(VMInfo(f"vm{i}", rng.randrange(100, 4001), low, size, demand, demand,
                          rng.choice([0.0, 1.0, rng.random()])))
    mins, demands = sum(v.min for v in vms), sum(v.demand for v in vms)
    return vms, rng.randrange(mins, max(mins + 1, int(demands * 1.3)))


def _binding_min() -> tuple[list[VMInfo], int]:
    """An idle VM whose min holds it up against an active one."""
    return [VMInfo("idle", 1000, 2048, 4096, 4096, 4096, 0.0),
            VMInfo("busy", 1000, 0, 4096, 4096, 4096, 1.0)], 4096


def within_limits(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    cases = [(*_random_vms(rng), rng.choice(TAUS)) for _ in range(SCENARIOS)]
    cases.append((*_binding_min(), 0.9))
    for vms, available, tau in cases:
        out = _targets(module, tau, vms, available)
        for v in vms:
            if not v.min <= out[v.name] <= v.max:
                return Outcome(False, f"VM {v.name!r} (min {v.min}, max {v.max}) got {out[v.name]} "
                                      f"pages (tau {tau}, {available} available)",
                               "clamp every target to [min, max]: min is guaranteed, max is the "
                               "VM's size")
    return Outcome(True, f"{len(cases)} scenarios, every target within [min, max]")


def fits(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    for _ in range(SCENARIOS):
        vms, available = _random_vms(rng)
        tau = rng.choice(TAUS)
        out = _targets(module, tau, vms, available)
        total = sum(out.values())
        wanted = sum(v.demand for v in vms)
        if total > available:
            return Outcome(False, f"targets add up to {total} pages, {total - available} more than "
                                  f"the {available} available (tau {tau})",
                           "revoke pages until the targets fit in what is available")
        if wanted > available and total < available - len(vms):
            return Outcome(False, f"targets add up to {total} pages of {available} available while "
                                  f"the VMs want {wanted}: {available - total} pages left unused",
                           "revoke only until the excess is gone, not more")
        short = [v.name for v in vms if wanted <= available and out[v.name] < v.demand]
        if short:
            return Outcome(False, f"every demand fits ({wanted} of {available} pages) but VM "
                                  f"{short[0]!r} got less than it uses",
                           "reclaim nothing while the demands fit in machine memory")
    return Outcome(True, f"{SCENARIOS} scenarios: targets fit in memory, none revoked needlessly")


def proportional(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    available = 8192
    worst = 0.0
    for _ in range(10):
        vms = [VMInfo(f"vm{i}", rng.randrange(200, 4001), 0, available, available, available,
                      rng.random()) for i in range(rng.randint(2, 4))]
        out = _targets(module, 0.0, vms, available)
        shares = sum(v.shares for v in vms)
        for v in vms:
            fair = available * v.shares / shares
            worst = max(worst, abs(out[v.name] - fair) / available)
    ok = worst <= 0.02
    return Outcome(ok, f"at tau = 0, targets differ from the share-proportional split by at most "
                       f"{worst:.1%} of memory (want <= 2%)",
                   "with tau = 0 an idle page costs what an active one does: revocation by "
                   "S / P alone divides memory in proportion to shares")


def _two(f_idle: float, f_busy: float, available: int) -> list[VMInfo]:
    return [VMInfo("idle", 1000, 0, available, available, available, f_idle),
            VMInfo("busy", 1000, 0, available, available, available, f_busy)]


def idle_pays(module: ModuleType, seed: int) -> Outcome:
    available = 8192
    idle = [_targets(module, tau, _two(0.1, 0.9, available), available)["idle"] for tau in TAUS]
    shown = ", ".join(f"{t:.2f}: {p}" for t, p in zip(TAUS, idle))
    steady = all(b <= a + available // 100 for a, b in zip(idle, idle[1:]))
    ok = steady and idle[TAUS.index(0.75)] <= 0.4 * available
    return Outcome(ok, f"the idle VM's target (of {available}) by tau: {shown}",
                   "an idle page must cost k = 1 / (1 - tau) times an active one: the idle VM's "
                   "target should shrink as tau grows (below 40% at tau 0.75)")


def rho_equal(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    available = 8192
    worst = 1.0
    for _ in range(10):
        tau = rng.choice(TAUS[1:])
        vms = [VMInfo(f"vm{i}", rng.randrange(500, 2001), 0, available, available, available,
                      rng.uniform(0.05, 1.0)) for i in range(rng.randint(2, 3))]
        out = _targets(module, tau, vms, available)
        k = 1 / (1 - tau)
        rho = [v.shares / (max(1, out[v.name]) * (v.active + k * (1 - v.active))) for v in vms]
        worst = max(worst, max(rho) / min(rho))
    ok = worst <= 1.1
    return Outcome(ok, f"largest ratio of two VMs' rho after revocation: {worst:.3f} (want <= 1.1)",
                   "min-funding revocation takes from the VM with the lowest "
                   "rho = S / (P (f + k (1 - f))) until the excess is gone, which leaves the rhos "
                   "of VMs above their min equal")


def monotone(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    for _ in range(SCENARIOS // 2):
        vms, available = _random_vms(rng)
        tau = rng.choice(TAUS)
        i = rng.randrange(len(vms))
        before = _targets(module, tau, vms, available)[vms[i].name]
        richer = list(vms)
        richer[i] = VMInfo(vms[i].name, vms[i].shares * 2, vms[i].min, vms[i].max,
                           vms[i].allocated, vms[i].demand, vms[i].active)
        after = _targets(module, tau, richer, available)[vms[i].name]
        if after < before - available // 100:
            return Outcome(False, f"VM {vms[i].name!r} got {before} pages with {vms[i].shares} "
                                  f"shares and {after} with twice as many (tau {tau})",
                           "more shares must never mean less memory: rho grows with S")
    return Outcome(True, f"{SCENARIOS // 2} scenarios: doubling a VM's shares never lowered its "
                         f"target")


STARTER = '''\
"""Lab allocation: the idle memory tax (read HANDOUT.md first).

Complete class Allocation, then run `uvm lab check allocation` in this directory."""

from collections.abc import Sequence

from uvm.policy import AllocationPolicy, VMInfo


class Allocation(AllocationPolicy):
    """Min-funding revocation with an idle memory tax of rate tau (tax_rate)."""

    def __init__(self, tax_rate: float = 0.75) -> None:
        self.tax_rate = tax_rate

    def targets(self, vms: Sequence[VMInfo], available: int) -> dict[str, int]:
        # TODO: return {vm.name: target pages} for every VM, each in [vm.min, vm.max], adding
        # up to at most `available`. Start each VM at its demand (within [min, max]). While
        # the targets add up to more than `available`, revoke a small chunk of pages from the
        # VM with the lowest adjusted shares-per-page ratio
        #     rho = S / (P * (f + k * (1 - f))),   k = 1 / (1 - tau)
        # (S = vm.shares, P = its current target, f = vm.active), never below its min, and
        # recompute its rho. tau = 0 must give a share-proportional split.
        raise NotImplementedError("TODO: min-funding revocation with the idle memory tax")
'''

LAB = Lab(
    name="allocation", title="the idle memory tax", section="sections 5.1 and 5.2 (share-based allocation, reclaiming idle memory)",
    module="allocation.py", cls="Allocation",
    build="""
An `uvm.policy.AllocationPolicy`: given one `VMInfo` per VM (name, shares S, min, max,
the pages it holds, its demand, its active fraction f) and the pages available to all
VMs, return a target per VM. Use min-funding revocation with the idle memory tax: start
each VM at its demand; while the VMs do not fit, revoke pages from the VM with the lowest
adjusted shares-per-page ratio

    rho = S / (P (f + k (1 - f))),   k = 1 / (1 - tau)

never below its min. The constructor takes `tax_rate` (tau, in [0, 1)).""",
    why="""
Pure proportional share lets a VM hoard memory it does not use while an active one pages.
The paper's answer is a tax on idle memory: an idle page costs k times an active one, so
when memory is short an idle VM loses pages first, but never below what its shares (and
min) guarantee. tau = 0 is plain proportional share; tau near 1 reclaims nearly all idle
memory. Plug yours in with `uvm.MemoryPolicy(allocation=Allocation(0.75))` and run
`uvm experiment idle-tax` to see it move memory between VMs.""",
    starter=STARTER,
    checks=(
        Check("targets within [min, max]", "on random scenarios (and one where an idle VM's min "
              "binds), every VM gets a whole number of pages between its min and its max",
              within_limits),
        Check("fits in memory, reclaims only what is needed", "targets add up to at most the "
              "pages available; when overcommitted nearly all of them are handed out; when every "
              "demand fits no VM gets less than its demand", fits),
        Check("tau = 0 is share-proportional", "with no tax, VMs that each want all of memory get "
              "it in proportion to their shares (within 2%), whatever their activity", proportional),
        Check("the idle VM pays the tax", "of two VMs with equal shares, the idle one's target "
              "never grows as tau goes from 0 to 0.9, and is below 40% at tau 0.75", idle_pays),
        Check("revocation equalizes rho", "after min-funding revocation, VMs above their min end "
              "with (nearly) equal rho", rho_equal),
        Check("more shares never mean less memory", "doubling one VM's shares never lowers its "
              "target", monotone),
    ))
