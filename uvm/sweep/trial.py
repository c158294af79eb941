"""One trial of a sweep: a scenario with one point of the grid applied, one seed, one repeat,
run in a process of its own; it returns one row of the results table.

A trial runs in a fresh process (a pool worker that serves one task, or one a Ray task
starts): each owns its machine's memory and userfaultfd, and a crash or a leak in one
cannot touch the next.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from uvm import scenario as scenarios
from uvm import timeline
from uvm.sizes import parse_size
from uvm.sweep.grid import Grid, Point, Value

SAMPLE_EVERY = 0.25     # seconds between looks at a running trial (has it settled?)


@dataclass(frozen=True)
class Trial:
    """What a worker needs to run one trial (picklable: it crosses to another process)."""
    params: Point
    seed: int
    repeat: int
    metrics: list[str]
    scenario_toml: str | None = None    # the scenario, unparsed (None for an experiment)
    source: str = ""
    base: str | None = None             # the scenario file's folder (for relative paths)
    duration: float | None = None
    experiment: str | None = None
    quick: bool = True
    memory: int = 0                     # bytes of host memory it needs (machine + swap)
    argv: tuple[str, ...] = ()          # the sweep's command line, for the run record
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", trial_key(self.params, self.seed, self.repeat))


def trial_key(params: Point, seed: int, repeat: int) -> str:
    """The trial's identity in the results (how --resume finds it): stable across runs and
    independent of the order of the grid."""
    return json.dumps({"params": dict(sorted(params.items())), "seed": seed, "repeat": repeat},
                      sort_keys=True, separators=(",", ":"))


def plan(grid: Grid, folder: Path) -> list[Trial]:
    """Every trial of the grid (points x seeds x repeats), each point checked against the
    scenario now, before any trial runs."""
    if grid.experiment is not None:
        from uvm import experiments

        if grid.experiment not in experiments.REGISTRY:
            raise ValueError(f"experiment: must be one of {sorted(experiments.REGISTRY)}, "
                             f"got {grid.experiment!r}")
        memory = parse_size(grid.trial_memory or "1GiB", "trial_memory")
        return [Trial({}, seed, r, grid.metrics, experiment=grid.experiment, quick=grid.quick,
                      memory=memory, argv=tuple(sys.argv))
                for seed in grid.seeds for r in range(grid.repeats)]
    text, source, base = _scenario_text(grid.scenario, folder)
    trials = []
    for point in grid.points:
        spec = configure(text, source, base, point)
        memory = (parse_size(grid.trial_memory, "trial_memory") if grid.trial_memory is not None
                  else footprint(spec))
        for metric in grid.metrics:
            check_metric(metric, spec)
        duration = grid.duration or spec.run.duration
        trials += [Trial(point, seed, r, grid.metrics, text, source, base, duration, memory=memory,
                         argv=tuple(sys.argv))
                   for seed in grid.seeds for r in range(grid.repeats)]
    return trials


def _scenario_text(name: str | None, folder: Path) -> tuple[str, str, str | None]:
    if name is None:
        text = resources.files("uvm").joinpath(scenarios.DEFAULT_RESOURCE).read_text("utf-8")
        return text, scenarios.DEFAULT_RESOURCE, None
    path = folder / name
    try:
        return path.read_text(encoding="utf-8"), str(path), str(path.parent)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"scenario: cannot read {str(path)!r}: {e}") from e


def configure(text: str, source: str, base: str | None, point: Point) -> scenarios.Scenario:
    """The scenario with `point` applied; ValueError "grid.PATH: reason" when a path does
    not fit the scenario or a value is refused."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"scenario: {source}: invalid TOML: {e}") from None
    for path, value in point.items():
        try:
            put(doc, path, value)
        except ValueError as e:
            raise ValueError(f"grid.{path}: {e}") from None
    try:
        return scenarios.parse(doc, source, Path(base) if base else None)
    except ValueError as e:
        raise ValueError(f"grid {_show(point)}: {e}") from None


