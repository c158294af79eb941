"""`uvm sweep`: grid files checked field by field, a 3x3 grid x 2 seeds on the local process
pool and on a real local Ray cluster (`ray start --head`, bound to 127.0.0.1) with the same
rows, --resume, and the memory resource keeping a node to the machines that fit."""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from uvm.cli import main
from uvm.sweep import sweep
from uvm.sweep.table import CSV, JSONL, PLOT
from helpers import import_path

MIB = 1 << 20

SCENARIO = """
[machine]
memory = "16MiB"
swap_size = "32MiB"

[[vm]]
name = "a"
memory = "16MiB"
[vm.workload]
kind = "working-set"
size = "8MiB"
pattern = "random"

[[vm]]
name = "b"
memory = "16MiB"
[vm.workload]
kind = "working-set"
size = "8MiB"
pattern = "zipf"
"""

GRID = """
scenario = "tiny.toml"
duration = 0.3
seeds = [1, 2]
metrics = ["machine.frames_total_pages", "vm.b.size_pages", "machine.swap_capacity_bytes",
           "vm.a.faults_missing"]
[grid]
machine.memory = ["12MiB", "16MiB", "20MiB"]
vm.b.workload.size = ["4MiB", "8MiB", "12MiB"]
"""
MEMORIES = {"12MiB": 12, "16MiB": 16, "20MiB": 20}
SIZES = ["4MiB", "8MiB", "12MiB"]
# what a row must say whatever the timing: its point, seed, status, derived seeds and the
# metrics that follow from the configuration alone
DETERMINISTIC = ("machine.frames_total_pages", "vm.b.size_pages", "machine.swap_capacity_bytes")


def write_grid(folder: Path, grid: str = GRID) -> Path:
    (folder / "tiny.toml").write_text(SCENARIO)
    (folder / "bad.toml").write_text("[machine\n")
    path = folder / "grid.toml"
    path.write_text(grid)
    return path


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / JSONL).read_text().splitlines()]


def deterministic(table: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["trial"], json.dumps(r["params"], sort_keys=True), r["seed"], r["repeat"],
                   r["status"], json.dumps(r["record"]["seeds"], sort_keys=True),
                   *(r["metrics"][m] for m in DETERMINISTIC)) for r in table)


def check_grid_rows(table: list[dict[str, Any]]) -> None:
    """18 rows, one per point x seed, each with the figures its configuration implies."""
    assert len(table) == 18
    seen = {(r["params"]["machine.memory"], r["params"]["vm.b.workload.size"], r["seed"])
            for r in table}
    assert seen == {(m, s, seed) for m in MEMORIES for s in SIZES for seed in (1, 2)}
    for r in table:
        assert r["status"] == "ok", r
        mib = MEMORIES[r["params"]["machine.memory"]]
        assert r["metrics"]["machine.frames_total_pages"] == mib * MIB // 4096
        assert r["metrics"]["machine.swap_capacity_bytes"] == 32 * MIB
        assert r["metrics"]["vm.b.size_pages"] == 16 * MIB // 4096
        rec = r["record"]                   # the run record: enough to run the trial again
        assert rec["kind"] == "run" and rec["seed"] == r["seed"]
        assert rec["config"]["machine"]["memory"] == mib * MIB
        assert rec["config"]["run"]["seed"] == r["seed"] and rec["partial"] is False
        assert isinstance(r["metrics"]["vm.a.faults_missing"], int)   # read, whatever the timing
    assert len({(r["host"], r["pid"]) for r in table}) == 18    # a process per trial


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    sweep(write_grid(folder), out, jobs=2, log=lambda line: None)
    return out


