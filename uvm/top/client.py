"""`uvm top`: finds a running `uvm run` (its socket) or follows a --json timeline file like
`tail -f`, and shows each sample as esxtop's memory panel until the run ends."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console, RenderableType
from rich.live import Live

from uvm.schema import validate_timeline_line
from uvm.timeline import EndLine, HeaderLine, SampleLine
from uvm.top.screen import panel
from uvm.top.server import alive, is_socket, pid_of, private_dir, socket_path, sockets

POLL = 0.2                  # seconds between looks at a followed file that has not grown


def running() -> list[Path]:
    """The sockets of the runs alive now (stale ones, of dead pids, left out)."""
    return [p for p in sockets() if alive(pid_of(p))]


def find(target: str | None) -> Path:
    """The socket to attach to: `target` is a pid or a socket's path; None: the only run
    alive. ValueError naming the argument if there is none (or more than one)."""
    if target is not None and target.isdigit():
        path = socket_path(int(target))
        if not is_socket(path):
            raise ValueError(f"PID: no uvm run with pid {target} is serving (no socket {str(path)!r})")
        if not alive(int(target)):
            raise ValueError(f"PID: run {target} is not running (its socket {str(path)!r} is left "
                             f"from a run that was killed; the next uvm run removes it)")
        return path
    if target is not None:
        try:
            os.stat(target)
        except PermissionError:
            raise ValueError(f"PATH: {target!r}: permission denied (a run's socket is open to "
                             f"the user who started it only)") from None
        except OSError:
            pass
        if not is_socket(Path(target)):
            raise ValueError(f"PATH: {target!r} is not a socket of a running uvm run")
        return Path(target)
    runs = running()
    if not runs:
        raise ValueError(f"no running `uvm run` found (no socket in {str(private_dir(False))!r}); "
                         f"start one, or name a PID, a socket PATH or --json FILE")
    if len(runs) > 1:
        pids = ", ".join(str(pid_of(p)) for p in runs)
        raise ValueError(f"PID: {len(runs)} runs are running (pids {pids}): name one")
    return runs[0]


def socket_lines(path: Path) -> Iterator[str]:
    """The timeline lines a run sends on its socket, until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError as e:
            raise ValueError(f"PATH: cannot attach to {str(path)!r}: {e.strerror}") from e
        with s.makefile("r", encoding="utf-8") as f:
            yield from f


def follow(path: Path) -> Iterator[str]:
    """The lines of a timeline file as they are written (tail -f): complete lines only; it
    never ends by itself (the reader stops at the end line)."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--json: cannot read {str(path)!r}: {e.strerror}") from e
    with f:
        partial = ""
        while True:
            chunk = f.readline()
            if not chunk:
                time.sleep(POLL)
                continue
            partial += chunk
            if partial.endswith("\n"):
                yield partial
                partial = ""


def watch(lines: Iterator[str], source: str, console: Console, once: bool = False) -> int:
    """Shows each sample of `lines` as the panel (live on a terminal, one panel per sample
    otherwise) until the end line, or only the first sample if `once`; returns the exit
    status: 0, or 1 if the lines stopped before the end line (a run killed or crashed: its
    socket closed without one), which it says on stderr. ValueError naming `source` and
    the line if a line is not a timeline line."""
    title, before = source, None
    with _display(console, once) as show:
        for n, text in enumerate(lines, 1):
            line = _parse(text, source, n)
            if isinstance(line, HeaderLine):
                title = f"{line.name} ({source})"
            elif isinstance(line, EndLine):
                return 0
            else:
                show(panel(line, before, title))
                before = line
                if once:
                    return 0
    print(f"uvm top: {title} stopped before its end line (killed or crashed?)", file=sys.stderr)
    return 1


@contextmanager
def _display(console: Console, once: bool) -> Iterator[Callable[[RenderableType], None]]:
    """Redraws in place on a terminal; prints each panel otherwise (a log, or --once)."""
    if once or not console.is_terminal:
        yield console.print
        return
    with Live(console=console, auto_refresh=False) as live:
        yield lambda r: live.update(r, refresh=True)


def _parse(text: str, source: str, n: int) -> HeaderLine | SampleLine | EndLine:
    try:
        return validate_timeline_line(json.loads(text))
    except ValueError as e:         # pydantic's ValidationError is one too
        why = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise ValueError(f"{source}: line {n} is not a uvm timeline line ({why})") from None
