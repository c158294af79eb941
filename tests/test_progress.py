"""The progress bar: drawn on a terminal, silent otherwise (CI logs, pipes)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from uvm import progress


def test_quiet_when_not_a_terminal() -> None:
    out = io.StringIO()
    with progress.bar("work", total=2, console=Console(file=out, force_terminal=False)) as bar:
        bar.update(1, "half way")
        assert not bar.shown
    assert out.getvalue() == ""


def test_drawn_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with progress.bar("work", total=4, console=console) as bar:
        assert bar.shown
        bar.update(2, "trial 3/4")
        console.file.flush()
    text = out.getvalue()
    assert "work: trial 3/4" in text and "50%" in text


def test_left_labels_the_time_remaining() -> None:
    """"left" follows the estimate of the time remaining, not the time elapsed (which read
    "0:00:01 left -:--:--": one second left, while nothing was known)."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress.bar("work", total=4, console=console) as bar:
        bar.update(1, "trial 2/4")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())      # colours off
    assert re.search(r"(-:--:--|\d+:\d\d:\d\d) left", text), text
    assert not re.search(r"left +(-:--:--|\d+:\d\d:\d\d)", text), text
