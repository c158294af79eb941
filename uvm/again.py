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
from typing import Any

from pydantic import ValidationError

from uvm.record import Header
from uvm.scenario import MAX_TEXT, MachineSpec, Scenario, parse, read_text
from uvm.seeds import derive

MAX_FILE = 256 * MAX_TEXT       # a sweep's results.jsonl: some KiB per row


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
        raise ValueError(f"{path}: the record of {_command(head)}, not of `uvm run`")
    try:
        return Again(parse(scenario_doc(head.config), source=str(head.config["source"])), head)
    except KeyError as e:
        raise ValueError(f"{path}: record.config: {e.args[0]!r} is missing") from None
    except (AttributeError, TypeError, ValueError) as e:    # a record edited into bad shapes
        raise ValueError(f"{path}: record.config: not a run's configuration ({e})") from None


def scenario_doc(config: dict[str, Any]) -> dict[str, Any]:
    """A scenario file's tables (what scenario.parse takes) from a run record's config:
    resolved.scenario_config's inverse. Unset values (null) are left to their defaults;
    the machine's seed is derived from the run's again, as it was."""
    fields = {f.name for f in dataclasses.fields(MachineSpec)}
    machine = {k: v for k, v in _given(config["machine"]).items() if k in fields}
    doc: dict[str, Any] = {"machine": machine,
                           "run": {"duration": config["run"]["duration_s"],
                                   "every": config["run"]["every_s"],
                                   "seed": config["run"]["seed"]},
                           "vm": [_vm(v, config["run"]["seed"]) for v in config["vms"]]}
    policy = config.get("policy")
    if policy is not None:
        doc["policy"] = _given(policy)
        if policy["allocation"] != "idle-tax":      # only idle-tax has a rate to set
            doc["policy"].pop("tax_rate", None)
    return doc


def _vm(vm: dict[str, Any], seed: int) -> dict[str, Any]:
    """A [[vm]] table from a recorded VM of a run seeded with `seed`."""
    out = {k: vm[k] for k in ("name", "memory", "shares", "share_rate", "share_salt")
           if vm.get(k) is not None}
    if vm.get("min"):
        out["min"] = vm["min"]
    if vm.get("workload") is not None:
        out["workload"] = _given(vm["workload"])
        if out["workload"].get("seed") == derive(seed, "vm", vm["name"]):
            del out["workload"]["seed"]     # derived, not given: --seed derives it again
    if vm.get("os") is not None:
        out["os"] = _given(vm["os"])
        out["balloon"] = [{"at": s["at_s"], "target": s["target_pages"]}
                          for s in vm.get("balloon", [])]
    return out


def _given(table: dict[str, Any]) -> dict[str, Any]:
    """A recorded table without its unset (null) values: a scenario leaves those out."""
    return {k: v for k, v in table.items() if v is not None}


def _command(head: Header) -> str:
    """What produced a record that is not a run's, and the command that runs it again."""
    config, options = head.config, f" --seed {head.seed}"
    if config.get("quick"):
        options += " --quick"
    repeat = config.get("repeat", 1)
    if isinstance(repeat, int) and repeat > 1:
        options += f" --repeat {repeat}"
    if head.kind == "experiment":
        return f"an experiment: run it again with `uvm experiment {head.name}{options}`"
    if head.kind == "reproduce":
        names = config.get("experiments")
        only = f" --only {','.join(map(str, names))}" if isinstance(names, list) and names else ""
        return f"`uvm reproduce`: run it again with `uvm reproduce{options}{only}`"
    return f"a {head.kind!r} run"


def _document(path: str, line: int | None) -> dict[str, Any]:
    """The JSON object in `path` that holds a record: the file's one object, or one line of
    a JSON-lines file (the given one, or the only record-bearing one; a last line torn by an
    interrupted sweep is left out, as `uvm sweep --resume` leaves it)."""
    text = read_text(path, MAX_FILE, "record")
    if line is None:
        whole = _json(text)
        if isinstance(whole, dict):
            return whole
    lines = text.splitlines()
    if line is not None:
        if line > len(lines) or not lines[line - 1].strip():
            raise ValueError(f"--line: {path} has no JSON on line {line}")
        found = _json(lines[line - 1])
        if found is _TORN:
            raise ValueError(f"--line: {path}:{line} is not a JSON line (--line is for a "
                             f"JSON-lines file: a timeline or a sweep's results.jsonl)")
        return _object(path, line, found)
    rows = []
    for number, raw in enumerate(lines, 1):
        obj = _json(raw) if raw.strip() else None
        if obj is _TORN and number < len(lines):
            raise ValueError(f"{path}:{number}: not JSON; give a summary, a timeline or a "
                             f"sweep's results.jsonl")
        if isinstance(obj, dict) and (obj.get("type") == "header" or "record" in obj):
            rows.append((number, obj))
    if len(rows) != 1:
        raise ValueError(f"{path}: {len(rows)} records (a sweep's rows?): say which with "
                         f"--line N (lines {', '.join(str(n) for n, _ in rows[:8])}"
                         f"{', ...' if len(rows) > 8 else ''})" if rows else
                         f"{path}: no run record in it")
    return rows[0][1]


_TORN = object()        # what _json gives for text that is not JSON


def _json(text: str) -> Any:
    """The JSON value of `text`, or _TORN."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _TORN


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
