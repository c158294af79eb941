"""Scenario files: good ones parse into the right objects; every bad one is rejected with a
message naming the file, the field path and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from uvm import scenario
from uvm.scenario import ScenarioError
from uvm.sizes import parse_size
from workloads import KINDS, Idle, WorkingSet

GOOD = """\
[machine]
memory = "16MiB"
swap_size = "64MiB"
swap_dir = "."
fault_around = 4

[run]
duration = 3
every = 0.5

[[vm]]
name = "hot"
memory = "24MiB"
[vm.workload]
kind = "working-set"
size = "12MiB"
pattern = "zipf"
write_fraction = 0.25
seed = 7

[[vm]]
name = "quiet"
memory = 8388608
[vm.workload]
kind = "idle"
touch = "4MiB"

[[vm]]
name = "empty"
memory = "4MiB"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_parses_into_specs(tmp_path: Path) -> None:
    s = scenario.load(write(tmp_path, GOOD))
    assert s.source == str(tmp_path / "s.toml") and s.name == "s"
    assert s.machine.kwargs() == {"memory": "16MiB", "swap_size": "64MiB",
                                  "swap_dir": str(tmp_path / "."), "fault_around": 4}
    assert (s.run.duration, s.run.every) == (3.0, 0.5)
    assert [v.name for v in s.vms] == ["hot", "quiet", "empty"]
    assert s.vms[1].memory == 8388608 and s.vms[2].workload is None
    hot = s.vms[0].workload
    assert hot is not None and hot.kind == "working-set"
    w = hot.create()
    assert isinstance(w, WorkingSet) and w.pattern == "zipf" and w.write_fraction == 0.25
    assert w.set_pages == parse_size("12MiB", "size") // 4096
    assert isinstance(s.vms[1].workload and s.vms[1].workload.create(), Idle)


def test_run_table_is_optional_with_defaults() -> None:
    s = scenario.loads('[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n')
    assert (s.run.duration, s.run.every) == (20.0, 1.0)
    assert s.machine.kwargs() == {"memory": "8MiB"}


def test_absolute_swap_paths_stay_as_written(tmp_path: Path) -> None:
    text = GOOD.replace('swap_dir = "."', f'swap_file = "{tmp_path}/x/swap"')
    s = scenario.loads(text, base=Path("/elsewhere"))
    assert s.machine.swap_file == f"{tmp_path}/x/swap"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_workload_kind_is_accepted(kind: str) -> None:
    params = {"working-set": 'size = "1MiB"', "idle": 'touch = "1MiB"',
              "os-image": 'image = "1MiB"\nprivate = "1MiB"\nzeroed = "1MiB"',
              "file-cache": 'file_size = "1MiB"', "guest-idle": 'touch = "1MiB"'}.get(kind, 'size = "1MiB"')
    s = scenario.loads(f'[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n'
                       f'[vm.workload]\nkind = "{kind}"\n{params}\n')
    assert s.vms[0].workload is not None and isinstance(s.vms[0].workload.create(), KINDS[kind])


def test_default_scenario_is_valid_and_overcommitted() -> None:
    s = scenario.default()
    machine = parse_size(s.machine.memory, "memory")
    guests = sum(parse_size(v.memory, "memory") for v in s.vms)
    assert guests > machine, "the default scenario must overcommit machine memory"
    assert len(s.vms) >= 3 and all(v.workload is not None for v in s.vms)
    kinds = {v.workload.kind for v in s.vms if v.workload is not None}
    assert {"working-set", "idle"} <= kinds
    assert 10 <= s.run.duration <= 60


def test_default_scenario_working_sets_exceed_machine_memory() -> None:
    s = scenario.default()
    touched = 0
    for v in s.vms:
        assert v.workload is not None
        w = v.workload.params
        touched += sum(parse_size(w[k], k) for k in ("size", "touch", "image", "private", "zeroed")
                       if k in w)
    assert touched > parse_size(s.machine.memory, "memory")


