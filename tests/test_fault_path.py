"""Both fault paths: pager threads reading userfaultfd events, and the faulting thread
serving its own fault in a SIGBUS handler (fault_path="thread", cext/sigfault.c). Every
fault kind is pushed through on each and every byte compared; the thread path's own risks
(a deadlock on the machine lock, a lost faulthandler, a stopped VM that loops) are tested
in subprocesses bounded by a timeout."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import uvm
from uvm._binding import ffi, lib
from helpers import import_path

PG = 4096
PATHS = ["pager", "thread"]


def page_bytes(tag: int, ppn: int) -> bytes:
    """A page of known, page-specific content."""
    return (tag.to_bytes(2, "little") + ppn.to_bytes(6, "little")) * (PG // 8)


def pager_threads() -> int:
    """The uvm-pager threads of this process."""
    tasks = Path("/proc/self/task")
    return sum((t / "comm").read_text().startswith("uvm-pager") for t in tasks.iterdir())


def run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs code in a fresh interpreter that imports the uvm this process imported."""
    env = dict(os.environ, PYTHONPATH=import_path())
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("path", PATHS)
def test_zero_fill_eviction_and_swap_in_through_plain_memory(make_machine, path: str) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB", fault_path=path)
    assert m.fault_path == path
    assert (pager_threads() > 0) == (path == "pager")
    vm = m.create_vm("a", memory="3MiB")        # 768 pages on 256 frames
    mem = vm.memory
    assert bytes(mem[5 * PG:6 * PG]) == bytes(PG)          # a zero fill reads zeros
    for p in range(vm.pages):                   # plain stores, GIL held: evicts on the way
        mem[p * PG:(p + 1) * PG] = page_bytes(1, p)
    for p in range(vm.pages):                   # swap-ins
        assert bytes(mem[p * PG:(p + 1) * PG]) == page_bytes(1, p), p
    st = m.stats()
    assert st["swapins"] > 0 and st["swapouts"] > 0
    assert st["frames_used"] <= st["frames_total"]
    m.check()


@pytest.mark.parametrize("path", PATHS)
def test_cow_break_sampling_and_balloon_touch(make_machine, path: str) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("4MiB", fault_path=path)
    a, b = m.create_vm("a", memory="256KiB"), m.create_vm("b", memory="256KiB")
    for vm in (a, b):
        for p in range(vm.pages):
            vm.memory[p * PG:(p + 1) * PG] = page_bytes(7, p)
    m.share_now()
    m.share_now()
    assert a.stats()["sharing"] == a.pages and b.stats()["sharing"] == b.pages
    # reads of shared pages map the shared frame; a write breaks copy-on-write for b only
    assert bytes(b.memory[3 * PG:4 * PG]) == page_bytes(7, 3)
    for p in range(0, b.pages, 2):
        b.memory[p * PG:p * PG + 8] = b"written!"
    assert b.stats()["cow_breaks"] == b.pages // 2
    for p in range(a.pages):
        assert bytes(a.memory[p * PG:(p + 1) * PG]) == page_bytes(7, p)
        want = page_bytes(7, p)
        assert bytes(b.memory[p * PG:(p + 1) * PG]) == (b"written!" + want[8:] if p % 2 == 0 else want)
    # sampling: a watched page's touch is seen (MINOR -> CONTINUE), its bytes intact
    c = m.create_vm("c", memory="64KiB")
    for p in range(c.pages):
        c.memory[p * PG:(p + 1) * PG] = page_bytes(9, p)
    watched = c.watch(range(c.pages))
    assert watched == list(range(c.pages))
    assert bytes(c.memory[2 * PG:3 * PG]) == page_bytes(9, 2)
    c.memory[4 * PG] = 0x55
    status = c.watched(range(c.pages))
    assert [status[i] for i in (2, 4)] == ["touched", "touched"]
    assert status.count("untouched") == c.pages - 2
    assert bytes(c.memory[4 * PG + 1:5 * PG]) == page_bytes(9, 4)[1:]
    # a ballooned page touched anyway reads zero and is counted
    assert c.balloon_pages([6, 7]) == 2
    assert bytes(c.memory[6 * PG:7 * PG]) == bytes(PG)
    assert c.stats()["balloon_touched"] == 1
    m.check()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fault_around", [1, 16])
