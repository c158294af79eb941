"""Determinism: the same seed gives the same guest operations (the same bytes in guest memory,
the same guest OS counts), a different seed different ones; the C core's random choices
follow the machine's seed; a scenario derives every workload's seed from the run's; the
experiment runner seeds trials S, S+1, ... and reports the median and spread of their
figures, and an interrupted series is written as partial."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import uvm
import uvm.guest
from uvm import resolved, scenario, schema, seeds
from uvm.cli import main
from uvm.experiments import runner
from uvm.experiments.base import Experiment, Trial
from workloads import FileCache, GuestWorkingSet, WorkingSet

Make = Callable[..., uvm.Machine]


def memory_after(make: Make, seed: int, steps: int = 8) -> str:
    """A digest of a VM's memory after `steps` steps of a random working set (with writes):
    the memory is the sum of every write of the operation sequence."""
    m = make("8MiB", seed=seed)
    vm = m.create_vm("v", memory="4MiB")
    wl = WorkingSet(size="4MiB", pattern="random", write_fraction=0.5, seed=seed)
    wl.start(vm)
    assert sum(wl.step(vm) or 0 for _ in range(steps)) == steps * 4096
    return hashlib.sha256(vm.read(0, vm.size)).hexdigest()


def test_same_seed_same_bytes_in_guest_memory(make_machine: Make) -> None:
    first = memory_after(make_machine, 5)
    assert memory_after(make_machine, 5) == first
    assert memory_after(make_machine, 6) != first


def test_same_seed_same_bytes_when_the_host_pages(make_machine: Make) -> None:
    """Paging changes where pages are, never what they hold: a 4 MiB VM on a 2 MiB machine
    ends with the same bytes as with no paging at all."""
    m = make_machine("2MiB", seed=1)
    vm = m.create_vm("v", memory="4MiB")
    wl = WorkingSet(size="4MiB", pattern="random", write_fraction=0.5, seed=5)
    wl.start(vm)
    for _ in range(8):
        wl.step(vm)
    assert m.stats()["swapouts"] > 0
    assert hashlib.sha256(vm.read(0, vm.size)).hexdigest() == memory_after(make_machine, 5)


def guest_counts(make: Make, workload: Callable[[int], Any], seed: int) -> dict[str, Any]:
    """A guest OS's own counts after 30 steps of a guest workload seeded with `seed`, and a
    digest of its process's memory if it has one."""
    m = make("16MiB")
    vm = m.create_vm("g", memory="8MiB")
    uvm.guest.boot(vm, balloon=False, disk_latency=0.0)
    wl = workload(seed)
    wl.start(vm)
    for _ in range(30):
        wl.step(vm)
    assert vm.os is not None
    st = vm.os.stats()
    out: dict[str, Any] = {k: st[k] for k in ("guest_cache_hits", "guest_cache_misses",
                                               "guest_disk_reads", "guest_disk_writes")}
    if isinstance(wl, GuestWorkingSet) and wl.proc is not None:
        pages = b"".join(wl.proc.read(v) for v in range(wl.set_pages))
        out["process_memory"] = hashlib.sha256(pages).hexdigest()
    return out


@pytest.mark.parametrize("workload", [
    lambda s: FileCache(files=4, file_size="2MiB", write_fraction=0.3, sync_every=500, seed=s),
    lambda s: GuestWorkingSet(size="6MiB", pattern="zipf", seed=s),
], ids=["file-cache", "guest-working-set"])
def test_guest_workloads_repeat_their_operations(make_machine: Make,
                                                 workload: Callable[[int], Any]) -> None:
    first = guest_counts(make_machine, workload, 3)
    assert "process_memory" in first or first["guest_cache_misses"] > 0
    assert guest_counts(make_machine, workload, 3) == first
    assert guest_counts(make_machine, workload, 4) != first


def test_the_core_random_choices_follow_the_machine_seed(make_machine: Make) -> None:
    def picks(seed: int) -> list[list[int]]:
        m = make_machine("8MiB", seed=seed)
        vm = m.create_vm("v", memory="4MiB")
        vm.write(0, b"\x01" * vm.size)
        return [vm.random_resident(16) for _ in range(4)]

    assert picks(9) == picks(9)
    assert picks(9) != picks(10)


def test_a_machine_without_a_seed_draws_one(make_machine: Make) -> None:
    a, b = make_machine("1MiB"), make_machine("1MiB")
    assert a.seed != b.seed
    with pytest.raises(ValueError, match="seed: expected an integer"):
        make_machine("1MiB", seed=-1)


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert seeds.derive(7, "vm", "a") == seeds.derive(7, "vm", "a")
    values = {seeds.derive(s, "vm", n) for s in (7, 8) for n in ("a", "b")}
    assert len(values) == 4 and all(0 < v < 1 << 63 for v in values)


