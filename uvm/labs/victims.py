"""Lab victims: a victim policy for host paging (paper section 3: 3.1 and 3.3).

The grader plays the host's memory scheduler itself, synchronously, so that a scenario
replays the same accesses for a given seed: a VM on a machine with room to spare (the C
core never evicts on its own) touches its pages from the grader's thread, mostly a hot set
with some cold pages mixed in; after every round the grader asks the policy for the pages
the VM holds above its budget and pages them out (vm.evict), as the scheduler does in the
hard state. Swap-ins count the policy's mistakes. The same scenario runs with RandomVictims,
the paper's choice, for comparison. The machine is seeded too (Machine(seed=...)), so the
C core's random choices (vm.random_resident, vm.watch_random) replay with the accesses.

The double-paging check boots the toy guest OS, whose process holds more than the VM has,
so the guest pages to its own swap by LRU while the host pages by the policy: a guest
swap-out of a page the host had already swapped out is double paging."""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType

import uvm.guest
from uvm._binding import ffi
from uvm.labs.base import Check, Feedback, Lab, Outcome, solution_class
from uvm.machine import Machine
from uvm.policy import RandomVictims, VictimPolicy
from uvm.sizes import PAGE_SIZE
from uvm.vm import VM

VM_PAGES = 1024         # 4 MiB
HOT = 160               # pages of the hot set
BUDGET = 320            # pages the host lets the VM keep
ROUNDS = 40
ACCESSES = 600          # per round
HOT_FRACTION = 0.95
BATCH = 128             # guest pages touched at once (the guest cannot reclaim busy pages)
MACHINE = "16MiB"       # room to spare: the C core never evicts on its own


def _new(module: ModuleType) -> VictimPolicy:
    return solution_class(module, LAB, VictimPolicy)()


@dataclass
class Paging:
    """What host paging with one policy cost in one scenario."""
    asked: int = 0          # pages the host asked the policy for
    paged: int = 0          # pages it paged out
    swapins: int = 0
    double: int = 0         # guest swap-outs of pages the host had swapped out
    guest_swapouts: int = 0


def reclaim(vm: VM, policy: VictimPolicy, budget: int, paging: Paging) -> None:
    """Pages vm down to `budget` resident pages with the policy's victims, as the memory
    scheduler would; Feedback if the policy returns something that is not PPNs of vm."""
    count = vm.stats()["resident"] - budget
    if count <= 0:
        return
    victims = policy.choose(vm, count)
    if not isinstance(victims, list) or any(isinstance(p, bool) or not isinstance(p, int)
                                            or not 0 <= p < vm.pages for p in victims):
        raise Feedback(f"choose(vm, {count}) returned {victims!r:.80}: return a list of PPNs "
                       f"(ints in [0, {vm.pages}))")
    paging.asked += count
    paging.paged += vm.evict(victims[:count])


def hot_set(policy: VictimPolicy, seed: int) -> Paging:
    """The hot-set scenario under one policy: swap-ins and pages paged out."""
    rng = random.Random(seed)
    paging = Paging()
    with Machine(memory=MACHINE, reclaim=False, seed=seed) as m:
        vm = m.create_vm("guest", memory=VM_PAGES * PAGE_SIZE)
        hot = rng.sample(range(VM_PAGES), HOT)
        for ppn in range(VM_PAGES):                     # every page in use once
            vm.write(ppn * PAGE_SIZE, ppn.to_bytes(4, "little"))
        reclaim(vm, policy, BUDGET, paging)
        before = vm.stats()["swapins"]
        for _ in range(ROUNDS):
            for _ in range(ACCESSES):
                ppn = rng.choice(hot) if rng.random() < HOT_FRACTION else rng.randrange(VM_PAGES)
                if vm.read(ppn * PAGE_SIZE, 4) != ppn.to_bytes(4, "little"):
                    raise Feedback(f"page {ppn} came back with the wrong content")
            reclaim(vm, policy, BUDGET, paging)
        paging.swapins = vm.stats()["swapins"] - before
        policy.forget(vm)
    return paging


def _asked_for(name: str, p: Paging) -> str:
    return f"{name} paged out {p.paged} of the {p.asked} pages asked"


def pages_out(module: ModuleType, seed: int) -> Outcome:
    p = hot_set(_new(module), seed)
    ok = p.paged >= 0.9 * p.asked
    return Outcome(ok, _asked_for("your policy", p),
                   "return `count` resident PPNs: a policy that pages out less than asked just "
                   "leaves the host short of memory")


def beats_random(module: ModuleType, seed: int) -> Outcome:
    yours, theirs = hot_set(_new(module), seed), hot_set(RandomVictims(), seed)
    ok = yours.swapins < 0.8 * theirs.swapins and yours.paged >= 0.9 * yours.asked
    return Outcome(ok, f"swap-ins: yours {yours.swapins}, RandomVictims {theirs.swapins} "
                       f"({yours.swapins / max(1, theirs.swapins):.2f}x; want < 0.8x); "
                       f"{_asked_for('yours', yours)}",
                   "page out pages the guest has not touched lately: vm.watch(ppns) unmaps pages "
                   "so that vm.watched(ppns) later says which the guest touched since")


