"""uvm's pytest plugin (uvm/pytest_plugin.py): it costs nothing when unused, its fixtures
give a benchmark machines (closed after) and uvm's counters in extra_info, and
`--benchmark-compare-fail` catches a build slowed with --uvm-swap-latency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import import_path

BENCH = '''
import pytest

PAYLOAD = bytes(range(256)) * 16 * 16          # 16 pages, every byte distinct in its page

def test_swap_round_trip(uvm_bench):
    m = uvm_bench.machine("1MiB", swap_size="1MiB")
    vm = m.create_vm("a", "128KiB")

    def write_and_evict():
        vm.write(0, PAYLOAD)
        assert vm.evict() == 16
        return (), {}

    got = uvm_bench(lambda: vm.read(0, len(PAYLOAD)), setup=write_and_evict, rounds=5)
    assert got == PAYLOAD
    vm.evict()                  # the compression ratio of what is in the swap now
    uvm_bench.record()
'''


def pytest_run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a process of its own, with the plugin from this tree."""
    env = {**os.environ, "PYTHONPATH": import_path()}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "uvm.pytest_plugin", "-q",
                           "-p", "no:cacheprovider", "--rootdir", str(folder), str(folder), *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_import_is_cheap_and_inert() -> None:
    """Loaded into every pytest run of anyone with uvm installed: importing it opens no
    userfaultfd, no machine, starts no thread, and imports neither Ray nor pydantic."""
    code = ("import os, sys, threading, uvm.pytest_plugin\n"
            "fds = [os.readlink(f'/proc/self/fd/{f}') for f in os.listdir('/proc/self/fd')\n"
            "       if os.path.exists(f'/proc/self/fd/{f}')]\n"
            "print(sum('userfaultfd' in f or 'uvm-machine' in f for f in fds), threading.active_count(),\n"
            "      [m for m in ('ray', 'pydantic', 'pytest_benchmark') if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": import_path()},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "0 1 []"


def test_counters_go_into_extra_info(tmp_path: Path) -> None:
    (tmp_path / "test_tiny.py").write_text(BENCH)
    out = tmp_path / "out.json"
    r = pytest_run(tmp_path, f"--benchmark-json={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    [bench] = json.loads(out.read_text())["benchmarks"]
    assert bench["stats"]["rounds"] == 5
    uvm = bench["extra_info"]["uvm"]
    assert uvm["swapins"] == 5 * 16 and uvm["swapouts"] == 6 * 16       # 5 rounds, 16 pages
    assert uvm["memory_pages"] == 256 and uvm["vms"] == 1
    assert uvm["state"] == "unmanaged" and uvm["compression_ratio"] > 1
    assert uvm["faults"] >= 5 * 16 and uvm["balloon_pages"] == 0
    info = json.loads(out.read_text())["machine_info"]["uvm"]       # the run record's
    assert info["build"]["version"] and info["host"]["mode"] in ("privileged", "user")


@pytest.mark.slow
def test_compare_fail_catches_a_slowed_build(tmp_path: Path) -> None:
    """Save a run; compare a run of the same build (passes) and a run whose every swap read
    and write sleeps 20 ms (fails, with pytest-benchmark's message); the threshold is the
    same for both, so only the slowdown tells them apart."""
    (tmp_path / "test_tiny.py").write_text(BENCH)
    storage = f"file://{tmp_path / 'benchmarks'}"
    saved = pytest_run(tmp_path, f"--benchmark-storage={storage}", "--benchmark-save=base")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    fail = "--benchmark-compare-fail=median:1000%"
    same = pytest_run(tmp_path, f"--benchmark-storage={storage}", "--benchmark-compare", fail)
    assert same.returncode == 0, same.stdout + same.stderr
    slow = pytest_run(tmp_path, f"--benchmark-storage={storage}", "--benchmark-compare", fail,
                      "--uvm-swap-latency=0.02")
    assert slow.returncode != 0
    assert "Performance has regressed" in slow.stdout + slow.stderr
    assert "test_swap_round_trip" in slow.stdout + slow.stderr


def test_compare_with_a_saved_run_of_the_same_host_warns_nothing(tmp_path: Path) -> None:
    """pytest-benchmark compares the saved run's machine_info with one it builds before any
    test runs: uvm's part must be there then too, or every compare warns that the machine
    differs (and with a storage outside the working directory, crashes)."""
    (tmp_path / "test_tiny.py").write_text(BENCH)
    storage = tmp_path.parent / f"{tmp_path.name}-store"       # outside the working directory
    saved = pytest_run(tmp_path, f"--benchmark-storage={storage}", "--benchmark-save=base")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    same = pytest_run(tmp_path, f"--benchmark-storage={storage}", "--benchmark-compare")
    out = same.stdout + same.stderr
    assert same.returncode == 0 and "INTERNALERROR" not in out, out
    assert "machine_info is different" not in out, out
