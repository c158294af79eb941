"""Running an experiment once or `repeat` times: seeds, progress, the run record, the median
and spread of its key figures, and results.json.

Trial i of a run seeded with S has seed S + i, so that any one trial can be run again alone
with `--seed S+i`. results.json holds the record (uvm/record.py), the first trial's full
results (what the plot draws), every trial's seed and key figures, and for each key figure
the median, min, max and standard deviation over the trials. What the record already says
(the experiment's name, quick or full, its parameters) is in the record only; a trial's
results in memory carry them too, for the experiment's own code, and `trial_results` gives
a saved results.json that shape again (the report of `uvm reproduce` reads it so).

A trial fills its results as it measures (Trial.results), so a signal between or during
trials (KeyboardInterrupt: uvm/interrupts.py) loses nothing measured: the runner writes
results.json at once, its record marked partial, with the finished trials' figures and, if
the first trial was the one cut short, what it had measured so far; inside `shield()`, which
keeps further signals out, then re-raises. results.json is written whole or not at all.
Without matplotlib the numbers are still printed and saved, and the log says how to get the
plot."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from uvm import progress, record
from uvm.experiments.base import Experiment, MapSpec, Trial, plotting
from uvm.outdir import make_dir
from uvm.seeds import check_seed, new_seed


class Figure(BaseModel):
    """A key figure over the trials (those that gave one)."""
    model_config = ConfigDict(extra="forbid")
    median: float
    min: float
    max: float
    stdev: float | None = Field(description="sample standard deviation (null: one trial)")
    values: list[float] = Field(description="each trial's value, in trial order")


class Repeat(BaseModel):
    """One trial: its seed and key figures (null: the trial had none, e.g. never settled)."""
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(description="the trial's seed")
    figures: dict[str, float | None] = Field(description="its key figures")


class PaperNumber(BaseModel):
    """A number the paper reports (uvm/experiments/paper.py)."""
    model_config = ConfigDict(extra="forbid")
    what: str
    value: float | list[float] | None = Field(description="the value, a [low, high] range, or "
                                                         "null (a claim of shape alone)")
    unit: str
    figure: str | None = Field(description="the key figure of uvm's that measures it")
    uncertain: bool = Field(description="PAPER.md marks it (?): not the paper's fact")
    source: str = Field(description="'paper', or where else the number comes from")
    claim: str
    text: str = Field(description="as a report prints it")


class PaperSide(BaseModel):
    """What of the paper the experiment reproduces."""
    model_config = ConfigDict(extra="forbid")
    figure: str | None = Field(description="the paper's figure or table (null: none)")
    setup: str = Field(description="the paper's setup")
    numbers: list[PaperNumber]


class Results(BaseModel):
    """results.json of `uvm experiment`. Beyond these fields, the first trial's own results
    (rows, phases, timeline...: each experiment's module documents them)."""
    model_config = ConfigDict(extra="allow")
    record: record.Header
    paper: PaperSide | None = Field(None, description="the paper's figure, setup and numbers "
                                                      "this experiment is compared with")
    figures: dict[str, Figure] = Field(description="median and spread of each key figure over "
                                                   "the trials")
    repeats: list[Repeat] = Field(description="every finished trial, in order (one cut short "
                                              "is left out: record.partial)")


def check_repeat(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"repeat: must be an integer from 1 to 1000, got {value!r}")
    return value


def run(exp: Experiment, quick: bool, out: Path, log: Callable[[str], None],
        seed: int | None = None, repeat: int = 1,
        shield: Callable[[], AbstractContextManager[None]] = nullcontext,
        maps: MapSpec | None = None,
        step: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Runs `exp` `repeat` times (seeds seed, seed+1, ...; seed default: drawn), writes
    out/results.json and (with matplotlib) the plot of the first trial, and with `maps` its
    machines' page maps; returns the results as `trial_results` gives them. Interrupted,
    writes what was measured inside `shield()` and re-raises (see the module). Progress goes
    to a bar of its own, or, given `step`, to step(trials done, what) (a caller drawing one
    bar over several runs: only one bar can show at a time)."""
    seed = new_seed() if seed is None else check_seed(seed)
    check_repeat(repeat)
    check_seed(seed + repeat - 1, "seed")
    make_dir(out, "--out")
    missing = plotting()        # said before a long run, not after it
    if missing is not None:
        log(f"no plot this time: {missing}; the numbers are printed and saved")
    params = exp.params(quick)
    seeds = [seed + i for i in range(repeat)]
    head = record.header(kind="experiment", name=exp.name, seed=seed,
                         config={"quick": quick, "repeat": repeat, "params": params},
                         seeds={f"repeat/{i}": s for i, s in enumerate(seeds)})
    first = _start(exp, quick, params)      # until trial 1 starts
    finished: list[dict[str, Any]] = []     # the results of the trials that ran to the end
    try:
        with ExitStack() as stack:
            update = step or stack.enter_context(progress.bar(exp.name, total=repeat)).update
            for i, s in enumerate(seeds):
                if repeat > 1:
                    log(f"trial {i + 1} of {repeat} (seed {s})")

                def trial_step(done: float, what: str, i: int = i) -> None:
                    update(i + min(max(done, 0.0), 1.0),
                           f"trial {i + 1}/{repeat}: {what}" if repeat > 1 else what)

                trial = new_trial(exp, quick, s, log, trial_step, maps)
                if i == 0:
                    first = trial.results
                exp.run(trial)
                finished.append(trial.results)
                update(i + 1, "")
    except KeyboardInterrupt:
        with shield():
            _finish(exp, head.finish(partial=True), first, finished, seeds, out, log, missing)
        raise
    return _finish(exp, head.finish(partial=False), first, finished, seeds, out, log, missing)


def new_trial(exp: Experiment, quick: bool, seed: int, log: Callable[[str], None],
              step: Callable[[float, str], None] | None = None,
              maps: MapSpec | None = None) -> Trial:
    """A trial of `exp` whose results start with "experiment", "quick", "params" and (if the
    experiment reproduces some of the paper) "paper" (and whose machines' page maps are
    drawn with `maps`)."""
    results = _start(exp, quick, exp.params(quick))
    if step is None:
        return Trial(quick, seed, log, results=results, maps=maps)
    return Trial(quick, seed, log, step, results=results, maps=maps)


IN_RECORD = ("experiment", "quick", "params")    # a trial's fields results.json keeps in the record


def trial_results(saved: dict[str, Any]) -> dict[str, Any]:
    """A results.json as read, given back the fields its record holds ("experiment",
    "quick", "params"), as a trial's results have them: what an experiment's plot and
    figures take."""
    config = saved["record"]["config"]
    return {"experiment": saved["record"]["name"], "quick": config["quick"],
            "params": config["params"], **saved}


def _start(exp: Experiment, quick: bool, params: dict[str, Any]) -> dict[str, Any]:
    """What a trial's results start with."""
    results = {"experiment": exp.name, "quick": quick, "params": params}
    if exp.paper is not None:
        results["paper"] = exp.paper.json()
    return results


def _finish(exp: Experiment, head: record.Header, first: dict[str, Any],
            finished: list[dict[str, Any]], seeds: list[int], out: Path,
            log: Callable[[str], None], missing: str | None) -> dict[str, Any]:
    """Writes results.json (the first trial's results, finished or not; the figures of the
    `finished` trials) and, if the first trial finished and matplotlib is there, its plot;
    says so; returns the results."""
    results = _results(exp, head, first, finished, seeds)
    path = _save(results, out)
    png = out / f"{exp.name}.png"
    if head.partial:
        if finished and missing is None:
            exp.plot(first, png)
        log(f"interrupted: wrote what was measured to {path} (partial)")
    elif missing is None:
        exp.plot(first, png)
        log(f"wrote {path} and {png}")
    else:
        log(f"wrote {path}; for the plot: {missing}")
    if len(finished) > 1:
        for name, f in results["figures"].items():
            log(f"{name}: median {f['median']:.4g} (min {f['min']:.4g}, max {f['max']:.4g}) "
                f"over {len(f['values'])} trials")
    return trial_results(results)


def _save(results: dict[str, Any], out: Path) -> Path:
    """Writes out/results.json whole or not at all (a new file renamed over the old)."""
    path, new = out / "results.json", out / "results.json.new"
    try:
        new.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(new, path)
    except OSError as e:
        raise ValueError(f"--out: cannot write {str(path)!r}: {e.strerror}") from e
    return path


def _results(exp: Experiment, head: record.Header, first: dict[str, Any],
             finished: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """results.json: the record, the first trial's results, each finished trial's figures
    and their median and spread; checked against the Results model."""
    repeats = [Repeat(seed=s, figures=exp.figures(t)) for s, t in zip(seeds, finished)]
    results = Results(record=head, figures=spread(repeats), repeats=repeats,
                      **{k: v for k, v in first.items() if k not in IN_RECORD + ("record",
                                                                              "figures",
                                                                              "repeats")})
    out = results.model_dump(mode="json")
    if out["paper"] is None:            # not one of the paper's experiments: no key at all
        del out["paper"]
    return out


def spread(repeats: list[Repeat]) -> dict[str, Figure]:
    """Median, min, max and standard deviation of each figure over the trials that gave it."""
    names = [n for r in repeats for n in r.figures]
    out: dict[str, Figure] = {}
    for name in dict.fromkeys(names):
        values = [v for r in repeats if (v := r.figures.get(name)) is not None]
        if values:
            out[name] = Figure(median=statistics.median(values), min=min(values), max=max(values),
                               stdev=statistics.stdev(values) if len(values) > 1 else None,
                               values=values)
    return out
