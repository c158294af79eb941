"""An esxtop-style memory view of a running `uvm run`: `uvm top` (attached through a local
socket, or following a --json timeline) and `uvm run --wide`. Both read the run's timeline
(uvm/timeline.py), the same lines `uvm run --json` writes, so what top shows is what the
run records. docs/top.md maps each esxtop field to uvm's.

    fields.py   esxtop's columns and header lines, computed from a timeline sample
    screen.py   the panel (rich)
    server.py   the socket `uvm run` serves its timeline on
    views.py    the live view's hooks: uvm run --wide and --map
    client.py   finding a run, reading its socket or following its file, the display loop
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from uvm.top.client import find, follow, running, socket_lines, watch
from uvm.top.screen import panel
from uvm.top.server import pid_of, serving
from uvm.top.views import Wide, run_view

__all__ = ["Wide", "attach", "listing", "panel", "run_view", "serving"]


def listing() -> list[str]:
    """`uvm top --list`: one line per running run: its pid and its socket."""
    return [f"{pid_of(path)}\t{path}" for path in running()]


def attach(target: str | None, json_file: str | None, console: Console, once: bool = False) -> int:
    """`uvm top [PID|PATH] [--json FILE] [--once]`: shows the run's panel until it ends;
    returns the exit status. ValueError naming the argument for a bad one."""
    if target is not None and json_file is not None:
        raise ValueError("PID: name a run (PID or PATH) or a timeline (--json FILE), not both")
    if json_file is not None:
        return watch(follow(Path(json_file)), json_file, console, once)
    path = find(target)
    return watch(socket_lines(path), f"pid {pid_of(path)}", console, once)
