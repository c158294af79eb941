"""The paper's idle memory tax experiment in shape (its Figure 8): two VMs with equal shares
on a machine that cannot hold both, one running a memory-hungry workload, one idle after
touching its memory. With tau = 0 (no tax) min-funding revocation splits memory about
evenly, so the busy VM pages against its target; with tau = 0.75 an idle page costs four
times an active one, most of the memory moves to the busy VM and its workload speeds up.

As in the paper, one run changes the tax rate at run time: tau = 0 for the first half, 0.75
for the second. Throughput is the busy VM's, measured over the second half of each phase
(after the allocation has settled). Sampling and targets run on short periods (1 s) so the
run fits in a minute; the mechanism is the same as at ESX's 30 s / 15 s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.scheduler import MemoryPolicy
from uvm.sizes import PAGE_SIZE
from uvm.workloads import Idle, WorkingSet

MIB = 1 << 20


def params(quick: bool) -> dict[str, Any]:
    return {"machine_mib": 64, "vm_mib": 48, "busy_set_mib": 40, "idle_touch_mib": 40,
            "pattern": "zipf", "shares": 1000, "taus": [0.0, 0.75],
            "phase_s": 18.0 if quick else 40.0, "every_s": 0.5, "sample_period_s": 1.0,
            "target_period_s": 1.0, "tick_s": 0.25}


def run(trial: Trial) -> None:
    quick, log, results = trial.quick, trial.log, trial.results
    p = params(quick)
    log(f"idle memory tax: two {p['vm_mib']} MiB VMs with {p['shares']} shares each on a "
        f"{p['machine_mib']} MiB machine; 'busy' touches {p['busy_set_mib']} MiB at random, 'idle' "
        f"touched {p['idle_touch_mib']} MiB once; tau = {p['taus'][0]} then {p['taus'][1]}, "
        f"{p['phase_s']:.0f} s each")
    policy = MemoryPolicy(tax_rate=p["taus"][0], sample_period=p["sample_period_s"],
                          target_period=p["target_period_s"], tick=p["tick_s"])
    timeline: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    results.update({"phases": phases, "timeline": timeline})
    with trial.machine(memory=f"{p['machine_mib']}MiB", policy=policy, seed=trial.seed_for("machine")) as m:
        assert m.scheduler is not None
        busy = m.create_vm("busy", memory=f"{p['vm_mib']}MiB", shares=p["shares"])
        idle = m.create_vm("idle", memory=f"{p['vm_mib']}MiB", shares=p["shares"])
        idle.run(Idle(touch=f"{p['idle_touch_mib']}MiB", seed=trial.seed_for("idle")))
        while idle.stats()["resident"] < p["idle_touch_mib"] * MIB // PAGE_SIZE:
            time.sleep(0.05)
        work = busy.run(WorkingSet(size=f"{p['busy_set_mib']}MiB", pattern=p["pattern"],
                                   seed=trial.seed_for("busy")))
        log(f"{'t s':>6} {'tau':>5} {'state':>5} {'busy MiB':>9} {'target':>7} {'f':>5} "
            f"{'idle MiB':>9} {'target':>7} {'f':>5} {'busy op/s':>11}")
        start = time.monotonic()
        for i, tau in enumerate(p["taus"]):
            m.scheduler.tax_rate = tau
            t_phase = i * p["phase_s"]
            marks: list[tuple[float, int]] = []
            for snap in m.watch(p["phase_s"] - 1e-3, every=p["every_s"]):
                t = time.monotonic() - start
                trial.progress(t / (len(p["taus"]) * p["phase_s"]), f"tau {tau}")
                if t - t_phase >= p["phase_s"] / 2:
                    marks.append((t, work.ops))
                row = {"t": round(t, 2), "tau": tau, "state": snap.machine["state"],
                       "free_pages": snap.machine["frames_free"]}
                for v in snap.vms:
                    row[v.name] = {"allocated": v.stats["allocated"], "target": v.stats["target"],
                                   "active": v.stats["active"], "swapped": v.swapped,
                                   "ops_per_s": round(v.ops_per_s)}
                timeline.append(row)
                b, d = row["busy"], row["idle"]
                if len(timeline) % 4 == 1:
                    log(f"{t:>6.1f} {tau:>5.2f} {row['state']:>5} {b['allocated'] * PAGE_SIZE / MIB:>9.1f} "
                        f"{b['target'] * PAGE_SIZE / MIB:>7.1f} {b['active']:>5.2f} "
                        f"{d['allocated'] * PAGE_SIZE / MIB:>9.1f} {d['target'] * PAGE_SIZE / MIB:>7.1f} "
                        f"{d['active']:>5.2f} {b['ops_per_s']:>11}")
            (t0, o0), (t1, o1) = marks[0], marks[-1]
            last = timeline[-1]
            phases.append({"tau": tau, "busy_ops_per_s": (o1 - o0) / (t1 - t0),
                           "busy_mib": last["busy"]["allocated"] * PAGE_SIZE / MIB,
                           "idle_mib": last["idle"]["allocated"] * PAGE_SIZE / MIB,
                           "busy_target_mib": last["busy"]["target"] * PAGE_SIZE / MIB,
                           "idle_target_mib": last["idle"]["target"] * PAGE_SIZE / MIB,
                           "busy_active": last["busy"]["active"], "idle_active": last["idle"]["active"]})
        work.stop()
        work.join(30)
    log(f"{'tau':>5} {'busy MiB':>9} {'idle MiB':>9} {'busy op/s':>12}")
    for ph in phases:
        log(f"{ph['tau']:>5.2f} {ph['busy_mib']:>9.1f} {ph['idle_mib']:>9.1f} {ph['busy_ops_per_s']:>12.0f}")
    speedup = phases[1]["busy_ops_per_s"] / phases[0]["busy_ops_per_s"]
    log(f"busy VM's throughput at tau = {phases[1]['tau']} is {speedup:.1f}x that at tau = "
        f"{phases[0]['tau']}")
    results["speedup"] = speedup


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    tl = results["timeline"]
    t = [r["t"] for r in tl]
    fig, (alloc, tput) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for i, name in enumerate(("busy", "idle")):
        alloc.plot(t, [r[name]["allocated"] * PAGE_SIZE / MIB for r in tl], color=f"C{i}",
                   label=f"{name}: allocated")
        alloc.plot(t, [r[name]["target"] * PAGE_SIZE / MIB for r in tl], color=f"C{i}", ls="--",
                   label=f"{name}: target")
    tput.plot(t, [r["busy"]["ops_per_s"] / 1e6 for r in tl], color="C0")
    phase = results["params"]["phase_s"]
    for ax in (alloc, tput):
        ax.axvline(phase, color="grey", ls=":")
        ax.grid(alpha=0.3)
    for i, ph in enumerate(results["phases"]):
        alloc.text(phase * (i + 0.5), 2, f"tau = {ph['tau']}", ha="center")
    alloc.set(ylabel="machine memory (MiB)", ylim=(0, None),
              title="Idle memory tax: two VMs, equal shares, one busy and one idle")
    alloc.legend(loc="center right", fontsize=8)
    tput.set(xlabel="time (s)", ylabel="busy VM Mops/s", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The busy VM's speed-up with the tax, and its memory at the end of each phase."""
    out: dict[str, float | None] = {"speedup": results["speedup"]}
    out.update({f"busy_mib_tau_{ph['tau']:g}": ph["busy_mib"] for ph in results["phases"]})
    return out


EXPERIMENT = Experiment("idle-tax", "two VMs, one idle: memory moves to the busy one with the tax",
                        params, run, plot, figures)
