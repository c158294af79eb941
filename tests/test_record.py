"""The run record and the schemas: the shipped JSON Schemas are the models' own; a real
`uvm run` timeline and summary validate against them (with jsonschema, as a harness that
does not import uvm would check them); every counter of the C core is in the record or
dropped on purpose; the header says which commit ran, also from a built (installed) copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import uvm
from uvm import record, schema, timeline
from uvm.cli import main
from uvm.machine import MACHINE_STAT_FIELDS, resolve_fault_path
from uvm.vm import VM_STAT_FIELDS

REPO = Path(__file__).resolve().parent.parent

SCENARIO = """\
[machine]
memory = "8MiB"
swap_dir = "."
sharing = true

[run]
seed = 11

[policy]
sample_period = 0.5
target_period = 0.5

[[vm]]
name = "busy"
memory = "12MiB"
shares = 2000
[vm.workload]
kind = "working-set"
size = "10MiB"

[[vm]]
name = "guest"
memory = "8MiB"
[vm.os]
balloon = false
[vm.workload]
kind = "file-cache"
files = 2
file_size = "1MiB"
"""


def validator(name: str) -> jsonschema.protocols.Validator:
    s = schema.shipped(name)
    cls = jsonschema.validators.validator_for(s)
    cls.check_schema(s)
    return cls(s)


@pytest.mark.parametrize("name", sorted(schema.MODELS))
def test_shipped_schemas_are_the_models_schemas(name: str) -> None:
    assert schema.shipped(name) == schema.generate(name), \
        f"uvm/schemas/{name}.schema.json is stale: regenerate it with `python -m uvm.schema`"


def test_uvm_schema_prints_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "timeline"]) == 0
    assert json.loads(capsys.readouterr().out) == schema.shipped("timeline")
    with pytest.raises(SystemExit) as e:
        main(["schema", "nonesuch"])
    assert e.value.code == 2


def test_version_names_the_commit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert out.startswith(f"uvm {uvm.__version__} (commit {head[:12]}")


def test_a_built_copy_records_the_commit_it_was_built_from(tmp_path: Path) -> None:
    """What `pip install .` from a clone does: setup.py's build_py writes uvm/_build.json
    into the built package, and that copy (outside any checkout) reports it."""
    build = tmp_path / "lib"
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(build)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads((build / "uvm" / "_build.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert info["commit"] == head and isinstance(info["dirty"], bool)
    assert not (REPO / "uvm" / "_build.json").exists(), "the source tree must stay clean"
    cores = list(Path(uvm.__file__).parent.glob("_core*.so"))    # the C core this process uses
    assert cores, "no built C core beside the imported uvm"
    for core in cores:
        shutil.copy(core, build / "uvm")
    r = subprocess.run([sys.executable, "-c", "from uvm import record; import json; "
                        "print(record.build().model_dump_json())"],
                       cwd=tmp_path, env={"PYTHONPATH": str(build), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"version": uvm.__version__, **info}


def test_every_core_counter_is_recorded_or_dropped_on_purpose() -> None:
    machine = set(timeline.MACHINE_FIELDS) | set(timeline.MACHINE_DROPPED)
    assert set(MACHINE_STAT_FIELDS) <= machine, set(MACHINE_STAT_FIELDS) - machine
    vm = set(timeline.VM_FIELDS) | set(timeline.VM_DROPPED)
    assert set(VM_STAT_FIELDS) <= vm, set(VM_STAT_FIELDS) - vm
    # units are in the names: no bare size left, and no record name used twice
    names = list(timeline.VM_FIELDS.values())
    assert len(names) == len(set(names))
    for bare in ("resident", "swapped", "zero", "sharing", "ballooned", "saved", "memory"):
        assert bare not in names and bare not in timeline.MACHINE_FIELDS.values()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_real_run_writes_a_timeline_and_summary_that_validate(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    out, summary = tmp_path / "t.jsonl", tmp_path / "summary.json"
    assert main(["run", str(path), "--duration", "1.5", "--every", "0.5", "--json", str(out),
                 "--summary-json", str(summary)]) == 0
    lines = read(out)
    check = validator("timeline")
    for line in lines:
        check.validate(line)
        schema.validate_timeline_line(line)
    head, samples, end = lines[0], lines[1:-1], lines[-1]
    assert head["type"] == "header" and end["type"] == "end"
    assert [s["type"] for s in samples] == ["sample"] * len(samples) == ["sample"] * end["samples"]
    assert end["partial"] is False and end["duration_s"] >= 1.0

    # the header: what ran, where, with every default filled in, and how it was seeded
    assert head["kind"] == "run" and head["name"] == "s"
    assert head["fault_path"] == resolve_fault_path(None)     # the machine's ($UVM_FAULT_PATH)
    assert head["uvm"]["version"] == uvm.__version__ and head["seed"] == 11
    assert head["host"]["mode"] in ("privileged", "user") and head["host"]["cpu_count"] >= 1
    assert head["host"]["memory_bytes"] > 0 and head["page_size_bytes"] == uvm.PAGE_SIZE
    config = head["config"]
    assert config["machine"]["memory"] == 8 << 20 and config["machine"]["swap_size"] == 32 << 20
    assert config["machine"]["fault_around"] == 1 and config["machine"]["seed"] == head["seeds"]["machine"]
    assert config["policy"]["tax_rate"] == 0.75 and config["policy"]["sample_size"] == 100
    busy, guest = config["vms"]
    assert busy["shares"] == 2000 and guest["shares"] == 1000
    assert busy["workload"]["pattern"] == "random" and busy["workload"]["write_fraction"] == 0.5
    assert busy["workload"]["seed"] == head["seeds"]["vm/busy"]
    assert guest["workload"]["sync_every"] == 2000 and guest["os"]["balloon"] is False
    assert config["run"] == {"duration_s": 1.5, "every_s": 0.5, "seed": 11}

    # one clock, no duplicated figure
    for s in samples:
        assert "time" not in s and "elapsed" not in s
        for v in s["vms"]:
            assert "stats" not in v and "resident" not in v and v["stopped"] is None
            assert v["balloon_error"] is None       # null, as documented: "" was a second "none"
    assert samples[-1]["vms"][1]["guest"]["cache_misses"] > 0

    got = json.loads(summary.read_text())
    validator("summary").validate(got)
    assert got["record"]["seed"] == 11 and got["record"]["partial"] is False
    assert "interrupted" not in got             # the record's partial says it, once
    assert got["record"]["duration_s"] >= 1.0 and got["final"]["vms"][0]["name"] == "busy"
    assert sum(got["states_seen"].values()) == len(samples)


def test_a_record_without_a_checkout_has_no_commit(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(record, "SOURCE_TREE", tmp_path)
    assert record._source_commit() == {"commit": None, "dirty": None}


def test_docs_have_a_row_for_every_field() -> None:
    """docs/record.md documents every field of every output (a table row each)."""
    from uvm.experiments.runner import Figure, Repeat, Results
    from uvm.record import Build, Header, Host

    doc = (REPO / "docs" / "record.md").read_text()
    models = [(Header, ""), (Build, "uvm."), (Host, "host."), (timeline.SampleLine, ""),
              (timeline.MachineLine, "machine."), (timeline.VMLine, "vms[]."),
              (timeline.PolicyLine, "vms[].policy."), (timeline.GuestLine, "vms[].guest."),
              (timeline.EndLine, ""), (timeline.Summary, ""), (Results, ""),
              (Figure, "figures.NAME."), (Repeat, "repeats[].")]
    nested = {"uvm", "host", "machine", "vms", "policy", "guest", "record"}
    missing = [f"{prefix}{name}" for model, prefix in models for name in model.model_fields
               if name not in nested and f"| `{prefix}{name}` |" not in doc]
    assert not missing, f"docs/record.md has no row for {missing}"


def test_the_record_says_which_userfaultfd_mode(monkeypatch: pytest.MonkeyPatch,
                                                make_machine: Any) -> None:
    """Probed without a machine, or read from the machine; UVM_UFFD_USER_MODE=1 forces the
    unprivileged mode (as on a student's machine)."""
    full = record.host().mode
    assert full in ("privileged", "user")
    monkeypatch.setenv("UVM_UFFD_USER_MODE", "1")
    assert record.host().mode == "user"
    m = make_machine("1MiB")
    assert m.user_mode and record.header(kind="run", name="x", config={}, seed=1,
                                         machine=m).host.mode == "user"