def put(doc: dict[str, Any], path: str, value: Value) -> None:
    """Sets doc[path] (dots between tables; a [[vm]] entry by name or index), creating
    missing tables on the way."""
    parts = path.split(".")
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _entry(node, part, ".".join(parts[:i]))
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ValueError(f"{'.'.join(parts[:i])} is a value, not a table")
    if isinstance(node, list) or not isinstance(node, dict):
        raise ValueError(f"{'.'.join(parts[:-1])} is not a table (a [[vm]] needs a name or index)")
    node[parts[-1]] = value


def _entry(entries: list[Any], part: str, where: str) -> Any:
    for e in entries:
        if isinstance(e, dict) and e.get("name") == part:
            return e
    if part.isdigit() and int(part) < len(entries):
        return entries[int(part)]
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    raise ValueError(f"{where} has no entry {part!r} (names: {names})")


def check_metric(path: str, spec: scenarios.Scenario) -> None:
    """ValueError "metrics: ..." unless `path` names a field of a trial's last sample (the
    timeline's, uvm/timeline.py): t_s, machine.FIELD, vm.NAME.FIELD, vm.NAME.policy.FIELD or
    vm.NAME.guest.FIELD, NAME a VM of the scenario. A misspelt metric would otherwise be an
    empty column in every row, found only after the whole sweep ran."""
    vms = [v.name for v in spec.vms]
    tables: dict[str, type[BaseModel]] = {"policy": timeline.PolicyLine,
                                          "guest": timeline.GuestLine}
    parts = path.split(".")
    if parts == ["t_s"]:
        return
    if parts[0] == "machine" and len(parts) == 2:
        _check_field(path, parts[1], timeline.MachineLine)
    elif parts[0] == "vm" and len(parts) >= 3:
        if parts[1] not in vms:
            raise ValueError(f"metrics: {path!r}: the scenario has no VM {parts[1]!r} "
                             f"(its VMs: {vms})")
        if len(parts) == 3 and parts[2] not in tables:
            _check_field(path, parts[2], timeline.VMLine)
        elif len(parts) == 4 and parts[2] in tables:
            _check_field(path, parts[3], tables[parts[2]])
        else:
            raise ValueError(f"metrics: {path!r}: expected vm.NAME.FIELD, vm.NAME.policy.FIELD "
                             f"or vm.NAME.guest.FIELD")
    else:
        raise ValueError(f"metrics: {path!r}: expected t_s, machine.FIELD or vm.NAME.FIELD "
                         f"(the timeline's fields: docs/record.md)")


def _check_field(path: str, name: str, model: type[BaseModel]) -> None:
    fields = [f for f in model.model_fields if f not in ("policy", "guest", "type")]
    if name not in fields:
        raise ValueError(f"metrics: {path!r}: no field {name!r} in a sample "
                         f"(one of {sorted(fields)})")


def footprint(spec: scenarios.Scenario) -> int:
    """Host memory one trial of the scenario may use: machine memory plus its swap file
    (default 4x memory; it lives in the page cache), plus 32 MiB for the process."""
    memory = parse_size(spec.machine.memory, "machine.memory")
    swap = (parse_size(spec.machine.swap_size, "machine.swap_size")
            if spec.machine.swap_size is not None else 4 * memory)
    return memory + swap + (32 << 20)


def _show(point: Point) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in point.items()) or "(no parameters)"


# -- in the worker ----------------------------------------------------------------------

