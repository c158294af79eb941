"""Reclamation states by free machine memory (paper section 6.2).

    state  entered when free memory falls below   reclaims by
    high   (normal)                                nothing
    soft   soft (4%)                               ballooning; paging where a balloon cannot
    hard   hard (2%)                               host paging, forced
    low    low (1%)                                paging, and VMs above target are blocked

Leaving a state for the next better one needs free memory back at the threshold of the
state above it (soft -> high at 6%, hard -> soft at 4%, low -> hard at 2%), one step at a
time: that gap is the hysteresis that keeps the state from flapping when free memory hovers
around a threshold."""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("high", "soft", "hard", "low")


@dataclass(frozen=True)
class Thresholds:
    """Free memory thresholds, as fractions of machine memory (settable)."""
    high: float = 0.06
    soft: float = 0.04
    hard: float = 0.02
    low: float = 0.01

    def __post_init__(self) -> None:
        for name in STATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"thresholds.{name}: must be a fraction in (0, 1), got {value!r}")
        if not self.high > self.soft > self.hard > self.low:
            raise ValueError(f"thresholds: must decrease from high to low, got high {self.high}, "
                             f"soft {self.soft}, hard {self.hard}, low {self.low}")

    def entry(self, state: str) -> float:
        """Free memory below which `state` is entered (high: never)."""
        return {"high": 1.0, "soft": self.soft, "hard": self.hard, "low": self.low}[state]

    def exit(self, state: str) -> float:
        """Free memory at which `state` is left for the next better one."""
        return {"high": 0.0, "soft": self.high, "hard": self.soft, "low": self.hard}[state]


class ReclaimStates:
    """The state machine: feed it free memory (a fraction), read the state."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.state = "high"

    def update(self, free: float) -> str:
        """Moves to the state `free` calls for and returns it."""
        t = self.thresholds
        worse = self.state
        for s in STATES[STATES.index(self.state) + 1:]:
            if free < t.entry(s):
                worse = s
        if worse != self.state:
            self.state = worse
        elif self.state != "high" and free >= t.exit(self.state):
            self.state = STATES[STATES.index(self.state) - 1]
        return self.state
