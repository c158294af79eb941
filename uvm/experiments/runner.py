"""Running an experiment once or `repeat` times: seeds, progress, the run record, the median
and spread of its key figures, and results.json.

Trial i of a run seeded with S has seed S + i, so that any one trial can be run again alone
with `--seed S+i`. results.json holds the record (uvm/record.py), the first trial's full
results (what the plot draws), every trial's seed and key figures, and for each key figure
the median, min, max and standard deviation over the trials. Ctrl-C between or during
trials writes what the finished trials gave, marked partial, then stops."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from uvm import progress, record
from uvm.experiments.base import Experiment, Trial, pyplot
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


class Results(BaseModel):
    """results.json of `uvm experiment`. Beyond these fields, the first trial's own results
    (rows, phases, timeline...: each experiment's module documents them)."""
    model_config = ConfigDict(extra="allow")
    record: record.Header
    experiment: str
    quick: bool
    params: dict[str, Any]
    figures: dict[str, Figure] = Field(description="median and spread of each key figure over "
                                                   "the trials")
    repeats: list[Repeat] = Field(description="every trial, in order")


def check_repeat(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"repeat: must be an integer from 1 to 1000, got {value!r}")
    return value


def run(exp: Experiment, quick: bool, out: Path, log: Callable[[str], None],
        seed: int | None = None, repeat: int = 1) -> dict[str, Any]:
    """Runs `exp` `repeat` times (seeds seed, seed+1, ...; seed default: drawn), writes
    out/results.json and the plot of the first trial; returns the results."""
    seed = new_seed() if seed is None else check_seed(seed)
    check_repeat(repeat)
    check_seed(seed + repeat - 1, "seed")
    pyplot()                    # fail before a long run, not after it
    out.mkdir(parents=True, exist_ok=True)
    seeds = [seed + i for i in range(repeat)]
    head = record.header(kind="experiment", name=exp.name, seed=seed,
                         config={"quick": quick, "repeat": repeat, "params": exp.params(quick)},
                         seeds={f"repeat/{i}": s for i, s in enumerate(seeds)})
    trials: list[dict[str, Any]] = []
    interrupted = False
    with progress.bar(exp.name, total=repeat) as bar:
        try:
            for i, s in enumerate(seeds):
                if repeat > 1:
                    log(f"trial {i + 1} of {repeat} (seed {s})")

                def step(done: float, what: str, i: int = i) -> None:
                    bar.update(i + min(max(done, 0.0), 1.0),
                               f"trial {i + 1}/{repeat}: {what}" if repeat > 1 else what)

                trials.append(exp.run(Trial(quick, s, log, step)))
                bar.update(i + 1)
        except KeyboardInterrupt:
            if not trials:
                raise
            interrupted = True
    results = _results(exp, head.finish(partial=interrupted), trials, seeds)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    exp.plot(trials[0], out / f"{exp.name}.png")
    log(f"wrote {out / 'results.json'} and {out / (exp.name + '.png')}")
    if repeat > 1:
        for name, f in results["figures"].items():
            log(f"{name}: median {f['median']:.4g} (min {f['min']:.4g}, max {f['max']:.4g}) "
                f"over {len(f['values'])} trials")
    if interrupted:
        raise KeyboardInterrupt
    return results


def _results(exp: Experiment, head: record.Header, trials: list[dict[str, Any]],
             seeds: list[int]) -> dict[str, Any]:
    """results.json: the record, the first trial's results, each trial's figures and their
    median and spread; checked against the Results model."""
    repeats = [Repeat(seed=s, figures=exp.figures(t)) for s, t in zip(seeds, trials)]
    results = Results(record=head, figures=spread(repeats), repeats=repeats,
                      **{k: v for k, v in trials[0].items() if k not in ("record", "figures",
                                                                         "repeats")})
    return results.model_dump(mode="json")


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