def double_paging(policy: VictimPolicy, seed: int) -> Paging:
    """A guest OS with its own swap, whose process cycles through more than the VM holds,
    paged by the host with the policy at the same time."""
    rng = random.Random(seed)
    paging = Paging()
    with Machine(memory=MACHINE, reclaim=False, seed=seed) as m:
        vm = m.create_vm("guest", memory=VM_PAGES * PAGE_SIZE)
        gos = uvm.guest.boot(vm, disk_latency=0, balloon=False)
        proc = gos.spawn("worker")
        vpns = list(proc.alloc(VM_PAGES + VM_PAGES // 2))
        hot = rng.sample(vpns, HOT)
        crng = ffi.new("uint64_t[1]", [rng.getrandbits(63) | 1])
        for first in range(0, len(vpns), BATCH):
            proc.touch(vpns[first:first + BATCH], 1.0, crng)
        for r in range(ROUNDS // 2):
            first = (r * 97) % len(vpns)
            for touched in (hot[:BATCH], hot[BATCH:], vpns[first:first + BATCH]):
                proc.touch(touched, 0.5, crng)
            reclaim(vm, policy, 2 * BUDGET, paging)
        paging.swapins = vm.stats()["swapins"]
        paging.double, paging.guest_swapouts = gos.double_paging, gos.swapouts
        policy.forget(vm)
    return paging


def measures_double_paging(module: ModuleType, seed: int) -> Outcome:
    yours, theirs = double_paging(_new(module), seed), double_paging(RandomVictims(), seed)
    ok = yours.paged >= 0.9 * yours.asked and yours.guest_swapouts > 0
    return Outcome(ok, f"with yours {yours.double} of the guest's "
                       f"{yours.guest_swapouts} swap-outs were of pages the host had swapped out "
                       f"({yours.double / max(1, yours.guest_swapouts):.0%}), with RandomVictims "
                       f"{theirs.double} of {theirs.guest_swapouts} "
                       f"({theirs.double / max(1, theirs.guest_swapouts):.0%})",
                   "page out what is asked in a guest that pages too; then explain the figure "
                   "(HANDOUT.md, question 2)")


STARTER = '''\
"""Lab victims: a victim policy for host paging (read HANDOUT.md first).

Complete class Victims, then run `uvm lab check victims` in this directory."""

from uvm.policy import VictimPolicy
from uvm.vm import VM


class Victims(VictimPolicy):
    """Chooses which of a VM's pages the host pages out."""

    def __init__(self) -> None:
        # TODO: anything you keep between calls (e.g. the pages you watched last time,
        # per VM name).
        pass

    def choose(self, vm: VM, count: int) -> list[int]:
        # TODO: return up to `count` PPNs of resident pages of vm to page out, preferring
        # pages the guest has not touched lately. Useful calls: vm.random_resident(n),
        # vm.watch(ppns) (unmaps them, so the guest's next touch of each is seen),
        # vm.watched(ppns) ("touched", "untouched" or "gone" since watched).
        raise NotImplementedError("TODO: return `count` PPNs to page out, cold pages first")

    def forget(self, vm: VM) -> None:
        # TODO (optional): the VM is gone: drop anything you keep about it.
        pass
'''

LAB = Lab(
    name="victims", title="a victim policy for host paging",
    section="section 3 (3.1 on double paging, 3.3 on demand paging)", module="victims.py", cls="Victims",
    build="""
A `uvm.policy.VictimPolicy`: when the host must take memory from a VM and cannot balloon,
it pages the VM's pages out to its swap file. Your `choose(vm, count)` picks which: return
up to `count` PPNs of resident pages. ESX picks at random; you will do better on a guest
with a hot set, using the same trick as idle sampling: `vm.watch(ppns)` unmaps pages
(their frames stay), so `vm.watched(ppns)` tells later whether the guest touched each one
since. A page untouched since you watched it is a good victim.

The grader plays the memory scheduler: after each round of accesses it asks your policy
for the pages the VM holds above its budget and pages them out.

Questions for your write-up: (1) how much better than random is your policy, and what does
watching pages cost the guest? (2) the double-paging check runs a guest OS that pages to
its own swap by LRU: why does a host policy that pages out cold pages collide with the
guest's own reclaim more than random does, and why does ballooning avoid the problem?""",
    why="""
A host that pages blindly evicts pages the guest is about to use, and every such mistake
is a swap-in the guest waits for. Guessing better sounds easy, but the host's guess and
the guest's own replacement policy are both looking for the "oldest" pages: the guest
later picks the same cold page to write to its own swap, and the host must first read it
back from the host's swap just so the guest can write it out (double paging). That is why
the paper pages at random and prefers ballooning, which lets the guest choose. Run your
policy in a whole machine with `uvm.MemoryPolicy(victims=Victims())`.""",
    starter=STARTER,
    checks=(
        Check("pages out what is asked", "in the hot-set scenario, your policy's victims cover at "
              "least 90% of the pages the host asked for", pages_out, timeout=30.0),
        Check("beats random on a hot set", "a VM touching a hot set (95% of accesses) and random "
              "cold pages, kept at a budget below its size: fewer than 0.8x the swap-ins of "
              "RandomVictims in the same seeded scenario", beats_random, timeout=45.0),
        Check("double paging measured", "a guest OS with its own swap paged by the host with your "
              "policy: the grader reports how many of the guest's swap-outs were of pages the "
              "host had swapped out, with yours and with RandomVictims (explain it: question 2)",
              measures_double_paging, timeout=45.0),
    ))
