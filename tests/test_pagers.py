"""Pager placement: with the default one pager pinned per CPU, only the pagers of CPUs that
faults come from listen on the userfaultfd (cext/pager.c, "Listening"); guest threads on
every CPU, moving between CPUs, are all served and nothing is lost."""

from __future__ import annotations

import os
import threading
import time

import pytest

import uvm

PAGE = 4096


def toucher(vm: uvm.VM, cpus: list[int], pages: range, errors: list[BaseException]) -> None:
    """Writes a mark into each page, hopping between cpus and pausing now and then, so the
    pagers' look-ups (every 10 ms) see the faults come from different CPUs."""
    try:
        for k, p in enumerate(pages):
            if k % 64 == 0:
                os.sched_setaffinity(0, {cpus[(k // 64) % len(cpus)]})
                time.sleep(0.012)
            vm.memory[p * PAGE] = p % 251 + 1
    except BaseException as e:
        errors.append(e)


@pytest.mark.parametrize("pagers", [None, 2, [0]])
def test_guest_threads_on_every_cpu_are_served(make_machine, pagers: object) -> None:  # type: ignore[no-untyped-def]
    cpus = sorted(os.sched_getaffinity(0))
    if pagers == [0]:
        pagers = [cpus[0]]
    m = make_machine("16MiB", pagers=pagers)
    vm = m.create_vm("t", memory="4MiB")
    errors: list[BaseException] = []
    old = os.sched_getaffinity(0)
    threads = [threading.Thread(target=toucher, args=(vm, cpus[i:] + cpus[:i], range(i, 1024, 2), errors))
               for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        os.sched_setaffinity(0, old)
    assert not errors and not any(t.is_alive() for t in threads)
    for p in range(1024):
        assert vm.memory[p * PAGE] == p % 251 + 1, p
    assert vm.stats()["zero_fills"] == 1024
    m.check()
