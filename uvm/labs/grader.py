"""Grading a student's module: every check of a lab in a child process of its own.

Why a process per check, not a thread: a student's code may raise, loop forever, or touch a
stopped VM's memory (SIGBUS kills a process, not a thread). A forked child imports the
student's module, says so, runs one check and sends back its Outcome or the student's
error; the parent waits at most the check's timeout, then kills it (a child that never
said it imported hung in the module's top-level code: reported once, as an import that
failed). Nothing the student writes can take the grader down, and a check starts from the
same state whatever the previous one did.
Forking (not spawning) keeps a check cheap: uvm is already imported in the parent, which
runs no threads of its own while it grades."""

from __future__ import annotations

import importlib.util
import multiprocessing
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType

from uvm.errors import UserfaultfdUnavailable
from uvm.labs.base import Check, Feedback, Lab, Outcome

KILL_WAIT = 5.0         # seconds to wait for a killed child
IMPORTED = "imported"   # the child's first message: the student's module imported


@dataclass(frozen=True)
class Result:
    """A graded check: its outcome, and the student's error if their code raised."""
    name: str
    passed: bool
    measured: str
    hint: str = ""
    error: str = ""             # the student's traceback or a one-line reason
    imported: bool = True       # False: the student's module failed to import

    def lines(self) -> list[str]:
        out = [f"  {'PASS' if self.passed else 'FAIL'}  {self.name}: {self.measured}"]
        if not self.passed and self.hint:
            out.append(f"        hint: {self.hint}")
        return out + [f"        | {line}" for line in self.error.rstrip().splitlines()]


@dataclass
class Report:
    lab: str
    seed: int
    path: Path
    results: list[Result] = field(default_factory=list)

    @property
    def score(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def header(self) -> str:
        return f"lab {self.lab}: grading {self.path} (seed {self.seed})"

    def summary(self) -> str:
        verdict = "all checks pass" if self.passed else "not yet"
        return f"score: {self.score}/{len(self.results)} ({verdict})"


def check_seed(seed: int, check: Check) -> int:
    """The seed one check runs with: fixed by the lab's seed and the check's name."""
    return random.Random(f"{seed}:{check.name}").getrandbits(32)


def load(path: Path, lab: Lab) -> ModuleType:
    """Imports the student's module from path (its directory first on sys.path)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"uvm_lab_{lab.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def grade(lab: Lab, directory: Path, seed: int = 1, log: Callable[[str], None] | None = None,
          timeout: float | None = None) -> Report:
    """Grades DIRECTORY/lab.module on every check of lab; `log` gets the report's lines as
    they come; `timeout` (seconds) replaces each check's own. ValueError if the module is
    not there."""
    try:
        path = (directory / lab.module).resolve()
        found = path.is_file()
    except OSError as e:            # e.g. a directory of another user's, or a name too long
        raise ValueError(f"DIR: cannot look into {directory}: {e.strerror}") from e
    if not found:
        raise ValueError(f"DIR: no {lab.module} in {directory} (uvm lab start {lab.name} "
                         f"{directory} writes the starter)")
    report = Report(lab.name, seed, path)
    say = log or (lambda line: None)
    say(report.header())
    unloadable = ""
    for check in lab.checks:
        if unloadable:
            result = Result(check.name, False, "not run", error=unloadable)
        else:
            result = _run(check, path, lab, check_seed(seed, check), timeout or check.timeout)
            if not result.imported:
                unloadable = f"not run: {lab.module} does not import (see above)"
        report.results.append(result)
        for line in result.lines():
            say(line)
    say(report.summary())
    return report


def _run(check: Check, path: Path, lab: Lab, seed: int, timeout: float) -> Result:
    """Runs one check in a forked child, bounded by `timeout` seconds."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(check, path, lab, seed, send),
                        name=f"uvm-lab-{lab.name}", daemon=True)
    child.start()
    send.close()
    deadline = time.monotonic() + timeout
    imported = False
    try:
        while receive.poll(max(0.0, deadline - time.monotonic())):
            try:
                answer: Result | str = receive.recv()
            except EOFError:
                break                   # the child died before it could answer
            if isinstance(answer, Result):
                return answer
            imported = True             # IMPORTED: the module's own code is done
        else:
            child.kill()
            if not imported:
                return Result(check.name, False, f"import did not finish within {timeout:g} s",
                              f"code at the top level of {lab.module} runs when the grader "
                              f"imports it: put your own tests under "
                              f"`if __name__ == \"__main__\":`",
                              "timed out: the import was stopped", imported=False)
            return Result(check.name, False, f"no answer within {timeout:g} s",
                          "your code may loop forever or wait for something that never comes",
                          "timed out: the check was stopped")
    finally:
        child.join(KILL_WAIT)
        if child.is_alive():            # answered, but threads of the student's keep it up
            child.kill()
            child.join(KILL_WAIT)
        receive.close()
    code = child.exitcode
    why = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exited with status {code}")
    return Result(check.name, False, f"the check's process {why}",
                  "SIGBUS means memory of a stopped VM was touched; SIGSEGV a bad pointer",
                  f"crashed: {why}")


def _child(check: Check, path: Path, lab: Lab, seed: int, send: Connection) -> None:
    """The child's half: import, run, send one Result."""
    try:
        module = load(path, lab)
    except BaseException as e:          # a syntax error, or any failure of the import
        send.send(Result(check.name, False, "import failed",
                         f"fix {lab.module} so that `python {lab.module}` runs",
                         student_error(e, path), imported=False))
        return
    send.send(IMPORTED)
    try:
        outcome = check.run(module, seed)
    except Feedback as e:
        outcome = Outcome(False, str(e))
    except UserfaultfdUnavailable as e:     # this machine, not the student's code
        outcome = Outcome(False, f"cannot run a VM here: {e}",
                          "labs need Linux 6.6 or later (userfaultfd on shmem; docs/labs.md, Setup)")
    except BaseException as e:
        theirs = any(Path(f.filename).resolve() == path for f in traceback.extract_tb(e.__traceback__))
        send.send(Result(check.name, False,
                         ("your code raised " if theirs else "the check raised ") + type(e).__name__,
                         _hint(e, theirs), student_error(e, path)))
        return
    send.send(Result(check.name, outcome.passed, outcome.measured, outcome.hint))


def _hint(e: BaseException, theirs: bool) -> str:
    if isinstance(e, NotImplementedError):
        return "complete the method (its TODO comment says what to do)"
    if theirs:
        return "the traceback below shows where"
    return "from what your code returned or did, or a bug in the grader: see the traceback"


def student_error(e: BaseException, path: Path) -> str:
    """The student's error: for NotImplementedError one line saying which method, otherwise
    the traceback cut to the frames in their file (the whole one if none is)."""
    frames = traceback.extract_tb(e.__traceback__)
    theirs = [f for f in frames if Path(f.filename).resolve() == path]
    if isinstance(e, NotImplementedError) and theirs:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not implemented"
        return f"{path.name}, line {theirs[-1].lineno}, in {theirs[-1].name}: {first}"
    shown = traceback.format_list(theirs or ([] if isinstance(e, SyntaxError) else frames))
    return "".join(["Traceback (your code):\n", *shown, *traceback.format_exception_only(type(e), e)])
