"""The `uvm` command line: runs a scenario end to end (as a process and through main), writes
a timeline that keeps to the machine's budget, and turns user mistakes into one line on
stderr and exit status 2."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers import uvm_cmd
from uvm import live, scenario
from uvm.cli import main
from uvm.periods import next_tick
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
    # at most one sample per tick 0, 0.5, ... 2.0, never early (a late tick is skipped)
    ticks = [math.floor(s["t_s"] / 0.5 + 1e-9) for s in samples]
    assert ticks == sorted(set(ticks)) and len(samples) <= 5
    stdout = capsys.readouterr().out
    assert "small: summary after 2.0 s" in stdout and "sleepy" in stdout


def _run_and_signal(path: Path, out: Path, sig: int, when: Callable[[], bool],
                    *args: str) -> tuple[int, str, str]:
    """Starts `uvm run` on scenario `path` writing timeline `out`, sends `sig` once
    `when()` is true, and returns its exit status, stdout and stderr."""
    proc = subprocess.Popen(uvm_cmd("run", str(path), "--json", str(out), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not when() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before the signal could be sent"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, stdout, stderr


def _samples(out: Path) -> int:
    return len(out.read_text().splitlines()) if out.exists() else 0


def _check_stopped_cleanly(sig: int, rc: int, stdout: str, stderr: str, swap: Path) -> None:
    """Exit 128+signal, the summary printed, no traceback, the named swap file removed."""
    assert rc == 128 + sig, (rc, stderr)
    assert "Traceback" not in stderr, stderr
    assert "summary after" in stdout and "busy" in stdout, (stdout, stderr)
    assert not swap.exists(), "the machine was not closed: its swap file is left"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_run_prints_summary_and_closes(small: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out.jsonl"
    path = _variant(small, 'swap_dir = "."', 'swap_file = "swap"', "named_swap.toml")
    rc, stdout, stderr = _run_and_signal(path, out, sig, lambda: _samples(out) >= 5, "--every", "0.2")
    _check_stopped_cleanly(sig, rc, stdout, stderr, tmp_path / "swap")
    assert "(interrupted)" in stdout
    assert read_timeline(out)[-1]["t_s"] < 10         # flushed, and cut short
    end = json.loads(out.read_text().splitlines()[-1])
    assert end["type"] == "end" and end["partial"] is True, "an interrupted run is partial"


@pytest.mark.parametrize("moment", ["setup", "last sample"])
def test_a_signal_during_setup_or_close_still_prints_summary(small: Path, tmp_path: Path,
                                                             moment: str) -> None:
    """The Ctrl-C that used to land outside the part that prints the summary: while the
    machine is being made, and after the last sample, while it is being closed."""
    out = tmp_path / "out.jsonl"
    swap = tmp_path / "swap"
    path = _variant(small, 'swap_dir = "."', 'swap_file = "swap"', "named_swap.toml")

    def last_sample() -> bool:
        text = out.read_text() if out.exists() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # whole lines: one may be half written
        if not lines:
            return False
        line = json.loads(lines[-1])
        return line["type"] == "end" or line.get("t_s", 0.0) >= 1.0

    when = swap.exists if moment == "setup" else last_sample
    rc, stdout, stderr = _run_and_signal(path, out, signal.SIGINT, when, "--duration", "1",
                                         "--every", "0.1")
    _check_stopped_cleanly(signal.SIGINT, rc, stdout, stderr, swap)


@pytest.mark.slow
def test_signals_at_random_moments_always_clean_up(small: Path, tmp_path: Path) -> None:
    """Repeatedly: a signal some time after the machine exists (setup, first samples,
    mid-run); every run prints its summary and leaves no file."""
    rng = random.Random(8)
    path = _variant(small, 'swap_dir = "."', 'swap_file = "swap"', "named_swap.toml")
    swap = tmp_path / "swap"
    for i in range(int(os.environ.get("UVM_SIGNAL_RUNS", "6"))):
        out = tmp_path / f"out{i}.jsonl"
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
        delay = rng.uniform(0.0, 1.5)
        seen: list[float] = []

        def after_delay() -> bool:
            if not swap.exists():
                return False
            seen.append(time.monotonic())
            return time.monotonic() - seen[0] >= delay

        rc, stdout, stderr = _run_and_signal(path, out, sig, after_delay, "--duration", "4",
                                             "--every", "0.1")
        _check_stopped_cleanly(sig, rc, stdout, stderr, swap)


@pytest.mark.parametrize(("args", "message"), [
    (["run", "{bad}"], "{bad}: vm[0].workload.pattern: must be one of ['random', 'sequential', "
                       "'zipf'], got 'zig'"),
    (["run", "{tmp}/missing.toml"], "{tmp}/missing.toml: cannot read the scenario"),
    (["run", "{small}", "--json", "{tmp}/no/such/dir/t.jsonl"], "--json: cannot write"),
    (["run", "{too_big}"], "{too_big}: vm[0].workload.size: the working set"),
    (["run", "{small}", "--json", "/dev/full"], "timeline: cannot write '/dev/full': No space left"),
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


def test_ticks_skip_what_fell_behind_and_end_at_duration() -> None:
    assert next_tick(0.0, 1.0, 2.5) == 1.0
    assert next_tick(1.2, 1.0, 2.5) == 2.0
    assert next_tick(2.1, 1.0, 2.5) == 2.5           # the last sample is at the duration
    assert next_tick(0.0, 1.0, 0.5) == 0.5
    assert next_tick(7.3, 0.01, 1000.0) == pytest.approx(7.31)   # 730 late ticks skipped
    assert next_tick(50.0, 0.01, 3.0) == 3.0


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


def test_a_second_signal_ends_a_setup_that_hangs(small: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The first signal waits for a safe place; a second one during a setup that never ends
    forces the exit (status 128+signal of the first) instead of leaving kill -9 as the way out."""
    def hung_launch(spec: scenario.Scenario, seed: int | None = None) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        raise AssertionError("the second signal did not end the setup")

    monkeypatch.setattr(scenario, "launch", hung_launch)
    start = time.monotonic()
    assert main(["run", str(small)]) == 128 + signal.SIGTERM
    assert time.monotonic() - start < 20
    assert capsys.readouterr().err == "uvm: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # handlers restored
