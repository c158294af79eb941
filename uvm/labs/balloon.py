"""Lab balloon: the balloon driver's rate adaptation (paper section 3.2).

Most checks drive the student's BalloonRate against a model guest on a virtual clock (no
machine, no sleeping): the driver's loop as uvm/balloon.py runs it, with a guest that has
free pages or must reclaim for each one. The last check plugs it into the real driver of a
real guest OS and inflates the balloon over a process's data, which must survive."""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType

import uvm.guest
from uvm.balloon import MAX_RATE, MIN_RATE, BalloonDriver, BalloonRate
from uvm.labs.base import Check, Feedback, Lab, Outcome, solution_class
from uvm.machine import Machine

MAX_STEPS = 100_000
SLACK = 1e-9            # relative, for rates computed from floating pauses


def _new(module: ModuleType) -> BalloonRate:
    return solution_class(module, LAB, BalloonRate)()


@dataclass
class Chunk:
    asked: int
    got: int
    reclaimed: int
    pause: float

    @property
    def rate(self) -> float:
        """Pages per second this chunk inflated at."""
        return math.inf if self.pause <= 0 else self.got / self.pause


@dataclass
class ModelGuest:
    """The guest as the driver sees it: `free` pages it gives at once; past them it must
    reclaim each page (cache or swap) while `reclaimable` lasts."""
    free: int
    reclaimable: int
    clock: float = 0.0
    chunks: list[Chunk] = field(default_factory=list)

    def inflate(self, pace: BalloonRate, pages: int) -> int:
        """Runs the driver's loop until the balloon holds `pages` more pages or the guest
        has none left to give; returns the pages inflated."""
        done = 0
        while done < pages:
            if len(self.chunks) >= MAX_STEPS:
                raise Feedback(f"{MAX_STEPS} chunks and the balloon is still {pages - done} pages "
                               f"short: chunk() must ask for at least one page")
            remaining = pages - done
            asked = pace.chunk(remaining)
            if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= remaining:
                raise Feedback(f"chunk({remaining}) returned {asked!r}: ask for 1 to {remaining} "
                               f"pages (never beyond the target)")
            from_free = min(asked, self.free)
            reclaimed = min(asked - from_free, self.reclaimable)
            self.free -= from_free
            self.reclaimable -= reclaimed
            got = from_free + reclaimed
            pause = pace.allocated(asked, got, reclaimed)
            if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not pause >= 0:
                raise Feedback(f"allocated({asked}, {got}, {reclaimed}) returned {pause!r}: "
                               f"return a pause in seconds, >= 0")
            rate = pace.rate
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not MIN_RATE <= rate <= MAX_RATE:
                raise Feedback(f"rate is {rate!r} after a chunk: keep it within "
                               f"[{MIN_RATE}, {MAX_RATE}] pages per second")
            self.chunks.append(Chunk(asked, got, reclaimed, float(pause)))
            self.clock += float(pause)
            done += got
            if got < asked:
                break
        return done

    def rate(self, first: int = 0) -> float:
        """Pages per (virtual) second over the chunks from `first` on."""
        chunks = self.chunks[first:]
        seconds = sum(c.pause for c in chunks)
        return math.inf if seconds <= 0 else sum(c.got for c in chunks) / seconds


def reaches_target(module: ModuleType, seed: int) -> Outcome:
    target = random.Random(seed).randrange(3000, 6000)
    guest = ModelGuest(free=2 * target, reclaimable=0)
    done = guest.inflate(_new(module), target)
    ok = done == target and guest.clock <= target / MIN_RATE
    return Outcome(ok, f"{done} of {target} pages in {len(guest.chunks)} chunks, "
                       f"{guest.clock:.3f} s (virtual) in a guest with free memory",
                   f"keep asking until the target is reached, at least {MIN_RATE} pages/s")


