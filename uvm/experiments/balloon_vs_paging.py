"""Ballooning against host paging at the same memory pressure (paper section 3 and its
remarks on double paging). One guest of L MiB runs a mix the guest OS understands and the
host does not: cold process data (written once, then idle), a hot working set (zipf), and a
file-cache workload (dbench-like). The processes alone need more than L, so the guest OS
reclaims (and pages to its own swap) in both configurations. The machine has X MiB of memory (X < L):

  balloon  the balloon driver takes L - X (plus a small margin for the host's free-frame
           reserve) from the guest, whose OS picks what to give up: clean cache, then its
           least recently used pages (the cold data) to its own swap;
  paging   no balloon driver: the host pages random victims to its swap, blind to what the
           guest uses, while the guest, believing it has L, pages on its own as well.

Printed for both: throughput of each workload, host swap-ins, guest swap-ins and -outs, and
double paging events (a page the host had swapped out that the guest then read in order to
write it to its own swap). The host's swap and the guest's virtual disk are charged the
same latency per request (`disk_latency_s`): both are disks, as in the paper."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import uvm.guest
from uvm.experiments import paper
from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.sizes import PAGE_SIZE
from workloads import FileCache, GuestIdle, GuestWorkingSet

MIB = 1 << 20
MARGIN_PAGES = 256      # room for the host's free-frame reserve (reclaim water marks)


PAPER = paper.Paper(
    None,
    "section 3 (no figure): the host pages random victims, blind to the guest; double paging "
    "when the guest then pages the same page out itself; ballooning lets the guest choose",
    (paper.Number("double paging with ballooning", None, "events", "double_paging_balloon",
                  claim="none: the guest chooses"),
     paper.Number("double paging with host paging", None, "events", "double_paging_paging",
                  claim="happens")))


def setup(p: dict[str, Any]) -> str:
    return (f"a {p['vm_mib']} MiB guest ({p['cold_mib']} MiB cold data, {p['hot_mib']} MiB hot "
            f"zipf working set, {p['files']} x {p['file_mib']} MiB files) on a machine of "
            f"{', '.join(map(str, p['machine_mib']))} MiB, reclaimed by its balloon or by host "
            f"paging; the paper has no such figure, so the sizes are uvm's own")


def differs(results: dict[str, Any], medians: dict[str, float]) -> str:
    """What the smallest machine's two modes show."""
    b, pg = medians.get("double_paging_balloon"), medians.get("double_paging_paging")
    hot = {r["mode"]: r["hot_ops_per_s"] for r in results["rows"]
           if r["machine_mib"] == min(x["machine_mib"] for x in results["rows"])}
    faster = "ballooned" if hot.get("balloon", 0) >= hot.get("paging", 0) else "host-paged"
    return (f"As the paper argues: double paging {b:.0f} times with the balloon and {pg:.0f} "
            f"with host paging; the hot working set ran faster {faster}.")


def params(quick: bool) -> dict[str, Any]:
    return {"vm_mib": 64, "machine_mib": [32] if quick else [48, 40, 32, 24], "cold_mib": 48,
            "hot_mib": 16, "files": 4, "file_mib": 4, "file_write_fraction": 0.5,
            "warmup_s": 4.0 if quick else 6.0, "measure_s": 6.0 if quick else 10.0,
            "disk_latency_s": 200e-6}


