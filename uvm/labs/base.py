"""What every lab is: a handout, a starter module with the class to complete, and named
checks that grade a student's module.

A check is a function of the student's module and a seed; it returns an Outcome (passed or
not, the figure it measured, a hint) or raises Feedback to fail with one clear line. Checks
never trust the student's code: uvm/labs/grader.py runs each one in a child process with a
timeout, so an exception, a hang or a crash in the student's code is a failed check, never a
crash of the grader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar, cast

T = TypeVar("T")


class Feedback(Exception):
    """A check failed for a reason one line says (the grader shows no traceback)."""


@dataclass(frozen=True)
class Outcome:
    """What a check found: whether it passed, the figure it measured, and a hint for a
    student whose code failed it."""
    passed: bool
    measured: str
    hint: str = ""


@dataclass(frozen=True)
class Check:
    """One named property the grader checks; `what` is the handout's line about it."""
    name: str
    what: str
    run: Callable[[ModuleType, int], Outcome]
    timeout: float = 20.0           # seconds, before the check counts as hung


@dataclass(frozen=True)
class Lab:
    """A lab: `module` is the file the student completes, defining class `cls`."""
    name: str
    title: str
    section: str                    # the paper's section(s)
    module: str                     # e.g. "victims.py"
    cls: str                        # e.g. "Victims"
    build: str                      # handout: what to build (markdown)
    why: str                        # handout: why it matters (markdown)
    starter: str                    # the starter module's source
    checks: tuple[Check, ...]

    def handout(self) -> str:
        """HANDOUT.md: what to build, why, the paper's section, what the grader checks and
        how to run it."""
        checks = "\n".join(f"{i}. **{c.name}**: {c.what}" for i, c in enumerate(self.checks, 1))
        return (f"# Lab {self.name}: {self.title}\n\n"
                f"Paper: Carl A. Waldspurger, *Memory Resource Management in VMware ESX Server*, "
                f"OSDI 2002, {self.section}.\n\n"
                f"## What to build\n\n{self.build.strip()}\n\n"
                f"Complete class `{self.cls}` in `{self.module}` (every method that raises "
                f"NotImplementedError, following its TODO comment). Keep the file's name and the "
                f"class's name: the grader imports them.\n\n"
                f"## Why\n\n{self.why.strip()}\n\n"
                f"## What the grader checks\n\n{checks}\n\n"
                f"Each check prints PASS or FAIL with the figure it measured and, on a failure, "
                f"a hint and the traceback of your code if it raised. The scenarios are seeded: "
                f"the same seed replays the same workload (`--seed N`, default 1).\n\n"
                f"## Run the grader\n\n"
                f"From this directory:\n\n    uvm lab check {self.name}\n\n"
                f"or from anywhere: `uvm lab check {self.name} DIR`. The exit status is 0 only when "
                f"every check passes. Labs run as an ordinary user (user-mode userfaultfd).\n")


def solution_class(module: ModuleType, lab: Lab, base: Callable[..., T]) -> Callable[..., T]:
    """The class the student completed in `module` (a subclass of `base`), or Feedback
    saying what is missing."""
    cls = getattr(module, lab.cls, None)
    if not isinstance(cls, type):
        raise Feedback(f"{lab.module} defines no class {lab.cls} (keep the starter's class name)")
    assert isinstance(base, type)
    if not issubclass(cls, base):
        raise Feedback(f"{lab.cls} must subclass {base.__module__}.{base.__qualname__}")
    return cast(Callable[..., T], cls)
