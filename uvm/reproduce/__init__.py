"""`uvm reproduce`: every experiment of the paper (or some), run with repeats, and one report
that puts the paper's numbers beside uvm's.

    uvm reproduce [--quick] [--out DIR] [--only NAMES] [--repeat N] [--page FILE]

Each experiment runs through the experiment runner (uvm/experiments/runner.py) into
DIR/NAME/ (its results.json, with its own run record and the spread over repeats, and its
plot); DIR/reproduce.json records the whole run (its own record: the selection, quick,
repeat, seed, and each experiment's status); the report (uvm/reproduce/report.py) is
DIR/report.md and DIR/report.html (self-contained: the plots embedded). `--page FILE` writes
the report's Markdown to FILE as well, its plots linked relative to FILE (docs/paper-vs-uvm.md
is written this way: never edited by hand).

One progress bar spans the whole run (each experiment weighs its trials). Ctrl-C (or
SIGTERM) keeps what finished: the experiment cut short writes its partial results.json, then
the report is written from everything in DIR, marked partial, and the interrupt goes on. An
experiment that fails (an exception) is recorded with its error and the others still run;
the command then exits non-zero."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uvm import experiments, progress, record
from uvm.experiments.runner import check_repeat
from uvm.outdir import make_dir
from uvm.reproduce import report
from uvm.seeds import check_seed, new_seed

DEFAULT_OUT = Path("results") / "reproduce"
FULL_REPEAT, QUICK_REPEAT = 3, 1


@dataclass
class Outcome:
    """What `run` did: the directory, each experiment's status ("done", "partial",
    "failed: ...", "not run"), and the report's files."""
    out: Path
    status: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.startswith("failed") for s in self.status.values())


def select(only: str | Iterable[str] | None) -> list[str]:
    """The experiments to run, in the report's order: all, or those named (a comma-separated
    string or a list); ValueError naming --only for an unknown one."""
    order = report.order(experiments.REGISTRY)
    if only is None:
        return order
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only)]
    bad = [n for n in names if n not in experiments.REGISTRY]
    if bad or not names or "" in names:
        raise ValueError(f"--only: must name experiments among {', '.join(order)} (comma-"
                         f"separated), got {', '.join(bad) or repr(only)}")
    return [n for n in order if n in names]


def run(out: Path = DEFAULT_OUT, quick: bool = False, only: str | Iterable[str] | None = None,
        repeat: int | None = None, seed: int | None = None, page: Path | None = None,
        log: Callable[[str], None] = print,
        shield: Callable[[], AbstractContextManager[None]] = nullcontext) -> Outcome:
    """Runs the selected experiments `repeat` times each (default 3, 1 with quick) into
    out/NAME/, then writes the report (and `page`); see the module. Arguments are checked
    (ValueError naming the option) before anything runs."""
    names = select(only)
    repeat = check_repeat(repeat if repeat is not None else QUICK_REPEAT if quick else FULL_REPEAT)
    seed = new_seed() if seed is None else check_seed(seed)
    make_dir(out, "--out")
    if page is not None:
        make_dir(page.parent, "--page")
    head = record.header(kind="reproduce", name="paper", seed=seed,
                         config={"quick": quick, "repeat": repeat, "experiments": names},
                         seeds={name: seed for name in names})
    outcome = Outcome(out, {name: "not run" for name in names})
    log(f"reproducing {len(names)} experiments ({', '.join(names)}), "
        f"{'quick' if quick else 'full'}, {repeat} trial{'s' * (repeat > 1)} each, seed {seed}, "
        f"into {out}")
    try:
        with progress.bar("reproduce", total=len(names) * repeat) as bar:
            for i, name in enumerate(names):
                def step(done: float, what: str, i: int = i, name: str = name) -> None:
                    bar.update(i * repeat + done, f"{name} ({i + 1}/{len(names)})"
                                                  + (f": {what}" if what else ""))

                log(f"== {name} ({i + 1} of {len(names)})")
                outcome.status[name] = "running"
                try:
                    experiments.run(name, quick, out / name, log, seed=seed, repeat=repeat,
                                    shield=shield, step=step)
                except KeyboardInterrupt:
                    raise
                except Exception as e:     # noqa: BLE001 - recorded; the others still run
                    first = str(e).splitlines()[0] if str(e) else ""
                    outcome.status[name] = f"failed: {type(e).__name__}: {first}"
                    log(f"{name} failed: {type(e).__name__}: {first}")
                    log("".join(traceback.format_exception(e)).rstrip())
                    continue
                outcome.status[name] = "done"
    except KeyboardInterrupt:
        with shield():
            for name, s in outcome.status.items():
                if s == "running":
                    outcome.status[name] = "partial"
            _write(outcome, head.finish(partial=True), page, log)
        raise
    _write(outcome, head.finish(partial=False), page, log)
    return outcome


def _write(outcome: Outcome, head: record.Header, page: Path | None,
           log: Callable[[str], None]) -> None:
    """reproduce.json, the report (Markdown and HTML) and the page."""
    state = {"record": head.to_json(), "status": outcome.status}
    _save(outcome.out / "reproduce.json", json.dumps(state, indent=2) + "\n", "--out")
    loaded = report.load(outcome.out)
    md = outcome.out / "report.md"
    _save(md, report.markdown(loaded, outcome.out), "--out")
    html = outcome.out / "report.html"
    _save(html, report.html(loaded), "--out")
    outcome.files = [md, html]
    if page is not None:
        _save(page, report.markdown(loaded, page.parent), "--page")
        outcome.files.append(page)
    log(f"{'interrupted: wrote what finished' if head.partial else 'wrote'} "
        f"{', '.join(map(str, outcome.files))}")


def _save(path: Path, text: str, option: str) -> None:
    """Writes `text` to `path` whole or not at all."""
    new = path.with_name(path.name + ".new")
    try:
        new.write_text(text, encoding="utf-8")
        os.replace(new, path)
    except OSError as e:
        raise ValueError(f"{option}: cannot write {str(path)!r}: {e.strerror}") from e
