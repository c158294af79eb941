"""Snapshots of the machine's counters over time: what `Machine.watch`, the live view and
the JSON timeline are made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvm.machine import Machine


@dataclass
class VMSample:
    """One VM at one instant: its counters plus its workloads' progress."""
    name: str
    resident: int
    swapped: int
    zero: int
    stats: dict[str, int]
    ops: int = 0
    ops_per_s: float = 0.0
    stopped: str | None = None


@dataclass
class Snapshot:
    """The machine at one instant; `time` is seconds since the machine was created."""
    time: float
    machine: dict[str, Any]
    vms: list[VMSample] = field(default_factory=list)

    @property
    def state(self) -> str:
        """The reclamation state (high, soft, hard, low; 'unmanaged' without a policy)."""
        return str(self.machine.get("state", "unmanaged"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(machine: Machine) -> Snapshot:
    """Reads every counter once (cheap: one locked copy per VM)."""
    vms = machine.vms
    totals, per_vm = machine.stats_with_vms(vms)
    snap = Snapshot(time=round(machine.uptime, 3), machine=totals)
    for vm, st in zip(vms, per_vm):
        runs = vm.runs
        snap.vms.append(VMSample(
            name=vm.name, resident=st["resident"], swapped=st["swapped"], zero=st["zero"],
            stats=st, ops=sum(r.ops for r in runs), ops_per_s=sum(r.ops_per_s for r in runs),
            stopped=vm.stop_reason(st["stopped"])))
    return snap
