"""Lab estimator: the active-memory estimator (paper section 5.3).

The grader needs no machine: it feeds the student's estimator traces of sampling periods
(t touched of n sampled pages), as the idle sampler would, and checks how the estimate
moves: it stays a fraction, follows a steady working set, rises within a period when the
working set grows, falls slowly when it shrinks, and ignores a period with nothing sampled."""

from __future__ import annotations

import random
from types import ModuleType

from uvm.labs.base import Check, Feedback, Lab, Outcome, solution_class
from uvm.policy import ActivityEstimator

N = 100             # pages sampled per period, as the paper's default
STEADY = 30         # periods that settle any sensible estimator


def _new(module: ModuleType) -> ActivityEstimator:
    return solution_class(module, LAB, ActivityEstimator)()


def _value(est: ActivityEstimator, touched: int, sampled: int) -> float:
    """estimate(), or Feedback unless it is a number in [0, 1]."""
    f = est.estimate(touched, sampled)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
        raise Feedback(f"estimate({touched}, {sampled}) returned {f!r}: it must be a fraction "
                       f"in [0, 1]")
    return float(f)


def _settled(module: ModuleType, f: float, periods: int = STEADY) -> ActivityEstimator:
    """A new estimator fed `periods` periods in which exactly f of the pages were touched."""
    est = _new(module)
    for _ in range(periods):
        _value(est, 0, N)
        est.period_done(round(f * N), N)
    return est


