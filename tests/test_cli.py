"""The `uvm` command line: runs a scenario end to end (as a process and through main), writes
a timeline that keeps to the machine's budget, and turns user mistakes into one line on
stderr and exit status 2."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from uvm import live, scenario
from uvm.cli import main
from uvm.policy import STATES

SMALL = """\
[machine]
memory = "8MiB"
swap_dir = "."

[run]
duration = 30

[[vm]]
name = "busy"
memory = "12MiB"
[vm.workload]
kind = "working-set"
size = "10MiB"
pattern = "random"

[[vm]]
name = "sleepy"
memory = "8MiB"
[vm.workload]
kind = "idle"
touch = "4MiB"
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def uvm_cmd(*args: str) -> list[str]:
    """The `uvm` script that installing the package put beside this interpreter."""
    script = shutil.which("uvm", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                       os.environ.get("PATH", "")]))
    assert script is not None, "no `uvm` script: install the package (pip install -e .)"
    return [script, *args]


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The sample lines of a timeline, after checking its first line is the run record and
    its last the end line (tests/test_record.py checks them against the schema)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "end"
    samples = lines[1:-1]
    assert all(s["type"] == "sample" for s in samples) and lines[-1]["samples"] == len(samples)
    return samples


def check_timeline(samples: list[dict[str, Any]], duration: float) -> None:
    """Per-VM stats in every sample, the budget kept, time moving forward to the end."""
    assert len(samples) >= 2
    for s in samples:
        m = s["machine"]
        assert m["frames_used_pages"] <= m["frames_total_pages"] == 8 << 20 >> 12
        assert [v["name"] for v in s["vms"]] == ["busy", "sleepy"]
        for v in s["vms"]:
            assert {"resident_pages", "swapped_pages", "zero_pages", "ops", "ops_per_s", "status",
                    "workload", "faults_missing", "swapins", "swapouts"} <= set(v)
            assert v["resident_pages"] + v["swapped_pages"] + v["zero_pages"] <= v["size_pages"]
    elapsed = [s["t_s"] for s in samples]
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(duration, abs=0.5)
    last = samples[-1]
    assert last["vms"][0]["ops"] > 0 and last["machine"]["swapouts"] > 0, "no paging happened"


