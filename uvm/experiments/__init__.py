"""Experiments that reproduce the paper's results in shape, run as
`uvm experiment NAME [--quick] [--out DIR]`. Each prints its numbers as it goes, writes them
to DIR/results.json, and draws DIR/NAME.png. `--quick` is a smaller run (about a minute).

An experiment is a module here with a `run(quick, log) -> dict` that returns JSON-able
results and a `plot(results, path)` that draws them; REGISTRY names them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uvm.experiments import (balloon, balloon_vs_paging, idle_tax, reallocation, sharing,
                             working_set)
from uvm.experiments.base import Experiment, MissingExtra, pyplot

REGISTRY: dict[str, Experiment] = {e.name: e for e in (sharing.EXPERIMENT, balloon.EXPERIMENT,
                                                         balloon_vs_paging.EXPERIMENT,
                                                         idle_tax.EXPERIMENT,
                                                         working_set.EXPERIMENT,
                                                         reallocation.EXPERIMENT)}

__all__ = ["REGISTRY", "Experiment", "MissingExtra", "run"]


def run(name: str, quick: bool, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Runs experiment `name`, writes out/results.json and out/NAME.png; returns the results."""
    if name not in REGISTRY:
        raise ValueError(f"experiment: must be one of {sorted(REGISTRY)}, got {name!r}")
    exp = REGISTRY[name]
    pyplot()                    # fail before a long run, not after it
    out.mkdir(parents=True, exist_ok=True)
    results = exp.run(quick, log)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    exp.plot(results, out / f"{name}.png")
    log(f"wrote {out / 'results.json'} and {out / (name + '.png')}")
    return results
