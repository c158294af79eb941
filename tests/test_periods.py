"""Durations and sample periods (uvm/periods.py): NaN, inf, absurd and too fine values are
refused with the argument's name, and sampling loops that fall behind skip ticks and end at
their duration instead of making every tick up."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

import uvm
from uvm import live
from uvm.cli import main
from uvm.periods import MAX_SECONDS, MIN_PERIOD, check_period, check_seconds
from workloads import Idle

BAD_SECONDS = [math.nan, math.inf, -math.inf, 1e300, 2**64, -1, 0, "1", True, None]


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_bad_seconds_name_the_argument(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^wait: "):
        check_seconds(value, "wait")


def test_seconds_and_periods_in_range() -> None:
    assert check_seconds(0, "x", zero=True) == 0.0
    assert check_seconds(MAX_SECONDS, "x") == MAX_SECONDS
    assert check_period(MIN_PERIOD, "every") == MIN_PERIOD
    with pytest.raises(ValueError, match=r"^every: the sample period must be at least 0.01 s"):
        check_period(1e-300, "every")


@pytest.fixture
def machine() -> Iterator[uvm.Machine]:
    m = uvm.Machine(memory="1MiB")
    yield m
    m.close()


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"seconds": 1, "every": math.nan}, "every"), ({"seconds": math.nan}, "seconds"),
    ({"seconds": math.inf}, "seconds"), ({"seconds": 1, "every": 1e-300}, "every"),
    ({"seconds": 1, "every": 0}, "every"), ({"seconds": 1e300}, "seconds"),
])
def test_watch_refuses_bad_spans(machine: uvm.Machine, kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: "):
        next(iter(machine.watch(**kwargs)))


def test_watch_skips_ticks_a_slow_reader_missed(machine: uvm.Machine) -> None:
    """A reader slower than the period gets fewer snapshots, not a backlog: watch ends at
    its duration (it used to yield all 51 and take 51 x 0.06 s)."""
    start = time.monotonic()
    elapsed = []
    for _ in machine.watch(0.5, every=0.01):
        elapsed.append(time.monotonic() - start)
        time.sleep(0.06)
    assert 2 <= len(elapsed) <= 0.5 / 0.06 + 2
    assert elapsed == sorted(elapsed) and elapsed[-1] <= 0.5 + 0.06 + 0.5


def test_live_run_skips_ticks_and_ends_at_its_duration(machine: uvm.Machine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With samples slower than the period, `uvm run` still ends at its duration (it used to
    take every tick late: --every 0.001 --duration 3 ran 13 s)."""
    slow = 0.05
    real = live.take_sample

    def slow_sample(*args: Any) -> live.Sample:
        time.sleep(slow)
        return real(*args)

    monkeypatch.setattr(live, "take_sample", slow_sample)
    machine.create_vm("idle", "1MiB").run(Idle(touch="64KiB"))      # keeps the run going
    timeline = io.StringIO()
    console = Console(file=io.StringIO(), width=160)
    result = live.run(machine, "t", 1.0, 0.01, console, timeline)
    samples = timeline.getvalue().splitlines()
    assert not result.interrupted
    assert 2 <= len(samples) <= 1.0 / slow + 2
    assert 1.0 <= result.last.elapsed <= 1.0 + slow + 0.5


@pytest.mark.parametrize("args", [["--every", "1e-300"], ["--every", "0.001"], ["--every", "nan"],
                                  ["--duration", "inf"], ["--duration", "1e300"],
                                  ["--duration", "nan"]])
def test_cli_refuses_bad_spans(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[0]}: " in err and "Traceback" not in err
    if args == ["--every", "0.001"]:
        assert "at least 0.01 s" in err
