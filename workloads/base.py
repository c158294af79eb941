"""Workloads: toy guest programs, and the Run that executes one inside a VM.

A workload is a small object whose `step` does a few milliseconds of work (the heavy loops
are C, with the GIL released) and returns how many operations it did, or None when it has
finished. The Run calls `step` on its own named thread until the workload finishes or is
stopped, keeps its progress (operations done, operations per second over the last second),
and captures any error so that `join` re-raises it in the caller."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from uvm.errors import VMStopped
from uvm.seeds import check_seed

if TYPE_CHECKING:
    from uvm.vm import VM

__all__ = ["Workload", "Run", "check_fraction", "check_seed", "check_guarded"]

RATE_WINDOW = 1.0   # seconds over which ops_per_s is measured
# A workload's steps are mostly Python (a guest OS in Python), so its thread holds the GIL
# almost always, releasing it only for short C calls that it re-takes before a waiting
# thread has woken up. Every other thread (the caller's, the scheduler's, the balloon
# drivers') then waits the interpreter's switch interval, 5 ms, each time it comes back
# from a C call: measured, a plain vm.read of one page took 0.8-13.5 ms beside one running
# guest workload instead of 25 us. Sleeping 0 s hands the GIL over; once a millisecond it
# costs the workload a few per cent and bounds the others' wait near a millisecond.
GIL_YIELD_S = 0.001

BLOCKED_POLL = 0.05  # seconds between checks for stop while the VM is blocked


class Workload(ABC):
    """A toy guest program. Subclasses set `kind` (its name in scenario files)."""

    kind: ClassVar[str]

    def start(self, vm: VM) -> None:
        """Called once on the caller's thread before the run starts: check that the
        workload fits the VM (raise ValueError naming the field) and set up state."""

    @abstractmethod
    def step(self, vm: VM) -> int | None:
        """Does a slice of work; returns operations done, or None when finished."""


def check_fraction(value: object, name: str) -> float:
    """Returns a probability; ValueError naming `name` unless it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
    return float(value)


def check_guarded(vm: VM, result: int) -> int:
    """Turns a guarded C loop's -EFAULT into VMStopped; returns the result otherwise."""
    if result < 0:
        raise VMStopped(vm.name, vm.stopped or "memory access failed")
    return result


class Run:
    """One workload running in one VM on a thread of its own."""

    def __init__(self, vm: VM, workload: Workload) -> None:
        workload.start(vm)
        self.vm = vm
        self.workload = workload
        self.ops = 0
        self.error: BaseException | None = None
        self.started = 0.0
        self.finished: float | None = None
        self._stop = threading.Event()
        self._marks: deque[tuple[float, int]] = deque(maxlen=64)
        self._thread = threading.Thread(target=self._main, name=f"uvm-guest-{vm.name}-{workload.kind}",
                                        daemon=True)

    def __repr__(self) -> str:
        return f"<Run {self.workload.kind} in {self.vm.name!r}: {self.ops} ops>"

    def start(self) -> None:
        self.started = time.monotonic()
        self._marks.append((self.started, 0))
        self._thread.start()

    def _main(self) -> None:
        yielded = time.monotonic()
        try:
            while not self._stop.is_set():
                if not self.vm.wait_runnable(BLOCKED_POLL):
                    continue            # blocked by the memory scheduler: descheduled
                n = self.workload.step(self.vm)
                if n is None:
                    break
                self.ops += n
                now = time.monotonic()
                if now - self._marks[-1][0] >= 0.05:
                    self._marks.append((now, self.ops))
                if now - yielded >= GIL_YIELD_S:
                    time.sleep(0)       # see GIL_YIELD_S
                    yielded = now
        except BaseException as e:  # captured, re-raised by join()
            self.error = e
        finally:
            self.finished = time.monotonic()

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def ops_per_s(self) -> float:
        """Operations per second over about the last second, up to now (0 once finished,
        or while the VM is blocked)."""
        if self.done or not self._marks:
            return 0.0
        now = time.monotonic()
        marks = tuple(self._marks)      # one step under the GIL: the run's thread appends
        for t, ops in reversed(marks):  # meanwhile (iterating the deque itself raised)
            if now - t >= RATE_WINDOW:
                break
        return (self.ops - ops) / (now - t) if now > t else 0.0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def stop(self) -> None:
        """Asks the workload to stop after its current step."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the run to end; returns whether it did. Never raises its error."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> int:
        """Waits for the run to end and re-raises its error, if any; returns ops done."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self!r} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.ops
