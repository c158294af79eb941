"""Watching a running machine: periodic samples shown live (rich) or as plain lines, written
to a JSON-lines timeline (the run record first: uvm/timeline.py has its format), and a
summary table at the end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from uvm.errors import VMStopped
from uvm.machine import Machine
from uvm.periods import check_period, check_seconds, next_tick
from uvm.policy.states import STATES
from uvm.record import Header
from uvm.sizes import PAGE_SIZE, format_size
from uvm.stats import Snapshot, VMSample, snapshot
from uvm.timeline import EndLine, HeaderLine, SampleLine, Summary, sample_line
from uvm.vm import VM

MIB = 1 << 20
STOP_POLL = 0.05     # seconds between checks of run(stop=...) while waiting for a tick
TimelineLine = HeaderLine | SampleLine | EndLine


class TimelineError(ValueError):
    """The timeline could not be written (e.g. its disk is full)."""


@dataclass
class Sample:
    """One snapshot of the machine, `elapsed` seconds into a run of `duration` seconds,
    with each VM's workloads and status (running, finished, stopped: why, error: what)."""
    elapsed: float
    duration: float
    snapshot: Snapshot
    workloads: dict[str, str]
    status: dict[str, str]

    def line(self) -> SampleLine:
        """Its line of the timeline."""
        return sample_line(self.elapsed, self.snapshot, self.workloads, self.status)

    @property
    def settled(self) -> bool:
        """True when no VM has a workload left running."""
        return "running" not in self.status.values()


    @property
    def managed(self) -> bool:
        """True when a memory policy runs (the machine has a reclamation state)."""
        return bool(self.snapshot.machine.get("state", "unmanaged") != "unmanaged")

    @property
    def free(self) -> float:
        """Free machine memory, a fraction."""
        m = self.snapshot.machine
        return m["frames_free"] / m["frames_total"] if m["frames_total"] else 0.0


View = Callable[[Sample], RenderableType]     # draws a sample (run's `view` hook)
Tap = Callable[[TimelineLine], None]          # gets each timeline line (run's `tap` hook)


@dataclass
class Result:
    """How a run ended: its last sample, whether Ctrl-C cut it short, how many samples
    found the machine in each reclamation state (with a memory policy), and how many
    samples were taken."""
    last: Sample
    interrupted: bool
    states: Counter[str] = field(default_factory=Counter)
    samples: int = 0


def summary_record(result: Result, header: Header, failed: list[BaseException]) -> Summary:
    """The run's summary as a record (`uvm run --summary-json`); `header` finished."""
    return Summary(record=header,
                   failed=[f"{type(e).__name__}: {e}" for e in failed],
                   states_seen=dict(result.states), final=result.last.line())


def vm_status(vm: VM) -> str:
    """running / finished / no workload / stopped: <reason> / error: <what>."""
    reason = vm.stopped
    if reason is not None:
        return f"stopped: {reason}"
    runs = vm.runs
    errors = [r.error for r in runs if r.error is not None] + _driver_errors(vm)
    if errors:
        e = errors[0]
        return f"stopped: {e.reason}" if isinstance(e, VMStopped) else f"error: {e}"
    if not runs:
        return "no workload"
    return "finished" if all(r.done for r in runs) else "running"


def workload_errors(machine: Machine) -> list[BaseException]:
    """Errors of what runs in the VMs (workloads, balloon schedules, balloon drivers) other
    than their VM being stopped (e.g. Verify lost data)."""
    return [e for vm in machine.vms
            for e in [r.error for r in vm.runs if r.error is not None] + _driver_errors(vm)
            if not isinstance(e, VMStopped)]


def _driver_errors(vm: VM) -> list[BaseException]:
    """The error that ended the VM's balloon driver thread, if one did."""
    driver = vm.balloon.driver
    return [] if driver is None or driver.error is None else [driver.error]


def take_sample(machine: Machine, elapsed: float, duration: float) -> Sample:
    """Reads every counter once, and each VM's workloads and status."""
    vms = machine.vms
    return Sample(elapsed, duration, snapshot(machine),
                  workloads={vm.name: ", ".join(r.workload.kind for r in vm.runs) for vm in vms},
                  status={vm.name: vm_status(vm) for vm in vms})


