"""The paper's dynamic reallocation experiment (its Figure 8): VMs are started and
stopped over time on a machine that cannot hold them all, and the memory scheduler moves
memory between them: free memory falls through the thresholds, the reclamation state goes
soft (balloons inflate) and hard (the host pages), targets follow the VMs coming and going,
and when VMs stop, free memory comes back and the state returns to high.

Every VM boots the toy guest OS with its balloon driver and runs a memory-hungry process
(a working set of most of its memory). Periods are short (1 s sampling and targets, ticks of
0.25 s) so the run fits in about a minute. PAPER.md does not record the paper's machine
for this figure; the full run overcommits a 512 MiB machine with five 160 MiB guests (1.56x),
as large as five guests' page faults in Python can fill within the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import uvm.guest
from uvm.experiments import paper
from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.machine import Machine
from uvm.policy.states import STATES
from uvm.scheduler import MemoryPolicy
from uvm.sizes import PAGE_SIZE
from uvm.vm import VM
from workloads import GuestWorkingSet

MIB = 1 << 20
STATE_COLORS = {"high": "#ffffff", "soft": "#fff3c4", "hard": "#ffd2a8", "low": "#ffb0b0"}


PAPER = paper.Paper(
    "Figure 8 (?)",
    "VMs started and stopped on an overcommitted machine; reclamation states by free memory "
    "(high 6%, soft 4%, hard 2%, low 1%): ballooning in soft, host paging in hard",
    (paper.Number("time in the soft state (ballooning)", None, "s", "time_in_soft_s",
                  claim="balloons inflate while free memory is under 6%"),
     paper.Number("time in the hard state (host paging)", None, "s", "time_in_hard_s",
                  claim="host paging when ballooning is not enough", uncertain=True),
     paper.Number("time in the low state (VMs blocked)", None, "s", "time_in_low_s",
                  claim="rare", uncertain=True)))

QUICK_EVENTS = ((0, "start", "A"), (6, "start", "B"), (12, "start", "C"), (24, "stop", "A"),
                (32, "stop", "B"))
FULL_EVENTS = ((0, "start", "A"), (8, "start", "B"), (16, "start", "C"), (24, "start", "D"),
               (32, "start", "E"), (56, "stop", "A"), (66, "stop", "B"), (76, "stop", "C"))


def params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"machine_mib": 96, "vm_mib": 48, "set_mib": 36, "balloon_period_s": 0.25,
                "sample_period_s": 1.0, "target_period_s": 1.0, "tick_s": 0.25, "every_s": 0.5,
                "events": [list(e) for e in QUICK_EVENTS], "end_s": 42}
    return {"machine_mib": 512, "vm_mib": 160, "set_mib": 120, "balloon_period_s": 0.25,
            "sample_period_s": 1.0, "target_period_s": 1.0, "tick_s": 0.25, "every_s": 0.5,
            "events": [list(e) for e in FULL_EVENTS], "end_s": 90}


def setup(p: dict[str, Any]) -> str:
    vms = sorted({name for _, _, name in p["events"]})
    return (f"{len(vms)} guests of {p['vm_mib']} MiB (toy OS, balloon driver, a {p['set_mib']} "
            f"MiB working set each) started and stopped on a {p['machine_mib']} MiB machine "
            f"({len(vms) * p['vm_mib'] / p['machine_mib']:.2f}x overcommitted) over "
            f"{p['end_s']:g} s; periods of {p['sample_period_s']:g} s (ESX: 30 s sampling, "
            f"15 s targets)")


def differs(results: dict[str, Any], medians: dict[str, float]) -> str:
    """Which states the run went through, and how it ended."""
    seen = [s for s in STATES if medians.get(f"time_in_{s}_s", 0) > 0]
    end = results["timeline"][-1]["state"] if results.get("timeline") else "?"
    text = (f"The paper's figure is a trace, not a number: uvm's run went through "
            f"{', '.join(seen)} and ended {end}")
    spent = ", ".join(f"{s} {medians.get(f'time_in_{s}_s', 0):.0f} s" for s in STATES)
    text += f" ({spent})"
    if "hard" in seen or "low" in seen:
        text += ("; uvm paged (hard) as well as ballooning: free memory fell below 2% before "
                 "the balloons had taken enough back")
    return text + "."

def start_vm(m: Machine, name: str, p: dict[str, Any], trial: Trial) -> VM:
    vm = m.create_vm(name, memory=f"{p['vm_mib']}MiB")
    uvm.guest.boot(vm, balloon_period=p["balloon_period_s"])
    vm.run(GuestWorkingSet(size=f"{p['set_mib']}MiB", pattern="random", write_fraction=0.2,
                           seed=trial.seed_for("vm", name)))
    return vm


def run(trial: Trial) -> None:
    quick, log, results = trial.quick, trial.log, trial.results
    p = params(quick)
    log(f"dynamic reallocation: {p['vm_mib']} MiB guests (toy OS, balloon driver, a "
        f"{p['set_mib']} MiB working set each) started and stopped on a {p['machine_mib']} MiB "
        f"machine: " + ", ".join(f"{what} {name} at {t:.0f} s" for t, what, name in p["events"]))
    policy = MemoryPolicy(sample_period=p["sample_period_s"], target_period=p["target_period_s"],
                          tick=p["tick_s"])
    timeline: list[dict[str, Any]] = []
    results["timeline"] = timeline
    names = sorted({name for _, _, name in p["events"]})
    log(f"{'t s':>6} {'state':>5} {'free %':>6}  " +
        "  ".join(f"{n + ' alloc/target/balloon/swapped MiB':>34}" for n in names))
    with trial.machine(memory=f"{p['machine_mib']}MiB", policy=policy, seed=trial.seed_for("machine")) as m:
        events = list(p["events"])
        start = time.monotonic()
        for snap in m.watch(p["end_s"], every=p["every_s"]):
            t = time.monotonic() - start
            trial.progress(t / p["end_s"], "reallocating")
            while events and events[0][0] <= t:
                _, what, name = events.pop(0)
                if what == "start":
                    start_vm(m, name, p, trial)
                else:
                    m.destroy_vm(name)
                log(f"{t:>6.1f} {what} {name}")
            row: dict[str, Any] = {"t": round(t, 2), "state": snap.machine["state"],
                                   "free_pct": 100.0 * snap.machine["frames_free"] / snap.machine["frames_total"],
                                   "vms": {}}
            for v in snap.vms:
                row["vms"][v.name] = {"allocated": v.stats.get("allocated", v.resident),
                                      "target": v.stats.get("target", 0),
                                      "balloon": v.stats["balloon_size"], "swapped": v.swapped,
                                      "active": v.stats.get("active", 1.0),
                                      "reclaim": v.stats.get("reclaim", "none"),
                                      "guest_swapouts": v.stats.get("guest_swapouts", 0),
                                      "ops_per_s": round(v.ops_per_s)}
            timeline.append(row)
            if len(timeline) % 4 == 1:
                log(f"{t:>6.1f} {row['state']:>5} {row['free_pct']:>6.1f}  " + "  ".join(
                    f"{fmt(row['vms'].get(n)):>34}" for n in names))
    states = [r["state"] for r in timeline]
    seen = {s: sum(x == s for x in states) * p["every_s"] for s in STATES}
    log("time in each state: " + ", ".join(f"{s} {seen[s]:.1f} s" for s in STATES))
    results["time_in_state_s"] = seen


def fmt(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    return "/".join(f"{v[k] * PAGE_SIZE / MIB:.0f}" for k in ("allocated", "target", "balloon", "swapped"))


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    tl = results["timeline"]
    t = [r["t"] for r in tl]
    names = sorted({n for r in tl for n in r["vms"]})
    fig, (free, alloc, recl) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                            gridspec_kw={"height_ratios": [1, 2, 1.5]})
    step = results["params"]["every_s"]
    for ax in (free, alloc, recl):
        for r in tl:
            if r["state"] != "high":
                ax.axvspan(r["t"] - step / 2, r["t"] + step / 2, color=STATE_COLORS[r["state"]], lw=0)
        ax.grid(alpha=0.3)
    free.plot(t, [r["free_pct"] for r in tl], color="black")
    for pct in (6, 4, 2, 1):
        free.axhline(pct, color="grey", ls=":", lw=0.8)
    free.set(ylabel="free memory (%)", ylim=(0, None),
             title="Dynamic reallocation (shading: soft, hard, low state; dotted: thresholds "
                   "6, 4, 2, 1%)")

    def series(name: str, key: str) -> list[float]:
        return [r["vms"][name][key] * PAGE_SIZE / MIB if name in r["vms"] else float("nan") for r in tl]

    for i, name in enumerate(names):
        alloc.plot(t, series(name, "allocated"), color=f"C{i}", label=f"{name}: allocated")
        alloc.plot(t, series(name, "target"), color=f"C{i}", ls="--", lw=0.8, label=f"{name}: target")
        recl.plot(t, series(name, "balloon"), color=f"C{i}", label=f"{name}: balloon")
        recl.plot(t, series(name, "swapped"), color=f"C{i}", ls=":", label=f"{name}: host-swapped")
    alloc.set(ylabel="machine memory (MiB)", ylim=(0, None))
    alloc.legend(fontsize=7, ncol=len(names), loc="upper right")
    recl.set(xlabel="time (s)", ylabel="MiB", ylim=(0, None))
    recl.legend(fontsize=7, ncol=len(names), loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """Seconds spent in each reclamation state."""
    return {f"time_in_{state}_s": s for state, s in results["time_in_state_s"].items()}


EXPERIMENT = Experiment("reallocation", "VMs started and stopped: free memory, states, allocations",
                        params, run, plot, figures, PAPER, setup, differs)
