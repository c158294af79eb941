"""The `uvm` command line.

    uvm run                      the built-in default scenario (an overcommitted machine)
    uvm run FILE.toml            a scenario file (format: uvm/scenario.py, or the default's
                                 own file, uvm/default_scenario.toml)
        --duration SECONDS --every SECONDS --seed N --json TIMELINE.jsonl
        --summary-json FILE --wide --map --map-every SECONDS --map-out DIR
    uvm experiment NAME          one of the paper's experiments (uvm/experiments/)
        --quick --out DIR --seed N --repeat N --map-every SECONDS
    uvm reproduce                every experiment, and a report of the paper vs uvm
        --quick --out DIR --only NAMES --repeat N --seed N --page FILE   (uvm/reproduce/)
    uvm sweep GRID.toml          a grid of trials of a scenario or experiment (uvm/sweep/)
        --jobs N --out DIR --resume --ray ADDRESS
    uvm top [PID|PATH] [--json FILE] [--once] | --list
                                 esxtop's memory panel of a running run (uvm/top/)
    uvm schema NAME              the JSON Schema of an output (uvm/schema.py)
    uvm lab list | start NAME DIR | check NAME [DIR] --seed N --timeout SECONDS
                                 kernel-course labs with an autograder (uvm/labs/)
    uvm --version

User mistakes (a bad scenario or argument, no userfaultfd) print `uvm: error: ...` and exit
with status 2, without a traceback. Other commands are added as subparsers in `_parser`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from rich.console import Console

from uvm import (again, experiments, labs, live, pagemap, record, reproduce, resolved, scenario,
                 schema, sweep, top)
from uvm.errors import UserfaultfdUnavailable
from uvm.experiments.runner import check_repeat
from uvm.interrupts import Interrupted, Interrupts
from uvm.machine import Machine, resolve_fault_path
from uvm.periods import check_period, check_seconds
from uvm.seeds import check_seed
from uvm.sizes import format_size

EXIT_USAGE = 2          # a user mistake, as argparse uses it
EXIT_FAILED = 1         # a workload failed (e.g. Verify found lost data)
EXIT_INTERRUPTED = 130  # Ctrl-C
LOG_WIDTH = 160         # columns of the summary when stdout is not a terminal


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (ValueError, UserfaultfdUnavailable) as e:
        print(f"uvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:     # an experiment stopped, or a second Ctrl-C
        print("uvm: interrupted", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Interrupted) else EXIT_INTERRUPTED
    except BrokenPipeError:             # the reader left (`uvm lab check ... | head`)
        _quiet_stdout()
        return 128 + signal.SIGPIPE


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so that flushing what is left in its buffer at exit does
    not fail again on the closed pipe (Python's advice for a broken pipe)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uvm", description="A user-space emulator of VMware ESX Server's memory manager.")
    parser.add_argument("--version", action="version", version=record.version_line())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_run(commands)
    _add_experiment(commands)
    _add_reproduce(commands)
    _add_sweep(commands)
    _add_lab(commands)
    _add_schema(commands)
    _add_top(commands)
    return parser


def _add_top(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "top", help="esxtop's memory panel of a running `uvm run`",
        description="Attaches to a running `uvm run` (through its socket: the only one running, "
                    "or the one of PID, or the socket PATH) or follows a --json timeline file, "
                    "and shows esxtop's memory panel until the run ends. See docs/top.md.")
    p.add_argument("target", nargs="?", metavar="PID|PATH", help="which run (default: the only one)")
    p.add_argument("--json", metavar="FILE", help="follow this timeline (uvm run --json FILE)")
    p.add_argument("--once", action="store_true", help="print one panel and exit")
    p.add_argument("--list", action="store_true", help="list the running runs (pid, socket)")
    p.set_defaults(command=_top)


def _top(args: argparse.Namespace) -> int:
    """`uvm top`: the panel of a running run, until it ends (or the list of runs)."""
    if args.list:
        print("\n".join(top.listing()) or "uvm: no running `uvm run`")
        return 0
    return top.attach(args.target, args.json, _console(), args.once)


def _add_sweep(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "sweep", help="run a grid of trials of a scenario or experiment",
        description="Runs every point of GRID.toml's grid for each seed and repeat, each trial in "
                    "a process of its own, on this host or a Ray cluster; writes DIR/results.csv, "
                    "DIR/results.jsonl (one row per trial) and DIR/sweep.png. Format: uvm/sweep/grid.py.")
    p.add_argument("grid", metavar="GRID.toml", help="the grid file")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="trials at once on this host (default: the CPUs; never more than fit in memory)")
    p.add_argument("--out", metavar="DIR", help="where the table goes (default: sweeps/GRID)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep in DIR: skip trials already in its table")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on the Ray cluster at ADDRESS (host:port; needs uvm[ray])")
    p.set_defaults(command=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    """`uvm sweep`: run the grid, a line per finished trial."""
    out = Path(args.out or Path("sweeps") / Path(args.grid).stem)
    table = sweep.sweep(args.grid, out, jobs=args.jobs, resume=args.resume, ray=args.ray,
                        log=lambda line: print(line, flush=True))
    return EXIT_FAILED if any(r["status"] != "ok" for r in table.rows) else 0


def _add_lab(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "lab", help="kernel-course labs: replace a policy, get it graded",
        description="Labs: write one piece of the memory manager (a policy) and have it graded "
                    "on seeded scenarios. See docs/labs.md.")
    sub = p.add_subparsers(title="lab commands", metavar="LABCOMMAND", required=True)
    sub.add_parser("list", help="list the labs").set_defaults(command=_lab_list)
    names = sorted(labs.REGISTRY)
    start = sub.add_parser("start", help="write a lab's handout and starter module into DIR")
    start.add_argument("name", choices=names, metavar="NAME", help=f"one of: {', '.join(names)}")
    start.add_argument("dir", metavar="DIR", help="where to write (created if needed)")
    start.set_defaults(command=_lab_start)
    check = sub.add_parser("check", help="grade the lab's module in DIR")
    check.add_argument("name", choices=names, metavar="NAME", help=f"one of: {', '.join(names)}")
    check.add_argument("dir", nargs="?", default=".", metavar="DIR",
                       help="the directory holding the module (default: the current one)")
    check.add_argument("--seed", type=int, default=1, help="the scenarios' seed (default 1)")
    check.add_argument("--timeout", type=_seconds(check_seconds), metavar="SECONDS",
                       help="stop a check that runs longer (default: each check's own limit)")
    check.set_defaults(command=_lab_check)


def _lab_list(args: argparse.Namespace) -> int:
    width = max(len(name) for name in labs.REGISTRY)
    for lab in labs.REGISTRY.values():
        print(f"{lab.name:<{width}} {lab.title}; paper {lab.section}; you write {lab.module}")
    return 0


def _lab_start(args: argparse.Namespace) -> int:
    lab = labs.get(args.name)
    for path in labs.start(lab, Path(args.dir)):
        print(f"uvm: wrote {path}")
    print(f"uvm: read {Path(args.dir) / labs.HANDOUT}, complete {lab.module}, then run: "
          f"uvm lab check {lab.name} {args.dir}")
    return 0


def _lab_check(args: argparse.Namespace) -> int:
    report = labs.grade(labs.get(args.name), Path(args.dir), args.seed,
                        lambda line: print(line, flush=True), args.timeout)
    return 0 if report.passed else EXIT_FAILED


def _add_schema(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "schema", help="print the JSON Schema of an output",
        description="Prints the JSON Schema of one of uvm's outputs, as shipped in the package: "
                    "record (the header every output starts with), timeline (a line of --json), "
                    "summary (--summary-json), results (an experiment's results.json).")
    p.add_argument("name", choices=sorted(schema.MODELS), metavar="NAME",
                   help=f"one of: {', '.join(sorted(schema.MODELS))}")
    p.set_defaults(command=_schema)


def _schema(args: argparse.Namespace) -> int:
    """`uvm schema NAME`: print the shipped schema."""
    print(schema.text(schema.shipped(args.name)), end="")
    return 0


def _add_experiment(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    names = "; ".join(f"{e.name}: {e.help}" for e in experiments.REGISTRY.values())
    p = commands.add_parser(
        "experiment", help="run one of the paper's experiments",
        description=f"Runs an experiment, prints its numbers, and writes results.json and a PNG "
                    f"plot into DIR. Experiments: {names}.")
    p.add_argument("name", choices=sorted(experiments.REGISTRY), metavar="NAME",
                   help=f"one of: {', '.join(sorted(experiments.REGISTRY))}")
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    p.add_argument("--out", metavar="DIR", help="where to write results (default: results/NAME)")
    p.add_argument("--seed", type=_seed, metavar="N",
                   help="seed of every machine and workload (default: drawn, and recorded)")
    p.add_argument("--repeat", type=_repeat, default=1, metavar="N",
                   help="run it N times (seeds S, S+1, ..., S = --seed): median and spread of its figures")
    p.add_argument("--map-every", type=_seconds(check_period), metavar="SECONDS",
                   help="draw the page maps of its machines every SECONDS: PNG frames and an "
                        "animated GIF in DIR/pagemap/")
    p.set_defaults(command=_experiment)


def _experiment(args: argparse.Namespace) -> int:
    """`uvm experiment NAME`: run it, print as it goes, write results.json and the plot."""
    out = Path(args.out or Path("results") / args.name)
    with Interrupts("raise") as interrupts:
        experiments.run(args.name, args.quick, out, lambda line: print(line, flush=True),
                        seed=args.seed, repeat=args.repeat, shield=interrupts.deferred,
                        map_every=args.map_every)
    return 0


def _add_reproduce(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    names = ", ".join(reproduce.select(None))
    p = commands.add_parser(
        "reproduce", help="run every experiment and report the paper's numbers beside uvm's",
        description=f"Runs the experiments ({names}) with repeats into DIR/NAME/, then writes "
                    f"DIR/report.md and DIR/report.html (self-contained): per figure of the "
                    f"paper, the setup, the paper's numbers beside uvm's with their spread, the "
                    f"plot, and what differs and why. Ctrl-C keeps what finished (the report "
                    f"says partial).")
    p.add_argument("--quick", action="store_true",
                   help="the experiments' quick versions (a few minutes in all)")
    p.add_argument("--out", metavar="DIR", type=Path, default=reproduce.DEFAULT_OUT,
                   help=f"where to write (default: {reproduce.DEFAULT_OUT})")
    p.add_argument("--only", metavar="NAMES", help="comma-separated experiments to run")
    p.add_argument("--repeat", type=_repeat, metavar="N",
                   help=f"trials per experiment (default: {reproduce.FULL_REPEAT}, with --quick "
                        f"{reproduce.QUICK_REPEAT})")
    p.add_argument("--seed", type=_seed, metavar="N",
                   help="seed of every experiment (default: drawn, and recorded)")
    p.add_argument("--page", metavar="FILE", type=Path,
                   help="also write the report's Markdown to FILE, plots linked relative to it "
                        "(docs/paper-vs-uvm.md)")
    p.set_defaults(command=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    """`uvm reproduce`: run, print as it goes, write the report."""
    with Interrupts("raise") as interrupts:
        outcome = reproduce.run(args.out, args.quick, args.only, args.repeat, args.seed,
                                args.page, lambda line: print(line, flush=True),
                                shield=interrupts.deferred)
    return EXIT_FAILED if outcome.failed else 0


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "run", help="run a scenario and watch it live",
        description="Runs a scenario (TOML): creates its machine and VMs, starts their workloads, "
                    "shows per-VM counters while it runs, then a summary. Without FILE, runs the "
                    "built-in default scenario: four VMs (136 MiB) on a 72 MiB machine under the "
                    "memory policy, showing ballooning, page sharing, the idle memory tax and the "
                    "reclamation states within its 20 s.")
    p.add_argument("file", nargs="?", metavar="FILE.toml", help="scenario file (default: built in)")
    p.add_argument("--again", metavar="FILE",
                   help="run again the run recorded in FILE (a --summary-json, a --json "
                        "timeline, or a row of a sweep's results.jsonl: see --line): the same "
                        "scenario, every default as it was, and the same seed")
    p.add_argument("--line", type=_positive, metavar="N",
                   help="with --again: the line of a JSON-lines FILE whose record to run (a "
                        "sweep's results.jsonl has one per trial)")
    p.add_argument("--duration", type=_seconds(check_seconds), metavar="SECONDS",
                   help="how long to run (overrides the file's run.duration; default 20)")
    p.add_argument("--every", type=_seconds(check_period), metavar="SECONDS",
                   help="sample period (overrides the file's run.every; default 1.0)")
    p.add_argument("--seed", type=_seed, metavar="N",
                   help="the run's seed (overrides the file's run.seed; default: drawn, and "
                        "recorded): the same seed, the same guest operations")
    p.add_argument("--json", metavar="FILE",
                   help="write a timeline: the run record, then one JSON object per sample per "
                        "line (`uvm schema timeline`)")
    p.add_argument("--summary-json", metavar="FILE",
                   help="write the run record and the final counters as JSON "
                        "(`uvm schema summary`)")
    p.add_argument("--wide", action="store_true",
                   help="show esxtop's memory panel (as `uvm top` does) instead of the table")
    p.add_argument("--map", action="store_true",
                   help="show each VM's page map: its pages as a grid coloured by pmap state")
    p.add_argument("--map-every", type=_seconds(check_period), metavar="SECONDS",
                   help="write a PNG frame of the page maps every SECONDS, and an animated GIF")
    p.add_argument("--map-out", metavar="DIR",
                   help="where --map-every writes (default: results/NAME-pagemap)")
    p.set_defaults(command=_run)


def _seed(text: str) -> int:
    """argparse type: a seed."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {text!r}") from None


