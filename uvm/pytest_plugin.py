"""uvm's pytest plugin: fixtures for benchmarks (pytest-benchmark) against uvm.

Installed with uvm (entry point `pytest11`), so it is loaded into every pytest run of anyone
who has uvm installed, the project's own suite included. It must therefore cost nothing
unless used: this module imports only pytest and the standard library; uvm itself, and with
it the C core and userfaultfd, is imported when a test first asks for `uvm_machine` or
`uvm_bench`, and pytest-benchmark's `benchmark` fixture is only requested by `uvm_bench`.

    def test_fill(uvm_bench):
        m = uvm_bench.machine("64MiB")
        vm = m.create_vm("a", "32MiB")
        uvm_bench(lambda: vm.run(Fill()).join())

`uvm_bench(fn)` times fn with pytest-benchmark, then writes every machine's counters into
the benchmark's extra_info (faults, swap-ins, shared pages, compression ratio, balloon
size, state: see `counters`). docs/harness.md is the guide.

`--uvm-swap-latency SECONDS` makes every machine these fixtures create wait that long per
swap read and write (Machine(swap_latency=...), a delay the C core's swap I/O really takes):
a deliberately slowed build, for checking that `--benchmark-compare-fail` catches a
regression (tests/test_pytest_plugin.py does exactly that). Default 0: no delay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from uvm.machine import Machine

SWAP_LATENCY_OPTION = "--uvm-swap-latency"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uvm", "uvm benchmarks")
    group.addoption(SWAP_LATENCY_OPTION, type=float, default=0.0, metavar="SECONDS",
                    help="slow every swap read and write of machines made by the uvm_machine and "
                         "uvm_bench fixtures by SECONDS (a deliberately slowed build, to check "
                         "that --benchmark-compare-fail catches a regression); default 0")


def counters(machine: Machine) -> dict[str, Any]:
    """The figures a benchmark reports about a machine: its state, faults, swap traffic,
    sharing, compression and balloons, summed over its VMs where they are per VM."""
    totals, per_vm = machine.stats_with_vms(machine.vms)
    return {
        "state": totals["state"],
        "memory_pages": totals["frames_total"],
        "resident_pages": totals["frames_used"],
        "faults": totals["faults"],
        "faults_missing": sum(v["faults_missing"] for v in per_vm),
        "zero_fills": sum(v["zero_fills"] for v in per_vm),
        "swapins": totals["swapins"],
        "swapouts": totals["swapouts"] + totals["swapouts_zero"],
        "swapped_pages": totals["swap_pages"],
        "shared_pages": totals["sharing"],
        "shared_frames": totals["shared_frames"],
        "saved_pages": totals["saved"],
        "compression_ratio": round(totals["compression_ratio"], 3),
        "balloon_pages": sum(v["balloon_size"] for v in per_vm),
        "vms": len(per_vm),
    }


class UvmMachines:
    """Machines made for one test, all closed when it ends."""

    def __init__(self, swap_latency: float) -> None:
        self.swap_latency = swap_latency
        self.made: list[Machine] = []

    def __call__(self, memory: int | str = "64MiB", **kwargs: Any) -> Machine:
        """A new uvm.Machine (same arguments), closed after the test."""
        from uvm.machine import Machine

        if self.swap_latency:
            kwargs["swap_latency"] = kwargs.get("swap_latency", 0.0) + self.swap_latency
        machine = Machine(memory, **kwargs)
        self.made.append(machine)
        return machine

    def close(self) -> None:
        for machine in self.made:
            machine.close()


class UvmBench:
    """pytest-benchmark's `benchmark` plus uvm machines and counters (the `uvm_bench`
    fixture). Call it as you would `benchmark`; `extra_info` is the benchmark's."""

    def __init__(self, benchmark: Any, machines: UvmMachines) -> None:
        self.benchmark = benchmark
        self.machine = machines
        self.extra_info: dict[str, Any] = benchmark.extra_info

    def __call__(self, fn: Callable[..., Any], *args: Any, rounds: int | None = None,
                 setup: Callable[[], Any] | None = None, warmup_rounds: int = 0) -> Any:
        """Times fn(*args): calibrated by pytest-benchmark, or, with `rounds` or `setup`,
        exactly `rounds` rounds (pedantic mode: setup runs untimed before each round and may
        return (args, kwargs) for fn). Then records the machines' counters."""
        if rounds is None and setup is None:
            result = self.benchmark(fn, *args)
        else:
            result = self.benchmark.pedantic(fn, args=args, setup=setup, rounds=rounds or 1,
                                             warmup_rounds=warmup_rounds)
        self.record()
        return result

    @property
    def median(self) -> float | None:
        """The median timed round, in seconds, once timed (None with --benchmark-disable,
        where the function ran once untimed)."""
        meta = self.benchmark.stats
        return float(meta.stats.median) if meta is not None else None

    def record(self) -> None:
        """Writes each open machine's counters into extra_info: under "uvm" for the only
        machine, else under "uvm" as a list in creation order."""
        live = [counters(m) for m in self.machine.made if not m.closed]
        if live:
            self.extra_info["uvm"] = live[0] if len(live) == 1 else live


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """pytest-benchmark's machine_info (in --benchmark-json and saved runs) gets uvm's build
    and host from the run record (uvm/record.py: version, commit, kernel, CPUs, memory,
    userfaultfd mode). Always, not only once a test used uvm's fixtures: pytest-benchmark
    builds the machine_info it compares a saved run with before any test has run, and one
    that differed from the saved one by this key warned "machine_info is different" on every
    --benchmark-compare (and, with a --benchmark-storage outside the working directory,
    pytest-benchmark's warning itself raised an INTERNALERROR)."""
    from uvm import record

    machine_info["uvm"] = {"build": record.build().model_dump(mode="json"),
                           "host": record.host().model_dump(mode="json")}


@pytest.fixture
def uvm_machine(request: pytest.FixtureRequest) -> Iterator[UvmMachines]:
    """A factory of uvm.Machine: `uvm_machine("64MiB", fault_around=16)`; every machine it
    made is closed after the test."""
    machines = UvmMachines(request.config.getoption(SWAP_LATENCY_OPTION))
    try:
        yield machines
    finally:
        machines.close()


@pytest.fixture
def uvm_bench(benchmark: Any, uvm_machine: UvmMachines) -> UvmBench:
    """pytest-benchmark's `benchmark` with uvm machines (`uvm_bench.machine(...)`) whose
    counters go into the benchmark's extra_info after timing."""
    return UvmBench(benchmark, uvm_machine)
