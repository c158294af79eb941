"""Experiments that reproduce the paper's results in shape, run as
`uvm experiment NAME [--quick] [--out DIR]`. Each prints its numbers as it goes, writes them
to DIR/results.json, and draws DIR/NAME.png. `--quick` is a smaller run (about a minute).

An experiment is a module here with `params(quick)`, a `run(trial)` that fills the
JSON-able dict `trial.results` as it measures, so that an interrupted run still has what it
measured (uvm.experiments.base.Trial: quick, seed, log, progress, results), a
`plot(results, path)` that draws them and `figures(results)`, its key numbers; REGISTRY
names them. `--seed N` seeds every machine and workload of the run, `--repeat N` runs it N
times and reports the median and spread of the key figures (runner.py)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from uvm.errors import MissingExtra
from uvm.experiments import (balloon, balloon_vs_paging, idle_tax, io_remap, reallocation,
                             runner, sharing, sharing_real, side_channel, working_set)
from uvm.experiments.base import Experiment, MapSpec, Trial

REGISTRY: dict[str, Experiment] = {e.name: e for e in (sharing.EXPERIMENT,
                                                         sharing_real.EXPERIMENT,
                                                         balloon.EXPERIMENT,
                                                         balloon_vs_paging.EXPERIMENT,
                                                         idle_tax.EXPERIMENT,
                                                         working_set.EXPERIMENT,
                                                         reallocation.EXPERIMENT,
                                                         side_channel.EXPERIMENT,
                                                         io_remap.EXPERIMENT)}

__all__ = ["REGISTRY", "Experiment", "MissingExtra", "Trial", "run"]


def run(name: str, quick: bool, out: Path, log: Callable[[str], None], seed: int | None = None,
        repeat: int = 1,
        shield: Callable[[], AbstractContextManager[None]] = nullcontext,
        map_every: float | None = None,
        step: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Runs experiment `name` `repeat` times (seeded with seed, seed+1, ...; default: a seed
    drawn and recorded), writes out/results.json and (with matplotlib) out/NAME.png, and
    with map_every the page maps of its machines every map_every seconds (out/pagemap/);
    returns the results. Interrupted (KeyboardInterrupt), it first writes what was
    measured, its record marked partial, inside `shield()` (which keeps further signals
    out), then re-raises. Errors in `out` are ValueErrors naming --out, raised before the
    run (uvm/experiments/runner.py). `step`: where progress goes instead of a bar of its
    own."""
    if name not in REGISTRY:
        raise ValueError(f"experiment: must be one of {sorted(REGISTRY)}, got {name!r}")
    maps = MapSpec(map_every, out) if map_every is not None else None
    return runner.run(REGISTRY[name], quick, out, log, seed, repeat, shield, maps, step)
