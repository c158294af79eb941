"""Grid files: what a sweep runs, in TOML, checked field by field.

    scenario = "overcommit.toml"    # a scenario file (relative to this file); absent: the
                                    # built-in default; or `experiment = "idle-tax"` instead
    duration = 5                    # seconds per trial (default: the scenario's run.duration)
    seeds = [1, 2]                  # every point runs once per seed ...
    repeats = 1                     # ... and this many times per seed
    metrics = ["vm.zipf.ops_per_s", "machine.swapins"]
    plot = { x = "policy.tax_rate", metric = "vm.zipf.ops_per_s" }   # default: first of each
    trial_memory = "512MiB"         # host memory a trial needs (default: machine memory +
                                    # swap + 32 MiB; an experiment: 1 GiB)

    [grid]                          # the cartesian product of these lists
    policy.tax_rate = [0, 0.5, 0.75]            # a path into the scenario's tables
    machine.memory = ["64MiB", "96MiB"]
    vm.zipf.workload.size = ["32MiB", "48MiB"]  # [[vm]] entries by name (or index)

Instead of [grid], `points = [{ "policy.tax_rate" = 0 }, ...]` lists the points one by one.
A metric is a path into the last sample of a trial, in the timeline's fields (docs/record.md:
units in the names, which are deterministic): `machine.FIELD` (`machine.swapins`,
`machine.saved_pages`...), `vm.NAME.FIELD` (`vm.zipf.ops_per_s`, `vm.idle.resident_pages`,
`vm.web1.policy.target_pages`...), `t_s`; for an experiment, a path into its results.json,
or `figures.NAME` for one of its key figures. A scenario's metrics are checked against
its VMs and the sample's fields (uvm/sweep/trial.py: check_metric). Experiments take no
parameters (the grid is empty; seeds and repeats run it again).

The trial's seed seeds the scenario (`uvm run --seed`): the same seed, the same guest
operations. Repeats run the same seed again (timings vary).

Every point is applied to the scenario and checked before the first trial starts: a bad
path or value is one line naming the grid field and what is wrong.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, field_validator, model_validator)

Value = bool | int | float | str
Point = dict[str, Value]


class PlotSpec(BaseModel):
    """The summary plot: the swept parameter `x` against `metric`."""
    model_config = ConfigDict(extra="forbid")
    x: str | None = None
    metric: str | None = None


class Grid(BaseModel):
    """A grid file, checked. `points` holds every point after the grid was expanded."""
    model_config = ConfigDict(extra="forbid")
    scenario: str | None = None
    experiment: str | None = None
    quick: bool = True
    duration: PositiveFloat | None = None
    grid: dict[str, list[Value]] = Field(default_factory=dict)
    points: list[Point] = Field(default_factory=list)
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [1], min_length=1)
    repeats: PositiveInt = 1
    metrics: list[str] = Field(min_length=1)
    plot: PlotSpec = Field(default_factory=PlotSpec)
    trial_memory: int | str | None = None

    @field_validator("grid", mode="before")
    @classmethod
    def _flatten(cls, raw: object) -> object:
        """[grid] with nested tables (policy.tax_rate = [...]) -> {"policy.tax_rate": [...]}."""
        return _flatten(raw) if isinstance(raw, dict) else raw

    @field_validator("grid")
    @classmethod
    def _nonempty_lists(cls, grid: dict[str, list[Value]]) -> dict[str, list[Value]]:
        for path, values in grid.items():
            if not values:
                raise ValueError(f"{path}: an empty list of values")
        return grid

    @model_validator(mode="after")
    def _expand(self) -> Grid:
        if self.scenario is not None and self.experiment is not None:
            raise ValueError("experiment: give a scenario or an experiment, not both")
        if self.grid and self.points:
            raise ValueError("points: give [grid] or points, not both")
        if self.experiment is not None:
            if self.grid or self.points:
                raise ValueError("grid: an experiment takes no parameters (seeds and repeats only)")
            if self.duration is not None:
                raise ValueError("duration: an experiment has its own (use quick = true/false)")
        if self.grid:
            keys = list(self.grid)
            self.points = [dict(zip(keys, combo))
                           for combo in itertools.product(*self.grid.values())]
        if not self.points:
            self.points = [{}]
        names = sorted({k for p in self.points for k in p})
        for field, path in (("plot.x", self.plot.x), ("plot.metric", self.plot.metric)):
            known = names if field == "plot.x" else self.metrics
            if path is not None and path not in known:
                raise ValueError(f"{field}: {path!r} is not one of {known}")
        return self

    @property
    def parameters(self) -> list[str]:
        """The swept parameters' paths, in the file's order."""
        seen: dict[str, None] = {}
        for p in self.points:
            seen.update(dict.fromkeys(p))
        return list(seen)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def load(path: str | Path) -> tuple[Grid, Path]:
    """Reads and checks a grid file; returns it and its folder (scenario paths are relative
    to it). ValueError "FILE: field: reason" for anything wrong."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the grid file: {e.strerror}") from e
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from e
    try:
        return Grid.model_validate(doc), path.parent
    except ValidationError as e:
        raise ValueError(f"{path}: {describe(e)}") from None


def describe(error: ValidationError) -> str:
    """pydantic's errors as "field: reason" lines joined by "; "."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
