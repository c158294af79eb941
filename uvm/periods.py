"""Spans of time that people give: durations, sample periods, delays.

Every such number is checked here before anything waits on it, because the failures of a
bad one come late and far away: NaN never compares, so a loop on it never ends; inf or
1e300 overflow deep inside threading or time.sleep (in a timer thread, where nobody sees
the traceback); and a tiny sample period asks for more samples than can be taken, which
used to pile up as a list of ticks before the run even started.

So a duration is a finite number of seconds, at most MAX_SECONDS, and a sample period is at
least MIN_PERIOD: a snapshot of every VM's counters takes a few milliseconds, so a finer
period would measure the sampler rather than the machine. Sampling loops wait for the next
tick on a fixed grid (0, every, 2 every, ...) and skip the ticks that fell behind, so a run
always ends at its duration, however long a sample takes."""

from __future__ import annotations

import math

MIN_PERIOD = 0.01           # seconds: the finest sample period
MAX_SECONDS = 1e7           # about 116 days: anything longer is a mistake, not a plan


def check_seconds(value: object, name: str, *, zero: bool = False) -> float:
    """Returns a number of seconds, > 0 (>= 0 with zero=True) and at most MAX_SECONDS;
    ValueError "name: reason" otherwise (NaN, inf, a bool or a string included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number of seconds, got {value!r}")
    lowest = ">= 0" if zero else "> 0"
    ok = value >= 0 if zero else value > 0
    try:
        seconds = float(value)
    except OverflowError:       # an int too large for a float
        seconds = math.inf
    if not (ok and seconds <= MAX_SECONDS):    # NaN fails both comparisons
        raise ValueError(f"{name}: must be a number of seconds {lowest}, at most "
                         f"{MAX_SECONDS:g}, got {value!r}")
    return seconds


def check_period(value: object, name: str) -> float:
    """Returns a sample period in seconds, from MIN_PERIOD to MAX_SECONDS; ValueError
    "name: reason" otherwise."""
    seconds = check_seconds(value, name)
    if seconds < MIN_PERIOD:
        raise ValueError(f"{name}: the sample period must be at least {MIN_PERIOD:g} s, "
                         f"got {value!r}")
    return seconds


def next_tick(elapsed: float, every: float, end: float) -> float:
    """The first tick of the grid 0, every, 2 every, ... after `elapsed` (ticks already
    past are skipped), but never later than `end`."""
    return min(end, (math.floor(elapsed / every) + 1) * every)