def run(machine: Machine, title: str, duration: float, every: float, console: Console,
        timeline: TextIO | None = None, header: Header | None = None,
        stop: Callable[[], bool] = lambda: False,
        view: View | None = None, tap: Tap | None = None) -> Result:
    """Samples the machine every `every` seconds (ticks that fall behind are skipped) for
    `duration` seconds, or until no workload is left running, showing each sample and
    appending it to `timeline`: after the run record `header` (if given) as the first line,
    and before an end line. The run ends early, with a last sample, when `stop()` turns
    true (checked every STOP_POLL seconds) or on Ctrl-C: Result.interrupted says so. Hooks:
    `view` draws a sample instead of the table (uvm run --wide, --map); `tap` gets every
    timeline line too (the socket uvm top attaches to)."""
    check_seconds(duration, "duration")
    check_period(every, "every")
    start = time.monotonic()
    states: Counter[str] = Counter()
    count = 0
    write = _writer(timeline, tap)
    if header is not None:
        write(HeaderLine(**header.model_dump()))
    with _display(console, title, view) as show:

        def record() -> Sample:
            nonlocal count
            sample = take_sample(machine, time.monotonic() - start, duration)
            write(sample.line())
            count += 1
            show(sample)
            if sample.managed:
                states[sample.snapshot.machine["state"]] += 1
            return sample

        try:
            tick = 0.0
            while True:
                if not _sleep_until(start + tick, stop):
                    last, interrupted = record(), True
                    break
                last = record()
                if last.settled or tick >= duration:
                    interrupted = False
                    break
                tick = next_tick(time.monotonic() - start, every, duration)
        except KeyboardInterrupt:
            last, interrupted = record(), True
    write(EndLine(duration_s=round(time.monotonic() - start, 3), partial=interrupted,
                  samples=count))
    return Result(last, interrupted=interrupted, states=states, samples=count)


def _writer(timeline: TextIO | None, tap: Tap | None = None) -> Callable[[TimelineLine], None]:
    """Appends a line to the timeline (flushed: a reader may follow it live) and hands it
    to the tap; TimelineError if it cannot be written."""
    def write(line: TimelineLine) -> None:
        if timeline is not None:
            try:
                timeline.write(line.model_dump_json() + "\n")
                timeline.flush()
            except OSError as e:
                raise TimelineError(f"timeline: cannot write {getattr(timeline, 'name', '')!r}: "
                                    f"{e.strerror or e}") from e
        if tap is not None:
            tap(line)
    return write


def _sleep_until(deadline: float, stop: Callable[[], bool]) -> bool:
    """Sleeps until time.monotonic() reaches `deadline`; returns False at once if stop()
    turns true first."""
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, STOP_POLL))
    return False


@contextmanager
def _display(console: Console, title: str, view: View | None = None) -> Iterator[Callable[[Sample], None]]:
    """A live table (or `view`) on a terminal; plain periodic lines (or `view`) otherwise
    (CI logs)."""
    if not console.is_terminal:
        if view is not None:
            yield lambda s: console.print(view(s))
        else:
            yield lambda s: console.out("\n".join(plain_lines(s)), highlight=False)
        return
    with Live(console=console, auto_refresh=False) as live:
        yield lambda s: live.update(view(s) if view else live_view(s, title), refresh=True)


# -- rendering ---------------------------------------------------------------------------

def _mib(pages: int) -> str:
    return f"{pages * PAGE_SIZE / MIB:.1f}"


