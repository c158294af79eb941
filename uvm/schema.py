"""The JSON Schemas of uvm's outputs, generated from their pydantic models and shipped in
the package (uvm/schemas/NAME.schema.json) so that a harness can validate what uvm wrote
without importing uvm. `uvm schema NAME` prints one; tests/test_record.py checks that the
shipped files equal the models' schemas. After changing a model, regenerate them:

    python -m uvm.schema

    record     the run record every output starts with (uvm/record.py)
    timeline   one line of `uvm run --json` (header, sample or end: uvm/timeline.py)
    summary    `uvm run --summary-json` (uvm/timeline.py)
    results    results.json of `uvm experiment` (uvm/experiments/runner.py)"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from uvm.experiments.runner import Results
from uvm.record import Header
from uvm.timeline import EndLine, HeaderLine, SampleLine, Summary

TimelineLine = Annotated[HeaderLine | SampleLine | EndLine, Field(discriminator="type")]
TIMELINE: TypeAdapter[HeaderLine | SampleLine | EndLine] = TypeAdapter(TimelineLine)

MODELS: dict[str, Callable[[], dict[str, Any]]] = {
    "record": Header.model_json_schema,
    "timeline": TIMELINE.json_schema,
    "summary": Summary.model_json_schema,
    "results": Results.model_json_schema,
}
DIRECTORY = "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate(name: str) -> dict[str, Any]:
    """The JSON Schema of output `name`, from its model."""
    if name not in MODELS:
        raise ValueError(f"schema: must be one of {sorted(MODELS)}, got {name!r}")
    return {"$schema": DIALECT, "$id": f"uvm:{name}", **MODELS[name]()}


def shipped(name: str) -> dict[str, Any]:
    """The JSON Schema of output `name` as shipped in the package."""
    if name not in MODELS:
        raise ValueError(f"schema: must be one of {sorted(MODELS)}, got {name!r}")
    text = resources.files("uvm").joinpath(DIRECTORY, f"{name}.schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


def text(schema: dict[str, Any]) -> str:
    """A schema as it is written to its file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def validate_timeline_line(line: dict[str, Any]) -> HeaderLine | SampleLine | EndLine:
    """Parses one line of a timeline; pydantic's ValidationError if it does not conform."""
    return TIMELINE.validate_python(line)


def write_all(directory: Path) -> list[Path]:
    """Writes every schema into `directory`; returns the files."""
    paths = []
    for name in MODELS:
        path = directory / f"{name}.schema.json"
        path.write_text(text(generate(name)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_all(Path(__file__).resolve().parent / DIRECTORY):
        print(f"wrote {written}")