def _positive(text: str) -> int:
    """argparse type: a line number."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a line number from 1, got {text!r}")
    return value


def _repeat(text: str) -> int:
    """argparse type: a number of trials."""
    try:
        return check_repeat(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 1000, got {text!r}") from None


def _seconds(check: Callable[[object, str], float]) -> Callable[[str], float]:
    """argparse type: a number of seconds that `check` (from uvm.periods) accepts."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        try:
            return check(value, "value")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None
    return parse


def _run(args: argparse.Namespace) -> int:
    """`uvm run`: launch the scenario, watch it, close the machine, print the summary. A
    signal (Ctrl-C, SIGTERM, SIGHUP) ends the watching at the next poll; the rest, closing,
    the summary record and the summary included, always runs (uvm/interrupts.py)."""
    with Interrupts("flag") as interrupts:
        spec = _scenario(args)
        duration: float = args.duration or spec.run.duration
        every: float = args.every or spec.run.every
        seed: int = scenario.run_seed(spec) if args.seed is None else args.seed
        console = _console()
        map_out = Path(args.map_out or Path("results") / f"{spec.name}-pagemap")
        with _timeline(args.json) as timeline, \
                _timeline(args.summary_json, "--summary-json") as summary:
            machine = scenario.launch(spec, seed)
            try:
                header = resolved.scenario_header(spec, machine, seed, duration, every)
                _print_header(spec, machine, duration, every, seed)
                with top.serving(_warn) as server, \
                        pagemap.recording(machine, map_out, args.map_every) as maps:
                    result = live.run(machine, spec.name, duration, every, console, timeline,
                                      header, stop=lambda: interrupts.requested,
                                      view=top.run_view(machine, console, spec.name, args.wide,
                                                        args.map),
                                      tap=server.send if server is not None else None)
                if maps is not None:
                    print(f"uvm: {maps.report()}", flush=True)
                failed = live.workload_errors(machine)
            finally:
                with interrupts.deferred():
                    machine.close()
            if summary is not None:
                with interrupts.deferred():
                    header.finish(partial=result.interrupted)
                    summary.write(live.summary_record(result, header, failed)
                                  .model_dump_json(indent=2) + "\n")
        with interrupts.deferred():
            console.print(live.summary(result, spec.name))
        status = EXIT_FAILED if failed else 0
        return interrupts.exit_status(EXIT_INTERRUPTED if result.interrupted else status)


