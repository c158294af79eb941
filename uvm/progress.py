"""A progress bar for long runs (experiments and their repeats; sweeps and reproductions
can use it too), drawn on stderr with rich, and quiet when stderr is not a terminal (CI
logs, pipes), where the runs' own printed lines say how far they are.

    with progress.bar("sharing", total=3) as bar:
        for i in range(3):
            ...
            bar.update(i + 1, "repeat 2 of 3")

Lines printed to stdout while the bar shows go above it when stdout is the terminal too (rich
redirects them); when stdout is a file or a pipe they go there untouched."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class Bar:
    """One task's bar; `update` moves it (a no-op when quiet)."""

    def __init__(self, progress: Progress | None, task: TaskID | None, title: str) -> None:
        self._progress = progress
        self._task = task
        self._title = title

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def update(self, completed: float, what: str = "") -> None:
        """Sets how much is done (in the units of `total`) and what is being done."""
        if self._progress is None or self._task is None:
            return
        label = f"{self._title}: {what}" if what else self._title
        self._progress.update(self._task, completed=completed, description=label)


@contextmanager
def bar(title: str, total: float, console: Console | None = None) -> Iterator[Bar]:
    """A bar from 0 to `total`, shown while the block runs if `console` (default: stderr)
    is a terminal."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield Bar(None, None, title)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("left"))
    with Progress(*columns, console=console, transient=True,
                  redirect_stdout=sys.stdout.isatty(), redirect_stderr=False) as progress:
        task = progress.add_task(title, total=total)
        yield Bar(progress, task, title)
