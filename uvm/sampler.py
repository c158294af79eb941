"""Idle memory sampling (paper section 5.3): how much of a VM's memory is active.

Each period of the VM's run time (default 30 s), the sampler watches `size` random resident
pages (default 100): their guest mappings are dropped, frames kept, so the guest's next
touch of one is a minor fault that the pager records (cext/sample.c). At the period's end
the count of touched pages t over the pages still sampled n is one observation of the
active fraction f; pages that left machine memory untouched (paged out, merged, ballooned)
drop out of n. The estimator (uvm.policy.estimate) smooths the observations; the sampler
also feeds it the running period's counts, so f can rise before the period ends.

Run time excludes time the VM was blocked (the low reclamation state), as ESX counts a
VM's own time. The sampler has no thread: the memory scheduler calls tick()."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uvm.periods import check_seconds
from uvm.policy.estimate import ActivityEstimator, PaperEstimator

if TYPE_CHECKING:
    from uvm.vm import VM

DEFAULT_PERIOD = 30.0
DEFAULT_SIZE = 100


def check_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
        raise ValueError(f"sample_size: must be an integer from 1 to 65536, got {value!r}")
    return value


class IdleSampler:
    """One VM's sampler: `active` is its current estimate of f."""

    def __init__(self, vm: VM, estimator: ActivityEstimator | None = None,
                 period: float = DEFAULT_PERIOD, size: int = DEFAULT_SIZE) -> None:
        self.vm = vm
        self.estimator = estimator or PaperEstimator()
        self.period = check_seconds(period, "sample_period")
        self.size = check_size(size)
        self.watching: list[int] = []       # this period's sample
        self.touched = 0                    # of it, touched so far
        self.sampled = 0                    # of it, still counted (not gone untouched)
        self.periods = 0
        self.history: list[tuple[int, int]] = []    # (touched, sampled) per finished period
        self._run_time = 0.0
        self._active = self.estimator.estimate(0, 0)

    def restart(self, estimator: ActivityEstimator | None = None) -> None:
        """Forgets every period so far (e.g. after the VM's boot, whose touches say nothing
        about its working set) and starts afresh, with a new estimator if given."""
        self.estimator = estimator or type(self.estimator)()
        self.watching, self.touched, self.sampled = [], 0, 0
        self.periods, self.history, self._run_time = 0, [], 0.0
        self._active = self.estimator.estimate(0, 0)

    @property
    def active(self) -> float:
        """The estimated active fraction f, in [0, 1]."""
        return self._active

    def tick(self, run_time: float) -> None:
        """The VM ran `run_time` more seconds: count touches, close the period if it is
        over and start the next, and update the estimate."""
        self._run_time += run_time
        self._count()
        if self._run_time >= self.period or not self.watching:
            if self.watching:
                self.estimator.period_done(self.touched, self.sampled)
                self.history.append((self.touched, self.sampled))
                self.periods += 1
            self._run_time = 0.0
            self.watching = self.vm.watch_random(self.size)
            self.touched, self.sampled = 0, len(self.watching)
        self._active = min(1.0, max(0.0, self.estimator.estimate(self.touched, self.sampled)))

    def _count(self) -> None:
        status = self.vm.watched(self.watching)
        self.touched = status.count("touched")
        self.sampled = len(status) - status.count("gone")
