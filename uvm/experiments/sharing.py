"""The paper's page-sharing experiment in shape: 1..N identical VMs running the same
workload; how much memory is shared, and how much is saved, as N grows.

Each VM boots the same OS image (the installed standard library as page cache, laid out in
a different order in each VM), holds private data that differs, and zeroed pages, then keeps
working on its private data while the scanner runs. Sharing is measured after the scanner
converges (full passes until one merges nothing). The machine is large enough that nothing
is swapped, so sharing is measured alone.

What to expect: one VM alone shares only its zero pages (and the odd duplicate page within
its image); from two VMs on, every image page is shared and the savings grow with N. The
shared fraction approaches image+zeroed / total and the saved fraction (N-1)/N of that: the
workload's mix, not uvm, sets those limits. The paper reports about 67% shared and 60%
saved for ten VMs; this workload's mix (12 MiB image, 4 MiB zeroed, 8 MiB private per VM)
is chosen to be comparable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.sharing import DomainPolicy
from uvm.sizes import PAGE_SIZE, parse_size
from workloads import OSImage

MIB = 1 << 20


def params(quick: bool) -> dict[str, Any]:
    return {"max_vms": 4 if quick else 10, "image": "12MiB", "private": "8MiB", "zeroed": "4MiB",
            "run_seconds": 0.5 if quick else 1.0}


def measure(n: int, p: dict[str, Any], trial: Trial, share_domains: DomainPolicy = "all") -> dict[str, Any]:
    """Boots n VMs, shares until converged, returns the counts."""
    per_vm = sum(parse_size(p[k], k) for k in ("image", "private", "zeroed"))
    with trial.machine(memory=n * per_vm + 32 * MIB, reclaim=False, seed=trial.seed_for("machine", n),
                       share_domains=share_domains) as m:
        vms = [m.create_vm(f"vm{i}", memory=per_vm + 2 * MIB) for i in range(n)]
        runs = [vm.run(OSImage(image=p["image"], private=p["private"], zeroed=p["zeroed"],
                                    seed=trial.seed_for("vm", i)))
                for i, vm in enumerate(vms)]
        while not all(r.workload.booted or r.done for r in runs):   # type: ignore[attr-defined]
            time.sleep(0.02)
        start, cpu, passes, merged = time.monotonic(), time.thread_time(), 0, 0
        while passes < 6:
            passes += 1
            got = m.share_now()
            merged += got
            if got == 0:
                break
        scan_wall, scan_cpu = time.monotonic() - start, time.thread_time() - cpu
        time.sleep(p["run_seconds"])            # the workloads go on writing: some COW breaks
        for r in runs:
            r.stop()
        for r in runs:
            r.join(30)
        st = m.stats()
        in_use = sum(v["resident"] + v["swapped"] + v["sharing"] for v in m.stats_with_vms(vms)[1])
    return {"vms": n, "pages_in_use": in_use, "sharing": st["sharing"], "shared_frames": st["shared_frames"],
            "saved": st["saved"], "zero_shared": st["zero_shared"], "cow_breaks": st["cow_breaks"],
            "shared_pct": 100.0 * st["sharing"] / in_use, "saved_pct": 100.0 * st["saved"] / in_use,
            "shared_mib": st["sharing"] * PAGE_SIZE / MIB, "saved_mib": st["saved"] * PAGE_SIZE / MIB,
            "scan_passes": passes, "scan_wall_s": scan_wall, "scan_cpu_s": scan_cpu}


def run(trial: Trial) -> None:
    quick, log, results = trial.quick, trial.log, trial.results
    p = params(quick)
    log(f"page sharing: 1..{p['max_vms']} identical VMs, each booting a {p['image']} OS image "
        f"with {p['private']} private data and {p['zeroed']} zeroed")
    log(f"{'VMs':>4} {'in use MiB':>11} {'shared MiB':>11} {'saved MiB':>10} {'shared %':>9} "
        f"{'saved %':>8} {'zero pg':>8} {'COW':>6} {'scan s':>7}")
    rows: list[dict[str, Any]] = []
    results.update({"rows": rows, "paper": {"vms": 10, "shared_pct": 67, "saved_pct": 60}})
    for n in range(1, p["max_vms"] + 1):
        trial.progress((n - 1) / p["max_vms"], f"{n} VMs")
        r = measure(n, p, trial)
        rows.append(r)
        log(f"{n:>4} {r['pages_in_use'] * PAGE_SIZE / MIB:>11.1f} {r['shared_mib']:>11.1f} "
            f"{r['saved_mib']:>10.1f} {r['shared_pct']:>9.1f} {r['saved_pct']:>8.1f} "
            f"{r['zero_shared']:>8} {r['cow_breaks']:>6} {r['scan_wall_s']:>7.2f}")


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = results["rows"]
    n = [r["vms"] for r in rows]
    fig, (mib, pct) = plt.subplots(1, 2, figsize=(10, 4))
    mib.plot(n, [r["shared_mib"] for r in rows], "o-", label="shared")
    mib.plot(n, [r["saved_mib"] for r in rows], "s-", label="saved")
    mib.set(xlabel="identical VMs", ylabel="memory (MiB)", title="Memory shared and saved")
    pct.plot(n, [r["shared_pct"] for r in rows], "o-", label="shared")
    pct.plot(n, [r["saved_pct"] for r in rows], "s-", label="saved")
    paper = results["paper"]
    pct.plot([paper["vms"]], [paper["shared_pct"]], "o", mfc="none", color="C0", label="paper: shared")
    pct.plot([paper["vms"]], [paper["saved_pct"]], "s", mfc="none", color="C1", label="paper: saved")
    pct.set(xlabel="identical VMs", ylabel="% of memory in use", ylim=(0, 100), title="As a share of memory in use")
    for ax in (mib, pct):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xticks(n)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """With the most VMs: the share of memory in use that is shared, and that is saved."""
    last = results["rows"][-1]
    return {"shared_pct": last["shared_pct"], "saved_pct": last["saved_pct"]}


EXPERIMENT = Experiment("sharing", "memory shared and saved by 1..N identical VMs", params, run,
                        plot, figures)
