"""uvm's content-based page sharing as a pytest-benchmark benchmark: bench_sharing.py's
content (an OS image of real files in each VM's own order, private and zero runs), merged by
Machine.share_now() passes until one merges nothing. The comparison with Linux KSM needs
root and writes /sys/kernel/mm/ksm: it stays in bench_sharing.py."""

from __future__ import annotations

import resource
import time
from typing import Any

import pytest

from bench_sharing import IMAGE_FRACTION, PAGE, build_image, build_vm, distinct_pages
from uvm.pytest_plugin import UvmBench

VMS, VM_MIB, SEED, MAX_PASSES = 2, 16, 1, 8


@pytest.fixture(scope="module")
def contents() -> list[bytes]:
    vm_pages = VM_MIB << 8
    image, _ = build_image(int(vm_pages * IMAGE_FRACTION), SEED)
    return [build_vm(i, image, vm_pages, SEED)[0] for i in range(VMS)]


def thread_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def test_share_until_converged(uvm_bench: UvmBench, contents: list[bytes], rounds: int) -> None:
    """Timed: share_now() passes until one merges nothing, on freshly written VMs. Ratio to
    baseline: frames saved against the most any sharing can save (pages - distinct
    contents, counted here), and saved frames per CPU-second of the passes."""
    vm_pages = VM_MIB << 8
    total = VMS * vm_pages
    m = uvm_bench.machine(total * PAGE + total * PAGE // 4 + (16 << 20), fault_around=64)
    vms: list[Any] = []
    passes: list[list[tuple[int, float]]] = []

    def write_vms() -> tuple[tuple[()], dict[str, Any]]:
        while vms:
            m.destroy_vm(vms.pop())
        for i, data in enumerate(contents):
            vms.append(m.create_vm(f"vm{i}", vm_pages * PAGE))
            vms[-1].write(0, data)
        return (), {}

    def share() -> None:
        done = []
        for _ in range(MAX_PASSES):
            cpu = thread_cpu()
            merged = m.share_now()
            done.append((merged, thread_cpu() - cpu))
            if merged == 0:
                break
        passes.append(done)

    uvm_bench(share, setup=write_vms, rounds=rounds)
    assert passes[-1][-1][0] == 0, "did not converge"
    st = m.stats()
    for vm, data in zip(vms, contents):                 # every byte of every VM reads back
        assert vm.read(0, len(data)) == data
    m.check()
    distinct, zeros = distinct_pages(contents)
    cpu = sum(c for merged, c in passes[-1] if merged) or sum(c for _, c in passes[-1])
    uvm_bench.extra_info.update(
        pages=total, distinct_contents=distinct, zero_pages=zeros, ideal_saved=total - distinct,
        saved=st["saved"], ratio_to_ideal_saving=round(st["saved"] / (total - distinct), 4),
        passes=len(passes[-1]), saved_per_cpu_s=round(st["saved"] / max(cpu, 1e-9)))
    assert st["saved"] <= total - distinct
