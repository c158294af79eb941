"""The paper's experiments run end to end from the command line (quick versions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import uvm_cmd
from uvm import experiments, schema
from uvm.cli import main
from uvm.experiments import Experiment, runner
from uvm.experiments.base import Trial, pyplot


def read_results(path: Path) -> dict[str, Any]:
    """results.json, checked against the shipped schema: it starts with the run record."""
    results: dict[str, Any] = json.loads((path / "results.json").read_text())
    jsonschema.validate(results, schema.shipped("results"))
    assert results["record"]["kind"] == "experiment" and results["record"]["partial"] is False
    assert results["figures"] and len(results["repeats"]) == 1
    # no figure twice: what the record says (name, quick, params) and the key figures are
    # not repeated among the trial's own fields
    assert not set(results) & (set(runner.IN_RECORD) | set(results["figures"])), sorted(results)
    return runner.trial_results(results)


@pytest.mark.slow
def test_sharing_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "sharing", "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    results = read_results(tmp_path)
    assert results["record"]["seed"] == 3 and results["repeats"][0]["seed"] == 3
    assert results["record"]["config"]["params"] == experiments.REGISTRY["sharing"].params(True)
    png = (tmp_path / "sharing.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = results["rows"]
    assert [r["vms"] for r in rows] == [1, 2, 3, 4]
    # one VM shares zero pages and its own duplicates (the program's code, in the page cache
    # and in the process); from two on, the image is shared and savings grow
    assert 0 < rows[0]["zero_shared"] < rows[0]["sharing"]
    saved = [r["saved"] for r in rows]
    assert saved == sorted(saved) and saved[-1] > 2 * saved[0]
    assert all(r["shared_pct"] > 50 for r in rows[1:])
    # the background scanner finds sharing over time, before any full pass
    found = results["found"]["4"]
    assert found[-1]["shared_pct"] > found[0]["shared_pct"] + 10
    assert results["paper"]["figure"] == "Figure 4"
    printed = capsys.readouterr().out
    assert "saved %" in printed and str(rows[-1]["zero_shared"]) in printed


def test_unknown_experiment_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        main(["experiment", "nonesuch"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_balloon_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "balloon", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "balloon.png").read_bytes().startswith(b"\x89PNG")
    rows = results["rows"]
    assert [r["size_mib"] for r in rows] == results["params"]["sizes_mib"]
    for r in rows:
        conf, ball = r["configured"], r["ballooned"]
        # the ballooned guest really gave up L - X, and the host never paged either guest
        assert ball["balloon_pages"] * 4096 == (ball["vm_mib"] - r["size_mib"]) << 20
        assert conf["host_swapouts"] == ball["host_swapouts"] == 0
        # the page-frame array is sized by configured memory: the ballooned guest's is larger
        assert ball["memmap_pages"] > conf["memmap_pages"] > 0
        # same accesses, nearly the same usable memory: nearly the same cache behaviour
        # (throughput is timing, reported by the experiment, not asserted here)
        assert abs(conf["miss_rate"] - ball["miss_rate"]) <= 0.15 * conf["miss_rate"]
        assert conf["ops"] > 100 and ball["ops"] > 100
    assert "largest difference" in capsys.readouterr().out


@pytest.mark.slow
def test_io_remap_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "io-remap", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "io-remap.png").read_bytes().startswith(b"\x89PNG")
    rows = {r["mode"]: r for r in results["rows"]}
    assert list(rows) == ["no low memory", "remap off", "remap on"]
    none, off, on = rows.values()
    assert none["copies"] == none["remapped"] == 0                # every frame reachable
    assert off["remapped"] == off["direct"] == 0 and off["copies"] > 0
    # remapping reduces copies (throughput is timing: reported, not asserted)
    assert on["remapped"] > 0 and on["direct"] > 0 and on["copies_per_op"] < off["copies_per_op"]
    assert on["low_pages_used"] == on["remapped"]
    assert results["figures"]["copies_reduction_pct"]["median"] > 0
    assert "fewer copies per op" in capsys.readouterr().out


@pytest.mark.slow
def test_balloon_vs_paging_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "balloon-vs-paging", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "balloon-vs-paging.png").read_bytes().startswith(b"\x89PNG")
    rows = {r["mode"]: r for r in results["rows"]}
    balloon, paging = rows["balloon"], rows["paging"]
    # with its balloon the guest chose what to give up: it paged, the host did not
    assert balloon["balloon_pages"] > 0 and balloon["host_swapouts"] == 0
    assert balloon["guest_swapouts"] > 0 and balloon["double_paging"] == 0
    # without it the host paged blindly, and the guest paged on top: double paging
    assert paging["balloon_pages"] == 0 and paging["host_swapouts"] > 0
    assert 0 < paging["double_paging"] <= paging["guest_swapouts"]
    assert all(r["hot_ops_per_s"] > 0 and r["file_ops_per_s"] > 0 for r in rows.values())
    assert "double" in capsys.readouterr().out


@pytest.mark.slow
def test_idle_tax_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "idle-tax", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "idle-tax.png").read_bytes().startswith(b"\x89PNG")
    untaxed, taxed = results["phases"]
    assert (untaxed["tau"], taxed["tau"]) == (0.0, 0.75)
    # no tax: about even; with it: most memory to the busy VM, which runs faster
    assert abs(untaxed["busy_target_mib"] - untaxed["idle_target_mib"]) <= 0.1 * untaxed["busy_target_mib"]
    # (the file server touches part of its cache in a period: its active fraction is about
    # a half, so the tax moves memory to it without taking all of the idle VM's)
    assert taxed["busy_target_mib"] >= 1.3 * taxed["idle_target_mib"]
    assert taxed["busy_mib"] > untaxed["busy_mib"] + 4 and taxed["idle_mib"] < untaxed["idle_mib"] - 4
    assert taxed["idle_active"] < 0.1 < 0.3 < taxed["busy_active"]
    assert results["figures"]["speedup"]["median"] > 1
    assert all({"busy", "idle", "state"} <= set(row) for row in results["timeline"])
    assert "throughput at tau = 0.75" in capsys.readouterr().out


@pytest.mark.slow
def test_working_set_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "working-set", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "working-set.png").read_bytes().startswith(b"\x89PNG")
    phases = results["phases"]
    assert [round(ph["true"], 2) for ph in phases] == [f for f, _ in results["params"]["phases"]]
    for before, ph in zip(phases, phases[1:]):
        if ph["true"] > before["true"]:         # growing: tracked once the fast average settled
            assert ph["settled_abs_error"] <= 0.10, ph
            assert ph["within_after_s"] is not None
        else:                                   # shrinking: falls, slowly
            assert ph["estimate_end"] < before["estimate_end"]
    assert "within 10 pts" in capsys.readouterr().out


@pytest.mark.slow
def test_reallocation_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["experiment", "reallocation", "--quick", "--out", str(tmp_path)]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "reallocation.png").read_bytes().startswith(b"\x89PNG")
    tl = results["timeline"]
    states = [r["state"] for r in tl]
    assert states[0] == "high" and states[-1] == "high"
    # three 36 MiB working sets on 96 MiB: C's start takes free memory under the soft
    # threshold, and the scheduler reclaims by ballooning: balloons inflate while the
    # state is not high. (782757b dropped these checks as timing-dependent: they need the
    # guests to fill their working sets between C's start and A's stop; with three guest
    # threads sharing 2 CPUs they fill at about 2 MiB/s, so the quick run stops A at 36 s,
    # not 24, which left free memory at 4.2% on a clean-clone CI try and the state high.
    # Without these checks the test passed when reclamation did nothing.)
    assert {"soft", "hard"} & set(states), states
    pressed = [r for r in tl if r["state"] != "high"]
    assert max(v["balloon"] for r in pressed for v in r["vms"].values()) > 0
    assert pressed[0]["vms"].keys() == {"A", "B", "C"}, "A and B alone fit: no pressure"
    # once B stopped, C alone holds its working set and its balloon was given back
    assert all(v["target"] <= 48 << 8 for r in tl for v in r["vms"].values())
    assert tl[-1]["vms"].keys() == {"C"} and tl[-1]["vms"]["C"]["balloon"] == 0
    assert "time in each state" in capsys.readouterr().out


# -- interrupted, without matplotlib, a bad --out --------------------------------------------

def _fake(stop_after: int | None) -> Experiment:
    """An experiment of three rows, interrupted (KeyboardInterrupt) after `stop_after`."""
    def run(trial: Trial) -> None:
        rows: list[dict[str, Any]] = []
        trial.results["rows"] = rows
        for i in range(3):
            if i == stop_after:
                raise KeyboardInterrupt
            rows.append({"n": i})
            trial.log(f"row {i}")
        trial.results["done"] = True

    def plot(results: dict[str, Any], path: Path) -> None:
        pyplot()
        path.write_bytes(b"\x89PNG fake")

    return Experiment("fake", "three rows", lambda quick: {"rows": 3}, run, plot,
                      lambda results: {"rows": float(len(results["rows"]))})


def _own(results: dict[str, Any]) -> dict[str, Any]:
    """A trial's results as results.json gives them back (runner.trial_results) without the
    parts the runner adds (record, figures, repeats), after checking it against the shipped
    schema and that the record's fields are not repeated."""
    jsonschema.validate(results, schema.shipped("results"))
    assert not set(results) & set(runner.IN_RECORD)
    return {k: v for k, v in runner.trial_results(results).items()
            if k not in ("record", "figures", "repeats")}


