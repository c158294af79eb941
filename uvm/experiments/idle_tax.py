"""The paper's idle memory tax experiment (its Figure 6): two VMs with equal shares on a
machine that cannot hold both, one running a file server (workloads/fileserver.py,
dbench-like, as the paper's ran dbench: its throughput follows its page cache, gracefully),
one idle after its process wrote its memory. Both run the toy guest OS with its balloon
driver over a virtual disk with a hard disk's latency. With tau = 0 (no tax) min-funding
revocation splits memory about evenly; with tau = 0.75 an idle page costs four times an
active one, memory moves to the busy VM, its page cache grows and its throughput rises.

As in the paper, one run changes the tax rate at run time: tau = 0 for the first half, 0.75
for the second. Throughput is the busy VM's, measured over the second half of each phase
(after the allocation has settled). Sampling and targets run on short periods (1 s) so the
run fits in a minute; the mechanism is the same as at ESX's 30 s / 15 s. The full run uses
the paper's 256 MiB VMs on a machine that holds about 180 MiB of each, as the paper's split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import uvm.guest
from uvm.experiments import paper
from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.scheduler import MemoryPolicy
from uvm.guest.disk import HDD_BANDWIDTH, HDD_LATENCY
from uvm.sizes import PAGE_SIZE
from workloads import FileServer, GuestIdle

MIB = 1 << 20


PAPER = paper.Paper(
    "Figure 6",
    "two 256 MB VMs with equal shares, one idle, one running dbench; tax rate tau = 0, then "
    "0.75",
    (paper.Number("busy VM's memory, tau = 0", 179, "MB", "busy_mib_tau_0", uncertain=True,
                  claim="about"),
     paper.Number("idle VM's memory, tau = 0", 179, "MB", "idle_mib_tau_0", uncertain=True,
                  claim="about"),
     paper.Number("busy VM's throughput gain with tau = 0.75", 30, "%", "gain_pct",
                  uncertain=True, claim="a little over")))


def params(quick: bool) -> dict[str, Any]:
    common = {"shares": 1000, "taus": [0.0, 0.75], "file_kib": 64, "every_s": 0.5,
              "sample_period_s": 1.0, "target_period_s": 1.0, "tick_s": 0.25,
              "balloon_period_s": 0.25, "disk_latency_s": HDD_LATENCY,
              "disk_bandwidth": HDD_BANDWIDTH}
    if quick:
        return {"machine_mib": 64, "vm_mib": 48, "clients": 8, "files": 1536,
                "idle_touch_mib": 40, "phase_s": 20.0, **common}
    return {"machine_mib": 384, "vm_mib": 256, "clients": 40, "files": 6144,
            "idle_touch_mib": 224, "phase_s": 45.0, **common}


def setup(p: dict[str, Any]) -> str:
    scale = "the paper's 256 MB" if p["vm_mib"] == 256 else \
        f"scaled down to {p['vm_mib'] / 256:.0%} of the paper's 256 MB"
    return (f"two {p['vm_mib']} MiB VMs ({scale}) with {p['shares']} shares each on a "
            f"{p['machine_mib']} MiB machine, toy guest OS with balloon driver; 'busy' runs a "
            f"dbench-like file server ({p['clients']} clients, {p['files']} files of "
            f"{p['file_kib']} KiB, {p['disk_latency_s'] * 1e3:g} ms disk), 'idle' wrote "
            f"{p['idle_touch_mib']} MiB once; tau = "
            f"{p['taus'][0]} then {p['taus'][1]} for {p['phase_s']:g} s each, sampling and "
            f"targets every {p['sample_period_s']:g} s (ESX: 30 s and 15 s)")


def differs(results: dict[str, Any], medians: dict[str, float]) -> str:
    """The gain beside the paper's, the cache behind it, and why it is larger or smaller."""
    gain = medians.get("gain_pct", 100.0 * (speedup(results["phases"]) - 1))
    untaxed, taxed = results["phases"][:2]
    moved = taxed["busy_mib"] - untaxed["busy_mib"]
    p = results["params"]
    first = (f"With the tax {moved:.0f} MiB moved to the busy VM "
             f"({untaxed['busy_mib']:.0f} -> {taxed['busy_mib']:.0f} MiB of {p['vm_mib']}) and "
             f"its page cache's miss rate went from {untaxed['busy_miss_rate']:.3f} to "
             f"{taxed['busy_miss_rate']:.3f}")
    fewer = taxed["busy_miss_rate"] < untaxed["busy_miss_rate"]
    if gain < 0:
        why = (f"yet its throughput fell {-gain:.0f}%, where the paper's rose a little over 30% "
               f"(?): " + ("with fewer misses, the host's two CPUs, shared with other work, set "
                           "the throughput in this window more than the disk did" if fewer else
                           "the memory it gained did not lower its misses"))
    elif gain > 60:
        why = (f"its throughput rose {gain:.0f}%, far more than the paper's a little over 30% "
               f"(?): this file server (a file set of {p['files'] * p['file_kib'] // 1024} MiB, "
               f"zipf) gains more cache hits per page moved than dbench did in the paper, and "
               f"uvm's disk model charges a full seek for every miss")
    elif gain >= 15:
        why = f"its throughput rose {gain:.0f}%, near the paper's a little over 30% (?)"
    else:
        why = (f"its throughput rose only {gain:.0f}%, less than the paper's a little over "
               f"30% (?): " + ("the misses it saved cost less than the CPU time each "
                               "operation takes here" if fewer else
                               "the memory it gained holds files this workload rarely reads"))
    return f"{first}; {why}."