def test_two_guest_threads_faulting_the_same_pages_at_once(make_machine, path: str, fault_around: int) -> None:  # type: ignore[no-untyped-def]
    """A zero fill runs outside the machine lock (pager.c, "Fills outside the lock"), so two
    guest threads fault in parallel: each page must still be filled exactly once, a thread
    touching a page another is filling waits for it, evictions for room and a policy's calls
    (stats, reads through the view) meanwhile see only settled pages, and every byte holds:
    half the pages were written and swapped out first, and come back by swap-in beside the
    fills; ballooned pages touched by both threads are counted once."""
    m = make_machine("2MiB", fault_path=path, fault_around=fault_around)
    vm = m.create_vm("g", memory="6MiB")            # 1536 pages on 512 frames
    n = vm.pages
    for p in range(0, n, 2):
        vm.write(p * PG, page_bytes(7, p))
    vm.evict()
    ballooned = list(range(1, n, 3))                # touched by both threads: counted once
    assert vm.balloon_pages(ballooned) == len(ballooned)
    before = vm.stats()
    errors: list[BaseException] = []
    stop = threading.Event()

    start = threading.Barrier(2)

    def guest(seed: int) -> None:
        try:
            rng = ffi.new("uint64_t[2]", [seed + 1, seed + 2])
            same = np.array(ballooned, dtype=np.uint64)     # both threads, same order, at once
            start.wait()
            assert lib.wl_touch_pages(vm._base, ffi.cast("uint64_t *", ffi.from_buffer(same)),
                                      len(same), 0.0, rng) == len(same)
            order = np.random.default_rng(seed).permutation(n).astype(np.uint64)
            ppns = ffi.cast("uint64_t *", ffi.from_buffer(order))
            for _ in range(3):
                assert lib.wl_touch_pages(vm._base, ppns, n, 0.0, rng) == n
        except BaseException as e:
            errors.append(e)

    def policy() -> None:
        try:
            while not stop.is_set():
                st = m.stats()
                assert st["frames_used"] + st["frames_free"] == st["frames_total"], st
                assert vm.read(PG, PG) == bytes(PG)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guest, args=(s,), name=f"guest{s}") for s in (1, 2)]
    watcher = threading.Thread(target=policy, name="policy")
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    watcher.join(30)
    assert not errors, errors
    st = vm.stats()
    assert st["zero_fills"] - before["zero_fills"] >= n // 2   # every untouched page filled
    assert st["balloon_touched"] == len(ballooned) and st["ballooned"] == 0, st
    gave_up = set(ballooned)                        # ballooning discards content
    for p in range(n):
        want = page_bytes(7, p) if p % 2 == 0 and p not in gave_up else bytes(PG)
        assert vm.read(p * PG, PG) == want, p
    m.check()