def test_without_matplotlib_numbers_are_saved_and_printed(tmp_path: Path, capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    monkeypatch.setitem(experiments.REGISTRY, "fake", _fake(None))
    assert main(["experiment", "fake", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert _own(results) == {"experiment": "fake", "quick": False, "params": {"rows": 3},
                             "rows": [{"n": 0}, {"n": 1}, {"n": 2}], "done": True}
    assert results["record"]["partial"] is False and results["figures"]["rows"]["values"] == [3.0]
    assert not (tmp_path / "fake.png").exists()
    out = capsys.readouterr().out
    assert "row 2" in out and "pip install 'uvm[plot]'" in out


def test_an_interrupted_experiment_keeps_what_it_measured(tmp_path: Path, capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(experiments.REGISTRY, "fake", _fake(2))
    assert main(["experiment", "fake", "--out", str(tmp_path)]) == 130
    results = json.loads((tmp_path / "results.json").read_text())
    assert _own(results) == {"experiment": "fake", "quick": False, "params": {"rows": 3},
                             "rows": [{"n": 0}, {"n": 1}]}
    # one partial flag, the record's; a trial cut short gives no figures
    assert results["record"]["partial"] is True and "partial" not in _own(results)
    assert results["repeats"] == [] and results["figures"] == {}
    assert not (tmp_path / "fake.png").exists()
    captured = capsys.readouterr()
    assert "(partial)" in captured.out and captured.err == "uvm: interrupted\n"


@pytest.mark.parametrize("out", ["/dev/null", "{tmp}/file/sub"])
def test_out_must_name_a_directory(tmp_path: Path, capsys: Any, out: str) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["experiment", "sharing", "--quick", "--out", out.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uvm: error: --out: ") and err.count("\n") == 1, err


@pytest.mark.slow
def test_sigterm_mid_experiment_saves_partial_results_without_matplotlib(tmp_path: Path) -> None:
    """A real run, matplotlib hidden from the import (a sitecustomize that blocks it),
    stopped by SIGTERM after its first row: results.json has that row, marked partial."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hide), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "out"
    proc = subprocess.Popen(uvm_cmd("experiment", "sharing", "--quick", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:            # the header, the column names, then row 1
            lines.append(line)
            if line.split()[:1] == ["1"]:
                break
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stdout = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "pip install 'uvm[plot]'" in stdout
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, schema.shipped("results"))
    assert results["record"]["partial"] is True and results["rows"][0]["vms"] == 1
    assert list(out.iterdir()) == [out / "results.json"]


def test_side_channel_plot_draws_every_latency() -> None:
    """The histogram's bins hold every latency measured: private writes take ~20 ns here
    (the results in docs/results: median 20 ns), COW breaks tens of microseconds; bins
    from a fixed 0.1 us left the private writes, and so the whole salted panel, out."""
    import numpy

    from uvm.experiments.side_channel import latency_bins

    for us in ([0.02, 0.02, 0.05, 21.1, 40.4, 299.3], [0.02] * 10, [0.0015, 7.0], [150.0]):
        edges = latency_bins(us)
        counts, _ = numpy.histogram(us, bins=edges)
        assert counts.sum() == len(us), (us, edges)
        assert all(b > a for a, b in zip(edges, edges[1:]))
        assert len(edges) <= 20 * 6, "20 bins a decade"


@pytest.mark.slow
def test_side_channel_experiment_quick(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The attack reads the victim's pages across VMs and is reduced to chance by salts.
    Bounds: across VMs only a private write delayed past the threshold (~0.7 us, against
    ~20 ns private and ~20 us for a COW break) by preemption can be wrong, and 10% of 512 would
    need 51 of them; salted nothing merges but the attacker's own calibration pairs, every
    write is private, and leaving [0.4, 0.6] would need 51 delayed writes all on one side."""
    assert main(["experiment", "side-channel", "--quick", "--out", str(tmp_path), "--seed", "5"]) == 0
    results = read_results(tmp_path)
    assert (tmp_path / "side-channel.png").read_bytes().startswith(b"\x89PNG")
    p = results["params"]
    across, salted = results["rows"]
    assert across["config"] == "across VMs" and salted["config"] == "salted"
    pairs = p["rounds"] * 2 * p["calibration"]
    assert across["merged"] == pairs + across["candidates"] and salted["merged"] == pairs
    assert across["accuracy"] >= 0.9 and 0.4 <= salted["accuracy"] <= 0.6
    assert across["held_median_ns"] > 4 * across["not_held_median_ns"]
    all_, vm = results["savings"]
    assert all_["share_domains"] == "all" and vm["share_domains"] == "vm"
    # salting keeps only zero pages (shared by every domain) and duplicates within a VM
    assert vm["saved"] < all_["saved"] / 2 and vm["saved"] >= vm["zero_shared"] - 1
    assert results["saved_mib_lost"] > 0
    assert set(results["figures"]) == {"accuracy_across_vms", "accuracy_salted", "saved_pct_all",
                                       "saved_pct_vm"}
    assert "salting loses" in capsys.readouterr().out