def run(trial: Trial) -> None:
    quick, log, results = trial.quick, trial.log, trial.results
    p = params(quick)
    log(f"idle memory tax: {setup(p)}")
    policy = MemoryPolicy(tax_rate=p["taus"][0], sample_period=p["sample_period_s"],
                          target_period=p["target_period_s"], tick=p["tick_s"])
    timeline: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    results.update({"phases": phases, "timeline": timeline})
    with trial.machine(memory=f"{p['machine_mib']}MiB", policy=policy, seed=trial.seed_for("machine")) as m:
        assert m.scheduler is not None
        busy = m.create_vm("busy", memory=f"{p['vm_mib']}MiB", shares=p["shares"])
        idle = m.create_vm("idle", memory=f"{p['vm_mib']}MiB", shares=p["shares"])
        file_set = p["files"] * p["file_kib"] * 1024
        for vm, disk in ((busy, file_set + 2 * p["vm_mib"] * MIB), (idle, None)):
            uvm.guest.boot(vm, disk=disk, disk_latency=p["disk_latency_s"],
                           disk_bandwidth=p["disk_bandwidth"], balloon_period=p["balloon_period_s"])
        cold = GuestIdle(f"{p['idle_touch_mib']}MiB")
        idle.run(cold)
        while not cold.written:
            time.sleep(0.05)
        work = busy.run(FileServer(clients=p["clients"], files=p["files"],
                                   file_size=f"{p['file_kib']}KiB", seed=trial.seed_for("busy")))
        log(f"{'t s':>6} {'tau':>5} {'state':>5} {'busy MiB':>9} {'target':>7} {'f':>5} "
            f"{'idle MiB':>9} {'target':>7} {'f':>5} {'busy op/s':>11}")
        start = time.monotonic()
        for i, tau in enumerate(p["taus"]):
            m.scheduler.tax_rate = tau
            t_phase = i * p["phase_s"]
            marks: list[tuple[float, int, int, int]] = []     # t, ops, cache hits, misses
            for snap in m.watch(p["phase_s"] - 1e-3, every=p["every_s"]):
                t = time.monotonic() - start
                trial.progress(t / (len(p["taus"]) * p["phase_s"]), f"tau {tau}")
                if t - t_phase >= p["phase_s"] / 2:
                    st = busy.stats()
                    marks.append((t, work.ops, st["guest_cache_hits"], st["guest_cache_misses"]))
                row = {"t": round(t, 2), "tau": tau, "state": snap.machine["state"],
                       "free_pages": snap.machine["frames_free"]}
                for v in snap.vms:
                    row[v.name] = {"allocated": v.stats["allocated"], "target": v.stats["target"],
                                   "active": v.stats["active"], "swapped": v.swapped,
                                   "balloon": v.stats["balloon_size"],
                                   "ops_per_s": round(v.ops_per_s)}
                timeline.append(row)
                b, d = row["busy"], row["idle"]
                if len(timeline) % 4 == 1:
                    log(f"{t:>6.1f} {tau:>5.2f} {row['state']:>5} {b['allocated'] * PAGE_SIZE / MIB:>9.1f} "
                        f"{b['target'] * PAGE_SIZE / MIB:>7.1f} {b['active']:>5.2f} "
                        f"{d['allocated'] * PAGE_SIZE / MIB:>9.1f} {d['target'] * PAGE_SIZE / MIB:>7.1f} "
                        f"{d['active']:>5.2f} {b['ops_per_s']:>11}")
            (t0, o0, h0, m0), (t1, o1, h1, m1) = marks[0], marks[-1]
            last = timeline[-1]
            phases.append({"tau": tau, "busy_ops_per_s": (o1 - o0) / (t1 - t0),
                           "busy_miss_rate": (m1 - m0) / max(h1 - h0 + m1 - m0, 1),
                           "busy_mib": last["busy"]["allocated"] * PAGE_SIZE / MIB,
                           "idle_mib": last["idle"]["allocated"] * PAGE_SIZE / MIB,
                           "busy_target_mib": last["busy"]["target"] * PAGE_SIZE / MIB,
                           "idle_target_mib": last["idle"]["target"] * PAGE_SIZE / MIB,
                           "busy_active": last["busy"]["active"], "idle_active": last["idle"]["active"]})
        work.stop()
        work.join(30)
    log(f"{'tau':>5} {'busy MiB':>9} {'idle MiB':>9} {'busy op/s':>12} {'miss rate':>10}")
    for ph in phases:
        log(f"{ph['tau']:>5.2f} {ph['busy_mib']:>9.1f} {ph['idle_mib']:>9.1f} "
            f"{ph['busy_ops_per_s']:>12.0f} {ph['busy_miss_rate']:>10.3f}")
    log(f"busy VM's throughput at tau = {phases[1]['tau']} is {speedup(phases):.1f}x that at "
        f"tau = {phases[0]['tau']}")


