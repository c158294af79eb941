"""The results of a sweep in DIR: results.jsonl (one JSON object per trial, appended as
trials finish: the record --resume reads), results.csv (the same rows flattened, rewritten
after each trial) and sweep.png (the swept parameter against the chosen metric)."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from uvm.experiments.base import MissingExtra, pyplot
from uvm.outdir import make_dir

JSONL = "results.jsonl"
CSV = "results.csv"
PLOT = "sweep.png"


class Table:
    """The output folder of one sweep."""

    def __init__(self, out: Path, parameters: list[str], metrics: list[str]) -> None:
        self.out = out
        self.parameters = parameters
        self.metrics = metrics
        self.rows: list[dict[str, Any]] = []

    def open(self, resume: bool) -> set[str]:
        """Creates DIR, or with `resume` reads the rows already there; returns the keys of
        the trials done (failed ones are run again). Without `resume`, existing results are
        an error: a sweep never overwrites another's."""
        path = self.out / JSONL
        if path.exists() and not resume:
            raise ValueError(f"--out: {str(self.out)!r} already holds a sweep's results ({JSONL}); "
                             f"pass --resume to continue it, or another --out")
        make_dir(self.out, "--out")
        if resume and path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines):
                        break           # a line cut short by the interruption: run it again
                    raise ValueError(f"--resume: {path}:{n}: not a JSON row") from None
                if row.get("status") == "ok":
                    self.rows.append(row)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        return {r["trial"] for r in self.rows}

    def add(self, row: dict[str, Any]) -> None:
        """Appends one finished trial to both files."""
        self.rows.append(row)
        with open(self.out / JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.write_csv()

    def write_csv(self) -> None:
        columns = (["trial", "seed", "repeat", *self.parameters, *self.metrics,
                    "status", "wall_s", "host", "started", "record"])
        tmp = self.out / (CSV + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in self.rows:
                w.writerow([r["trial"], r["seed"], r["repeat"],
                            *(r["params"].get(p) for p in self.parameters),
                            *(r["metrics"].get(m) for m in self.metrics),
                            r["status"], r["wall_s"], r["host"], r["started"],
                            json.dumps(r.get("record"), sort_keys=True)])
        tmp.replace(self.out / CSV)

    def plot(self, x: str | None, metric: str) -> str:
        """Draws `metric` against parameter `x` (median over seeds and repeats, every trial
        as a dot; one line per combination of the other parameters) into DIR/sweep.png;
        returns what it did, for the log."""
        try:
            plt = pyplot()
        except MissingExtra as e:
            return f"no plot: {e}"
        series: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.rows:
            y = r["metrics"].get(metric)
            if r["status"] != "ok" or not isinstance(y, (int, float)):
                continue
            rest = ", ".join(f"{p}={r['params'][p]}" for p in self.parameters if p != x)
            series[rest][r["params"].get(x, "") if x else ""].append(float(y))
        if not series:
            return f"no plot: no trial has a number for {metric!r}"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, points in series.items():
            xs = sorted(points, key=_order)
            pos = list(range(len(xs))) if not all(isinstance(v, (int, float)) for v in xs) else xs
            ax.plot(pos, [statistics.median(points[v]) for v in xs], marker="o", label=label or None)
            for p, v in zip(pos, xs):
                ax.scatter([p] * len(points[v]), points[v], s=10, color="grey", alpha=0.6)
            if pos is not xs:
                ax.set_xticks(pos, [str(v) for v in xs])
        ax.set_xlabel(x or "(no parameter)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: median of seeds and repeats (dots: every trial)")
        if any(series):
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(self.out / PLOT, dpi=110)
        plt.close(fig)
        return f"wrote {self.out / PLOT}"


def _order(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))
