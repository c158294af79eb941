"""The page-sharing side channel, and what its mitigation costs.

The attack (uvm/sidechannel.py): an attacker VM writes candidate pages into its own memory,
half of them copies of pages a victim VM holds and half pages nobody else has, lets the
sharing scanner run, and times one write to each candidate: a copy-on-write break (slow)
says the victim holds that page. Its classifier is a threshold calibrated on pages it
knows about (its own unique pages, and pages it holds twice). It runs in two
configurations: sharing across VMs (share_domains="all", the paper's and uvm's default)
and salted (the victim and the attacker with different share_salt: pages merge only within
a salt). Accuracy is the fraction of candidates guessed right, pooled over `rounds` fresh
machines.

The price: salting gives up the sharing between VMs. The sharing experiment's workload
(VMs booting one OS image, with private and zeroed pages) is measured with share_domains
"all" and "vm" (every VM a domain of its own): the savings lost.

What to expect: across VMs the attacker is right about nearly every candidate (a COW break
costs tens of microseconds, a private write under one); salted, no candidate is merged,
every write is fast, and accuracy is 50%: chance, since half the candidates are held. Of
the OS-image VMs' savings, only the zero pages (shared by every domain) and duplicates
within a VM remain."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from uvm import sidechannel
from uvm.experiments import sharing
from uvm.experiments.base import Experiment, Trial, pyplot

CONFIGS: dict[str, dict[str, Any]] = {
    "across VMs": {"share_domains": "all"},
    "salted": {"share_domains": "all", "victim_salt": "victim", "attacker_salt": "attacker"},
}
DOMAINS = ("all", "vm")         # the savings measured with each


def params(quick: bool) -> dict[str, Any]:
    return {"candidates": 256 if quick else 1024, "rounds": 2 if quick else 5,
            "calibration": sidechannel.CALIBRATION, "savings_vms": 3 if quick else 6,
            "workload": {k: v for k, v in sharing.params(quick).items() if k != "max_vms"}}


def attack(config: str, p: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """The attack in one configuration, `rounds` times; its accuracy and latencies."""
    attacker = sidechannel.ThresholdClassifier()
    right = fp = fn = merged = 0
    held_ns: list[int] = []
    free_ns: list[int] = []
    cuts = []
    for r in range(p["rounds"]):
        probe = sidechannel.probe(trial.seed_for("probe", config, r), p["candidates"],
                                  **CONFIGS[config])
        if not probe.intact:
            raise AssertionError("the attack changed a page's content (a bug in the core)")
        guesses = attacker.guess(probe.private, probe.shared, probe.latencies)
        right += sum(g == h for g, h in zip(guesses, probe.held))
        fp += sum(g and not h for g, h in zip(guesses, probe.held))
        fn += sum(h and not g for g, h in zip(guesses, probe.held))
        merged += probe.merged
        cuts.append(attacker.threshold(probe.private, probe.shared))
        held_ns += [t for t, h in zip(probe.latencies, probe.held) if h]
        free_ns += [t for t, h in zip(probe.latencies, probe.held) if not h]
    total = p["rounds"] * p["candidates"]
    return {"config": config, "accuracy": right / total, "candidates": total,
            "false_positives": fp, "misses": fn, "merged": merged,
            "threshold_ns": statistics.median(cuts),
            "held_median_ns": statistics.median(held_ns),
            "not_held_median_ns": statistics.median(free_ns),
            "held_ns": held_ns[:p["candidates"] // 2], "not_held_ns": free_ns[:p["candidates"] // 2]}


def run(trial: Trial) -> None:
    p = params(trial.quick)
    log = trial.log
    log(f"page-sharing side channel: {p['candidates']} candidates (half held by the victim) x "
        f"{p['rounds']} rounds, across VMs and salted")
    log(f"{'sharing':>11} {'accuracy':>9} {'false +':>8} {'misses':>7} {'held us':>8} "
        f"{'not held us':>12} {'threshold us':>13}")
    rows: list[dict[str, Any]] = []
    savings: list[dict[str, Any]] = []
    trial.results.update({"rows": rows, "savings": savings})     # filled as measured
    for i, config in enumerate(CONFIGS):
        trial.progress(i / 4, f"attack, {config}")
        r = attack(config, p, trial)
        rows.append(r)
        log(f"{config:>11} {r['accuracy']:>9.1%} {r['false_positives']:>8} {r['misses']:>7} "
            f"{r['held_median_ns'] / 1000:>8.2f} {r['not_held_median_ns'] / 1000:>12.2f} "
            f"{r['threshold_ns'] / 1000:>13.2f}")
    for i, domains in enumerate(DOMAINS):
        trial.progress((2 + i) / 4, f"savings, share_domains={domains}")
        s = sharing.measure(p["savings_vms"], {**p["workload"], "max_vms": p["savings_vms"]},
                            trial, share_domains=domains)
        savings.append({"share_domains": domains, **s})
        log(f"{p['savings_vms']} OS-image VMs, share_domains={domains!r}: {s['saved_mib']:.1f} MiB "
            f"saved ({s['saved_pct']:.1f}% of memory in use)")
    lost = savings[0]["saved_mib"] - savings[1]["saved_mib"]
    log(f"salting loses {lost:.1f} MiB of {savings[0]['saved_mib']:.1f} MiB saved "
        f"({lost / max(savings[0]['saved_mib'], 1e-9):.0%})")
    trial.results["saved_mib_lost"] = lost


def latency_bins(latencies_us: list[float]) -> list[float]:
    """Histogram bin edges (us), 20 a decade on a log scale, from the edge at or below the
    fastest latency to one above the slowest: a private write here takes tens of
    nanoseconds, so edges from a fixed 0.1 us would leave every private write out of the
    plot (and the salted one empty)."""
    lo = math.floor(20 * math.log10(max(min(latencies_us, default=0.01), 1e-3)))
    hi = math.ceil(20 * math.log10(max(max(latencies_us, default=1.0), 1e-3))) + 1
    return [10 ** (k / 20) for k in range(lo, max(hi, lo + 1) + 1)]


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows, savings = results["rows"], results["savings"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    bins = latency_bins([t / 1000 for r in rows for t in r["held_ns"] + r["not_held_ns"]])
    for ax, r in zip(axes, rows):
        ax.hist([t / 1000 for t in r["not_held_ns"]], bins=bins, alpha=0.6, label="victim does not hold")
        ax.hist([t / 1000 for t in r["held_ns"]], bins=bins, alpha=0.6, label="victim holds")
        ax.axvline(r["threshold_ns"] / 1000, color="k", ls="--", label="attacker's threshold")
        ax.set(xscale="log", xlabel="write latency (us)", ylabel="candidates",
               title=f"{r['config']}: attacker {r['accuracy']:.0%} right")
        ax.legend(fontsize=8)
    ax = axes[2]
    names = [f"share_domains\n= {s['share_domains']!r}" for s in savings]
    ax.bar(names, [s["saved_mib"] for s in savings], color=["C0", "C2"])
    for i, s in enumerate(savings):
        ax.text(i, s["saved_mib"], f"{s['saved_pct']:.0f}%", ha="center", va="bottom")
    ax.set(ylabel="memory saved (MiB)",
           title=f"{results['params']['savings_vms']} OS-image VMs: what salting costs")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The attacker's accuracy in each configuration, and the savings with and without
    sharing between VMs (% of memory in use)."""
    acc = {r["config"]: r["accuracy"] for r in results["rows"]}
    saved = {s["share_domains"]: s["saved_pct"] for s in results["savings"]}
    return {"accuracy_across_vms": acc["across VMs"], "accuracy_salted": acc["salted"],
            "saved_pct_all": saved["all"], "saved_pct_vm": saved["vm"]}


EXPERIMENT = Experiment("side-channel", "the page-sharing side channel across VMs and salted, "
                        "and the savings salting loses", params, run, plot, figures)