def speedup(phases: list[dict[str, Any]]) -> float:
    """The busy VM's throughput in the second phase (taxed) over that in the first."""
    return float(phases[1]["busy_ops_per_s"] / phases[0]["busy_ops_per_s"])


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
    tput.plot(t, [r["busy"]["ops_per_s"] for r in tl], color="C0")
    phase, vm_mib = results["params"]["phase_s"], results["params"]["vm_mib"]
    split = paper.value(results, "busy_mib_tau_0")
    if split is not None:         # the paper's even split, scaled to this run's VM size
        alloc.hlines(split * vm_mib / 256, 0, phase, color="C3", ls="-.",
                     label=f"{paper.label(results, 'busy_mib_tau_0')}: {split:g} MB of 256 "
                           f"each" + ("" if vm_mib == 256 else ", scaled"))
    gain = paper.value(results, "gain_pct")
    if gain is not None and results.get("phases"):
        base = results["phases"][0]["busy_ops_per_s"]
        tput.hlines(base * (1 + gain / 100), phase, 2 * phase, color="C3", ls="-.",
                    label=f"{paper.label(results, 'gain_pct')}: +{gain:g}% over tau = 0")
        tput.legend(fontsize=8, loc="upper left")
    for ax in (alloc, tput):
        ax.axvline(phase, color="grey", ls=":")
        ax.grid(alpha=0.3)
    for i, ph in enumerate(results["phases"]):
        alloc.text(phase * (i + 0.5), 2, f"tau = {ph['tau']}", ha="center")
    alloc.set(ylabel="machine memory (MiB)", ylim=(0, None),
              title="Idle memory tax: two VMs, equal shares, one busy and one idle")
    alloc.legend(loc="center right", fontsize=8)
    tput.set(xlabel="time (s)", ylabel="busy VM file ops/s", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The busy VM's speed-up with the tax (and as a gain in %), and both VMs' memory at
    the end of each phase, and the busy VM's cache miss rate in each."""
    gained = speedup(results["phases"])
    out: dict[str, float | None] = {"speedup": gained, "gain_pct": 100.0 * (gained - 1)}
    for ph in results["phases"]:
        out[f"busy_mib_tau_{ph['tau']:g}"] = ph["busy_mib"]
        out[f"idle_mib_tau_{ph['tau']:g}"] = ph["idle_mib"]
        out[f"miss_rate_tau_{ph['tau']:g}"] = ph["busy_miss_rate"]
    return out


EXPERIMENT = Experiment("idle-tax", "two VMs, one idle: memory moves to the busy one with the tax",
                        params, run, plot, figures, PAPER, setup, differs)