def _count(n: float) -> str:
    """12345678 -> 12.3M: short enough for a table cell."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _faults(v: VMSample) -> int:
    return v.stats["faults_missing"] + v.stats["faults_minor"] + v.stats["faults_wp"]


def state_text(s: Sample) -> str:
    """The reclamation state and free memory, e.g. "state soft, 3.2% free" (empty without
    a memory policy)."""
    if not s.managed:
        return ""
    return f"state {s.snapshot.machine['state']}, {100 * s.free:.1f}% free"


def machine_line(s: Sample, state: bool = True) -> str:
    """The reclamation state (with a policy, unless state=False), frames used/free, swap
    used, compression ratio, sharing, elapsed/duration."""
    m = s.snapshot.machine
    head = f", {state_text(s)}" if state and s.managed else ""
    return (f"machine {format_size(m['frames_total'] * PAGE_SIZE)}{head}: frames {m['frames_used']} used / "
            f"{m['frames_free']} free · swap {format_size(m['swap_file_bytes'])} of "
            f"{format_size(m['swap_capacity'])}, {m['swap_pages']} pages, compression "
            f"{m['compression_ratio']:.2f}x{sharing_text(m)} · {s.elapsed:.1f} / {s.duration:g} s")


def sharing_text(m: dict[str, Any]) -> str:
    """The sharing part of the machine line (empty when nothing was ever scanned)."""
    if not m["scanned"] and not m["sharing"]:
        return ""
    stopped = ", merging stopped at the mapping limit" if m["merge_stopped"] else ""
    return (f" · shared {m['shared_frames']} frames by {m['sharing']} pages ({m['zero_shared']} "
            f"zero), saved {_mib(m['saved'])} MiB, {m['cow_breaks']} COW breaks, scan "
            f"{m['scan_rate']:.0f} pages/s{stopped}")


def plain_lines(s: Sample) -> list[str]:
    """A sample as text lines: the machine, then one line per VM."""
    lines = [f"[{s.elapsed:6.1f} s] {machine_line(s)}"]
    for v in s.snapshot.vms:
        lines.append(f"    {v.name}: resident {_mib(v.resident)} MiB, swapped {_mib(v.swapped)} MiB, "
                     f"shared {_mib(v.stats['sharing'])} MiB, zero {_mib(v.zero)} MiB, faults {_faults(v)}, swap-ins {v.stats['swapins']}, "
                     f"swap-outs {v.stats['swapouts']}{guest_text(v)}{policy_text(v)}, "
                     f"{_count(v.ops_per_s)} ops/s, {s.status.get(v.name, '')}")
    return lines


def policy_text(v: VMSample) -> str:
    """The memory policy's part of a VM's line (empty without a policy): target, allocated,
    active fraction f, reclaim method, and "blocked" while the low state blocks the VM."""
    st = v.stats
    if "target" not in st:
        return ""
    blocked = ", blocked" if st["blocked"] else ""
    return (f", target {_mib(st['target'])} MiB, allocated {_mib(st['allocated'])} MiB, "
            f"f {st['active']:.2f}, reclaim {st['reclaim']}{blocked}")


def guest_text(v: VMSample) -> str:
    """The balloon and guest-paging part of a VM's line (empty for a VM with neither)."""
    st = v.stats
    text = ""
    if st.get("balloon_target") or st.get("ballooned") or st.get("balloon_paged"):
        text += (f", balloon {_mib(st['ballooned'])} of {_mib(st['balloon_target'])} MiB, "
                 f"{st['balloon_touched']} touched")
    if st.get("balloon_paged"):
        text += f", paged instead of ballooned {_mib(st['balloon_paged'])} MiB"
    if st.get("balloon_error"):
        text += f", balloon driver error: {st['balloon_error']}"
    if "guest_swapins" in st:
        text += (f", guest: free {_mib(st['guest_free'])} MiB, cache {_mib(st['guest_cache'])} MiB, "
                 f"swap-ins {st['guest_swapins']}, swap-outs {st['guest_swapouts']}")
    return text


def _balloon(v: VMSample) -> str:
    """Ballooned MiB, and what the host paged instead ("+2.0 paged") when it had to."""
    st = v.stats
    paged = f" +{_mib(st['balloon_paged'])} paged" if st.get("balloon_paged") else ""
    return _mib(st["ballooned"]) + paged


def _guest_paging(v: VMSample) -> str:
    st = v.stats
    return f"{_count(st['guest_swapins'])}/{_count(st['guest_swapouts'])}" if "guest_swapins" in st else "-"


