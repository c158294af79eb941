"""Experiments that reproduce the paper's results in shape, run as
`uvm experiment NAME [--quick] [--out DIR]`. Each prints its numbers as it goes, writes them
to DIR/results.json, and draws DIR/NAME.png. `--quick` is a smaller run (about a minute).

An experiment is a module here with a `run(quick, log, results)` that fills the JSON-able
dict `results` as it measures (so an interrupted run still has what it measured) and a
`plot(results, path)` that draws them; REGISTRY names them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from uvm.experiments import (balloon, balloon_vs_paging, idle_tax, reallocation, sharing,
                             working_set)
from uvm.experiments.base import Experiment, MissingExtra, plotting

REGISTRY: dict[str, Experiment] = {e.name: e for e in (sharing.EXPERIMENT, balloon.EXPERIMENT,
                                                         balloon_vs_paging.EXPERIMENT,
                                                         idle_tax.EXPERIMENT,
                                                         working_set.EXPERIMENT,
                                                         reallocation.EXPERIMENT)}

__all__ = ["REGISTRY", "Experiment", "MissingExtra", "run"]


def run(name: str, quick: bool, out: Path, log: Callable[[str], None],
        shield: Callable[[], AbstractContextManager[None]] = nullcontext) -> dict[str, Any]:
    """Runs experiment `name`, writes out/results.json and (with matplotlib) out/NAME.png;
    returns the results. Interrupted (KeyboardInterrupt), it first writes what was measured,
    marked "partial": true, inside `shield()` (which keeps further signals out), then
    re-raises. Errors in `out` are ValueErrors naming --out, raised before the run."""
    if name not in REGISTRY:
        raise ValueError(f"experiment: must be one of {sorted(REGISTRY)}, got {name!r}")
    exp = REGISTRY[name]
    _make_dir(out)
    missing = plotting()
    if missing is not None:
        log(f"no plot this time: {missing}; the numbers are printed and saved")
    results: dict[str, Any] = {}
    try:
        exp.run(quick, log, results)
    except KeyboardInterrupt:
        with shield():
            results["partial"] = True
            log(f"interrupted: wrote what was measured to {_save(results, out)} (partial)")
        raise
    path = _save(results, out)
    if missing is None:
        exp.plot(results, out / f"{name}.png")
        log(f"wrote {path} and {out / (name + '.png')}")
    else:
        log(f"wrote {path}; for the plot: {missing}")
    return results


def _make_dir(out: Path) -> None:
    """Creates the results directory; ValueError naming --out if it cannot be one."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is not a directory (--out names the directory "
                         f"for results.json and the plot)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out: cannot create the directory {str(out)!r}: {e.strerror}") from e


def _save(results: dict[str, Any], out: Path) -> Path:
    """Writes out/results.json whole or not at all (a new file renamed over the old)."""
    path, new = out / "results.json", out / "results.json.new"
    try:
        new.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(new, path)
    except OSError as e:
        raise ValueError(f"--out: cannot write {str(path)!r}: {e.strerror}") from e
    return path