def test_system_call_into_untouched_guest_memory_gets_efault_on_the_thread_path(make_machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB", fault_path="thread")
    vm = m.create_vm("a", memory="64KiB")
    src = tmp_path / "data"
    src.write_bytes(page_bytes(3, 0))
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:           # the kernel queues no fault: EFAULT
            os.readv(fd, [vm.memory[PG:2 * PG]])
        assert e.value.errno == errno.EFAULT
        vm.memory[PG] = 0                           # a user-mode touch maps the page
        assert os.preadv(fd, [vm.memory[PG:2 * PG]], 0) == PG
    finally:
        os.close(fd)
    assert bytes(vm.memory[PG:2 * PG]) == page_bytes(3, 0)


@pytest.mark.parametrize("path", PATHS)
def test_stopped_vm_raises_vmstopped_and_a_plain_touch_ends_in_sigbus(path: str, tmp_path: Path) -> None:
    code = f"""
        import uvm
        m = uvm.Machine("1MiB", fault_path={path!r}, swap_dir={str(tmp_path)!r})
        vm = m.create_vm("a", memory="2MiB")
        for p in range(vm.pages):
            vm.memory[p * 4096] = 1
        m.inject_fault("swap-read", 1_000_000)
        try:
            vm.read(0, vm.size)
        except uvm.VMStopped as e:
            print("stopped:", e, flush=True)
        import ctypes                           # an unguarded touch of every page
        ctypes.memmove(ctypes.create_string_buffer(vm.size), vm.address, vm.size)
        print("not reached", flush=True)
    """
    r = run_child(code)
    assert "stopped:" in r.stdout and "swap" in r.stdout, r.stdout + r.stderr
    assert "not reached" not in r.stdout
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sig", ["SIGBUS", "SIGSEGV"])
def test_a_real_fault_outside_guest_memory_still_reaches_faulthandler(path: str, sig: str, tmp_path: Path) -> None:
    code = f"""
        import ctypes, faulthandler, mmap, os
        faulthandler.enable()
        import uvm
        m = uvm.Machine("1MiB", fault_path={path!r}, swap_dir={str(tmp_path)!r})
        vm = m.create_vm("a", memory="1MiB")
        vm.memory[0:8] = b"in guest"            # the handler serves guest faults ...
        assert bytes(vm.memory[0:8]) == b"in guest"
        if {sig!r} == "SIGBUS":                 # ... and passes others on
            f = open({str(tmp_path / 'short')!r}, "w+b")
            f.truncate(4096)
            mm = mmap.mmap(f.fileno(), 4096)
            f.truncate(0)
            mm[0]
        else:
            ctypes.string_at(16)
        print("not reached", flush=True)
    """
    r = run_child(code)
    name = "Bus error" if sig == "SIGBUS" else "Segmentation fault"
    assert f"Fatal Python error: {name}" in r.stderr, r.stderr[-2000:]
    assert "not reached" not in r.stdout
    assert r.returncode == -getattr(signal, sig)


@pytest.mark.slow
def test_no_core_path_touches_guest_memory_under_the_machine_lock(tmp_path: Path) -> None:
    """On the thread path the SIGBUS handler takes the machine lock on whichever thread
    faulted. If any core operation touched a guest address while holding the lock, the
    fault would land on that thread and either deadlock or abort (the lock is error-checking,
    sigfault.c). Every locked operation runs here in a loop against guest threads faulting
    in every way; the child must finish, with every byte intact, within its timeout."""
    code = f"""
        import threading, time
        import uvm
        from workloads import Fill, Verify
        m = uvm.Machine("2MiB", fault_path="thread", swap_dir={str(tmp_path)!r}, seed=5)
        vms = [m.create_vm(f"g{{i}}", memory="2MiB") for i in range(2)]
        stop = threading.Event()
        errors = []

        def guest(vm, tag):
            try:
                mem = vm.memory
                n = 0
                while not stop.is_set():
                    for p in range(0, vm.pages, 3):
                        mem[p * 4096:p * 4096 + 8] = (tag * 1000000 + n).to_bytes(8, "little")
                    for p in range(0, vm.pages, 3):
                        got = int.from_bytes(mem[p * 4096:p * 4096 + 8], "little")
                        assert got == tag * 1000000 + n, (tag, p, got, n)
                    n += 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=guest, args=(vm, i + 1), name=f"guest{{i}}")
                   for i, vm in enumerate(vms)]
        for t in threads:
            t.start()
        third = m.create_vm("c", memory="1MiB")
        end = time.monotonic() + 4
        rounds = 0
        while time.monotonic() < end:
            third.run(Fill(seed=rounds)).join(30)
            m.share_now()
            for vm in vms:
                vm.evict_random(64)
                vm.watch_random(32)
                vm.balloon_pages([vm.pages - 1])
                vm.unballoon_pages([vm.pages - 1])
                vm.stats()
            third.run(Verify(seed=rounds)).join(30)
            m.check()
            rounds += 1
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        print("rounds", rounds, "faults", m.stats()["faults"], flush=True)
        m.close()
    """
    r = run_child(code, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "rounds" in r.stdout


@pytest.mark.parametrize("path", PATHS)
def test_the_run_record_names_the_machines_fault_path(make_machine, path: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from uvm import record
    m = make_machine("1MiB", fault_path=path)
    assert record.header(kind="run", name="x", config={}, seed=1, machine=m).fault_path == path
    monkeypatch.setenv("UVM_FAULT_PATH", path)     # no machine yet: the one a new one takes
    assert record.header(kind="run", name="x", config={}, seed=1).fault_path == path
    monkeypatch.setenv("UVM_FAULT_PATH", "kernel")
    with pytest.raises(ValueError, match="^UVM_FAULT_PATH: expected one of 'pager', 'thread'"):
        make_machine("1MiB")
    with pytest.raises(ValueError, match="^fault_path: expected one of 'pager', 'thread'"):
        make_machine("1MiB", fault_path="fast")
