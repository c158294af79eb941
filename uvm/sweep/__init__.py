"""Sweeps: `uvm sweep GRID.toml [--jobs N] [--out DIR] [--resume] [--ray ADDRESS]`.

A grid file (uvm/sweep/grid.py) names a scenario or an experiment, the parameter values to
try, seeds and repeats, and the metrics to collect. Every trial (point x seed x repeat)
runs in a process of its own, on this host (uvm/sweep/local.py: a pool sized by memory
and CPUs) or on a Ray cluster (uvm/sweep/cluster.py); each finished trial is one row of
DIR/results.jsonl and DIR/results.csv, and DIR/sweep.png plots the swept parameter against
the first metric. An interrupted sweep continues with --resume: trials already in the
table are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from uvm import progress
from uvm.sweep import cluster, grid, local, trial
from uvm.sweep.table import Table

__all__ = ["sweep"]


def sweep(path: str | Path, out: Path, *, jobs: int | None = None, resume: bool = False,
          ray: str | None = None, log: Callable[[str], None] = print) -> Table:
    """Runs the sweep GRID file `path` into `out`; returns the table of its rows."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs: must be at least 1, got {jobs}")
    spec, folder = grid.load(path)
    plan = trial.plan(spec, folder)
    table = Table(out, spec.parameters, spec.metrics)
    done = table.open(resume)
    todo = [t for t in plan if t.key not in done]
    log(f"sweep: {len(plan)} trials ({len(spec.points)} points x {len(spec.seeds)} seeds x "
        f"{spec.repeats} repeats), {len(plan) - len(todo)} already done; "
        f"{'Ray at ' + ray if ray else 'this host'}")
    rows = cluster.execute(todo, ray, log) if ray else local.execute(todo, jobs, log)
    with progress.bar("sweep", total=len(todo)) as bar:
        for n, row in enumerate(rows, 1):
            table.add(row)
            shown = ", ".join(f"{k}={v}" for k, v in row["params"].items())
            log(f"[{n}/{len(todo)}] {shown or '-'} seed {row['seed']} repeat {row['repeat']}: "
                f"{row['status']}" + "".join(f"; {m} {v}" for m, v in row["metrics"].items()))
            bar.update(n, f"{n} of {len(todo)} trials")
    x = spec.plot.x or (spec.parameters[0] if spec.parameters else None)
    log(table.plot(x, spec.plot.metric or spec.metrics[0]))
    log(f"wrote {out / 'results.csv'} and {out / 'results.jsonl'}")
    return table