# (change to GOOD: old text, new text) -> the field path and the reason the error must give
BAD = [
    (('pattern = "zipf"', 'pattern = "zig"'),
     "vm[0].workload.pattern: must be one of ['random', 'sequential', 'zipf'], got 'zig'"),
    (('size = "12MiB"', 'size = "12XB"'), "vm[0].workload.size: '12XB' is not a size"),
    (('size = "12MiB"', 'sise = "12MiB"'), "vm[0].workload.sise: unknown parameter of 'working-set'"),
    (('size = "12MiB"\n', ''), "vm[0].workload.size: missing (required)"),
    (('kind = "idle"', 'kind = "sleep"'), "vm[1].workload.kind: must be one of"),
    (('kind = "idle"\n', ''), "vm[1].workload.kind: missing"),
    (('touch = "4MiB"', 'touch = -4'), "vm[1].workload.touch: must be positive"),
    (('write_fraction = 0.25', 'write_fraction = 1.5'), "vm[0].workload.write_fraction: must be a number in [0, 1]"),
    (('seed = 7', 'seed = "7"'), "vm[0].workload.seed: expected an integer, got '7'"),
    (('memory = 8388608', 'memory = 3.5'), "vm[1].memory: expected an integer or a string, got 3.5"),
    (('memory = 8388608', 'memory = "8 potatoes"'), "vm[1].memory: '8 potatoes' is not a size"),
    (('name = "empty"\n', ''), "vm[2].name: missing (required)"),
    (('name = "empty"', 'name = "hot"'), "vm[2].name: duplicate VM name 'hot'"),
    (('name = "empty"', 'name = 3'), "vm[2].name: expected a string, got 3"),
    (('memory = "16MiB"', 'memory = "100B"'), "machine.memory: '100B' is smaller than one page"),
    (('memory = "16MiB"\n', ''), "machine.memory: missing (required)"),
    (('fault_around = 4', 'fault_around = true'), "machine.fault_around: expected an integer, got true"),
    (('fault_around = 4', 'fault_around = 4\nswap = 1'), "machine.swap: unknown key"),
    (('fault_around = 4', 'reclaim = "yes"'), "machine.reclaim: expected true or false, got 'yes'"),
    (('fault_around = 4', 'pagers = [0, "x"]'), "machine.pagers: expected an integer or an array"),
    (('swap_size = "64MiB"', 'swap_size = "0"'), "machine.swap_size: must be positive"),
    (('duration = 3', 'duration = -1'), "run.duration: must be a positive number of seconds, got -1"),
    (('every = 0.5', 'every = "often"'), "run.every: expected a number, got 'often'"),
    (('every = 0.5', 'evry = 0.5'), "run.evry: unknown key"),
    (('[machine]', '[machin]'), "machin: unknown table (expected one of: machine, run, vm)"),
    (('[run]', '[runs]'), "runs: unknown table"),
]


@pytest.mark.parametrize(("change", "expected"), BAD)
def test_bad_file_names_file_and_field(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    assert str(info.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(("text", "expected"), [
    ('[machine]\nmemory = "8MiB"\n', "vm: at least one [[vm]] entry is required"),
    ('[machine]\nmemory = "8MiB"\nvm = 3\n', "machine.vm: unknown key"),
    ('vm = 3\n[machine]\nmemory = "8MiB"\n', "vm: expected [[vm]] entries"),
    ('machine = 3\n', "machine: expected a table, got 3"),
    ('[[vm]]\nname = "a"\nmemory = "8MiB"\n', "machine: missing"),
    ('[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\nworkload = "x"\n',
     "vm[0].workload: expected a table, got 'x'"),
])
def test_bad_structure_names_field(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=r"^x\.toml: ") as info:
        scenario.loads(text, source="x.toml")
    assert str(info.value).startswith(f"x.toml: {expected}")


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[machine]\nmemory = "8MiB"\n\n[[vm]]\nname = \n')
    with pytest.raises(ScenarioError, match=rf"^{path}: invalid TOML: .*line 5"):
        scenario.load(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match=rf"^{path}: cannot read the scenario: No such file"):
        scenario.load(path)


# -- errors found only when the scenario is launched ----------------------------------------

def test_launch_names_workload_that_does_not_fit(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('size = "12MiB"', 'size = "32MiB"'))
    with pytest.raises(ScenarioError, match=rf"^{path}: vm\[0\]\.workload\.size: the working set"):
        scenario.launch(scenario.load(path))


def test_launch_names_machine_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("fault_around = 4", "fault_around = 1000"))
    with pytest.raises(ScenarioError, match=rf"^{path}: machine\.fault_around: must be"):
        scenario.launch(scenario.load(path))


def test_launch_names_vm_that_cannot_be_backed(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('memory = "4MiB"', 'memory = "1GiB"'))
    with pytest.raises(ScenarioError, match=rf"^{path}: vm\[2\]\.memory: VM 'empty' cannot be backed: its max - min \(1.0 GiB\) must fit in swap"):
        scenario.launch(scenario.load(path))


def test_launch_creates_vms_and_starts_workloads(tmp_path: Path) -> None:
    m = scenario.launch(scenario.load(write(tmp_path, GOOD)))
    try:
        assert m.memory == 16 << 20 and m.fault_around == 4
        assert [(v.name, v.size) for v in m.vms] == [("hot", 24 << 20), ("quiet", 8 << 20),
                                                      ("empty", 4 << 20)]
        assert [[r.workload.kind for r in v.runs] for v in m.vms] == [["working-set"], ["idle"], []]
    finally:
        m.close()
