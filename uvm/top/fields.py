"""esxtop's memory panel, field by field, computed from a timeline sample (uvm.timeline's
SampleLine), so that `uvm top` reads exactly what `uvm run --json` records.

esxtop shows sizes in MB; here they are MiB of 4 KiB pages. A field uvm cannot compute
without a memory policy (targets, the touched estimate) shows "-". docs/top.md has the
table of esxtop field -> uvm field -> meaning, and what uvm does not provide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from uvm.machine import PMAP_BYTES
from uvm.sizes import PAGE_SIZE
from uvm.timeline import MachineLine, SampleLine, VMLine

MIB = 1 << 20


@dataclass(frozen=True)
class Rates:
    """Swap traffic of one VM between two samples, MiB per second."""
    read: float
    write: float


def _mib(pages: float) -> float:
    return pages * PAGE_SIZE / MIB


def grant(v: VMLine) -> int:
    """GRANT: guest pages backed by machine memory (a frame of their own or a shared one)."""
    return v.resident_pages + v.sharing_pages


def target(v: VMLine) -> int | None:
    """SZTGT: the memory policy's allocation target (None without a policy)."""
    return v.policy.target_pages if v.policy is not None else None


def touched(v: VMLine) -> float | None:
    """TCHD: the touched (working-set) estimate: the active fraction f from idle sampling
    times the machine memory the VM holds (None without a policy: nothing samples). f is a
    fraction of that memory, not of the configured size: the sampler watches random pages
    in machine memory, and the tax's P is the same pages (policy.allocated_pages)."""
    return v.policy.active * v.policy.allocated_pages if v.policy is not None else None


def swap_target(v: VMLine) -> int | None:
    """SWTGT: what the host expects to have swapped once reclamation is done: what is
    swapped now, plus whatever the VM holds above its target that its balloon will not
    take on its way to the balloon target (None without a policy)."""
    t = target(v)
    if t is None:
        return None
    balloon_left = max(0, v.balloon_target_pages - v.ballooned_pages) if v.balloon_active else 0
    return v.swapped_pages + max(0, grant(v) - t - balloon_left)


def overhead_bytes(v: VMLine) -> int:
    """OVHD: host memory the VM costs beyond its own pages: its pmap, 8 bytes per PPN
    (what admission control reserves for it)."""
    return v.size_pages * PMAP_BYTES


def rates(now: SampleLine, before: SampleLine | None) -> dict[str, Rates]:
    """Each VM's swap-in and swap-out rates since the previous sample (zero without one)."""
    out = {v.name: Rates(0.0, 0.0) for v in now.vms}
    if before is None or now.t_s <= before.t_s:
        return out
    dt = now.t_s - before.t_s
    old = {v.name: v for v in before.vms}
    for v in now.vms:
        b = old.get(v.name)
        if b is not None:
            out[v.name] = Rates(_mib(max(0, v.swapins - b.swapins)) / dt,
                                _mib(max(0, v.swapouts - b.swapouts)) / dt)
    return out


@dataclass(frozen=True)
class Column:
    """One column of the panel: esxtop's name and how to compute it from a VM's line."""
    name: str
    value: Callable[[VMLine, Rates], str]
    meaning: str


def _size(pages: float | None) -> str:
    return "-" if pages is None else f"{_mib(pages):.2f}"


COLUMNS: tuple[Column, ...] = (
    Column("NAME", lambda v, r: v.name, "the VM's name"),
    Column("MEMSZ", lambda v, r: _size(v.size_pages), "configured size: size_pages"),
    Column("GRANT", lambda v, r: _size(grant(v)), "backed by machine memory: resident_pages + sharing_pages"),
    Column("AMIN", lambda v, r: _size(v.min_pages), "its guaranteed min: min_pages"),
    Column("ASHRS", lambda v, r: str(v.shares), "its shares S: shares"),
    Column("SZTGT", lambda v, r: _size(target(v)), "the policy's target: policy.target_pages"),
    Column("TCHD", lambda v, r: _size(touched(v)), "touched estimate: policy.active x policy.allocated_pages"),
    Column("%ACTV", lambda v, r: "-" if v.policy is None else f"{100 * v.policy.active:.0f}",
           "active fraction f, percent: policy.active"),
    Column("MCTL?", lambda v, r: "Y" if v.balloon_active else "N", "a balloon driver runs: balloon_active"),
    Column("MCTLSZ", lambda v, r: _size(v.ballooned_pages), "balloon size: ballooned_pages"),
    Column("MCTLTGT", lambda v, r: _size(v.balloon_target_pages), "balloon target: balloon_target_pages"),
    Column("MCTLMAX", lambda v, r: _size(v.balloon_max_pages), "most the balloon may hold: balloon_max_pages"),
    Column("SWCUR", lambda v, r: _size(v.swapped_pages), "swapped by the host: swapped_pages"),
    Column("SWTGT", lambda v, r: _size(swap_target(v)), "swap target (see swap_target)"),
    Column("SWR/s", lambda v, r: f"{r.read:.2f}", "swap-in rate, MiB/s: from swapins"),
    Column("SWW/s", lambda v, r: f"{r.write:.2f}", "swap-out rate, MiB/s: from swapouts"),
    Column("SHRD", lambda v, r: _size(v.sharing_pages), "shared pages: sharing_pages"),
    Column("ZERO", lambda v, r: _size(v.zero_shared_pages), "shared zero pages: zero_shared_pages"),
    Column("SHRDSVD", lambda v, r: _size(v.shared_saved_pages), "frames sharing saves: shared_saved_pages"),
    Column("COWH", lambda v, r: _size(v.hint_pages), "hint frames: hint_pages"),
    Column("OVHD", lambda v, r: f"{overhead_bytes(v) / MIB:.2f}", "host bookkeeping: the pmap, 8 bytes per page"),
)


def summary_lines(s: SampleLine) -> list[str]:
    """esxtop's header lines: PMEM, PSHARE, SWAP and MEMCTL, in MiB."""
    m: MachineLine = s.machine
    size = sum(v.size_pages for v in s.vms)
    commit = size / m.frames_total_pages if m.frames_total_pages else 0.0
    free = 100 * m.frames_free_pages / m.frames_total_pages if m.frames_total_pages else 0.0
    state = f"state: {m.state} ({free:.1f}% free)" if m.state != "unmanaged" else "state: unmanaged (no policy)"
    ballooned = sum(v.ballooned_pages for v in s.vms)
    balloon_target = sum(v.balloon_target_pages for v in s.vms)
    return [
        f"t {s.t_s:.1f} s, {len(s.vms)} VMs; MEM overcommit: {commit:.2f}",
        f"PMEM  /MB: {_size(m.frames_total_pages):>9} total: {_size(m.frames_used_pages):>9} used, "
        f"{_size(m.frames_free_pages):>9} free    {state}",
        f"PSHARE/MB: {_size(m.sharing_pages):>9} shared, {_size(m.shared_frames_pages):>9} common: "
        f"{_size(m.saved_pages):>9} saving",
        f"SWAP  /MB: {_size(m.swap_pages):>9} curr, {m.swap_capacity_bytes / MIB:>9.2f} capacity, "
        f"compression {m.compression_ratio:.2f}x",
        f"MEMCTL/MB: {_size(ballooned):>9} curr, {_size(balloon_target):>9} target",
    ]