def measure(machine_mib: int, mode: str, p: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """One run of the mix in a guest of vm_mib on a machine of machine_mib, reclaiming by
    `mode` ('balloon' or 'paging')."""
    with trial.machine(memory=f"{machine_mib}MiB", swap_latency=p["disk_latency_s"],
                 seed=trial.seed_for("machine", machine_mib, mode)) as m:
        vm = m.create_vm("guest", memory=f"{p['vm_mib']}MiB")
        uvm.guest.boot(vm, disk=f"{2 * p['vm_mib'] + p['files'] * p['file_mib']}MiB",
                       disk_latency=p["disk_latency_s"], balloon=mode == "balloon",
                       balloon_period=0.1)
        if mode == "balloon":
            vm.balloon.target = (p["vm_mib"] - machine_mib) * MIB // PAGE_SIZE + MARGIN_PAGES
            while vm.balloon.size != vm.balloon.target:
                time.sleep(0.02)
        cold = GuestIdle(f"{p['cold_mib']}MiB")
        idle = vm.run(cold)
        while not cold.written:
            time.sleep(0.02)
        runs = {"hot": vm.run(GuestWorkingSet(f"{p['hot_mib']}MiB", pattern="zipf", write_fraction=0.3,
                                              seed=trial.seed_for("hot", machine_mib))),
                "files": vm.run(FileCache(files=p["files"], file_size=f"{p['file_mib']}MiB",
                                          write_fraction=p["file_write_fraction"],
                                          seed=trial.seed_for("files", machine_mib)))}
        time.sleep(p["warmup_s"])
        ops0, t0 = {k: r.ops for k, r in runs.items()}, time.monotonic()
        time.sleep(p["measure_s"])
        st, ops1, t1 = vm.stats(), {k: r.ops for k, r in runs.items()}, time.monotonic()
        for r in [idle, *runs.values()]:
            r.stop()
        for r in [idle, *runs.values()]:
            r.join(30)
    return {"machine_mib": machine_mib, "mode": mode,
            "hot_ops_per_s": (ops1["hot"] - ops0["hot"]) / (t1 - t0),
            "file_ops_per_s": (ops1["files"] - ops0["files"]) / (t1 - t0),
            "host_swapins": st["swapins"], "host_swapouts": st["swapouts"],
            "guest_swapins": st["guest_swapins"], "guest_swapouts": st["guest_swapouts"],
            "double_paging": st["guest_double_paging"], "cache_misses": st["guest_cache_misses"],
            "balloon_pages": st["ballooned"], "guest_cache_pages": st["guest_cache"],
            "resident_pages": st["resident"], "measure_s": t1 - t0}


def run(trial: Trial) -> None:
    quick, log, results = trial.quick, trial.log, trial.results
    p = params(quick)
    log(f"ballooning vs host paging: a {p['vm_mib']} MiB guest ({p['cold_mib']} MiB cold data, "
        f"{p['hot_mib']} MiB hot zipf working set, {p['files']} x {p['file_mib']} MiB files) on a "
        f"machine of X MiB; throughput over {p['measure_s']:.0f} s after {p['warmup_s']:.0f} s warm-up, "
        f"paging counts over the whole run")
    log(f"{'X MiB':>6} {'mode':>8} {'hot op/s':>9} {'file op/s':>10} {'host in':>8} {'host out':>9} "
        f"{'guest in':>9} {'guest out':>10} {'double':>7} {'balloon MiB':>12}")
    rows: list[dict[str, Any]] = []
    results["rows"] = rows
    runs = [(x, mode) for x in p["machine_mib"] for mode in ("balloon", "paging")]
    for i, (x, mode) in enumerate(runs):
        trial.progress(i / len(runs), f"{x} MiB, {mode}")
        r = measure(x, mode, p, trial)
        rows.append(r)
        log(f"{x:>6} {mode:>8} {r['hot_ops_per_s']:>9.0f} {r['file_ops_per_s']:>10.0f} "
            f"{r['host_swapins']:>8} {r['host_swapouts']:>9} {r['guest_swapins']:>9} "
            f"{r['guest_swapouts']:>10} {r['double_paging']:>7} "
            f"{r['balloon_pages'] * PAGE_SIZE / MIB:>12.1f}")


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = results["rows"]
    xs = sorted({r["machine_mib"] for r in rows}, reverse=True)
    panels = [("hot_ops_per_s", "hot working set ops/s"), ("file_ops_per_s", "file-cache ops/s"),
              ("host_swapins", "host swap-ins"), ("guest_swapins", "guest swap-ins"),
              ("double_paging", "double paging events")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
    width = 0.38
    for ax, (key, title) in zip(axes, panels):
        for i, mode in enumerate(("balloon", "paging")):
            vals = [next(r[key] for r in rows if r["machine_mib"] == x and r["mode"] == mode) for x in xs]
            ax.bar([j + (i - 0.5) * width for j in range(len(xs))], vals, width, label=mode)
        ax.set_xticks(range(len(xs)), [f"{x}" for x in xs])
        ax.set(xlabel="machine memory X (MiB)", title=title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend()
    fig.suptitle(f"{results['params']['vm_mib']} MiB guest: reclaimed by its balloon or paged by the host")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The hot working set's and the files' throughput, by machine size and mode; double
    paging events on the smallest machine, by mode."""
    rows = results["rows"]
    out: dict[str, float | None] = {
        f"{what}_ops_per_s_{r['machine_mib']}mib_{r['mode']}": r[f"{what}_ops_per_s"]
        for r in rows for what in ("hot", "file")}
    small = min(r["machine_mib"] for r in rows)
    out.update({f"double_paging_{r['mode']}": float(r["double_paging"]) for r in rows
                if r["machine_mib"] == small})
    return out


EXPERIMENT = Experiment("balloon-vs-paging", "the same guest reclaimed by ballooning or by host paging",
                        params, run, plot, figures, PAPER, setup, differs)