def live_view(s: Sample, title: str) -> Group:
    """The per-VM table and the machine line; with a memory policy, a narrower table of
    what the policy decides, under a title with the reclamation state."""
    if s.managed:
        return _policy_view(s, title)
    table = Table(title=title, title_justify="left")
    for name in ("VM", "workload"):
        table.add_column(name)
    for name in ("resident MiB", "swapped MiB", "shared MiB", "zero MiB", "balloon MiB", "faults",
                 "swap-ins", "swap-outs", "guest swap in/out", "ops/s"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for v in s.snapshot.vms:
        table.add_row(v.name, s.workloads.get(v.name, ""), _mib(v.resident), _mib(v.swapped),
                      _mib(v.stats["sharing"]), _mib(v.zero), _balloon(v),
                      _count(_faults(v)), _count(v.stats["swapins"]),
                      _count(v.stats["swapouts"]), _guest_paging(v), _count(v.ops_per_s),
                      _status_text(s.status.get(v.name, "")))
    return Group(table, Text(machine_line(s)))


def _policy_view(s: Sample, title: str) -> Group:
    """With a memory policy: each VM's allocation against its target, what it maps shared,
    swapped and ballooned, its active fraction f and how it was reclaimed last; blocked VMs
    say so in their status. Sizes in MiB; fits a 100-column terminal."""
    table = Table(title=f"{title} · {state_text(s)} · sizes in MiB", title_justify="left",
                  box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("VM", "workload"):
        table.add_column(name)
    for name in ("alloc", "target", "shared", "swapped", "balloon", "f", "reclaim", "ops/s"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for v in s.snapshot.vms:
        st = v.stats
        status = s.status.get(v.name, "")
        if st.get("blocked") and status == "running":
            status = "blocked"
        table.add_row(v.name, s.workloads.get(v.name, ""), _mib(st.get("allocated", 0)),
                      _mib(st.get("target", 0)), _mib(st["sharing"]), _mib(v.swapped), _balloon(v),
                      f"{st.get('active', 1.0):.2f}", str(st.get("reclaim", "-")),
                      _count(v.ops_per_s), _status_text(status))
    return Group(table, Text(machine_line(s, state=False)))


def _status_text(status: str) -> Text:
    style = ("red" if status.startswith(("stopped", "error"))
             else "yellow" if status == "blocked" else "")
    return Text(status, style=style)


def summary(result: Result, title: str) -> Group:
    """Per-VM totals over the run and the machine's totals."""
    s = result.last
    table = Table(title=f"{title}: summary after {s.elapsed:.1f} s"
                        + (" (interrupted)" if result.interrupted else ""), title_justify="left")
    table.add_column("VM")
    for name in ("ops", "ops/s", "resident MiB", "swapped MiB", "shared MiB", "missing", "minor",
                 "wp", "swap-ins", "swap-outs", "COW"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for v in s.snapshot.vms:
        table.add_row(v.name, *_totals(v, s.elapsed), _status_text(s.status.get(v.name, "")))
    table.add_section()
    table.add_row("all", *_totals(_sum(s.snapshot.vms), s.elapsed), "")
    lines: list[RenderableType] = [table, Text(machine_line(s)), Text(_machine_totals(s.snapshot.machine))]
    if s.managed:
        lines.append(Text(_policy_totals_line(result)))
    return Group(*lines)


def _policy_totals_line(result: Result) -> str:
    """The memory policy over the run: the state at the end and how often each was seen."""
    m = result.last.snapshot.machine
    seen = ", ".join(f"{state} {result.states[state]}" for state in STATES)
    tax = f", tax rate {m['tax_rate']:g}" if m.get("tax_rate") is not None else ""
    return (f"memory policy: reclamation state {m['state']} at the end{tax}; "
            f"samples per state: {seen}")


def _totals(v: VMSample, elapsed: float) -> list[str]:
    st = v.stats
    return [_count(v.ops), _count(v.ops / elapsed if elapsed > 0 else 0.0), _mib(v.resident),
            _mib(v.swapped), _mib(st["sharing"]), _count(st["faults_missing"]),
            _count(st["faults_minor"]), _count(st["faults_wp"]), _count(st["swapins"]),
            _count(st["swapouts"]), _count(st["cow_breaks"])]


def _sum(vms: list[VMSample]) -> VMSample:
    """All VMs as one, for the totals row."""
    keys = {k for v in vms for k, x in v.stats.items() if isinstance(x, (int, float))}
    return VMSample(name="all", resident=sum(v.resident for v in vms),
                    swapped=sum(v.swapped for v in vms), zero=sum(v.zero for v in vms),
                    stats={k: sum(v.stats.get(k, 0) for v in vms) for k in keys},
                    ops=sum(v.ops for v in vms))


def _machine_totals(m: dict[str, Any]) -> str:
    return (f"machine totals: {m['faults']} faults, {m['swapins']} swap-ins, {m['swapouts']} "
            f"swap-outs ({m['swapouts_zero']} zero pages, no slot), evictions "
            f"{m['evict_fault_path']} on the fault path / {m['evict_background']} in the "
            f"background, {m['swap_errors']} swap errors")
