"""What every experiment shares: its description, the trial it runs, and matplotlib on
demand."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uvm import pagemap
from uvm.errors import MissingExtra as MissingExtra  # re-exported: it was defined here before
from uvm.experiments.paper import Paper
from uvm.machine import Machine
from uvm.seeds import derive


def _no_progress(done: float, what: str) -> None:
    pass


@dataclass(frozen=True)
class Trial:
    """One run of an experiment: quick or full, its seed (every machine and workload seed
    of the run derives from it: `seed_for`), where its printed lines go, `progress`, which
    it calls with the fraction of the run done and what it is doing, and `results`, the
    JSON-able dict it fills as it measures (so that an interrupted trial still has what it
    measured)."""
    quick: bool
    seed: int
    log: Callable[[str], None]
    progress: Callable[[float, str], None] = field(default=_no_progress)
    results: dict[str, Any] = field(default_factory=dict)
    maps: MapSpec | None = None
    _machines: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def seed_for(self, *path: object) -> int:
        """The seed of the part named by `path` (e.g. "vm", 3), derived from the trial's."""
        return derive(self.seed, *path)

    @contextmanager
    def machine(self, **kwargs: Any) -> Iterator[Machine]:
        """A uvm.Machine(**kwargs) for the trial, closed when the block ends. With `maps`
        (--map-every), its page maps are drawn every maps.every seconds while it runs, into
        maps.out/pagemap/SEED-K/ (the trial's seed, the K-th machine of the trial)."""
        with Machine(**kwargs) as m:
            out = self.maps.out / "pagemap" / f"{self.seed}-{next(self._machines)}" if self.maps else None
            with pagemap.recording(m, out or Path(), self.maps.every if self.maps else None) as rec:
                yield m
            if rec is not None:
                self.log(rec.report())


@dataclass(frozen=True)
class MapSpec:
    """--map-every: draw the page maps of an experiment's machines every `every` seconds
    into `out`."""
    every: float
    out: Path


@dataclass(frozen=True)
class Experiment:
    """An experiment: `params(quick)` its parameters, `run(trial)` which fills
    `trial.results` as it measures (the runner starts it with "experiment", "quick" and
    "params"), `plot(results, path)` its figure, and `figures(results)` its key numbers
    (of a finished trial), of which --repeat reports the median and spread.

    For `uvm reproduce` (uvm/reproduce/): `paper`, what of the paper it reproduces and the
    paper's numbers (uvm/experiments/paper.py); `setup(params)`, uvm's setup in a sentence,
    saying what is scaled down from the paper's and by how much; `differs(results,
    medians)`, what differs from the paper and why, in a sentence or two written from the
    measured results (the first trial's) and the medians of the key figures over the trials."""
    name: str
    help: str
    params: Callable[[bool], dict[str, Any]]
    run: Callable[[Trial], None]
    plot: Callable[[dict[str, Any], Path], None]
    figures: Callable[[dict[str, Any]], dict[str, float | None]]
    paper: Paper | None = None
    setup: Callable[[dict[str, Any]], str] | None = None
    differs: Callable[[dict[str, Any], dict[str, float]], str] | None = None


PLOT_HELP = "plots need matplotlib: pip install 'uvm[plot]'"


def plotting() -> str | None:
    """None if matplotlib can be imported; otherwise how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return PLOT_HELP
    return None


def pyplot() -> Any:
    """matplotlib's pyplot on a file backend, or MissingExtra saying how to get it."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra(PLOT_HELP) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
