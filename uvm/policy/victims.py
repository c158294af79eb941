"""Victim selection for host paging: which of a VM's pages the host pages out when it must
take `count` pages from it.

The paper picks victims at random on purpose: a host that guesses at the guest's working
set fights the guest's own replacement policy (both evict "old" pages, at different times).
ColdVictims is the alternative a lab can compare against: it prefers pages that idle
sampling's trick shows untouched for a while, like a clock algorithm's reference bit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvm.vm import VM


class VictimPolicy(ABC):
    """The interface. `choose` runs on the scheduler's thread, never on the fault path
    (when no frame is free, the C pager itself evicts random pages)."""

    @abstractmethod
    def choose(self, vm: VM, count: int) -> list[int]:
        """Returns up to `count` PPNs of vm to page out (resident ones are; others are
        skipped)."""

    def forget(self, vm: VM) -> None:
        """The VM is gone: drop anything kept about it."""


class RandomVictims(VictimPolicy):
    """The paper's policy (the default): resident pages chosen uniformly at random."""

    def choose(self, vm: VM, count: int) -> list[int]:
        return vm.random_resident(count)


class ColdVictims(VictimPolicy):
    """LRU-ish: each call first takes pages watched on an earlier call and not touched
    since (cold), then random ones; then watches a fresh random batch of `lookahead` times
    `count` resident pages, to know which are cold next time. Watching a page unmaps it, so
    its next touch costs a minor fault: the price of the information. Pages the idle
    sampler is watching are left alone (re-watching one would hide a touch from it)."""

    def __init__(self, lookahead: int = 2, max_watch: int = 8192) -> None:
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"lookahead: must be a positive integer, got {lookahead!r}")
        self.lookahead = lookahead
        self.max_watch = max_watch
        self._watching: dict[str, list[int]] = {}

    def choose(self, vm: VM, count: int) -> list[int]:
        watched = self._watching.pop(vm.name, [])
        cold = [p for p, s in zip(watched, vm.watched(watched)) if s == "untouched"][:count]
        if len(cold) < count:
            taken = set(cold)
            cold += [p for p in vm.random_resident(count) if p not in taken][:count - len(cold)]
        skip = set(cold) | (set(vm.sampler.watching) if vm.sampler is not None else set())
        fresh = vm.random_resident(min(self.max_watch, self.lookahead * count))
        self._watching[vm.name] = vm.watch([p for p in fresh if p not in skip])
        return cold

    def forget(self, vm: VM) -> None:
        self._watching.pop(vm.name, None)