def test_help() -> None:
    for args in (["--help"], ["run", "--help"]):
        r = subprocess.run(uvm_cmd(*args), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0
        assert "run" in r.stdout
    assert all(opt in r.stdout for opt in ("--duration", "--json", "--every", "FILE.toml"))


def test_run_as_a_process_writes_timeline(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    r = subprocess.run(uvm_cmd("run", str(small), "--duration", "2", "--json", str(out)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    check_timeline(read_timeline(out), 2.0)
    # not a terminal: plain periodic lines, then the summary table
    assert "[   1.0 s] machine 8.0 MiB: frames" in r.stdout
    assert "busy: resident" in r.stdout and "summary after 2.0 s" in r.stdout


def test_run_through_main(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", str(small), "--duration", "2", "--every", "0.5", "--json", str(out)]) == 0
    samples = read_timeline(out)
    check_timeline(samples, 2.0)
    assert len(samples) == 5
    stdout = capsys.readouterr().out
    assert "small: summary after 2.0 s" in stdout and "sleepy" in stdout


def test_ctrl_c_prints_summary_and_closes(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    path = _variant(small, 'swap_dir = "."', 'swap_file = "swap"', "named_swap.toml")
    proc = subprocess.Popen(uvm_cmd("run", str(path), "--json", str(out), "--every", "0.2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while (not out.exists() or len(out.read_text().splitlines()) < 5) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "swap").exists()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "(interrupted)" in stdout and "busy" in stdout
    assert read_timeline(out)[-1]["t_s"] < 10
    end = json.loads(out.read_text().splitlines()[-1])
    assert end["type"] == "end" and end["partial"] is True, "an interrupted run is partial"
    assert not (tmp_path / "swap").exists(), "the machine was not closed: its swap file is left"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "{bad}"], "{bad}: vm[0].workload.pattern: must be one of ['random', 'sequential', "
                       "'zipf'], got 'zig'"),
    (["run", "{tmp}/missing.toml"], "{tmp}/missing.toml: cannot read the scenario"),
    (["run", "{small}", "--json", "{tmp}/no/such/dir/t.jsonl"], "--json: cannot write"),
    (["run", "{too_big}"], "{too_big}: vm[0].workload.size: the working set"),
])
def test_user_mistakes_exit_2_without_traceback(small: Path, tmp_path: Path, args: list[str],
                                                message: str) -> None:
    names = {"small": small, "tmp": tmp_path,
             "bad": _variant(small, 'pattern = "random"', 'pattern = "zig"', "bad.toml"),
             "too_big": _variant(small, 'size = "10MiB"', 'size = "20MiB"', "big.toml")}
    r = subprocess.run(uvm_cmd(*(a.format(**names) for a in args)), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"uvm: error: {message.format(**names)}"), r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["run", "--duration", "-1"], ["run", "--every", "x"], [],
                                  ["fly"]])
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "uvm" in capsys.readouterr().err


def _variant(path: Path, old: str, new: str, name: str) -> Path:
    assert old in SMALL
    out = path.with_name(name)
    out.write_text(SMALL.replace(old, new))
    return out


# -- the view ------------------------------------------------------------------------------

def test_stopped_vm_is_shown_not_a_crash(small: Path) -> None:
    machine = scenario.launch(scenario.load(small))
    try:
        sleepy = machine.vm("sleepy").runs[0]
        deadline = time.monotonic() + 20
        while sleepy.ops < 1024 and time.monotonic() < deadline:
            time.sleep(0.01)                            # let it finish touching its 4 MiB
        assert sleepy.ops == 1024
        machine.inject_fault("swap-write", 1 << 30)     # every swap-out fails: VMs get stopped
        out = io.StringIO()
        console = Console(file=out, width=200)
        result = live.run(machine, "t", duration=1.0, every=0.2, console=console)
    finally:
        machine.close()
    assert not result.interrupted and result.last.elapsed == pytest.approx(1.0, abs=0.3)
    assert result.last.status == {"busy": "stopped: I/O error on the swap file",
                                  "sleepy": "running"}      # it fits: the others live on
    console.print(live.summary(result, "t"))
    text = out.getvalue()
    assert "busy: resident" in text and "stopped: I/O error on the swap file" in text


def test_live_view_on_a_terminal(small: Path) -> None:
    machine = scenario.launch(scenario.load(small))
    try:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=160)
        live.run(machine, "small", duration=0.5, every=0.25, console=console)
    finally:
        machine.close()
    text = out.getvalue()
    for heading in ("resident MiB", "swapped MiB", "zero MiB", "faults", "swap-ins", "swap-outs",
                    "ops/s", "status", "frames", "compression", "0.5 / 0.5 s"):
        assert heading in text
    assert "busy: resident" not in text, "a terminal gets the live table, not plain lines"


def test_ticks_end_at_duration() -> None:
    assert live.ticks(2.0, 1.0) == [0.0, 1.0, 2.0]
    assert live.ticks(2.5, 1.0) == [0.0, 1.0, 2.0, 2.5]
    assert live.ticks(0.5, 1.0) == [0.0, 0.5]


# -- with the memory policy ------------------------------------------------------------------

POLICY = """\
[policy]
sample_period = 0.5
target_period = 0.5
tick = 0.1
"""


@pytest.fixture
def managed(tmp_path: Path) -> Path:
    path = tmp_path / "managed.toml"
    path.write_text(POLICY + SMALL.replace('name = "busy"\n', 'name = "busy"\nshares = 2000\n'))
    return path


def test_policy_scenario_runs_end_to_end(managed: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", str(managed), "--duration", "2", "--every", "0.5", "--json", str(out)]) == 0
    samples = read_timeline(out)
    check_timeline(samples, 2.0)
    for s in samples:
        assert s["machine"]["state"] in STATES and s["machine"]["tax_rate"] == 0.75
        for v in s["vms"]:
            st = v["policy"]
            assert {"target_pages", "allocated_pages", "active", "reclaim", "host_paged"} <= set(st)
            assert 0 <= st["target_pages"] <= v["size_pages"] and 0.0 <= st["active"] <= 1.0
            assert st["reclaim"] in ("none", "balloon", "paging", "both", "swap-full")
            assert v["blocked"] in (False, True)
        assert [v["shares"] for v in s["vms"]] == [2000, 1000]
    text = capsys.readouterr().out
    assert "uvm: memory policy: idle tax 0.75, random victims, 100 pages sampled every 0.5 s" in text
    assert "busy: resident" in text and ", target " in text and ", f " in text   # plain lines
    assert "machine 8.0 MiB, state " in text and "% free: frames" in text
    assert "memory policy: reclamation state " in text and "samples per state: high" in text


@pytest.mark.parametrize("which", ["managed", "default"])
def test_live_view_with_policy_fits_100_columns(managed: Path, which: str) -> None:
    spec = scenario.load(managed) if which == "managed" else scenario.default()
    machine = scenario.launch(spec)
    try:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=100)
        live.run(machine, which, duration=1.0, every=0.5, console=console)
    finally:
        machine.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())     # no terminal codes
    kinds = {v.workload.kind for v in spec.vms if v.workload is not None}
    for heading in ("state ", "% free", "sizes in MiB", "alloc", "target", "shared", "swapped",
                    "balloon", " f ", "reclaim", "ops/s", "status", "running", *kinds):
        assert heading in text, heading
    assert "…" not in text, "a cell or heading was cut to fit 100 columns"
