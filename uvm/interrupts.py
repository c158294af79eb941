"""Ctrl-C, SIGTERM and SIGHUP for the command line: each ends a command the same way, with
its summary printed, its partial results saved, its machine closed and its files removed,
and exit status 128 + the signal's number.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be,
and SIGTERM/SIGHUP just kill the process. Neither is safe for cleanup: a KeyboardInterrupt
that lands in the middle of the summary, of writing results or of Machine.close() skips the
rest of it, and a killed process leaves its named swap file behind. So while an Interrupts
is entered, all three signals go to one handler that records the first signal and then,
by `mode`:

- "flag": raises nothing; the command polls `requested` where waiting is safe (between
  samples) and ends there. A second signal raises KeyboardInterrupt, an escape from a setup
  that hangs, unless it comes inside `deferred()`.
- "raise": raises Interrupted at once (a KeyboardInterrupt, so `with Machine()` blocks close
  on the way out), for long computations that have no place to poll, again except inside
  `deferred()`, where the signal is only recorded: cleanup runs to its end.

Handlers can only be set on the main thread; entered elsewhere (a test calling cli.main on a
thread), an Interrupts changes nothing and `requested` stays False."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Literal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal stopped the command; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """Routes SIGINT, SIGTERM and SIGHUP to one handler while entered (see the module)."""

    def __init__(self, mode: Literal["flag", "raise"]) -> None:
        self.mode = mode
        self.signum: int | None = None
        self._deferred = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal arrived."""
        return self.signum is not None

    def exit_status(self, status: int) -> int:
        """128 + the first signal's number once one arrived; `status` otherwise."""
        return status if self.signum is None else 128 + self.signum

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)      # type: ignore[arg-type]
        self._previous.clear()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a signal is only recorded, never raised: for cleanup that must finish."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self._deferred or (self.mode == "flag" and first):
            return
        raise Interrupted(self.signum or signum)
