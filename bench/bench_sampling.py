#!/usr/bin/env python3
"""The cost of idle-memory sampling: a working-set workload's throughput with and without
the memory policy, as ratios against the run with no policy measured in the same run
(issue 5: "below 1% throughput loss" at the default sampling settings).

    python bench/bench_sampling.py [--quick] [--out FILE.json]

One VM runs uvm.workloads.WorkingSet (random, then zipf) on a machine twice its size, so
nothing is ever reclaimed: what the policy costs here is its sampling (each period,
`sample_size` random resident pages are unmapped and the guest's next touch of each is a
minor fault) and its scheduler thread (every `tick`: count the watched pages' touches,
read the counters, recompute targets every `target_period`). Configurations:

    none            Machine(policy=False)
    default         MemoryPolicy(): 100 pages every 30 s, tick 0.25 s
    1 s             MemoryPolicy(sample_period=1.0)
    0.1 s           MemoryPolicy(sample_period=0.1, tick=0.1): aggressive

Per pattern, one machine: fill the VM, start the workload (its thread pinned to CPU 0), let
it run `--warmup` seconds; then each repeat runs every configuration once, in a rotated order
(interleaved): start the policy on the running machine as Machine(policy=...) does, wait
`--settle` seconds, measure over `--window` seconds, stop the policy. A window in which other
processes took more than 5% of a CPU is measured again. Two figures, each against the window
with no policy of the same repeat, median over the repeats:

    loss        1 - ops/s / ops/s with no policy: what the target names, but on a shared VM
                the guest's speed drifts by 10-20% between windows, far above 1%;
    time lost   the share of the window the guest thread was off its CPU (blocked on a
                sampling fault or the GIL, or preempted), less the same with no policy:
                the time the policy takes from the guest, measured to the microsecond.

The default's one sample per 30 s falls in the settle time; its cost per sampled page (at
most `0.1 s`'s time lost per minor fault) is added back, amortized over 30 s, for the
target. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvm
from uvm.sampler import DEFAULT_PERIOD, DEFAULT_SIZE
from uvm.scheduler import MemoryScheduler
from uvm.workloads import Fill, WorkingSet
from workloads.base import Run

from bench_core import Disturbance, median, pinned   # bench/ is sys.path[0] when run as a script

HERE = Path(__file__).resolve().parent
GUEST_CPU = 0
PATTERNS = ("random", "zipf")
TARGET_LOSS = 0.01          # issue 5: below 1% throughput loss at the default settings
QUIET = 0.05                # a window is disturbed when others took more than 5% of a CPU
RETRIES = 4                 # a disturbed window is measured again up to this many times
HZ = os.sysconf("SC_CLK_TCK")

# name -> MemoryPolicy keyword arguments (None: no policy)
CONFIGS: dict[str, dict[str, float] | None] = {
    "none": None,
    "default": {},
    "1 s": {"sample_period": 1.0},
    "0.1 s": {"sample_period": 0.1, "tick": 0.1},
}


def log(msg: str) -> None:
    print(msg, flush=True)


def thread_cpu(thread: Any) -> float:
    """CPU seconds a thread of this process has used (0 if it is gone)."""
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:
        return 0.0


class Others:
    """CPU time taken during a window by everything but this process (other processes,
    kernel threads, the hypervisor's steal), from /proc/stat and /proc/self/stat."""

    def __init__(self) -> None:
        self.start = self.ticks()

    @staticmethod
    def ticks() -> int:
        cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(cpu[:3]) + sum(cpu[5:8])      # user nice system, irq softirq steal
        mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy - int(mine[11]) - int(mine[12])

    def cpus(self, seconds: float) -> float:
        """CPUs' worth of time the others took since the start, over `seconds`."""
        return (self.ticks() - self.start) / HZ / seconds


def schedstat(thread: Any) -> tuple[int, int]:
    """(ns on a CPU, ns waiting for a CPU while runnable) of a thread of this process, from
    /proc/self/task/TID/schedstat; time blocked (a fault, the GIL) is in neither."""
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text().split()
    except (OSError, AttributeError):
        return 0, 0
    return int(fields[0]), int(fields[1])


def start_policy(m: uvm.Machine, kwargs: dict[str, float]) -> MemoryScheduler:
    """Starts a memory policy on a running machine the way Machine(policy=...) does: a
    MemoryScheduler, every VM attached (its sampler starts a period at the next tick)."""
    sched = MemoryScheduler(m, uvm.MemoryPolicy(**kwargs))
    for vm in m.vms:
        sched.attach(vm)
    m.scheduler = sched
    return sched


def stop_policy(m: uvm.Machine) -> None:
    """Stops it again, as Machine.close() does, and drops the VMs' samplers."""
    sched, m.scheduler = m.scheduler, None
    if sched is not None:
        sched.stop()
    for vm in m.vms:
        vm.sampler = None


def measure(m: uvm.Machine, vm: uvm.VM, run: Run, config: str, settle: float,
            window: float) -> dict[str, Any]:
    """One window: the configuration's policy started, `settle` seconds, then `window`
    seconds of counting; the policy stopped."""
    kwargs = CONFIGS[config]
    sched = start_policy(m, kwargs) if kwargs is not None else None
    try:
        time.sleep(settle)
        guest = run._thread
        st0, ops0, cpu0, t0 = vm.stats(), run.ops, thread_cpu(sched and sched._thread), time.monotonic()
        on0, wait0 = schedstat(guest)
        others = Others()
        time.sleep(window)
        st1, ops1, cpu1, t1 = vm.stats(), run.ops, thread_cpu(sched and sched._thread), time.monotonic()
        on1, wait1 = schedstat(guest)
        foreign = others.cpus(t1 - t0)
        state = m.stats()["state"]
    finally:
        stop_policy(m)
    if run.done:
        run.join()                                  # re-raises what stopped it
    if st1["swapouts"] or st1["resident"] != vm.pages:
        raise RuntimeError(f"{config}: the VM was reclaimed ({st1}): not a run without memory "
                           f"pressure")
    dt = t1 - t0
    waited = (wait1 - wait0) / 1e9
    return {
        "config": config, "ops_per_s": (ops1 - ops0) / dt,
        "runqueue_wait": waited / dt, "others_cpu": round(foreign, 4),
        "ops_per_s_not_preempted": (ops1 - ops0) / (dt - waited) if dt > waited else 0.0,
        "guest_cpu": (on1 - on0) / 1e9 / dt, "off_cpu": 1 - (on1 - on0) / 1e9 / dt,
        "minor_faults_per_s": (st1["faults_minor"] - st0["faults_minor"]) / dt,
        "watch_touched_per_s": (st1["watch_touched"] - st0["watch_touched"]) / dt,
        "scheduler_cpu_ms_per_s": 1000 * (cpu1 - cpu0) / dt if sched else 0.0,
        "active": st1.get("active"), "state": state,
    }


def quiet_run(m: uvm.Machine, vm: uvm.VM, run: Run, config: str, settle: float,
              window: float) -> dict[str, Any]:
    """measure(), repeated while other processes disturbed its window (up to RETRIES
    times; then the least disturbed attempt is kept, marked disturbed)."""
    tries = []
    for _ in range(1 + RETRIES):
        r = measure(m, vm, run, config, settle, window)
        tries.append(r)
        if r["others_cpu"] <= QUIET:
            break
        time.sleep(1.0)
    best = min(tries, key=lambda r: r["others_cpu"])
    best.update(attempts=len(tries), disturbed=best["others_cpu"] > QUIET)
    return best


def run_pattern(pattern: str, size_mib: int, repeats: int, warmup: float, settle: float,
                window: float, swap_dir: str, t_start: float) -> list[dict[str, Any]]:
    """Every configuration `repeats` times, interleaved, on one machine and one running
    workload (so that every configuration touches the same memory from the same thread)."""
    runs: list[dict[str, Any]] = []
    names = list(CONFIGS)
    with uvm.Machine(f"{2 * size_mib}MiB", swap_dir=swap_dir) as m:
        vm = m.create_vm("ws", memory=f"{size_mib}MiB")
        with pinned(GUEST_CPU):                     # the guest threads inherit CPU 0
            vm.run(Fill(seed=1)).join(60)
            run = vm.run(WorkingSet(size=f"{size_mib}MiB", pattern=pattern, write_fraction=0.5,
                                    seed=1))
        time.sleep(warmup)
        for rep in range(repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]     # rotate: interleave
            for config in order:
                r = quiet_run(m, vm, run, config, settle, window)
                r.update(repeat=rep, pattern=pattern)
                runs.append(r)
            log(f"[{time.monotonic() - t_start:6.1f}s] {pattern}, repeat {rep + 1}/{repeats}: " + ", ".join(
                f"{r['config']} {r['ops_per_s'] / 1e6:.2f}M"
                + (f" ({r['attempts']} tries)" if r["attempts"] > 1 else "")
                for r in runs if r["repeat"] == rep))
        run.stop()
        run.join(30)
    return runs


def environment(swap_dir: str) -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), None)
    try:
        rev = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = None
    return {"kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "uvm": uvm.__version__, "git": rev,
            "swap_dir": swap_dir, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pattern and configuration: medians over the repeats, and against the no-policy
    window of the same repeat (paired) the throughput loss and the guest time lost, median
    over the repeats."""
    rows = []
    for pattern in PATTERNS:
        base = {r["repeat"]: r for r in runs if r["pattern"] == pattern and r["config"] == "none"}
        for config in CONFIGS:
            mine = [r for r in runs if r["pattern"] == pattern and r["config"] == config]
            if not mine:
                continue
            paired = [(r, base[r["repeat"]]) for r in mine if r["repeat"] in base]
            losses = [1 - r["ops_per_s"] / b["ops_per_s"] for r, b in paired if b["ops_per_s"]]
            lost = [r["off_cpu"] - b["off_cpu"] for r, b in paired]
            rows.append({
                "pattern": pattern, "config": config, "policy": CONFIGS[config],
                "ops_per_s": round(median([r["ops_per_s"] for r in mine])),
                "ops_per_s_runs": [round(r["ops_per_s"]) for r in mine],
                "loss": round(median(losses), 5),
                "loss_runs": [round(x, 5) for x in losses],
                "off_cpu": round(median([r["off_cpu"] for r in mine]), 6),
                "time_lost": round(median(lost), 6),
                "time_lost_runs": [round(x, 6) for x in lost],
                "runqueue_wait": round(median([r["runqueue_wait"] for r in mine]), 6),
                "others_cpu": round(median([r["others_cpu"] for r in mine]), 4),
                "retried": sum(r["attempts"] - 1 for r in mine),
                "disturbed": sum(r["disturbed"] for r in mine),
                "minor_faults_per_s": round(median([r["minor_faults_per_s"] for r in mine]), 1),
                "scheduler_cpu_ms_per_s": round(median([r["scheduler_cpu_ms_per_s"] for r in mine]), 2),
                "active": None if mine[-1]["active"] is None else round(median([r["active"] for r in mine]), 3),
            })
    return rows


def amortized(rows: list[dict[str, Any]], pattern: str) -> dict[str, float] | None:
    """The default policy's cost with its 30-s sample included: the guest time one sampled
    page costs, at most `0.1 s`'s time lost over its minor faults (an upper bound: its ten
    ticks a second are counted too; the 1 s configuration's difference to the default is
    too small against the noise to divide), added to the default's own time lost at 100
    pages per 30 s."""
    by = {r["config"]: r for r in rows if r["pattern"] == pattern}
    if not {"default", "0.1 s"} <= set(by) or by["0.1 s"]["minor_faults_per_s"] <= 0:
        return None
    per_page = max(0.0, by["0.1 s"]["time_lost"]) / by["0.1 s"]["minor_faults_per_s"]
    rate = DEFAULT_SIZE / DEFAULT_PERIOD
    return {"us_per_sampled_page": round(per_page * 1e6, 2),
            "default_time_lost": round(by["default"]["time_lost"] + rate * per_page, 6)}


def report(rows: list[dict[str, Any]], repeats: int, window: float) -> list[dict[str, Any]]:
    log(f"\nWorking-set throughput, one VM, no memory pressure; median of {repeats} interleaved "
        f"windows of {window:g} s;")
    log("loss = 1 - ops/s / ops/s with no policy in the same repeat (median; min..max over the repeats);\n"
        "off CPU = share of the window the guest thread did not run (blocked on a fault or the GIL,\n"
        "or waiting for a CPU); time lost = off CPU - off CPU with no policy in the same repeat (median);\n"
        "minor f/s = the sampler's traps; sched CPU = the policy thread's CPU time per second")
    hdr = (f"{'pattern':<8} {'policy':<8} {'ops/s':>11} {'loss':>7} {'min..max loss':>16} "
           f"{'off CPU':>8} {'time lost':>9} {'minor f/s':>9} {'sched CPU ms/s':>14} {'f':>5}")
    log(hdr)
    log("-" * len(hdr))
    for r in rows:
        lo, hi = min(r["loss_runs"]), max(r["loss_runs"])
        f = "-" if r["active"] is None else f"{r['active']:.2f}"
        log(f"{r['pattern']:<8} {r['config']:<8} {r['ops_per_s']:>11,} {100 * r['loss']:>6.2f}% "
            f"{100 * lo:>7.2f}..{100 * hi:>6.2f}% {100 * r['off_cpu']:>7.3f}% "
            f"{100 * r['time_lost']:>8.3f}% {r['minor_faults_per_s']:>9.0f} "
            f"{r['scheduler_cpu_ms_per_s']:>14.2f} {f:>5}")
    log(f"windows measured again because other processes took more than {QUIET:.0%} of a CPU: "
        f"{sum(r['retried'] for r in rows)}; kept although disturbed (after {RETRIES} retries): "
        f"{sum(r['disturbed'] for r in rows)}")
    targets = []
    for pattern in PATTERNS:
        row = next((r for r in rows if r["pattern"] == pattern and r["config"] == "default"), None)
        am = amortized(rows, pattern)
        if row is None or am is None:
            continue
        lost = am["default_time_lost"]
        met = lost < TARGET_LOSS
        targets.append({"metric": f"guest time lost with the default policy, its 30-s sample "
                                  f"amortized [{pattern}]", "value": lost,
                        "target": f"< {TARGET_LOSS:.0%}", "met": met,
                        "us_per_sampled_page": am["us_per_sampled_page"],
                        "throughput_loss": row["loss"], "throughput_loss_runs": row["loss_runs"]})
        log(f"[{pattern}] one sampled page costs the guest at most {am['us_per_sampled_page']:.1f} us; default "
            f"policy with its sample every 30 s amortized: {100 * lost:.3f}% of the guest's time "
            f"< {TARGET_LOSS:.0%}: {'met' if met else 'NOT MET'} (throughput: {100 * row['loss']:.2f}%, "
            f"{100 * min(row['loss_runs']):.2f}..{100 * max(row['loss_runs']):.2f}% over the repeats)")
    return targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and shorter windows (about 30 s on a quiet machine)")
    ap.add_argument("--out", metavar="FILE.json", help="write every figure and every run as JSON")
    ap.add_argument("--repeats", type=int, help="windows of each configuration (default 9, quick 3)")
    ap.add_argument("--window", type=float, metavar="SECONDS", help="measured seconds per window (default 2, quick 1)")
    ap.add_argument("--warmup", type=float, metavar="SECONDS", help="seconds the workload runs before the first window (default 2, quick 1)")
    ap.add_argument("--settle", type=float, metavar="SECONDS", help="seconds between starting a policy and its window (default 0.5)")
    ap.add_argument("--size", type=int, metavar="MiB", default=64, help="working set = VM size (default 64)")
    ap.add_argument("--swap-dir", help="directory of the swap files (default $TMPDIR or /var/tmp)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    window = args.window or (1.0 if args.quick else 2.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    settle = args.settle if args.settle is not None else 0.5
    if repeats < 1:
        ap.error("--repeats: must be at least 1")
    if not (window > 0 and warmup >= 0 and settle >= 0):
        ap.error("--window must be > 0, --warmup and --settle >= 0 seconds")
    if not 1 <= args.size <= 1024:
        ap.error("--size: must be 1..1024 MiB")
    swap_dir = args.swap_dir or os.environ.get("TMPDIR", "/var/tmp")
    if not os.path.isdir(swap_dir):
        ap.error(f"--swap-dir: {swap_dir!r} is not a directory")

    t_start = time.monotonic()
    watch = Disturbance()
    watch.start()
    env = environment(swap_dir)
    log(f"uvm bench_sampling: {env['cpu']}, {env['cpus']} CPUs, Linux {env['kernel']}, Python "
        f"{env['python']}, uvm {env['uvm']} ({env['git']}); {args.size} MiB working set, "
        f"{repeats} repeats x {len(CONFIGS)} configurations x {len(PATTERNS)} patterns, "
        f"windows of {window:g} s, {settle:g} s after the policy starts")
    runs: list[dict[str, Any]] = []
    for pattern in PATTERNS:
        runs += run_pattern(pattern, args.size, repeats, warmup, settle, window, swap_dir, t_start)
    rows = summarize(runs)
    targets = report(rows, repeats, window)
    elapsed = time.monotonic() - t_start
    foreign, stolen = watch.finish()
    env.update(other_processes_cpu_s=round(foreign, 2), steal_s=round(stolen, 2),
               loadavg_end=Path("/proc/loadavg").read_text().split()[:3])
    log(f"\ndone in {elapsed:.1f} s; other processes used {foreign:.2f} CPU-seconds meanwhile "
        f"(kernel threads included), the hypervisor stole {stolen:.1f} s")
    if foreign > 0.1 * elapsed:
        log("WARNING: the machine was not idle during the run: its figures are disturbed; run again "
            "on a quiet machine")
    if stolen > 0.05 * elapsed:
        log("WARNING: the hypervisor took CPU time from this VM during the run: its figures are "
            "disturbed; run again")
    if args.out:
        result = {"command": " ".join(["python", "bench/bench_sampling.py", *(argv if argv is not None else sys.argv[1:])]),
                  "env": env, "elapsed_s": round(elapsed, 1), "repeats": repeats, "window_s": window,
                  "warmup_s": warmup, "settle_s": settle, "size_mib": args.size, "rows": rows, "targets": targets,
                  "runs": runs}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