@pytest.mark.slow
def test_local_sweep_3x3_grid_2_seeds(local_sweep: Path) -> None:
    table = rows(local_sweep)
    check_grid_rows(table)
    with open(local_sweep / CSV, newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 18
    assert {(ln["machine.memory"], ln["vm.b.workload.size"], ln["seed"]) for ln in lines} == \
        {(r["params"]["machine.memory"], r["params"]["vm.b.workload.size"], str(r["seed"]))
         for r in table}
    assert (local_sweep / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trial_seed_seeds_the_scenario(local_sweep: Path) -> None:
    """Each trial runs the scenario with its seed (as `uvm run --seed`): its workloads' seeds
    derive from it, the same for the same seed and different across seeds."""
    table = rows(local_sweep)
    by_seed: dict[int, set[str]] = {}
    for r in table:
        seeds = r["record"]["seeds"]
        by_seed.setdefault(r["seed"], set()).add(json.dumps(seeds, sort_keys=True))
        assert seeds["vm/a"] != seeds["vm/b"]
    assert all(len(v) == 1 for v in by_seed.values())       # same seed, same derived seeds
    assert by_seed[1] != by_seed[2]


def test_resume_runs_only_what_is_missing(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, GRID.replace('["12MiB", "16MiB", "20MiB"]', '["16MiB"]')
                      .replace('["4MiB", "8MiB", "12MiB"]', '["4MiB", "8MiB"]')
                      .replace("seeds = [1, 2]", "seeds = [3]"))
    out = tmp_path / "out"
    sweep(grid, out, jobs=2, log=lambda line: None)
    first = rows(out)
    assert len(first) == 2
    # interrupted: the second trial's row never made it, and a line was cut short
    kept = first[0]
    (out / JSONL).write_text(json.dumps(kept) + "\n" + json.dumps(first[1])[:40])
    with pytest.raises(ValueError, match="--out: .* already holds a sweep's results"):
        sweep(grid, out, log=lambda line: None)
    lines: list[str] = []
    sweep(grid, out, resume=True, log=lines.append)
    assert "2 trials (2 points x 1 seeds x 1 repeats), 1 already done" in lines[0]
    again = rows(out)
    assert len(again) == 2 and again[0] == kept                 # not run again
    assert {r["trial"] for r in again} == {r["trial"] for r in first}
    with open(out / CSV, newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.parametrize("grid, message", [
    ("metrics = []", "metrics: List should have at least 1 item"),
    ('metrics = ["x"]\nseeds = [-1]', "seeds.0: Input should be greater than or equal to 0"),
    ('metrics = ["x"]\nrepeats = 0', "repeats: Input should be greater than 0"),
    ('metrics = ["x"]\ncolour = 1', "colour: Extra inputs are not permitted"),
    ('metrics = ["x"]\n[grid]\npolicy.tax_rate = []', "grid: policy.tax_rate: an empty list of values"),
    ('metrics = ["x"]\nexperiment = "idle-tax"\n[grid]\nmachine.memory = ["1MiB"]',
     "an experiment takes no parameters"),
    ('metrics = ["x"]\nplot = { x = "machine.memory" }', "plot.x: 'machine.memory' is not one of []"),
    ('metrics = ["x"]\nscenario = "tiny.toml"\n[grid]\npolicy.tax_rate = [1.5]',
     "grid policy.tax_rate = 1.5: .*tax_rate"),
    ('metrics = ["x"]\nscenario = "tiny.toml"\n[grid]\nvm.zzz.memory = ["1MiB"]',
     "grid.vm.zzz.memory: vm has no entry 'zzz'"),
    ('metrics = ["x"]\nscenario = "nowhere.toml"', "scenario: cannot read"),
    ('metrics = ["x"]\nscenario = "bad.toml"', "scenario: .*bad.toml: invalid TOML"),
    ('metrics = ["x"]\nexperiment = "nope"', "experiment: must be one of"),
    ("metrics = [", "invalid TOML"),
    # a metric that names nothing a trial records: refused before any trial runs, not an
    # empty column in every row
    ('metrics = ["vm.zipf.ops_per_s"]', "metrics: 'vm.zipf.ops_per_s': the scenario has no VM 'zipf'"),
    ('metrics = ["machine.swapin"]\nscenario = "tiny.toml"', "metrics: 'machine.swapin': no field 'swapin'"),
    ('metrics = ["vm.a.resident"]\nscenario = "tiny.toml"', "metrics: 'vm.a.resident': no field 'resident'"),
    ('metrics = ["vm.a.policy.target"]\nscenario = "tiny.toml"', "no field 'target' in a sample"),
    ('metrics = ["vm.a"]\nscenario = "tiny.toml"', "metrics: 'vm.a': expected t_s, machine.FIELD"),
    ('metrics = ["swapins"]\nscenario = "tiny.toml"', "metrics: 'swapins': expected t_s, machine.FIELD"),
])
def test_bad_grid_names_the_field(tmp_path: Path, grid: str, message: str) -> None:
    path = write_grid(tmp_path, grid)
    with pytest.raises(ValueError, match=message.replace("[]", r"\[\]").replace("(", r"\(")):
        sweep(path, tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()          # checked before anything ran


def test_cli_bad_grid_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_grid(tmp_path, 'metrics = ["x"]\nrepeats = "many"')
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uvm: error: ") and "repeats: Input should be a valid integer" in err
    assert "Traceback" not in err
    assert main(["sweep", str(path), "--jobs", "0"]) == 2
    assert "--jobs: must be at least 1" in capsys.readouterr().err


# -- on Ray ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], int]]:
    """A Ray head on this host, bound to 127.0.0.1 only, with 3 CPUs but a memory resource
    of two and a half of the largest trial (so it may run two at a time), token
    authentication with a token of its own, and the tree under test on its workers' path.
    Yields (address, environment for clients, its process group); stopped through its own
    process (never `ray stop`, which stops every Ray on the host)."""
    ray = shutil.which("ray", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                    os.environ.get("PATH", "")]))
    if ray is None:
        pytest.fail("the `ray` command is missing: pip install 'uvm[ray]' (the test extra has it)")
    tmp = tmp_path_factory.mktemp("ray")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": import_path(),
           # single-host mode: Ray takes 127.0.0.1 as the node's address and binds every
           # server there (without it, Ray replaces 127.0.0.1 by the host's address)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    with open(tmp / "head.log", "w") as log:
        head = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", f"--temp-dir={tmp}", "--num-cpus=3",
             f"--memory={int(2.5 * (20 + 32 + 32) * MIB)}",     # the largest trial's footprint
             f"--object-store-memory={80 * MIB}",
             "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (tmp / "head.log").read_text():
            assert head.poll() is None, (tmp / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start in 90 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env, head.pid
    finally:
        # Ctrl-C is how `ray start --block` is meant to be stopped: it stops its whole
        # cluster (about 2 s here); whatever of its process group is left then is killed
        head.send_signal(signal.SIGINT)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            pass
        if session_pids(head.pid):
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)


def listening_beyond_localhost(pids: set[int]) -> list[str]:
    """Listening TCP/UDP sockets of `pids` bound to anything but loopback."""
    r = subprocess.run(["ss", "-H", "-ltunp"], capture_output=True, text=True, timeout=10)
    bad = []
    for line in r.stdout.splitlines():
        local = line.split()[4]
        if any(f"pid={p}," in line for p in pids) and not (
                local.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:"))):
            bad.append(line)
    return bad


def session_pids(pgid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    out.add(int(d))
            except ProcessLookupError:
                continue
    return out


@pytest.mark.slow
def test_ray_sweep_gives_the_same_rows(ray_head: tuple[str, dict[str, str], int],
                                       local_sweep: Path, tmp_path: Path) -> None:
    address, env, pgid = ray_head
    grid = write_grid(tmp_path)
    out = tmp_path / "ray-out"
    log = tmp_path / "sweep.log"
    with open(log, "w") as f:
        client = subprocess.Popen(
            [sys.executable, "-c", "import sys; from uvm.cli import main; sys.exit(main(sys.argv[1:]))",
             "sweep", str(grid), "--out", str(out), "--ray", address],
            env=env, stdout=f, stderr=subprocess.STDOUT)
    exposed: list[str] = []
    deadline = time.monotonic() + 300
    while client.poll() is None and time.monotonic() < deadline:
        # while trials run (workers come and go): nothing of the cluster's, nor of the
        # client's, listens beyond localhost
        exposed += listening_beyond_localhost(session_pids(pgid) | {client.pid})
        time.sleep(0.5)
    if client.poll() is None:
        client.kill()
        client.wait()
        pytest.fail(f"the Ray sweep did not end in 300 s: {log.read_text()}")
    assert client.returncode == 0, log.read_text()
    assert exposed == []
    assert f"Ray cluster at {address}: 1 node(s)" in log.read_text()
    table = rows(out)
    check_grid_rows(table)
    assert deterministic(table) == deterministic(rows(local_sweep))
    # the node has 3 CPUs but memory for 2.5 trials: never 3 machines at once
    spans = [(datetime.fromisoformat(r["started"]), r["wall_s"]) for r in table]
    edges = sorted([(t, 1) for t, _ in spans] + [(t + timedelta(seconds=w), -1) for t, w in spans])
    running = [0]
    for _, step in edges:
        running.append(running[-1] + step)
    assert max(running) <= 2, "more trials ran at once than the node's memory resource holds"


def test_ray_listens_on_localhost_only(ray_head: tuple[str, dict[str, str], int]) -> None:
    pids = session_pids(ray_head[2])
    assert len(pids) >= 3                   # ray start, the GCS, the raylet at least
    assert listening_beyond_localhost(pids) == []


def test_ray_unreachable_is_one_line(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, GRID.replace("seeds = [1, 2]", "seeds = [1]"))
    env = {**os.environ, "PYTHONPATH": import_path(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = subprocess.run([sys.executable, "-c", "import sys; from uvm.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", "sweep", str(grid), "--out",
                        str(tmp_path / "o"), "--ray", f"127.0.0.1:{free_port()}"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "uvm: error: --ray: cannot connect to a Ray cluster at" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_an_experiment_sweeps_over_seeds(tmp_path: Path) -> None:
    """An experiment trial runs through the experiment runner's trial (results filled as it
    measures, its key figures under "figures"): each row has the experiment's figures and a
    record of kind "experiment" with the row's seed."""
    grid = tmp_path / "grid.toml"
    grid.write_text('experiment = "sharing"\nquick = true\nseeds = [1, 2]\n'
                    'metrics = ["figures.shared_pct", "figures.saved_pct"]\n')
    out = tmp_path / "out"
    sweep(grid, out, jobs=1, log=lambda line: None)
    table = rows(out)
    assert sorted(r["seed"] for r in table) == [1, 2]
    for r in table:
        assert r["status"] == "ok", r
        assert r["record"]["kind"] == "experiment" and r["record"]["seed"] == r["seed"]
        assert 0 < r["metrics"]["figures.saved_pct"] <= r["metrics"]["figures.shared_pct"] < 100


def test_readme_grid_plans(tmp_path: Path) -> None:
    """The README's grid, as pasted: every metric names a field of the built-in scenario's
    samples (its VMs are busy, idle, web1, web2), so planning it raises nothing."""
    from uvm.sweep import grid, trial

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("`uvm sweep GRID.toml")[1].split("```toml\n")[1].split("```")[0]
    spec, folder = grid.load(write_grid(tmp_path, block))
    assert spec.scenario is None and len(trial.plan(spec, folder)) == 9 * 2


def test_loopback_ray_address_means_a_single_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """--ray 127.0.0.1:PORT: Ray is imported in single-host mode, else its client swaps
    127.0.0.1 for the host's address and never reaches a head bound to localhost."""
    from uvm.experiments.base import MissingExtra
    from uvm.sweep import cluster, trial

    seen: list[str | None] = []

    def no_ray(name: str) -> None:
        seen.append(os.environ.get(cluster.SINGLE_HOST_ENV))
        raise ImportError(name)

    monkeypatch.setattr(cluster.importlib, "import_module", no_ray)
    todo = [trial.Trial({}, 1, 0, ["t_s"])]
    for address, mode in (("10.0.0.5:6379", None), ("127.0.0.1:6379", "0"), ("[::1]:6379", "0"),
                          ("localhost:6379", "0")):
        monkeypatch.delenv(cluster.SINGLE_HOST_ENV, raising=False)
        with pytest.raises(MissingExtra):
            list(cluster.execute(todo, address, lambda line: None))
        assert seen[-1] == mode, address


def test_lookup_finds_keys_with_dots() -> None:
    """An experiment's figure may hold a dot (idle-tax's busy_mib_tau_0.75): a metric
    figures.busy_mib_tau_0.75 reads it, rather than an empty cell."""
    from uvm.sweep.trial import lookup

    outcome = {"figures": {"busy_mib_tau_0.75": 38.1, "busy_mib_tau_0": 30.9},
               "rows": [{"a": 1}, {"a": 2}], "t_s": 1.5}
    assert lookup(outcome, "figures.busy_mib_tau_0.75") == 38.1
    assert lookup(outcome, "figures.busy_mib_tau_0") == 30.9
    assert lookup(outcome, "rows.1.a") == 2 and lookup(outcome, "t_s") == 1.5
    assert lookup(outcome, "rows.2.a") is None and lookup(outcome, "figures.nope") is None


def test_cli_out_that_cannot_be_a_directory_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--out onto a file, or where no directory can be made: one line naming --out, exit 2,
    before any trial runs (it was a FileExistsError traceback)."""
    path = write_grid(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, message in ((afile, "is not a directory"), (afile / "sub", "cannot create the directory")):
        assert main(["sweep", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("uvm: error: --out: ") and message in err and "Traceback" not in err
    assert afile.read_text() == "mine"