def in_range(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    est = _new(module)
    lo, hi, calls = 1.0, 0.0, 0
    for _ in range(60):
        f = rng.choice([rng.random(), 0.0, 1.0])
        t = sum(rng.random() < f for _ in range(N))
        for seen in sorted(rng.randrange(t + 1) for _ in range(3)) + [t]:
            v = _value(est, seen, N)
            lo, hi, calls = min(lo, v), max(hi, v), calls + 1
        est.period_done(t, N)
    return Outcome(True, f"{calls} estimates, all in [{lo:.2f}, {hi:.2f}]")


def steady(module: ModuleType, seed: int) -> Outcome:
    rng = random.Random(seed)
    f = rng.choice([0.2, 0.3, 0.4])
    est = _new(module)
    for _ in range(STEADY):
        _value(est, 0, N)
        est.period_done(sum(rng.random() < f for _ in range(N)), N)
    v = _value(est, 0, N)
    ok = f - 0.1 <= v <= f + 0.12
    return Outcome(ok, f"f = {v:.3f} after {STEADY} noisy periods around {f} (want {f - 0.1:.2f} "
                       f"to {f + 0.12:.2f})",
                   "a steady working set should give an estimate near t / n: average the periods")


def rises_fast(module: ModuleType, seed: int) -> Outcome:
    est = _settled(module, 0.1)
    before = _value(est, 0, N)
    est.period_done(90, N)
    v = _value(est, 0, N)
    return Outcome(v >= 0.45, f"f = {v:.3f} one period after the working set grew from 0.1 to "
                              f"0.9 (was {before:.2f}; want >= 0.45)",
                   "a slow average alone lags a growing working set: keep a fast one too "
                   "and take the larger")


def within_period(module: ModuleType, seed: int) -> Outcome:
    est = _settled(module, 0.1)
    start = _value(est, 0, N)
    v = _value(est, 60, N)
    ok = v >= 0.3 and v > start
    return Outcome(ok, f"f = {v:.3f} with 60 of {N} pages already touched in the running "
                       f"period (was {start:.2f} at its start; want >= 0.30)",
                   "use the running period's counts: touched / sampled so far is the least this "
                   "period's observation will be; fold it into the fast average (the max rule)")


def falls_slowly(module: ModuleType, seed: int) -> Outcome:
    est = _settled(module, 0.9)
    est.period_done(10, N)
    v = _value(est, 0, N)
    return Outcome(v >= 0.7, f"f = {v:.3f} one period after the working set shrank from 0.9 to "
                             f"0.1 (want >= 0.70)",
                   "a fast average drops at once: keep a slow one too and take the larger, so a "
                   "VM is not taxed for one quiet period")


def falls_eventually(module: ModuleType, seed: int) -> Outcome:
    est = _settled(module, 0.9)
    for _ in range(40):
        _value(est, 0, N)
        est.period_done(10, N)
    v = _value(est, 0, N)
    return Outcome(v <= 0.2, f"f = {v:.3f} after 40 periods at 0.1 following 0.9 (want <= 0.20)",
                   "the slow average must still converge to what the guest touches now")


def empty_period(module: ModuleType, seed: int) -> Outcome:
    est = _settled(module, 0.5, 10)
    before = _value(est, 0, 0)
    est.period_done(0, 0)
    after = _value(est, 0, 0)
    ok = abs(after - before) < 1e-9
    return Outcome(ok, f"f = {before:.3f} before and {after:.3f} after a period that sampled "
                       f"nothing",
                   "a period with sampled = 0 (no page could be watched) says nothing about f: "
                   "ignore it, and never divide by zero")


STARTER = '''\
"""Lab estimator: the active-memory estimator (read HANDOUT.md first).

Complete class Estimator, then run `uvm lab check estimator` in this directory."""

from uvm.policy import ActivityEstimator


class Estimator(ActivityEstimator):
    """Estimates a VM's active fraction f from idle sampling: each period the sampler
    watches `sampled` random pages and counts how many of them the guest touched."""

    def __init__(self) -> None:
        # TODO: the state kept between periods: a slow and a fast exponentially weighted
        # moving average of touched / sampled (choose their gains), none before period one.
        pass

    def period_done(self, touched: int, sampled: int) -> None:
        # TODO: a period ended with `touched` of `sampled` watched pages touched: fold
        # touched / sampled into both averages. A period with sampled == 0 carries no
        # information.
        raise NotImplementedError("TODO: fold the finished period's touched / sampled into "
                                  "your slow and fast averages")

    def estimate(self, touched: int, sampled: int) -> float:
        # TODO: return f in [0, 1] now. touched / sampled are the running period's counts so
        # far (sampled may be 0): touched only grows during a period, so it bounds this
        # period's observation from below. Return the largest of the slow average, the fast
        # average, and the fast average updated with that partial observation (the paper's
        # max rule: rise quickly, fall slowly). Before any period, decide what a new VM is.
        raise NotImplementedError("TODO: return the largest of the slow, the fast and the "
                                  "current-period estimates")
'''

LAB = Lab(
    name="estimator", title="the active-memory estimator", section="section 5.3 (measuring idle memory)",
    module="estimator.py", cls="Estimator",
    build="""
An `uvm.policy.ActivityEstimator`: the piece that turns idle sampling's noisy observations
into the active fraction f that the idle memory tax uses. Each sampling period the sampler
watches n random pages of a VM (it unmaps them, so the guest's next touch faults) and counts
the t that were touched; t / n is one observation of f. Your `Estimator` gets
`period_done(t, n)` when a period ends and is asked `estimate(t, n)` at any time, with the
counts of the period still running.

Follow the paper: keep a slow and a fast exponentially weighted moving average of t / n,
and a version of the fast one that includes the current, incomplete period; f is the
largest of the three.""",
    why="""
The idle memory tax charges a VM more for memory it does not use, so f decides who loses
memory when the machine is overcommitted. An estimate that falls at once punishes a VM for
one quiet period (and it loses memory it needs a moment later); one that rises slowly lets
a VM that just became busy be squeezed while it is busy. The max rule is asymmetric on
purpose: respond quickly to growth, slowly to shrinkage. Plug yours into a machine with
`uvm.MemoryPolicy(estimator=Estimator)` and watch `active` in `uvm run`.""",
    starter=STARTER,
    checks=(
        Check("stays a fraction", "over a random trace, with estimates asked mid-period too, "
              "every estimate is a number in [0, 1]", in_range),
        Check("follows a steady working set", "after 30 noisy periods around f, the estimate "
              "is near f", steady),
        Check("rises fast", "one period after f jumps from 0.1 to 0.9, the estimate is at least "
              "0.45", rises_fast),
        Check("rises within the running period", "with 60 of 100 pages already touched in the "
              "running period (after periods at 0.1), the estimate is at least 0.3", within_period),
        Check("falls slowly", "one period after f drops from 0.9 to 0.1, the estimate is still "
              "at least 0.7", falls_slowly),
        Check("falls eventually", "after 40 periods at 0.1, the estimate is at most 0.2",
              falls_eventually),
        Check("ignores an empty period", "a period that sampled no page changes nothing (and "
              "divides by nothing)", empty_period),
    ))