def never_too_fast(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    guests = [ModelGuest(free=rng.randrange(1000, 4000), reclaimable=10**6) for _ in range(3)]
    for g in guests:
        g.inflate(_new(module), 8000)
    fastest = max(c.rate for g in guests for c in g.chunks)
    ok = fastest <= MAX_RATE * (1 + SLACK)
    shown = "unbounded (a chunk with no pause)" if math.isinf(fastest) else f"{fastest:.0f} pages/s"
    return Outcome(ok, f"fastest chunk: {shown} (the maximum is {MAX_RATE} pages/s)",
                   "pause after each chunk for at least got / MAX_RATE seconds: the guest needs "
                   "time to react to a balloon")


def backs_off(module: ModuleType, seed: int) -> Outcome:
    target = random.Random(seed).randrange(6000, 9000)
    quiet = ModelGuest(free=10**6, reclaimable=0)
    quiet.inflate(_new(module), target)
    pressed = ModelGuest(free=0, reclaimable=10**6)
    done = pressed.inflate(_new(module), target)
    calm, hard = quiet.rate(), pressed.rate()
    ok = done == target and hard <= calm / 4 and hard <= MAX_RATE / 4 \
        and pressed.clock <= target / MIN_RATE * 1.5
    return Outcome(ok, f"{hard:.0f} pages/s when the guest must reclaim every page, {calm:.0f} "
                       f"when it has them free; {done} of {target} pages in {pressed.clock:.1f} s",
                   "slow down when the guest had to reclaim (reclaimed > 0), by at least 4x over "
                   f"a run, but keep going at {MIN_RATE} pages/s or more")


def recovers(module: ModuleType, seed: int) -> Outcome:
    guest = ModelGuest(free=0, reclaimable=4096)
    pace = _new(module)
    guest.inflate(pace, 4096)
    slow = guest.chunks[-1].rate
    guest.free = 10**6
    first = len(guest.chunks)
    guest.inflate(pace, 8192)
    after = [c.rate for c in guest.chunks[first:first + 12]]
    best = max(after)
    ok = best >= MAX_RATE / 2
    return Outcome(ok, f"{slow:.0f} pages/s at the end of the pressure, then up to {best:.0f} "
                       f"within {len(after)} chunks once the guest has free pages",
                   "speed up again (e.g. double the rate) while the guest gives pages without "
                   "reclaiming")


class _Watched(BalloonRate):
    """The student's BalloonRate inside the real driver's thread, keeping what it raised."""

    def __init__(self, inner: BalloonRate) -> None:
        self.inner = inner
        self.error: BaseException | None = None
        self.fastest = 0.0

    @property
    def rate(self) -> float:        # type: ignore[override]
        return self.inner.rate

    def chunk(self, remaining: int) -> int:
        try:
            return self.inner.chunk(remaining)
        except BaseException as e:
            self.error = e
            raise

    def allocated(self, asked: int, got: int, reclaimed: int) -> float:
        try:
            pause = self.inner.allocated(asked, got, reclaimed)
        except BaseException as e:
            self.error = e
            raise
        self.fastest = max(self.fastest, math.inf if pause <= 0 else got / pause)
        return pause


def real_guest(module: ModuleType, seed: int) -> Outcome:
    threading.excepthook = lambda args: None    # the student's error is reported, not printed
    rng = random.Random(seed)
    with Machine(memory="24MiB", reclaim=False) as m:
        vm = m.create_vm("guest", memory="8MiB")
        gos = uvm.guest.boot(vm, disk_latency=0, balloon=False)
        pace = _Watched(_new(module))
        driver = BalloonDriver(gos, vm.balloon, period=0.05, pace=pace)
        p = gos.spawn("data")
        data = {v: rng.randbytes(64) for v in p.alloc(1500)}       # most of its 2048 pages
        for v, b in data.items():
            p.write(v, b)
        vm.balloon.target = target = 1024
        deadline = time.monotonic() + 10.0
        while vm.balloon.size < target and driver.running and time.monotonic() < deadline:
            time.sleep(0.02)
        if pace.error is not None:
            raise pace.error
        size, hard, swapouts = vm.balloon.size, driver.hard, gos.swapouts
        lost = sum(p.read(v)[:64] != b for v, b in data.items())
        driver.stop()
    ok = size == target and lost == 0 and pace.fastest <= MAX_RATE * (1 + SLACK)
    return Outcome(ok, f"balloon {size} of {target} pages in a real guest ({hard} chunks needed "
                       f"reclaim, {swapouts} pages to the guest's swap), {lost} of {len(data)} "
                       f"pages of data lost",
                   "the driver must reach the target within 10 s without exceeding the maximum "
                   "rate")


STARTER = '''\
"""Lab balloon: the balloon driver's rate adaptation (read HANDOUT.md first).

Complete class Rate, then run `uvm lab check balloon` in this directory."""

from uvm.balloon import MAX_RATE, MIN_RATE, BalloonRate


class Rate(BalloonRate):
    """Decides how fast the guest's balloon driver inflates."""

    def __init__(self) -> None:
        self.rate = float(MAX_RATE)     # pages per second allowed now

    def chunk(self, remaining: int) -> int:
        # TODO: how many pages to ask the guest's allocator for next: at least 1, at most
        # `remaining` (what the balloon is short of its target). Small chunks let the
        # driver react; a few hundred pages is typical.
        raise NotImplementedError("TODO: return the number of pages to allocate next")

    def allocated(self, asked: int, got: int, reclaimed: int) -> float:
        # TODO: the guest gave `got` of `asked` pages and had to reclaim `reclaimed` pages
        # (drop cache, swap) to find them. Adapt self.rate (between MIN_RATE and MAX_RATE):
        # slow down when the guest had to work, speed up when it did not. Return how long
        # to pause before the next chunk, in seconds, so that the balloon never inflates
        # faster than self.rate.
        raise NotImplementedError("TODO: adapt self.rate and return the pause in seconds")
'''

LAB = Lab(
    name="balloon", title="the balloon driver's rate adaptation",
    section="section 3.2 (ballooning)", module="balloon.py", cls="Rate",
    build=f"""
A `uvm.balloon.BalloonRate`: the part of the guest's balloon driver (vmmemctl) that decides
how fast to inflate. The driver polls the host's target and, while the balloon is short of
it, asks your `chunk(remaining)` how many pages to allocate, allocates them from the guest
OS (pinned, so the guest cannot page them) and hands them to the host, then calls
`allocated(asked, got, reclaimed)` and pauses for the seconds you return. `reclaimed` says
how hard the guest found it: how many pages it had to reclaim (drop from its cache, or
write to its own swap) to satisfy the request. Keep `rate`, the pages per second you allow
now, between MIN_RATE ({MIN_RATE}) and MAX_RATE ({MAX_RATE}).""",
    why="""
A balloon is the host asking the guest to choose what to give up, and the guest needs time
to choose well: a driver that grabs everything at once forces the guest into emergency
reclaim, swapping out pages it will need, and can trip its out-of-memory killer. ESX's
driver allocates at an adaptive rate: fast while the guest has free memory, backing off
when allocation makes the guest reclaim. Plug yours into a guest with
`uvm.balloon.BalloonDriver(guest_os, vm.balloon, pace=Rate())` (boot with `balloon=False`).""",
    starter=STARTER,
    checks=(
        Check("reaches the target", "in a model guest with free memory, the balloon reaches its "
              "target exactly, never asking beyond it", reaches_target),
        Check("never faster than the maximum", f"no chunk inflates faster than MAX_RATE "
              f"({MAX_RATE} pages/s) and rate stays in [MIN_RATE, MAX_RATE]", never_too_fast),
        Check("backs off under memory pressure", "when the guest must reclaim every page, the "
              "balloon inflates at most a quarter as fast as when it has free pages, and still "
              "reaches the target", backs_off),
        Check("speeds up when pressure ends", "after the pressure, once the guest has free pages "
              "again, the rate climbs back to at least half the maximum within 12 chunks",
              recovers),
        Check("inflates a real guest", "plugged into the real balloon driver of a guest OS whose "
              "process holds most of its memory, the balloon reaches 1024 pages within 10 s and "
              "the process's data survives", real_guest, timeout=40.0),
    ))
