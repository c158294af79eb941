"""Replaceable memory policies (paper sections 5 and 6): who gets machine memory, which pages
the host pages out, and how active a VM is. Each is a small class; a lab replaces one by
passing its own to `uvm.MemoryPolicy`:

    class Fifo(uvm.policy.VictimPolicy):
        def choose(self, vm, count): ...

    uvm.Machine(memory="256MiB", policy=uvm.MemoryPolicy(victims=Fifo()))

docs/policies.md says what each interface promises and how to write a new one."""

from uvm.policy.allocation import (AllocationPolicy, IdleTax, ShareProportional, VMInfo,
                                   shares_per_page)
from uvm.policy.estimate import ActivityEstimator, LastPeriod, PaperEstimator
from uvm.policy.states import STATES, ReclaimStates, Thresholds
from uvm.policy.victims import ColdVictims, RandomVictims, VictimPolicy

__all__ = ["AllocationPolicy", "IdleTax", "ShareProportional", "VMInfo", "shares_per_page",
           "ActivityEstimator", "PaperEstimator", "LastPeriod",
           "STATES", "ReclaimStates", "Thresholds",
           "VictimPolicy", "RandomVictims", "ColdVictims"]
