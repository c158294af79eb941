"""Estimating a VM's active fraction f from idle sampling (paper section 5.3).

Each sampling period the sampler watches n random resident pages and counts how many the
guest touches again (t); t / n is one noisy observation of f. An estimator turns the
sequence of observations, and the counts of the period still running, into the f that the
idle memory tax uses."""

from __future__ import annotations

from abc import ABC, abstractmethod


def _check_gain(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name}: must be a number in (0, 1], got {value!r}")
    return float(value)


class ActivityEstimator(ABC):
    """The interface: one estimator per VM, fed by that VM's sampler."""

    @abstractmethod
    def period_done(self, touched: int, sampled: int) -> None:
        """A sampling period ended: `touched` of `sampled` watched pages were touched."""

    @abstractmethod
    def estimate(self, touched: int, sampled: int) -> float:
        """The active fraction f in [0, 1] now, given the counts of the period still
        running so far (sampled is 0 before its first page is watched)."""


class PaperEstimator(ActivityEstimator):
    """ESX's estimator: a slow and a fast exponentially weighted moving average of t / n,
    and a version of the fast one that includes the current, incomplete period (the least
    the fast average will be once the period ends, given the touches so far); f is the
    largest of the three, so it rises quickly when the working set grows and falls slowly
    when it shrinks. The gains are ours (the paper gives none): fast 0.5, slow 0.125."""

    def __init__(self, fast_gain: float = 0.5, slow_gain: float = 0.125) -> None:
        self.fast_gain = _check_gain(fast_gain, "fast_gain")
        self.slow_gain = _check_gain(slow_gain, "slow_gain")
        self.slow: float | None = None
        self.fast: float | None = None
        self.current = 0.0          # the fast average with the running period folded in

    def period_done(self, touched: int, sampled: int) -> None:
        if sampled <= 0:
            return
        x = touched / sampled
        self.slow = x if self.slow is None else self.slow + self.slow_gain * (x - self.slow)
        self.fast = x if self.fast is None else self.fast + self.fast_gain * (x - self.fast)

    def estimate(self, touched: int, sampled: int) -> float:
        if self.fast is None or self.slow is None:
            # no period finished yet: a new VM counts as fully active until it is measured,
            # so that it is not taxed on a half-counted first sample
            self.current = 1.0
            return self.current
        # touched only grows during a period, so touched / sampled is a lower bound of the
        # period's observation, and this the least the fast average will be after it
        partial = touched / sampled if sampled else 0.0
        self.current = self.fast + self.fast_gain * max(0.0, partial - self.fast)
        return max(self.slow, self.fast, self.current)


class LastPeriod(ActivityEstimator):
    """The simplest alternative: f is the last finished period's t / n (1 before the first),
    with no smoothing, so it follows the working set at once in both directions, noise and
    all."""

    def __init__(self) -> None:
        self.last = 1.0

    def period_done(self, touched: int, sampled: int) -> None:
        if sampled > 0:
            self.last = touched / sampled

    def estimate(self, touched: int, sampled: int) -> float:
        return self.last
