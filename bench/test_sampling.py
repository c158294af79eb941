"""What the memory policy's idle sampling costs a working set, as a pytest-benchmark
benchmark: the time a running WorkingSet takes for a fixed number of operations with a
policy started, and (the baseline, same test, same running workload, before each timed
round) with none. The VM fits
in the machine, so nothing is reclaimed: the policy only samples and recomputes targets.
bench_sampling.py has the full study (interleaved windows, time off CPU, disturbance
checks, the default's 30 s sample amortized)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench_core import GUEST_CPU, pinned
from bench_sampling import CONFIGS, start_policy, stop_policy
from uvm.pytest_plugin import UvmBench
from uvm.workloads import Fill, WorkingSet

SIZE_MIB = 16
OPS = 1_000_000             # operations per timed round
SETTLE = 0.3                # seconds between starting the policy and timing


def wait_ops(run: Any, count: int) -> None:
    """Returns once the workload has done `count` more operations."""
    target = run.ops + count
    while run.ops < target:
        if run.done:
            run.join()
            raise RuntimeError("the workload ended")
        time.sleep(0.0005)


@pytest.fixture
def working_set(uvm_bench: UvmBench) -> Iterator[tuple[Any, Any, Any]]:
    m = uvm_bench.machine(f"{2 * SIZE_MIB}MiB")
    vm = m.create_vm("ws", memory=f"{SIZE_MIB}MiB")
    with pinned(GUEST_CPU):                     # the guest threads inherit CPU 0
        vm.run(Fill(seed=1)).join(60)
        run = vm.run(WorkingSet(size=f"{SIZE_MIB}MiB", pattern="random", write_fraction=0.5, seed=1))
    try:
        yield m, vm, run
    finally:
        stop_policy(m)
        run.stop()
        run.join(30)


@pytest.mark.parametrize("config", ["default", "0.1 s"])
def test_sampling_cost(uvm_bench: UvmBench, working_set: tuple[Any, Any, Any], rounds: int,
                       config: str) -> None:
    m, vm, run = working_set
    kwargs = CONFIGS[config]
    assert kwargs is not None
    baseline: list[float] = []

    def baseline_then_policy() -> tuple[tuple[Any, int], dict[str, Any]]:
        """Untimed by pytest-benchmark: the same operations with no policy (the baseline,
        interleaved with the timed rounds, as the machine's speed drifts), then the
        policy started and settled."""
        stop_policy(m)
        t0 = time.perf_counter()
        wait_ops(run, OPS)
        baseline.append(time.perf_counter() - t0)
        start_policy(m, kwargs)
        time.sleep(SETTLE)
        return (run, OPS), {}

    uvm_bench(wait_ops, setup=baseline_then_policy, rounds=rounds)
    st = vm.stats()
    assert st["swapouts"] == 0 and st["resident"] == vm.pages     # never reclaimed
    base = statistics.median(baseline)
    uvm_bench.extra_info.update(ops=OPS, no_policy_s=round(base, 4),
                                watch_touched=st["watch_touched"], minor_faults=st["faults_minor"])
    if uvm_bench.median is not None:
        uvm_bench.extra_info["ratio_to_no_policy"] = round(uvm_bench.median / base, 4)
