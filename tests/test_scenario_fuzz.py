"""A scenario fuzzer: the built-in scenario, mutated (fields dropped, replaced by values of
the wrong type or absurd size, duplicated, unknown ones added, tables nested deeply), run by
`uvm run` for a moment. Whatever the file says, uvm must end within a bound, with exit
status 0 (ran), 1 (a workload failed) or 2 (a clear error), and never print a traceback.

The default run tries a few examples (the same ones each time); UVM_STRESS=1 tries 300 new
ones."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import threading
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uvm.cli import main

STRESS = os.environ.get("UVM_STRESS") == "1"
BOUND = 60.0                # seconds one `uvm run` may take, whatever the scenario says
DEFAULT = tomllib.loads(resources.files("uvm").joinpath("default_scenario.toml")
                        .read_text(encoding="utf-8"))

WEIRD: list[Any] = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e-300, -1, 0, 1, 2**63 - 1,
                    2**64, -(2**64), True, False, "", "x" * 100_000, "9999999TiB", "-4MiB",
                    "0.5", "nan", "/proc", "\x00", [], [1, 2], [[{"a": 1}, "1MiB"]], {},
                    {"a": 1}, {"kind": "idle"}]


class Raw(str):
    """TOML text put into the document as it is."""


def nested(depth: int) -> Raw:
    """Tables and arrays nested `depth` deep (as text: too deep for recursive Python)."""
    opening = "".join("{a = " if i % 2 else "[" for i in range(depth))
    return Raw(opening + "1" + "".join("}" if i % 2 else "]" for i in reversed(range(depth))))


def toml(value: Any) -> str:
    """A value as TOML: tables inline, so any shape fits on one line per top-level key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("-inf" if value < 0 else "inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)        # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def document(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml(v)}\n" for k, v in doc.items())


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document: keys of tables, indexes of arrays."""
    found = [prefix] if prefix else []
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        found += paths(item, prefix + (key,))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(DEFAULT))           # a deep copy
    doc.setdefault("run", {})["duration"] = 0.3     # brief, unless a mutation says otherwise
    doc["run"]["every"] = 0.1
    for _ in range(draw(st.integers(1, 4))):
        places = paths(doc)
        where = draw(st.sampled_from(places))
        parent: Any = doc
        for key in where[:-1]:
            parent = parent[key]
        key = where[-1]
        op = draw(st.sampled_from(["drop", "replace", "duplicate", "add", "nest"]))
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
        elif op == "duplicate" and isinstance(parent, list):
            parent.extend(copy.deepcopy([parent[key]] * draw(st.sampled_from([1, 2, 300]))))
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "memory", "kind", "at", "os", "balloon",
                                         "workload", "vm"]))] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
        elif op == "nest":
            parent[key] = nested(draw(st.sampled_from([3, 40, 2000])))
    return doc


def run_bounded(path: Path) -> tuple[int | None, str]:
    """cli.main on a thread of its own, joined within BOUND; returns (status, output)
    (status None: it did not end in time, or main raised)."""
    out = io.StringIO()
    status: list[int | None] = [None]

    def target() -> None:
        try:
            status[0] = main(["run", str(path)])
        except BaseException:
            import traceback
            out.write("Traceback (from main)\n" + traceback.format_exc())

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        thread = threading.Thread(target=target, name="fuzz-uvm-run", daemon=True)
        thread.start()
        thread.join(BOUND)
    return (None if thread.is_alive() else status[0]), out.getvalue()


@settings(max_examples=300 if STRESS else 12, deadline=None, derandomize=not STRESS,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(doc=mutated())
def check_scenario(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(document(doc), encoding="utf-8")
    status, output = run_bounded(path)
    assert "Traceback" not in output, output[-3000:]
    assert status in (0, 1, 2), (status, output[-3000:])
    if status == 2:
        errors = [line for line in output.splitlines() if line.startswith("uvm: error: ")]
        assert len(errors) == 1, output[-3000:]


@pytest.mark.stress
def test_mutated_default_scenario_never_tracebacks_or_hangs(tmp_path: Path) -> None:
    check_scenario(tmp_path)
