"""Allocation policies: how much machine memory each VM should have (its target).

The scheduler hands a policy one VMInfo per VM and the frames available to VMs (machine
memory less the free memory the high threshold keeps); the policy returns a target per VM,
in pages, between the VM's min and max. Targets are what reclamation works toward: a VM
above its target is ballooned or paged down to it; a VM below it may grow.

The default, IdleTax, is the paper's min-funding revocation with an idle memory tax
(section 5). Each VM starts from its demand (the pages it would use unconstrained); while
the VMs do not fit, pages are revoked from the VM paying the fewest shares per page,

    rho = S / (P * (f + k * (1 - f))),  k = 1 / (1 - tau),

never below its min. An idle page costs k times an active one, so an idle VM loses memory
first; tau = 0 makes every page cost the same (pure share-based revocation). Memory left
over when every demand fits is spread in proportion to shares, up to each VM's max, so a
growing VM has room to grow before anything is reclaimed."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VMInfo:
    """What an allocation policy knows about one VM (pages, except shares and active)."""
    name: str
    shares: int
    min: int            # guaranteed: never reclaimed below
    max: int            # the VM's configured size
    allocated: int      # machine memory it holds now (resident and shared pages)
    demand: int         # pages it would hold unconstrained (allocated + swapped + ballooned)
    active: float       # active fraction f, from idle sampling


def check_tax_rate(tau: object) -> float:
    """Returns tau; ValueError unless it is a number in [0, 1)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau < 1:
        raise ValueError(f"tax_rate: must be a number in [0, 1), got {tau!r}")
    return float(tau)


def shares_per_page(shares: float, pages: float, active: float, tax_rate: float) -> float:
    """The paper's adjusted shares-per-page ratio rho = S / (P * (f + k(1 - f))), with
    k = 1 / (1 - tau); infinite for a VM that holds no pages."""
    if pages <= 0:
        return float("inf")
    k = 1.0 / (1.0 - tax_rate)
    return shares / (pages * (active + k * (1.0 - active)))


class AllocationPolicy(ABC):
    """The interface: targets for every VM, given the frames available to all of them."""

    @abstractmethod
    def targets(self, vms: Sequence[VMInfo], available: int) -> dict[str, int]:
        """Returns {name: target pages}, each within [min, max] of its VM."""


def spread(vms: Sequence[VMInfo], base: dict[str, int], available: int) -> dict[str, int]:
    """Adds what `available` leaves after `base` to the VMs in proportion to their shares,
    none beyond its max (water-filling: what a capped VM cannot take goes to the others)."""
    out = dict(base)
    left = available - sum(out.values())
    open_ = [v for v in vms if out[v.name] < v.max]
    while left > 0 and open_:
        total = sum(v.shares for v in open_) or len(open_)
        given = 0
        for v in open_:
            part = left * (v.shares or 1) // total
            add = min(part, v.max - out[v.name])
            out[v.name] += add
            given += add
        if given == 0:          # rounding left less than one page per VM: hand it out in turn
            for v in open_[:left]:
                out[v.name] += 1
            given = min(left, len(open_))
        left -= given
        open_ = [v for v in open_ if out[v.name] < v.max]
    return out


class IdleTax(AllocationPolicy):
    """Min-funding revocation with the idle memory tax (the default); `tax_rate` is tau,
    settable at run time. Pages are revoked in chunks of `chunk` (default 1/512 of what
    is available) from the VM with the lowest rho, recomputed after every chunk."""

    def __init__(self, tax_rate: float = 0.75, chunk: int | None = None) -> None:
        self.tax_rate = check_tax_rate(tax_rate)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk: must be a positive number of pages, got {chunk!r}")
        self.chunk = chunk

    def rho(self, v: VMInfo, pages: int) -> float:
        return shares_per_page(v.shares, pages, v.active, self.tax_rate)

    def targets(self, vms: Sequence[VMInfo], available: int) -> dict[str, int]:
        alloc = {v.name: max(v.min, min(v.max, v.demand)) for v in vms}
        excess = sum(alloc.values()) - available
        if excess <= 0:
            return spread(vms, alloc, available)
        chunk = self.chunk or max(1, available // 512)
        heap = [(self.rho(v, alloc[v.name]), i) for i, v in enumerate(vms) if alloc[v.name] > v.min]
        heapq.heapify(heap)
        while excess > 0 and heap:
            _, i = heapq.heappop(heap)
            v = vms[i]
            take = min(chunk, excess, alloc[v.name] - v.min)
            alloc[v.name] -= take
            excess -= take
            if alloc[v.name] > v.min:
                heapq.heappush(heap, (self.rho(v, alloc[v.name]), i))
        return alloc


class ShareProportional(AllocationPolicy):
    """The alternative: pure share-based allocation. Memory is divided in proportion to
    shares whatever the VMs do with it (no tax, no revocation order): each VM gets at
    least its min, at most its max, and never more than its demand while another VM
    still wants more."""

    def targets(self, vms: Sequence[VMInfo], available: int) -> dict[str, int]:
        want = {v.name: max(v.min, min(v.max, v.demand)) for v in vms}
        base = {v.name: v.min for v in vms}
        capped = [VMInfo(v.name, v.shares, v.min, want[v.name], v.allocated, v.demand, v.active)
                  for v in vms]
        out = spread(capped, base, available)
        return spread(vms, out, available)
