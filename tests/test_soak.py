"""The randomized soak (issue 8; the driver and its model are in soak.py): several
overcommitted VMs with sharing, the memory policy, a guest OS with its balloon driver,
swap faults injected, VMs created, destroyed and stopped mid-run; every byte checked
against the model, the budget and the core's bookkeeping checked, and every operation
timed by a watchdog (a few seconds), so a hang fails with the operation and the stacks.

Each seed runs in a child process: a hung pager call cannot be interrupted, so the child's
watchdog ends it and the parent reports what it printed (seed, last operations, stacks).

Default (CI): a few fixed seeds, a fixed number of operations each (the sequence is a
function of the seed), about 20-45 s in all; plain `pytest` runs the first seed only (the
others are marked slow; `pytest --slow`, as CI runs, runs them all). UVM_STRESS=1: UVM_SOAK_RUNS seeds (default
3, random, in the test ids) for UVM_SOAK_SECONDS each (default 120). UVM_SOAK_SEED=N runs
that seed only (with UVM_SOAK_STEPS or UVM_SOAK_SECONDS to say how long).
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import uvm
from workloads import Fill, Verify
from helpers import import_path

STRESS = os.environ.get("UVM_STRESS") == "1"
SOAK = Path(__file__).with_name("soak.py")
ROOT = SOAK.parent.parent
CI_SEEDS = [1, 2, 3]
CI_STEPS = 1500
CHILD_SLACK = 240           # seconds beyond the planned run before the parent kills the child


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


def plan() -> tuple[list[int], list[str]]:
    """The seeds to run, and the child's duration arguments."""
    seconds = os.environ.get("UVM_SOAK_SECONDS")
    steps = os.environ.get("UVM_SOAK_STEPS")
    if "UVM_SOAK_SEED" in os.environ:
        seeds = [int(os.environ["UVM_SOAK_SEED"])]
    elif STRESS:
        seeds = [int.from_bytes(os.urandom(4), "little") for _ in range(_int_env("UVM_SOAK_RUNS", 3))]
    else:
        seeds = CI_SEEDS
    if steps is not None:
        return seeds, ["--steps", steps]
    if seconds is not None or STRESS:
        return seeds, ["--seconds", seconds or "120"]
    return seeds, ["--steps", str(CI_STEPS)]


SEEDS, DURATION = plan()


def _child_timeout() -> float:
    kind, value = DURATION
    return CHILD_SLACK + (float(value) if kind == "--seconds" else float(value) / 50)


@pytest.mark.stress
@pytest.mark.parametrize("seed", [pytest.param(s, marks=[pytest.mark.slow] if i else [])
                                  for i, s in enumerate(SEEDS)], ids=[f"seed={s}" for s in SEEDS])
def test_soak(seed: int, tmp_path: Path) -> None:
    faulthandler.cancel_dump_traceback_later()  # bounded below, by the child's own timeout
    log = tmp_path / "soak.log"
    env = dict(os.environ, PYTHONPATH=import_path())
    cmd = [sys.executable, str(SOAK), "--seed", str(seed), "--log", str(log), *DURATION]
    gates = os.environ.get("UVM_SOAK_ENABLE")
    replay = f"replay: {f'UVM_SOAK_ENABLE={gates} ' if gates else ''}PYTHONPATH=$PWD python tests/soak.py --seed {seed} {' '.join(DURATION)} --trace"
    try:
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=_child_timeout())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"soak seed {seed}: the child outlived its watchdog ({_child_timeout():.0f} s); "
                    f"{replay}\n{_last_ops(log)}\n{_text(e.stderr)[-20000:]}")
    report = f"{_last_ops(log)}\n" + "\n".join(done.stderr.splitlines()[-300:])
    assert done.returncode == 0, f"soak seed {seed} failed (exit {done.returncode}); {replay}\n{report}"
    assert "no defect found" in done.stdout, done.stdout + report
    print(done.stdout.strip())



def _last_ops(log: Path, n: int = 40) -> str:
    """The operations the child started last (its log survives any way it ends)."""
    lines = log.read_text().splitlines()[-n:] if log.exists() else []
    return "operations started last:\n" + "\n".join(lines)


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


# -- defects the soak found, each pinned by a test of its own -----------------------------

def test_the_policy_survives_swap_write_errors_while_it_pages(make_machine) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak (seed 3): the memory scheduler's own paging hit an injected swap
    write error, the OSError killed the policy thread (no more sampling, targets or
    reclamation for the machine's life) and machine.close() raised it."""
    m = make_machine("1MiB", reclaim=False, policy=uvm.MemoryPolicy(tick=0.02))
    vm = m.create_vm("a", memory="2MiB")
    m.inject_fault("swap-write", 1_000_000)
    vm.run(Fill(seed=1, size=250 * uvm.PAGE_SIZE)).join(30)    # fits: no fault needs a frame
    _wait_for(lambda: m.stats()["swap_errors"] > 0, "the scheduler to page into the failing swap")
    time.sleep(0.2)                                 # several more ticks against the errors
    assert m.scheduler is not None and m.scheduler.error is None
    assert m.stats()["state"] != "unmanaged" and vm.stopped is None
    m.inject_fault("swap-write", 0)
    _wait_for(lambda: m.stats()["swap_pages"] > 0, "the scheduler to page again once swap works")
    vm.run(Verify(seed=1, size=250 * uvm.PAGE_SIZE)).join(30)
    m.close()                                       # raises the policy thread's error, if any


def _wait_for(cond: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, f"waited {seconds} s for {what}"
        time.sleep(0.01)
