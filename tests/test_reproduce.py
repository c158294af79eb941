"""`uvm reproduce`: the experiments run into one directory and one report puts the paper's
numbers beside uvm's (Markdown, self-contained HTML, the docs page); Ctrl-C keeps what
finished; a failing experiment does not stop the others. And sharing-real's invariants:
real processes' memory placed byte for byte, shared between processes of one interpreter,
the processes always stopped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from uvm import experiments, schema
from uvm.cli import main
from uvm.experiments import Experiment, Trial, paper, procmem, sharing_real
from uvm.experiments.base import pyplot
from uvm.experiments.runner import new_trial
from uvm.reproduce import report

FAKE_PAPER = paper.Paper("Figure 3", "the paper's setup",
                         (paper.Number("rows made", 3, "rows", "rows", uncertain=True),
                          paper.Number("a shape", None, "", "rows", claim="rises")))


def _fake(name: str, fail: type[BaseException] | None = None) -> Experiment:
    """A fast experiment of three rows with a paper side; `fail` raised after the first row."""
    def run(trial: Trial) -> None:
        rows: list[int] = []
        trial.results["rows"] = rows
        for i in range(3):
            if fail is not None and i == 1:
                raise fail("broken")
            rows.append(i)

    def plot(results: dict[str, Any], path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots()
        ax.plot(results["rows"])
        fig.savefig(path)
        plt.close(fig)

    return Experiment(name, f"fake {name}", lambda quick: {"n": 3}, run, plot,
                      lambda results: {"rows": float(len(results["rows"]))}, FAKE_PAPER,
                      lambda p: f"uvm makes {p['n']} rows",
                      lambda results, medians: f"uvm made {medians['rows']:g} rows")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiments, "REGISTRY", {
        "fake-a": _fake("fake-a"), "fake-b": _fake("fake-b"),
        "fake-broken": _fake("fake-broken", RuntimeError),
        "fake-a-cut": _fake("fake-a-cut", KeyboardInterrupt)})


def test_report_of_fakes_has_a_row_per_number_and_the_spread(tmp_path: Path, fakes: None,
                                                             capsys: Any) -> None:
    page = tmp_path / "docs" / "paper-vs-uvm.md"
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--only", "fake-b,fake-a",
                 "--repeat", "2", "--seed", "5", "--page", str(page)]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| Figure 3 |")]
    assert len(rows) == 4                   # two numbers for each of the two experiments
    assert "| rows made | 3 rows (?) | 3 rows | 3 rows to 3 rows (sd 0, 2 trials) |" in md
    assert "uvm made 3 rows" in md and "uvm makes 3 rows" in md and "(?)" in md
    assert "do not edit by hand" in md and "Partial" not in md
    # the docs page links the plots relative to itself
    assert "](../r/fake-a/fake-a.png)" in page.read_text()
    assert "](fake-a/fake-a.png)" in md
    state = json.loads((tmp_path / "r" / "reproduce.json").read_text())
    assert state["status"] == {"fake-a": "done", "fake-b": "done"}
    assert state["record"]["kind"] == "reproduce" and state["record"]["partial"] is False
    results = json.loads((tmp_path / "r" / "fake-a" / "results.json").read_text())
    jsonschema.validate(results, schema.shipped("results"))
    assert results["paper"] == FAKE_PAPER.json() and results["record"]["seed"] == 5
    assert [r["seed"] for r in results["repeats"]] == [5, 6]


def test_an_interrupted_reproduce_keeps_what_finished(tmp_path: Path, fakes: None,
                                                      capsys: Any) -> None:
    assert main(["reproduce", "--out", str(tmp_path), "--only", "fake-b,fake-a-cut,fake-a"]) == 130
    state = json.loads((tmp_path / "reproduce.json").read_text())
    assert state["status"] == {"fake-a": "done", "fake-a-cut": "partial", "fake-b": "not run"}  # paper order
    assert state["record"]["partial"] is True
    md = (tmp_path / "report.md").read_text()
    assert "Partial: the run was interrupted" in md and "No results: not run." in md
    assert json.loads((tmp_path / "fake-a-cut" / "results.json").read_text())["rows"] == [0]
    assert not (tmp_path / "fake-b").exists()


def test_results_left_by_an_earlier_run_are_not_reported_as_this_ones(tmp_path: Path, fakes: None,
                                                                     capsys: Any) -> None:
    """Found by Ctrl-C on a full run into docs/results: the report read every experiment's
    results.json in DIR, and one an older uvm wrote (no "figures") raised KeyError while the
    interrupted run wrote its report. A results.json this run did not write is not shown."""
    old = tmp_path / "fake-b" / "results.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"experiment": "fake-b", "rows": [7, 7, 7, 7]}))     # an older format
    older = tmp_path / "fake-broken" / "results.json"
    older.parent.mkdir()
    older.write_text(json.dumps({"record": {"started": "2020-01-01T00:00:00+00:00"},
                                 "figures": {"rows": {"median": 4.0, "min": 4.0, "max": 4.0,
                                                      "stdev": 0.0, "n": 1}}}))
    assert main(["reproduce", "--out", str(tmp_path), "--only", "fake-b,fake-broken,fake-a-cut"]) == 130
    state = json.loads((tmp_path / "reproduce.json").read_text())
    assert state["status"] == {"fake-a-cut": "partial", "fake-b": "not run", "fake-broken": "not run"}
    md = (tmp_path / "report.md").read_text()
    assert md.count("No results: not run.") == 2 and "| 4 rows" not in md
    assert old.exists() and older.exists()      # not uvm's to remove


def test_a_failing_experiment_does_not_stop_the_others(tmp_path: Path, fakes: None,
                                                       capsys: Any) -> None:
    assert main(["reproduce", "--out", str(tmp_path), "--only", "fake-broken,fake-a"]) == 1
    state = json.loads((tmp_path / "reproduce.json").read_text())
    assert state["status"]["fake-a"] == "done"
    assert state["status"]["fake-broken"] == "failed: RuntimeError: broken"
    assert "failed: RuntimeError: broken" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("args, field", [(["--only", "nonesuch"], "--only"),
                                         (["--only", ""], "--only"),
                                         (["--out", "/dev/null"], "--out")])
def test_bad_arguments_are_one_line(args: list[str], field: str, capsys: Any) -> None:
    assert main(["reproduce", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uvm: error: {field}: ") and err.count("\n") == 1, err


@pytest.mark.slow
def test_reproduce_quick_sharing_real(tmp_path: Path, capsys: Any) -> None:
    """The real thing, quick, with the fastest experiment: a row per paper number, the
    paper's numbers in both formats, the HTML self-contained."""
    assert main(["reproduce", "--quick", "--out", str(tmp_path), "--only", "sharing-real"]) == 0
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for name in ("sharing-real",):
        exp = experiments.REGISTRY[name]
        assert exp.paper is not None and exp.paper.figure is not None
        results = json.loads((tmp_path / name / "results.json").read_text())
        for number in exp.paper.numbers:
            row = next(line for line in md.splitlines()
                       if line.startswith(f"| {exp.paper.figure} | {number.what} |"))
            assert number.text() in row and number.text() in page
            if number.figure is not None:       # uvm's median is printed beside it
                median = results["figures"][number.figure]["median"]
                assert f"| {median:.3g}" in row, row
        assert "data:image/png;base64," in page and f"]({name}/{name}.png)" in md
    # nothing loaded from elsewhere
    assert not re.findall(r"(?:src|href)=\"(?!data:)", page) and "://" not in page
    assert page.count("<img ") == 1
    assert "What differs and why: uvm's mixes share" in md


