"""Scenario files: good ones parse into the right objects; every bad one is rejected with a
message naming the file, the field path and what is wrong."""

from __future__ import annotations

import errno
import inspect
import os
from pathlib import Path
from typing import Any

import pytest

import uvm
from uvm import scenario
from uvm.policy import (STATES, ColdVictims, LastPeriod, PaperEstimator, RandomVictims,
                        ShareProportional, Thresholds)
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
              "file-cache": 'file_size = "1MiB"', "guest-idle": 'touch = "1MiB"',
              "file-server": 'file_size = "64KiB"', "guest-image": 'image = "1MiB"'}.get(kind, 'size = "1MiB"')
    s = scenario.loads(f'[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n'
                       f'[vm.workload]\nkind = "{kind}"\n{params}\n')
    assert s.vms[0].workload is not None and isinstance(s.vms[0].workload.create(), KINDS[kind])


def test_default_scenario_is_valid_and_overcommitted() -> None:
    s = scenario.default()
    machine = parse_size(s.machine.memory, "memory")
    guests = sum(parse_size(v.memory, "memory") for v in s.vms)
    assert guests > machine, "the default scenario must overcommit machine memory"
    assert len(s.vms) >= 3 and all(v.workload is not None for v in s.vms)
    kinds = [v.workload.kind for v in s.vms if v.workload is not None]
    assert {"guest-working-set", "guest-idle"} <= set(kinds) and kinds.count("os-image") >= 2
    for v in s.vms:                 # guest workloads run on the guest OS, with its balloon
        if v.workload is not None and v.workload.kind.startswith("guest-"):
            assert v.os is not None and v.os.balloon is not False, v.name
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
    (('duration = 3', 'duration = -1'), "run.duration: must be a number of seconds > 0, at most 1e+07, got -1"),
    (('every = 0.5', 'every = "often"'), "run.every: expected a number, got 'often'"),
    (('every = 0.5', 'evry = 0.5'), "run.evry: unknown key"),
    (('[machine]', '[machin]'), "machin: unknown table (expected one of: machine, policy, run, vm)"),
    (('[run]', '[runs]'), "runs: unknown table"),
    # numbers too large for C, NaN, inf: each named, never an OverflowError or a hang
    (('memory = "16MiB"', "memory = '9999999TiB'"), "machine.memory: '9999999TiB' is too large"),
    (('memory = "16MiB"', f"memory = {2**63 - 1}"), "machine.memory: 9223372036854775807 is too large"),
    (('memory = "16MiB"', 'memory = "1' + '0' * 400 + 'KiB"'), "machine.memory: '1000"),
    (('swap_size = "64MiB"', f"swap_size = {2**62}"), "machine.swap_size: 4611686018427387904 is too large"),
    (('memory = 8388608', f"memory = {2**64}"), "vm[1].memory: 18446744073709551616 is too large"),
    (('seed = 7', f"seed = {2**64}"), "vm[0].workload.seed: expected an integer from 0 to 2**63 - 1"),
    (('seed = 7', "seed = -1"), "vm[0].workload.seed: expected an integer from 0 to 2**63 - 1"),
    (('every = 0.5', 'every = 1e-300'), "run.every: the sample period must be at least 0.01 s, got 1e-300"),
    (('every = 0.5', 'every = nan'), "run.every: must be a number of seconds > 0, at most 1e+07, got nan"),
    (('duration = 3', 'duration = inf'), "run.duration: must be a number of seconds > 0, at most 1e+07, got inf"),
    (('duration = 3', 'duration = 1e300'), "run.duration: must be a number of seconds > 0"),
    (('[run]', '[policy]\ntick = 1e300\n[run]'), "policy.tick: must be a number of seconds > 0, at most 1e+07"),
    (('[run]', '[policy]\nsample_period = inf\n[run]'), "policy.sample_period: must be a number of seconds > 0"),
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


GUEST_VM = """
[[vm]]
name = "g"
memory = "8MiB"
[vm.os]
[vm.workload]
kind = "guest-working-set"
size = "1MiB"
"""


