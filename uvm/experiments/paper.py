"""The paper's side of an experiment: which of its figures (or tables) it reproduces, the
paper's setup, and the numbers the paper reports there, each beside the key figure of uvm's
that measures the same thing (uvm reproduce puts them side by side: uvm/reproduce/).

The numbers come from ../shared/PAPER.md, which marks the ones it is unsure of with (?) and
says which come from ESX admin guides rather than the paper. Both travel with the number
(`uncertain`, `source`), so that a report never presents an uncertain number as the paper's
fact. A claim without a number (a shape: "the estimate rises within a period or two") is a
Number with value None.

A run's results carry `paper` (Paper.json()), so that a plot can draw the paper's points and
a report written later from results.json alone knows what was compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNCERTAIN = "(?)"


@dataclass(frozen=True)
class Number:
    """One number the paper (or `source`) reports: `what` it is, its `value` (a (low, high)
    range, or None for a claim of shape alone), its `unit`, the key of uvm's figure that
    measures it (None: no uvm figure compares), and whether PAPER.md marks it uncertain."""
    what: str
    value: float | tuple[float, float] | None
    unit: str = ""
    figure: str | None = None
    uncertain: bool = False
    source: str = "paper"
    claim: str = ""             # the paper's words: a number's qualifier ("about"), or the claim

    def text(self) -> str:
        """The number as the report prints it, e.g. '1.4 to 4.4 % (?)' or '67 % (ESX 2.x
        admin guide)'."""
        if self.value is None:
            s = self.claim
        elif isinstance(self.value, tuple):
            s = f"{self.value[0]:g} to {self.value[1]:g}{_unit(self.unit)}"
        else:
            s = f"{self.value:g}{_unit(self.unit)}"
            if self.claim:
                s = f"{self.claim} {s}"
        if self.source != "paper":
            s += f" ({self.source}, not the paper)"
        return f"{s} {UNCERTAIN}" if self.uncertain else s

    def json(self) -> dict[str, Any]:
        return {"what": self.what, "value": list(self.value) if isinstance(self.value, tuple)
                else self.value, "unit": self.unit, "figure": self.figure,
                "uncertain": self.uncertain, "source": self.source, "claim": self.claim,
                "text": self.text()}


@dataclass(frozen=True)
class Paper:
    """What an experiment reproduces: the paper's `figure` ("Figure 6", "Table (section
    4.3)"; None: not a figure of the paper), its `setup`, and its `numbers`."""
    figure: str | None
    setup: str
    numbers: tuple[Number, ...] = ()

    def json(self) -> dict[str, Any]:
        return {"figure": self.figure, "setup": self.setup,
                "numbers": [n.json() for n in self.numbers]}


def _unit(unit: str) -> str:
    return "" if not unit else unit if unit in ("%", "x") else f" {unit}"


def value(results: dict[str, Any], figure: str) -> float | None:
    """The paper's single value (the middle of a range) compared with uvm's `figure`, from a
    run's results (None: the paper gives none)."""
    for n in results.get("paper", {}).get("numbers", []):
        if n["figure"] == figure and n["value"] is not None:
            v = n["value"]
            return (v[0] + v[1]) / 2 if isinstance(v, list) else float(v)
    return None


def label(results: dict[str, Any], figure: str) -> str:
    """'paper' or 'paper (?)': the legend of the paper's point for uvm's `figure`."""
    for n in results.get("paper", {}).get("numbers", []):
        if n["figure"] == figure:
            return f"paper {UNCERTAIN}" if n["uncertain"] else "paper"
    return "paper"