SCENARIO = """\
[machine]
memory = "8MiB"
swap_dir = "."
[[vm]]
name = "a"
memory = "4MiB"
[vm.workload]
kind = "working-set"
size = "2MiB"
[[vm]]
name = "b"
memory = "4MiB"
[vm.workload]
kind = "working-set"
size = "2MiB"
seed = 99
"""


def launched_seeds(spec: scenario.Scenario, seed: int) -> dict[str, int]:
    machine = scenario.launch(spec, seed)
    try:
        given = {vm.name: vm.runs[0].workload.seed for vm in machine.vms}  # type: ignore[attr-defined]
        recorded = resolved.seeds(spec, machine, seed)
    finally:
        machine.close()
    assert recorded == {"machine": recorded["machine"], **{f"vm/{k}": v for k, v in given.items()}}
    return recorded


def test_a_scenario_seeds_every_workload_from_the_run_seed(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = scenario.loads(SCENARIO)
    first = launched_seeds(spec, 1)
    assert launched_seeds(spec, 1) == first
    other = launched_seeds(spec, 2)
    assert other["vm/a"] != first["vm/a"] and other["machine"] != first["machine"]
    assert first["vm/b"] == other["vm/b"] == 99, "a seed the file gives is kept"
    assert first["vm/a"] != first["vm/b"]


def test_a_scenario_seed_is_checked() -> None:
    with pytest.raises(scenario.ScenarioError, match=r"run\.seed: expected an integer"):
        scenario.loads(SCENARIO.replace("[[vm]]", "[run]\nseed = -3\n[[vm]]", 1))
    with pytest.raises(scenario.ScenarioError, match=r"run\.seed: expected an integer"):
        scenario.loads(SCENARIO.replace("[[vm]]", "[run]\nseed = \"x\"\n[[vm]]", 1))


@pytest.mark.parametrize("args, message", [
    (["run", "--seed", "x"], "argument --seed: must be an integer"),
    (["experiment", "sharing", "--repeat", "0"], "argument --repeat: must be an integer from 1"),
])
def test_bad_seed_or_repeat_is_a_usage_error(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


# -- the experiment runner, on a stand-in experiment (a real one: tests/test_experiments.py)

def fake(stop_at: int | None = None) -> Experiment:
    """An experiment whose figure is a function of its trial's seed."""
    def run(trial: Trial) -> None:
        if trial.seed == stop_at:
            raise KeyboardInterrupt
        trial.progress(0.5, "half")
        trial.results.update({"value": trial.seed % 10, "workload_seed": trial.seed_for("vm", 0)})

    def plot(results: dict[str, Any], path: Path) -> None:
        path.write_bytes(b"png")

    return Experiment("fake", "a stand-in", lambda quick: {"n": 1}, run, plot,
                      lambda r: {"value": float(r["value"]), "none": None})


def test_repeat_runs_seeds_in_a_row_and_reports_median_and_spread(tmp_path: Path) -> None:
    results = runner.run(fake(), True, tmp_path, lambda line: None, seed=21, repeat=3)
    written = json.loads((tmp_path / "results.json").read_text())
    assert runner.trial_results(written) == results     # the record's fields, once, on disk
    assert not set(written) & set(runner.IN_RECORD)
    jsonschema.validate(written, schema.shipped("results"))
    assert [r["seed"] for r in written["repeats"]] == [21, 22, 23]
    assert written["record"]["seeds"] == {"repeat/0": 21, "repeat/1": 22, "repeat/2": 23}
    assert written["record"]["config"] == {"quick": True, "repeat": 3, "params": {"n": 1}}
    assert written["figures"]["value"] == {"median": 2.0, "min": 1.0, "max": 3.0, "stdev": 1.0,
                                           "values": [1.0, 2.0, 3.0]}
    assert "none" not in written["figures"]
    assert written["value"] == 1 and written["workload_seed"] == seeds.derive(21, "vm", 0)
    assert written["record"]["partial"] is False and written["record"]["kind"] == "experiment"


def test_an_interrupted_series_is_written_partial(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        runner.run(fake(stop_at=32), True, tmp_path, lambda line: None, seed=30, repeat=4)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["record"]["partial"] is True
    assert [r["seed"] for r in written["repeats"]] == [30, 31]