@pytest.mark.parametrize(("extra", "expected"), [
    ("phases = [1, 2]", "vm[3].workload.phases: expected an array (each item an array [a number, "
                        "an integer or a string]), got [1, 2]"),
    ("phases = [[{a = 1}, '1MiB']]", "vm[3].workload.phases: expected an array"),
    ("phases = [[1, '1MiB', 3]]", "vm[3].workload.phases: expected an array"),
    ("phases = [[nan, '1MiB']]", "vm[3].workload.phases[0][0]: must be a number of seconds > 0"),
    ("phases = [[1, '1XB']]", "vm[3].workload.phases[0][1]: '1XB' is not a size"),
])
def test_workload_parameters_are_type_checked(tmp_path: Path, extra: str, expected: str) -> None:
    """A parameter whose hint is not a plain type (phases: a list of pairs) is checked too:
    it used to reach the constructor and fail there with a TypeError traceback."""
    path = write(tmp_path, GOOD + GUEST_VM + extra + "\n")
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    assert str(info.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("value", [None, {"a": 1}, [[1]], "x" * 10_000, float("nan"), True],
                         ids=["none", "table", "nested", "long-string", "nan", "bool"])
def test_every_workload_parameter_refuses_wrong_types_by_name(kind: str, value: object) -> None:
    """Every parameter of every workload kind, given a value of the wrong type: a ValueError
    naming it, never a TypeError from inside the constructor."""
    params = scenario._signature_params(KINDS[kind])
    for name, (_, required) in params.items():
        if value is None and not required:
            continue                    # None is the default of an optional parameter
        given = {k: v for k, v in {"size": "1MiB", "touch": "1MiB"}.items() if k in params}
        with pytest.raises(ValueError, match=rf"^w\.{name}(\[\d+\])*: "):
            scenario._workload({"kind": kind, **given, name: value}, "w")


@pytest.mark.parametrize(("name", "value"), [("files", 2**64), ("sync_every", 2**64),
                                             ("ops_per_step", 2**64), ("files", 0)])
def test_file_cache_counts_are_bounded(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^w\.{name}: expected .* from 1 to 65536"):
        scenario._workload({"kind": "file-cache", name: value}, "w")


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    for depth in (40, 900, 2000):
        nested = "{a = " * depth + "1" + "}" * depth
        path = write(tmp_path, GOOD + f"\n[vm.os]\nx = {nested}\n")
        with pytest.raises(ScenarioError, match="nested too deeply"):
            scenario.load(path)
    path = write(tmp_path, GOOD.replace("fault_around = 4", "fault_around = " + "[" * 40 + "]" * 40))
    with pytest.raises(ScenarioError, match=r": machine\.fault_around\[0\]\[0\]: tables or arrays "
                                            r"nested too deeply \(at most 32 levels\)$"):
        scenario.load(path)


def test_vm_count_is_checked_before_parsing(tmp_path: Path) -> None:
    """300 [[vm]] headers are refused without parsing them (a million took 337 s and 800 MB
    before "at most 256"); so is a file far longer than a scenario, and an inline array."""
    many = GOOD + '[[vm]]\nname = "x"\nmemory = "1MiB"\n' * 300
    with pytest.raises(ScenarioError, match=r": vm: at most 256 \[\[vm\]\] entries, got 303$"):
        scenario.load(write(tmp_path, many))
    with pytest.raises(ScenarioError, match="too long for a scenario"):
        scenario.load(write(tmp_path, GOOD + "# " + "x" * (2 << 20) + "\n"))
    with pytest.raises(ScenarioError, match="too long for a scenario"):
        scenario.load("/dev/zero")                              # used to read forever
    inline = "vm = [" + ", ".join(f'{{name = "v{i}", memory = "1MiB"}}' for i in range(300)) + "]\n"
    with pytest.raises(ScenarioError, match=r": vm: at most 256 \[\[vm\]\] entries, got 300$"):
        scenario.loads(inline + '[machine]\nmemory = "8MiB"\n', source="x.toml")


def test_a_machine_the_host_cannot_map_is_one_line(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory beyond uvm's cap is refused when the file is read, naming the field; a
    machine within it that the host still cannot map (ENOMEM: injected, since the cap keeps
    a real one from failing on most hosts) is one line too."""
    text = GOOD.replace('memory = "16MiB"', 'memory = "100TiB"').replace('swap_size = "64MiB"\n', "")
    with pytest.raises(ScenarioError, match=r": machine\.memory: '100TiB' is too large"):
        scenario.load(write(tmp_path, text))

    def machine(*args: Any, **kwargs: Any) -> uvm.Machine:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(scenario, "Machine", machine)
    spec = scenario.load(write(tmp_path, GOOD))
    with pytest.raises(ScenarioError, match=r": machine: Cannot allocate memory \(check memory "
                                            r"and swap_size\)$"):
        scenario.launch(spec)


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


# -- the memory policy: [policy], per-VM shares and min ----------------------------------------

POLICY = """\
[policy]
tax_rate = 0.5
victims = "cold"
estimator = "last-period"
sample_period = 0.5
sample_size = 50
target_period = 1.5
tick = 0.1
thresholds = { high = 0.1, soft = 0.05 }
"""

WITH_POLICY = POLICY + GOOD.replace('name = "hot"\n', 'name = "hot"\nshares = 3000\nmin = "2MiB"\n')


def test_policy_table_turns_the_policy_on(tmp_path: Path) -> None:
    s = scenario.load(write(tmp_path, WITH_POLICY))
    assert s.policy is not None
    p = s.policy.build()
    assert (p.tax_rate, p.sample_period, p.sample_size, p.target_period, p.tick) == (0.5, 0.5, 50, 1.5, 0.1)
    assert isinstance(p.victims, ColdVictims) and p.estimator is LastPeriod and p.allocation is None
    assert p.thresholds == Thresholds(high=0.1, soft=0.05, hard=0.02, low=0.01)
    assert s.policy.build().victims is not p.victims, "each machine needs its own policy objects"
    assert (s.vms[0].shares, s.vms[0].min) == (3000, "2MiB")
    assert s.vms[1].create_kwargs() == {}
    assert scenario.load(write(tmp_path, GOOD)).policy is None


def test_empty_policy_table_is_the_default_policy_and_names_allocations() -> None:
    base = '[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n'
    s = scenario.loads("[policy]\n" + base)
    assert s.policy is not None
    default = uvm.MemoryPolicy()
    p = s.policy.build()
    assert (p.tax_rate, p.sample_period, p.sample_size, p.target_period, p.tick, p.thresholds) == (
        default.tax_rate, default.sample_period, default.sample_size, default.target_period,
        default.tick, default.thresholds)
    assert isinstance(p.victims, RandomVictims) and p.estimator is PaperEstimator
    s = scenario.loads('[policy]\nallocation = "share-proportional"\n' + base)
    assert s.policy is not None and isinstance(s.policy.build().allocation, ShareProportional)


def test_launch_runs_the_policy_with_shares_and_min(tmp_path: Path) -> None:
    m = scenario.launch(scenario.load(write(tmp_path, WITH_POLICY)))
    try:
        assert m.scheduler is not None and m.scheduler.policy.sample_period == 0.5
        assert isinstance(m.scheduler.policy.victims, ColdVictims)
        hot, quiet = m.vm("hot"), m.vm("quiet")
        assert (hot.shares, hot.min, quiet.shares, quiet.min) == (3000, 512, 1000, 0)
        assert m.stats()["state"] in STATES and m.stats()["tax_rate"] == 0.5
        assert {"target", "allocated", "active", "reclaim"} <= set(hot.stats())
    finally:
        m.close()
    m = scenario.launch(scenario.load(write(tmp_path, GOOD)))
    try:
        assert m.scheduler is None and m.stats()["state"] == "unmanaged"
    finally:
        m.close()


# (change to WITH_POLICY: old text, new text) -> the field path and the reason
BAD_POLICY = [
    (("tax_rate = 0.5", "tax_rate = 1.5"), "policy.tax_rate: must be a number in [0, 1), got 1.5"),
    (("tax_rate = 0.5", "tax_rate = -0.1"), "policy.tax_rate: must be a number in [0, 1), got -0.1"),
    (("tax_rate = 0.5", 'tax_rate = "high"'), "policy.tax_rate: expected a number, got 'high'"),
    (("tax_rate = 0.5", 'tax_rate = 0.5\nallocation = "share-proportional"'),
     "policy.tax_rate: only the idle-tax allocation has a tax rate"),
    (("tax_rate = 0.5", 'allocation = "fair"'),
     "policy.allocation: must be one of ['idle-tax', 'share-proportional'], got 'fair'"),
    (('victims = "cold"', 'victims = "lru"'), "policy.victims: must be one of ['cold', 'random'], got 'lru'"),
    (('estimator = "last-period"', "estimator = 1"), "policy.estimator: expected a string, got 1"),
    (('estimator = "last-period"', 'estimator = "ewma"'),
     "policy.estimator: must be one of ['last-period', 'paper'], got 'ewma'"),
    (("sample_period = 0.5", "sample_period = 0"), "policy.sample_period: must be a number of seconds > 0, at most 1e+07, got 0"),
    (("sample_size = 50", "sample_size = 0"), "policy.sample_size: must be an integer from 1 to 65536, got 0"),
    (("sample_size = 50", "sample_size = 5.5"), "policy.sample_size: expected an integer, got 5.5"),
    (("target_period = 1.5", "target_period = -1"), "policy.target_period: must be a number of seconds > 0, at most 1e+07, got -1"),
    (("tick = 0.1", 'tick = "fast"'), "policy.tick: expected a number, got 'fast'"),
    (("tick = 0.1", "tik = 0.1"), "policy.tik: unknown key"),
    (("high = 0.1,", "high = 1.5,"), "policy.thresholds.high: must be a fraction in (0, 1), got 1.5"),
    (("high = 0.1,", "high = 0.03,"), "policy.thresholds: must decrease from high to low"),
    (("high = 0.1,", "hihg = 0.1,"), "policy.thresholds.hihg: unknown threshold (expected one of: hard, high, low, soft)"),
    (("soft = 0.05", 'soft = "4%"'), "policy.thresholds.soft: expected a number, got '4%'"),
    (("thresholds = { high = 0.1, soft = 0.05 }", "thresholds = 0.1"), "policy.thresholds: expected a table, got 0.1"),
    (("shares = 3000", "shares = 0"), "vm[0].shares: must be an integer from 1 to 10**9, got 0"),
    (("shares = 3000", 'shares = "many"'), "vm[0].shares: expected an integer, got 'many'"),
    (('min = "2MiB"', 'min = "32MiB"'), "vm[0].min: 32.0 MiB is more than the VM's memory (24.0 MiB)"),
    (('min = "2MiB"', 'min = "lots"'), "vm[0].min: 'lots' is not a size"),
    (('min = "2MiB"', "min = true"), "vm[0].min: expected an integer or a string, got true"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_POLICY)
def test_bad_policy_field_is_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in WITH_POLICY
    path = write(tmp_path, WITH_POLICY.replace(old, new, 1))
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_policy_must_be_a_table() -> None:
    with pytest.raises(ScenarioError, match=r"^x\.toml: policy: expected a table, got 3$"):
        scenario.loads('policy = 3\n[machine]\nmemory = "8MiB"\n[[vm]]\nname = "a"\nmemory = "8MiB"\n',
                       source="x.toml")


def test_launch_names_min_that_admission_control_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, WITH_POLICY.replace('min = "2MiB"', 'min = "20MiB"'))
    with pytest.raises(ScenarioError, match=rf"^{path}: vm\[0\]\.min: VM 'hot' needs 20\.\d MiB of machine memory reserved"):
        scenario.launch(scenario.load(path))


HAND_BALLOON = """\
[machine]
memory = "32MiB"

[[vm]]
name = "guest"
memory = "16MiB"
[vm.os]
[vm.workload]
kind = "guest-idle"
touch = "4MiB"
[[vm.balloon]]
at = 1.0
target = "4MiB"
"""


def test_hand_set_balloon_targets_conflict_with_a_policy() -> None:
    assert scenario.loads(HAND_BALLOON).vms[0].balloon       # fine without a policy
    with pytest.raises(ScenarioError, match=r"^x\.toml: vm\[0\]\.balloon: balloon targets cannot be "
                                            r"set by hand while a memory policy runs"):
        scenario.loads("[policy]\n" + HAND_BALLOON, source="x.toml")


def test_default_scenario_runs_the_policy_with_unequal_claims() -> None:
    s = scenario.default()
    assert s.policy is not None
    p = s.policy.build()
    assert p.sample_period <= 2 and p.target_period <= 2, "the policy must act within the run"
    shares = {v.shares or 1000 for v in s.vms}
    idle = [v for v in s.vms if v.workload is not None and v.workload.kind == "guest-idle"]
    assert len(shares) > 1 and idle, "shares or the idle tax must matter"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("value", [None, {"a": 1}, [[1]], "x" * 100, float("nan"), True, 2**64,
                                   -1, 1e300, b"x", object()],
                         ids=["none", "dict", "nested", "string", "nan", "bool", "2**64", "-1",
                              "1e300", "bytes", "object"])
def test_workload_constructors_check_every_parameter(kind: str, value: object) -> None:
    """The API side: a workload constructed with a wrong value raises ValueError naming the
    parameter (pattern=[...] used to be a TypeError), or accepts it."""
    sig = inspect.signature(KINDS[kind].__init__)
    for name, p in sig.parameters.items():
        if name == "self" or (value is None and p.default is not inspect.Parameter.empty):
            continue
        kwargs: dict[str, Any] = {k: v for k, v in {"size": "1MiB", "touch": "1MiB"}.items()
                                  if k in sig.parameters}
        try:
            KINDS[kind](**{**kwargs, name: value})
        except ValueError as e:
            assert str(e).startswith(name), (name, str(e))
