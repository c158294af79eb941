"""Kernel-course labs: a student replaces one of uvm's memory-management pieces and an
autograder checks it on seeded scenarios (docs/labs.md).

    uvm lab list
    uvm lab start NAME DIR       HANDOUT.md and the starter module, in DIR
    uvm lab check NAME [DIR]     grade DIR's module (default: the current directory)

A lab is one module here defining LAB (a uvm.labs.base.Lab): its handout, its starter
module and its checks. Adding a lab is adding a module and listing it in REGISTRY."""

from __future__ import annotations

from pathlib import Path

from uvm.labs import allocation, balloon, estimator, sidechannel, victims
from uvm.labs.base import Check, Feedback, Lab, Outcome
from uvm.labs.grader import Report, Result, grade

REGISTRY: dict[str, Lab] = {lab.name: lab for lab in (victims.LAB, estimator.LAB, allocation.LAB,
                                                       balloon.LAB, sidechannel.LAB)}

HANDOUT = "HANDOUT.md"

__all__ = ["REGISTRY", "Lab", "Check", "Outcome", "Feedback", "Report", "Result", "grade", "start",
           "get"]


def get(name: str) -> Lab:
    """The lab called name, or ValueError listing the labs."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"NAME: no lab {name!r} (labs: {', '.join(REGISTRY)})") from None


def start(lab: Lab, directory: Path) -> list[Path]:
    """Writes HANDOUT.md and the starter module into directory (created if needed); returns
    their paths. ValueError, writing nothing, if either exists: a student's work is never
    overwritten."""
    files = {directory / HANDOUT: lab.handout(), directory / lab.module: lab.starter}
    try:
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"DIR: {directory} exists and is not a directory")
        taken = [str(p) for p in files if p.exists()]
    except OSError as e:            # e.g. a directory of another user's, or a name too long
        raise ValueError(f"DIR: cannot look into {directory}: {e.strerror}") from e
    if taken:
        raise ValueError(f"DIR: {' and '.join(taken)} already {'exists' if len(taken) == 1 else 'exist'}; "
                         f"uvm lab start never overwrites (pick another directory, or move it away)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
    except OSError as e:
        raise ValueError(f"DIR: cannot write into {directory}: {e.strerror}") from e
    return list(files)
