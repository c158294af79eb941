"""Running a run again from its record: `uvm run --again FILE`.

Every output of `uvm run` (the timeline's first line, the summary) and every row of a
scenario sweep (results.jsonl) carries the run record (uvm/record.py), whose `config` is
the scenario as it really ran, every default filled in, with its seed (uvm/resolved.py).
This module reads such a file and turns the record back into a scenario, so the record
alone runs the same thing again: the same machine, policy and VMs, the same seed and so the
same guest operations, even when the scenario file it came from has changed or is gone.

What cannot come back from a record is said rather than guessed: the fault path is this
process's (`$UVM_FAULT_PATH`; the record's is compared and a difference reported), and an
experiment's record names the command that runs it again instead."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from uvm.record import Header
from uvm.scenario import MachineSpec, Scenario, parse


@dataclasses.dataclass(frozen=True)
class Again:
    """A recorded run, ready to run again: its scenario (whose [run] table holds the
    recorded duration, sample period and seed) and its record."""
    spec: Scenario
    record: Header


def load(path: str, line: int | None = None) -> Again:
    """The run recorded in `path` (a summary or results.json: its "record"; a timeline: its
    header line; a sweep's results.jsonl: the row on `line`, counted from 1). Raises
    ValueError naming the file and what is wrong."""
    head = _header(path, _document(path, line))
    if head.kind != "run":
        raise ValueError(f"{path}: the record of an experiment ({head.name!r}), not of a run: "
                         f"run it again with `uvm experiment {head.name} --seed {head.seed}"
                         f"{' --quick' if head.config.get('quick') else ''}"
                         f"{_repeat(head.config)}`")
    try:
        return Again(parse(scenario_doc(head.config), source=str(head.config["source"])), head)
    except KeyError as e:
        raise ValueError(f"{path}: record.config: {e.args[0]!r} is missing") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: record.config: {e}") from None


def scenario_doc(config: dict[str, Any]) -> dict[str, Any]:
    """A scenario file's tables (what scenario.parse takes) from a run record's config:
    resolved.scenario_config's inverse. Unset values (null) are left to their defaults;
    the machine's seed is derived from the run's again, as it was."""
    fields = {f.name for f in dataclasses.fields(MachineSpec)}
    machine = {k: v for k, v in config["machine"].items() if k in fields and v is not None}
    doc: dict[str, Any] = {"machine": machine,
                           "run": {"duration": config["run"]["duration_s"],
                                   "every": config["run"]["every_s"],
                                   "seed": config["run"]["seed"]},
                           "vm": [_vm(v) for v in config["vms"]]}
    policy = config.get("policy")
    if policy is not None:
        doc["policy"] = {k: v for k, v in policy.items() if v is not None}
        if policy["allocation"] != "idle-tax":      # only idle-tax has a rate to set
            doc["policy"].pop("tax_rate", None)
    return doc


def _vm(vm: dict[str, Any]) -> dict[str, Any]:
    """A [[vm]] table from a recorded VM."""
    out = {k: vm[k] for k in ("name", "memory", "shares", "share_rate", "share_salt")
           if vm.get(k) is not None}
    if vm.get("min"):
        out["min"] = vm["min"]
    if vm.get("workload") is not None:
        out["workload"] = {k: v for k, v in vm["workload"].items() if v is not None}
    if vm.get("os") is not None:
        out["os"] = {k: v for k, v in vm["os"].items() if v is not None}
        out["balloon"] = [{"at": s["at_s"], "target": s["target_pages"]}
                          for s in vm.get("balloon", [])]
    return out


def _repeat(config: dict[str, Any]) -> str:
    repeat = config.get("repeat", 1)
    return f" --repeat {repeat}" if isinstance(repeat, int) and repeat > 1 else ""


def _document(path: str, line: int | None) -> dict[str, Any]:
    """The JSON object in `path` that holds a record: the file's one object, or one line of
    a JSON-lines file (the given one, or the only record-bearing one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and line is None:
        return whole
    rows = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rows.append((number, json.loads(raw)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg}); give a summary, a "
                             f"timeline or a sweep's results.jsonl") from None
    if line is not None:
        found = [obj for number, obj in rows if number == line]
        if not found:
            raise ValueError(f"--line: {path} has no line {line}")
        return _object(path, line, found[0])
    holding = [(n, obj) for n, obj in rows if isinstance(obj, dict) and
               (obj.get("type") == "header" or "record" in obj)]
    if len(holding) != 1:
        raise ValueError(f"{path}: {len(holding)} records (a sweep's rows?): say which with "
                         f"--line N (lines {', '.join(str(n) for n, _ in holding[:8])}"
                         f"{', ...' if len(holding) > 8 else ''})" if holding else
                         f"{path}: no run record in it")
    return _object(path, *holding[0])


def _object(path: str, line: int, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _header(path: str, doc: dict[str, Any]) -> Header:
    """The run record in `doc`: its "record", or doc itself for a timeline's header line."""
    raw = doc.get("record", doc if doc.get("type") == "header" else None)
    if raw is None:
        raise ValueError(f"{path}: no run record in it (a summary, results.json, a timeline "
                         f"or a sweep row has one)")
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != "type"}
    try:
        return Header.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: record.{where}: {first['msg']}") from None
