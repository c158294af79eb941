"""What every experiment shares: its description, and matplotlib on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uvm.errors import UvmError


class MissingExtra(UvmError):
    """An optional dependency (an extra of the package) is not installed."""


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    run: Callable[[bool, Callable[[str], None], dict[str, Any]], None]
    plot: Callable[[dict[str, Any], Path], None]


PLOT_HELP = "plots need matplotlib: pip install 'uvm[plot]'"


def plotting() -> str | None:
    """None if matplotlib can be imported; otherwise how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return PLOT_HELP
    return None


def pyplot() -> Any:
    """matplotlib's pyplot on a file backend, or MissingExtra saying how to get it."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra(PLOT_HELP) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