def _scenario(args: argparse.Namespace) -> scenario.Scenario:
    """The scenario `uvm run` runs: FILE.toml's, a recorded run's (--again), or the built-in."""
    if args.line is not None and args.again is None:
        raise ValueError("--line: only with --again FILE")
    if args.again is None:
        return scenario.load(args.file) if args.file else scenario.default()
    if args.file:
        raise ValueError(f"--again: runs the scenario its record holds; give it or "
                         f"{args.file!r}, not both")
    recorded = again.load(args.again, args.line)
    if recorded.record.fault_path != resolve_fault_path(None):
        _warn(f"{args.again} ran on the {recorded.record.fault_path} fault path; this run takes "
              f"the {resolve_fault_path(None)} path ($UVM_FAULT_PATH)")
    return recorded.spec


def _warn(message: str) -> None:
    print(f"uvm: {message}", file=sys.stderr, flush=True)


def _console() -> Console:
    """Rich output to stdout; not on a terminal (a log), wide enough for the summary table."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH)


@contextmanager
def _timeline(path: str | None, option: str = "--json") -> Iterator[TextIO | None]:
    """The --json (or another option's) file, opened for writing (None without it)."""
    if path is None:
        yield None
        return
    try:
        f = open(path, "w", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{option}: cannot write {path!r}: {e.strerror}") from e
    try:
        yield f
    except BaseException:
        with suppress(OSError):         # the error that stopped the run says it already
            f.close()
        raise
    try:
        f.close()
    except OSError as e:
        raise ValueError(f"{option}: cannot write {path!r}: {e.strerror}") from e


def _print_header(spec: scenario.Scenario, machine: Machine, duration: float, every: float,
                  seed: int) -> None:
    """One line saying what runs: sizes, overcommit, timing, the seed and the userfaultfd
    mode."""
    guests = sum(vm.size for vm in machine.vms)
    mode = "user-mode only (unprivileged)" if machine.user_mode else "full"
    print(f"uvm: {spec.source}: machine {format_size(machine.memory)}, {len(spec.vms)} VMs with "
          f"{format_size(guests)} of guest memory ({guests / machine.memory:.2f}x overcommit); "
          f"{duration:g} s, a sample every {every:g} s; seed {seed}; userfaultfd {mode}", flush=True)
    if spec.policy is not None:
        print(f"uvm: memory policy: {spec.policy.describe()}", flush=True)