def run(trial: Trial) -> dict[str, Any]:
    """Runs the trial (in the calling process) and returns its row; a failure is a row with
    status "error: ..." rather than an exception, so one bad trial does not end the sweep."""
    start = time.time()
    t0 = time.monotonic()
    head: dict[str, Any] | None = None
    try:
        outcome, head = _run_experiment(trial) if trial.experiment else _run_scenario(trial)
        metrics: dict[str, Any] | None = {m: lookup(outcome, m) for m in trial.metrics}
        status = "ok"
    except Exception as e:                  # noqa: BLE001 - reported in the row
        metrics = None
        status = f"error: {type(e).__name__}: {e}"
    return row(trial, metrics, status, record=head, wall_s=round(time.monotonic() - t0, 3),
               host=socket.gethostname(), pid=os.getpid(),
               started=datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="milliseconds"))


def row(trial: Trial, metrics: dict[str, Any] | None, status: str, **where: Any) -> dict[str, Any]:
    """One row of the results: the trial, its metrics (None: every one missing), its status
    ("ok" or "error: ..."), where and when it ran (wall_s, host, pid, started), and its run
    record (uvm/record.py; None when it failed before starting)."""
    return {"trial": trial.key, "params": trial.params, "seed": trial.seed,
            "repeat": trial.repeat, "metrics": metrics or dict.fromkeys(trial.metrics),
            "status": status, "wall_s": where.get("wall_s"), "host": where.get("host"),
            "pid": where.get("pid"), "started": where.get("started"),
            "record": where.get("record")}


def _run_scenario(trial: Trial) -> tuple[dict[str, Any], dict[str, Any]]:
    """Launches the scenario seeded with the trial's seed (every workload's seed derives
    from it: uvm/seeds.py), samples it until its duration is over or no workload is left
    running; returns (what it ended with, its run record)."""
    from uvm import live, record, resolved

    assert trial.scenario_toml is not None and trial.duration is not None
    spec = configure(trial.scenario_toml, trial.source, trial.base, trial.params)
    machine = scenarios.launch(spec, trial.seed)
    try:
        head = record.header(
            kind="run", name=spec.name, seed=trial.seed, machine=machine, argv=list(trial.argv),
            config=resolved.scenario_config(spec, machine, trial.seed, trial.duration, SAMPLE_EVERY),
            seeds=resolved.seeds(spec, machine, trial.seed))
        start = time.monotonic()
        while True:
            left = trial.duration - (time.monotonic() - start)
            time.sleep(max(0.0, min(SAMPLE_EVERY, left)))
            sample = live.take_sample(machine, time.monotonic() - start, trial.duration)
            if left <= 0 or sample.settled:
                break
        errors = live.workload_errors(machine)
        if errors:
            raise errors[0]
    finally:
        machine.close()
    line = sample.line().model_dump(mode="json")       # the timeline's fields (docs/record.md)
    outcome = {"t_s": line["t_s"], "machine": line["machine"],
               "vm": {v["name"]: v for v in line["vms"]}}
    return outcome, head.finish(partial=False).to_json()


def _run_experiment(trial: Trial) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the experiment once with the trial's seed; returns (its results plus its key
    figures under "figures", its run record)."""
    from uvm import experiments, record
    from uvm.experiments.runner import new_trial

    assert trial.experiment is not None
    exp = experiments.REGISTRY[trial.experiment]
    head = record.header(kind="experiment", name=exp.name, seed=trial.seed, argv=list(trial.argv),
                         config={"quick": trial.quick, "repeat": 1, "params": exp.params(trial.quick)})
    run = new_trial(exp, trial.quick, trial.seed, lambda line: None)
    exp.run(run)
    return ({**run.results, "figures": exp.figures(run.results)},
            head.finish(partial=False).to_json())


def lookup(outcome: Any, path: str) -> Any:
    """outcome[path] (dots between keys; a list by index); None where there is nothing. A
    key may hold dots itself (idle-tax's figure busy_mib_tau_0.75): at each table the
    longest run of the path's parts that is one of its keys is taken."""
    node = outcome
    parts = path.split(".")
    while parts:
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if isinstance(node, dict) and key in node:
                node = node[key]
                break
            if isinstance(node, list) and n == 1 and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
                break
        else:
            return None
        parts = parts[n:]
    return node
