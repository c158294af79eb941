"""Running trials on this host: a process pool sized by memory and CPUs.

Each worker process serves one trial and exits (max_tasks_per_child=1). Workers come from a
fork server: a single-threaded process started once, with uvm already imported, that forks
each worker, so a trial starts in milliseconds rather than a fresh interpreter's second or
two, and inherits nothing from the sweep's own threads. How many run at
once: no more than the CPUs, and no more than fit in the memory available now (MemAvailable
minus a quarter kept free) at each trial's footprint (its machine memory plus its swap).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from uvm.sweep import trial as trials

KEEP_FREE = 0.25        # of the available memory, left to everything else


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def pool_size(jobs: int | None, per_trial: int, log: Callable[[str], None]) -> int:
    """Worker processes: `jobs` (default: the CPUs this process may use), capped by memory."""
    cpus = len(os.sched_getaffinity(0))
    fit = int(available_memory() * (1 - KEEP_FREE)) // max(per_trial, 1)
    if fit < 1:
        raise ValueError(f"trial_memory: one trial needs {per_trial >> 20} MiB, more than this "
                         f"host has free ({available_memory() >> 20} MiB available)")
    wanted = jobs or cpus
    if wanted > fit:
        log(f"sweep: {wanted} jobs would not fit in memory ({per_trial >> 20} MiB each): "
            f"running {fit} at a time")
    return min(wanted, fit)


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["uvm.sweep.trial"])
    return ctx


def run_isolated(trial: trials.Trial) -> dict[str, Any]:
    """Runs one trial in a fresh process and returns its row (what a Ray task does)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as one:
        return one.submit(trials.run, trial).result()


def execute(todo: list[trials.Trial], jobs: int | None,
            log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Runs the trials; yields each row as its trial finishes."""
    if not todo:
        return
    size = pool_size(jobs, max(t.memory for t in todo), log)
    with ProcessPoolExecutor(max_workers=size, mp_context=_context(), max_tasks_per_child=1) as pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(trials.run, t) for t in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()