def test_report_order_follows_the_paper() -> None:
    names = report.order(experiments.REGISTRY)
    figures = [experiments.REGISTRY[n].paper for n in names]
    numbered = [int(re.search(r"\d+", p.figure).group()) for p in figures
                if p is not None and p.figure is not None]
    assert numbered == sorted(numbered) and numbered == [2, 4, 5, 6, 7, 8]
    assert set(names[-3:]) == {"balloon-vs-paging", "io-remap", "side-channel"}


def test_paper_numbers_keep_their_doubt() -> None:
    """A number PAPER.md marks (?) says so wherever it is printed; one from an admin guide
    says where it comes from."""
    n = paper.Number("rate", 50, "pages/s", None, uncertain=False, source="ESX 2.x admin guide")
    assert n.text() == "50 pages/s (ESX 2.x admin guide, not the paper)"
    assert paper.Number("gain", 30, "%", "g", uncertain=True, claim="a little over").text() \
        == "a little over 30% (?)"
    for exp in experiments.REGISTRY.values():
        for number in exp.paper.numbers if exp.paper else ():
            assert number.text().endswith("(?)") == number.uncertain


# -- sharing-real -----------------------------------------------------------------------------

def test_real_processes_memory_is_placed_byte_for_byte_and_shared(tmp_path: Path) -> None:
    """Two processes of one interpreter on their own inputs: every page placed reads back as
    read from /proc, and pages are shared between their VMs."""
    programs = [sharing_real.python("json", "json", 2000, 0),
                sharing_real.python("sqlite3", "sqlite3", 2000, 1)]
    trial = new_trial(experiments.REGISTRY["sharing-real"], True, 1, lambda line: None)
    r = sharing_real.measure("two", programs, {"max_pages": 2048}, trial)
    assert all(200 < n <= 2048 for n in r["pages_per_vm"]), r["pages_per_vm"]
    assert r["pages_placed"] == sum(r["pages_per_vm"]) and r["pages_mismatched"] == 0
    # beyond zero pages: the interpreter's own pages merged across the two VMs
    assert r["sharing"] - r["zero_shared"] > 100 and r["saved"] > 0


def test_processes_are_stopped_even_when_interrupted() -> None:
    programs = [sharing_real.python("a", "json", 100, 0), sharing_real.perl(100)]
    started: list[procmem.Process] = []
    with pytest.raises(KeyboardInterrupt):
        with procmem.running(programs) as procs:
            started += procs
            assert all(p.popen.poll() is None for p in procs)
            page = procmem.pages(procs[0].pid, 1)[0]
            assert len(page) == 4096
            raise KeyboardInterrupt
    assert len(started) == 2 and all(p.popen.poll() is not None for p in started)


def test_a_program_that_never_gets_ready_is_stopped_and_named() -> None:
    quiet = procmem.Program("quiet", ("/usr/bin/python3", "-c", "import sys; sys.stdin.read()"))
    broken = procmem.Program("broken", ("/usr/bin/python3", "-c", "raise SystemExit(3)"))
    with pytest.raises(RuntimeError, match="broken: exited before it was ready"):
        with procmem.running([broken, quiet]):
            pass
