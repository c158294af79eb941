"""`uvm run --again FILE`: a run's record alone runs it again. The second run's record holds
the same configuration and seeds as the first (every default, the policy, the VMs' OS and
balloon steps, salts), its guests do the same operations, and it does not matter that the
scenario file changed in between; a summary, a timeline and a sweep's row all work; what
cannot be run again is one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from uvm import again, scenario
from uvm.cli import main

# a fill that ends (its op count is the same every time) beside a seeded random working
# set, under a policy with every table given; and a guest OS VM with balloon steps
POLICY = """
[machine]
memory = "24MiB"
pagers = 1                  # recorded as given, not as this host's CPUs: runs anywhere
sharing = true
share_domains = "vm"
[policy]
allocation = "share-proportional"
victims = "cold"
sample_period = 0.5
[policy.thresholds]
high = 0.08
soft = 0.05
hard = 0.03
low = 0.01
[run]
duration = 1.5
every = 0.5
[[vm]]
name = "fill"
memory = "8MiB"
shares = 500
min = "2MiB"
share_salt = "tenant-a"
[vm.workload]
kind = "fill"
[[vm]]
name = "ws"
memory = "12MiB"
[vm.workload]
kind = "working-set"
size = "8MiB"
pattern = "zipf"
write_fraction = 0.25
"""

BALLOON = """
[machine]
memory = "32MiB"
fault_around = 4
[run]
duration = 1.5
every = 0.5
[[vm]]
name = "guest"
memory = "24MiB"
[vm.os]
balloon_period = 0.25
[[vm.balloon]]
at = 0.5
target = "4MiB"
[vm.workload]
kind = "guest-idle"
touch = "6MiB"
"""


def run_summary(args: list[str], out: Path) -> dict[str, Any]:
    assert main(["run", *args, "--summary-json", str(out)]) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize("text", [POLICY, BALLOON], ids=["policy", "balloon"])
def test_a_summary_runs_again_with_the_same_config_and_seeds(tmp_path: Path, text: str) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(text)
    first = run_summary([str(toml), "--seed", "11"], tmp_path / "first.json")
    toml.write_text(text.replace('memory = "24MiB"', 'memory = "48MiB"', 1))  # edited since
    second = run_summary(["--again", str(tmp_path / "first.json")], tmp_path / "second.json")
    a, b = first["record"], second["record"]
    assert b["config"] == a["config"] and b["seed"] == a["seed"] == 11
    assert b["seeds"] == a["seeds"] and b["name"] == a["name"] == "s"
    if text is POLICY:        # the fill wrote the whole VM both times: the same operations
        ops = [{v["name"]: v["ops"] for v in s["final"]["vms"]}["fill"] for s in (first, second)]
        assert ops[0] == ops[1] == 8 * 1024 * 1024 // 4096
    # --seed still overrides: every derived seed follows it, as in a fresh run of the file
    toml.write_text(text)
    fresh = run_summary([str(toml), "--seed", "12"], tmp_path / "fresh.json")
    third = run_summary(["--again", str(tmp_path / "first.json"), "--seed", "12"],
                        tmp_path / "third.json")
    assert third["record"]["seeds"] == fresh["record"]["seeds"] != a["seeds"]


def test_a_timeline_and_a_sweep_row_run_again(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(POLICY)
    assert main(["run", str(toml), "--seed", "3", "--duration", "0.5",
                 "--json", str(tmp_path / "t.jsonl")]) == 0
    header = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    recorded = again.load(str(tmp_path / "t.jsonl"))
    assert recorded.record.seed == 3 and recorded.spec.run.seed == 3
    assert recorded.spec.run.duration == 0.5 == header["config"]["run"]["duration_s"]
    # a sweep's results.jsonl: one record per row, so the row is named
    rows = tmp_path / "results.jsonl"
    rows.write_text("".join(json.dumps({"trial": str(i), "record": {**header, "seed": i}}) + "\n"
                            for i in (1, 2)).replace('"type": "header", ', ""))
    with pytest.raises(ValueError, match=r"2 records .*--line N \(lines 1, 2\)"):
        again.load(str(rows))
    assert again.load(str(rows), line=2).record.seed == 2
    # an interrupted sweep leaves a torn last line: the rows before it still run again
    torn = tmp_path / "torn.jsonl"
    torn.write_text(rows.read_text().splitlines()[0] + '\n{"trial": "2", "rec')
    assert again.load(str(torn)).record.seed == 1
    assert again.load(str(torn), line=1).record.seed == 1


def test_what_cannot_run_again_is_one_clear_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tmp_path / "results.json"
    toml = tmp_path / "s.toml"
    toml.write_text(POLICY)
    assert main(["run", str(toml), "--seed", "3", "--duration", "0.3",
                 "--summary-json", str(experiment)]) == 0
    summary = json.loads(experiment.read_text())
    rec = {**summary["record"], "kind": "experiment", "name": "sharing",
           "config": {"quick": True, "repeat": 2, "params": {}}}
    experiment.write_text(json.dumps({"record": rec, "figures": {}}))
    reproduce = tmp_path / "reproduce.json"
    reproduce.write_text(json.dumps({"record": {
        **summary["record"], "kind": "reproduce", "name": "paper",
        "config": {"quick": False, "repeat": 3, "experiments": ["sharing", "balloon"]}}}))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"record": {**summary["record"], "config": {"vms": []}}}))
    config = summary["record"]["config"]
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"record": {**summary["record"],
                                             "config": {**config, "machine": [1]}}}))
    vms = tmp_path / "vms.json"
    vms.write_text(json.dumps({"record": {**summary["record"], "config": {**config, "vms": ["a"]}}}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    indented = tmp_path / "indented.json"
    indented.write_text(json.dumps(summary, indent=2))
    cases = [
        (["--again", str(experiment)],
         "the record of an experiment: run it again with "
         "`uvm experiment sharing --seed 3 --quick --repeat 2`, not of `uvm run`"),
        (["--again", str(tmp_path / "none.json")], "none.json: cannot read"),
        (["--again", str(toml)], "s.toml:2: not JSON"),      # line 1 is empty
        (["--again", str(reproduce)],
         "the record of `uvm reproduce`: run it again with `uvm reproduce --seed 3 --repeat 3 "
         "--only sharing,balloon`, not of `uvm run`"),
        (["--again", str(broken)], "broken.json: record.config: 'machine' is missing"),
        (["--again", str(shapes)], "shapes.json: record.config: not a run's configuration"),
        (["--again", str(vms)], "vms.json: record.config: not a run's configuration"),
        (["--again", str(deep)], "deep.json: no run record in it"),
        (["--again", str(indented), "--line", "1"], "indented.json:1 is not a JSON line"),
        (["--again", str(indented), "--line", "999999"], "has no JSON on line 999999"),
        (["--line", "2"], "--line: only with --again FILE"),
        ([str(toml), "--again", str(experiment)], "not both"),
    ]
    for args, message in cases:
        assert main(["run", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    with pytest.raises(SystemExit):
        main(["run", "--again", str(experiment), "--line", "0"])
    assert "must be a line number from 1" in capsys.readouterr().err


def test_the_built_in_scenario_comes_back_from_its_config(tmp_path: Path) -> None:
    """The inverse of resolved.scenario_config on the built-in scenario (guest OS, phases,
    OS images, the policy): parsed back, it is the scenario that was loaded."""
    assert main(["run", "--seed", "5", "--duration", "0.3",
                 "--summary-json", str(tmp_path / "s.json")]) == 0
    spec = again.load(str(tmp_path / "s.json")).spec
    built_in = scenario.default()
    assert [v.name for v in spec.vms] == [v.name for v in built_in.vms]
    assert [v.workload.kind for v in spec.vms if v.workload] == \
        [v.workload.kind for v in built_in.vms if v.workload]
    assert spec.policy is not None and built_in.policy is not None
    assert spec.policy.tax_rate == built_in.policy.tax_rate
    assert spec.machine.memory == 72 * 1024 * 1024 and spec.run.seed == 5
