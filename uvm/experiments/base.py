"""What every experiment shares: its description, the trial it runs, and matplotlib on
demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uvm.errors import UvmError
from uvm.experiments.paper import Paper
from uvm.seeds import derive


class MissingExtra(UvmError):
    """An optional dependency (an extra of the package) is not installed."""


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

    def seed_for(self, *path: object) -> int:
        """The seed of the part named by `path` (e.g. "vm", 3), derived from the trial's."""
        return derive(self.seed, *path)


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
