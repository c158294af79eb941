#!/usr/bin/env python3
"""Benchmark of uvm's core: the userfaultfd pager and the compressed swap, as ratios against
baselines measured in the same run (DESIGN.md section 7; issue 2).

    python bench/bench_core.py [--quick] [--only fault-paths|eviction] [--out FILE.json]

It prints, in one run:

1. first touch: the per-page cost of touching every page of a fresh region once, through
   the pager (fault_around 1, 16, 64; sequential and random order) against the kernel's own
   first touch of an unregistered shmem mapping (memfd, MAP_SHARED) of the same size;
2. swap-in: the per-page cost of touching pages that were evicted to the compressed swap,
   against a zero-fill fault (first touch through the pager, fault_around 1);
3. swap throughput and compression ratio on a mix of page contents (zero, text, numeric,
   random), both as explicit eviction (vm.evict) and under overcommit (a guest 4x machine
   memory), with the compression ratio checked against the `lz4` package;
4. the host memory uvm spends on bookkeeping (pmap, frame table, swap map) per guest page
   and per machine frame;
5. (no target) how long machine.stats(), a policy thread's call into the core, waits for
   the machine lock while a guest on another CPU takes first-touch faults;
6. the two fault paths (issue 10): pager threads against the faulting thread serving its
   own fault in a SIGBUS handler (fault_path="thread"), random first touch against the
   kernel's and swap-in against a zero fill on the same path;
7. eviction (vm.evict of a whole VM) against liblz4 compressing the same pages alone, in
   CPU time of the calling thread;

each for three placements of the pager threads, with the guest thread pinned to CPU 0:
the default (one pager pinned per CPU), pagers=[0] (same CPU) and pagers=[1] (another CPU).

The timing loops are C (bench/_touch.c, compiled here with the system's cc into a temporary
.so and called through ctypes, which releases the GIL), so the pager and the kernel are
timed by the same code. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvm
from uvm._binding import lib as uvm_lib

PAGE = 4096
HERE = Path(__file__).resolve().parent
GUEST_CPU = 0
CLASSES = ("zero", "text", "numeric", "random")     # page p of a mixed VM is CLASSES[p % 4]

U64 = ctypes.c_uint64
VOIDP = ctypes.c_void_p


# -- the C helper ------------------------------------------------------------------------

def build_helper(tmpdir: str) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench_core: needs a C compiler (cc or gcc) to build bench/_touch.c")
    so = os.path.join(tmpdir, "_touch.so")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so, str(HERE / "_touch.c"), "-l:liblz4.so.1"],
                   check=True)
    lib = ctypes.CDLL(so)
    lib.make_order.argtypes = [VOIDP, U64, U64]
    lib.make_order.restype = None
    lib.clock_overhead_ns.argtypes = [U64]
    lib.clock_overhead_ns.restype = U64
    lib.touch_pages.argtypes = [VOIDP, VOIDP, U64, VOIDP, ctypes.c_int]
    lib.touch_pages.restype = U64
    lib.copy_pages.argtypes = [VOIDP, VOIDP, U64, VOIDP, U64, VOIDP]
    lib.copy_pages.restype = U64
    lib.check_pages.argtypes = [VOIDP, VOIDP, U64, VOIDP, U64, VOIDP, ctypes.POINTER(U64)]
    lib.check_pages.restype = U64
    lib.baseline_map.argtypes = [U64, ctypes.c_int]
    lib.baseline_map.restype = VOIDP
    lib.baseline_unmap.argtypes = [VOIDP, U64]
    lib.baseline_unmap.restype = ctypes.c_int
    lib.compress_pages.argtypes = [VOIDP, U64, U64, VOIDP, ctypes.POINTER(U64)]
    lib.compress_pages.restype = U64
    return lib


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Pins the calling thread (the one that calls into C and takes the faults) to cpu."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def pct(sorted_xs: Sequence[float], q: float) -> float:
    return float(sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


class Pages:
    """A page order and a per-page nanosecond buffer for n pages."""

    def __init__(self, lib: ctypes.CDLL, n: int) -> None:
        self.lib = lib
        self.n = n
        self.order = (ctypes.c_uint32 * n)()
        self.ns = (U64 * n)()

    def set_order(self, random_order: bool, seed: int) -> None:
        self.lib.make_order(self.order, self.n, seed if random_order else 0)

    def latencies(self) -> list[int]:
        return list(self.ns)


# -- page contents for the swap tests -----------------------------------------------------

def text_source(nbytes: int) -> bytes:
    """Bytes of Python source files from the standard library (real text, not a pattern)."""
    out = bytearray()
    stdlib = Path(os.__file__).parent
    for f in sorted(stdlib.glob("*.py")):
        out += f.read_bytes()
        if len(out) >= nbytes:
            break
    while len(out) < nbytes:          # a tiny stdlib: repeat what there is
        out += out[: nbytes - len(out)]
    return bytes(out[:nbytes])


def build_pool(pool_pages: int, seed: int = 2002) -> bytearray:
    """pool_pages pages, page j of class CLASSES[j % 4]: all zeros; text (stdlib source);
    low-entropy numeric data (int32 samples of a slow random walk, as a sensor or a counter
    log would hold); random bytes."""
    rng = random.Random(seed)
    per_class = pool_pages // 4
    text = text_source(per_class * PAGE)
    pool = bytearray(pool_pages * PAGE)
    level = 1_000_000
    for j in range(pool_pages):
        k, i = j % 4, j // 4
        if k == 1:
            page = text[i * PAGE:(i + 1) * PAGE]
        elif k == 2:
            vals = array("i")
            for _ in range(PAGE // 4):
                level += rng.randrange(-3, 4)
                vals.append(level)
            page = vals.tobytes()
        elif k == 3:
            page = rng.randbytes(PAGE)
        else:
            continue
        pool[j * PAGE:(j + 1) * PAGE] = page
    return pool


def expected_stored_lengths(pool: bytearray) -> dict[str, list[int]]:
    """What the core should store for each pool page, computed here independently: 0 for a
    zero page (no slot), 4096 when the LZ4 block would not save a swap unit (stored raw),
    else the block's length. "liblz4" calls the system's liblz4.so.1 as the core does
    (LZ4_compress_default, output capacity 4095), so its total must equal the core's
    swap_bytes exactly; "lz4-package" uses the `lz4` Python package (another LZ4 build,
    which finds different matches: the sizes differ, the format is the same). Each is left
    out when its library is missing."""
    out: dict[str, list[int]] = {}
    unit = uvm_lib.UVM_SWAP_UNIT
    pages = [bytes(pool[j * PAGE:(j + 1) * PAGE]) for j in range(len(pool) // PAGE)]

    def stored(page: bytes, n: int) -> int:
        if page.count(0) == PAGE:
            return 0
        return PAGE if n <= 0 or (n + unit - 1) // unit >= PAGE // unit else n

    try:
        so = ctypes.CDLL("liblz4.so.1")
        so.LZ4_compress_default.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        so.LZ4_compress_default.restype = ctypes.c_int
        buf = ctypes.create_string_buffer(PAGE)
        out["liblz4"] = [stored(pg, so.LZ4_compress_default(pg, buf, PAGE, PAGE - 1)) for pg in pages]
    except OSError:
        pass
    try:
        import lz4.block
        out["lz4-package"] = [stored(pg, len(lz4.block.compress(pg, store_size=False))) for pg in pages]
    except ImportError:
        pass
    return out


def expected_bytes(expected: dict[str, list[int]], npages: int) -> dict[str, int]:
    """Expected swap_bytes for guest pages 0..npages-1 of a mixed VM, by computation."""
    return {name: sum(lens[p % len(lens)] for p in range(npages)) for name, lens in expected.items()}


def ratio_by_class(expected: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Compression ratio of each content class of the pool (zero pages: no bytes at all)."""
    out: dict[str, dict[str, float]] = {}
    for name, lens in expected.items():
        out[name] = {}
        for k, c in enumerate(CLASSES):
            stored = sum(lens[k::4])
            out[name][c] = round(len(lens[k::4]) * PAGE / stored, 3) if stored else float("inf")
    return out


def time_touch(lib: ctypes.CDLL, addr: int, pages: Pages, random_order: bool, seed: int,
               write: bool = True) -> tuple[float, list[int]]:
    """Touches every page at addr once from CPU GUEST_CPU; returns (ns per page, each
    touch's ns)."""
    pages.set_order(random_order, seed)
    with pinned(GUEST_CPU):
        wall = lib.touch_pages(addr, pages.order, pages.n, pages.ns, int(write))
    return wall / pages.n, pages.latencies()


def kernel_touch(lib: ctypes.CDLL, pages: Pages, anon: bool, random_order: bool,
                 seed: int) -> tuple[float, list[int]]:
    """The kernel's own first touch of fresh memory: a memfd mapped MAP_SHARED and not
    registered with userfaultfd (anon: private anonymous memory); as time_touch."""
    nbytes = pages.n * PAGE
    addr = lib.baseline_map(nbytes, int(anon))
    if not addr:
        raise OSError("baseline mapping failed")
    try:
        return time_touch(lib, addr, pages, random_order, seed)
    finally:
        lib.baseline_unmap(addr, nbytes)


# -- the benchmark ------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, lib: ctypes.CDLL, swap_dir: str) -> None:
        self.args = args
        self.lib = lib
        self.swap_dir = swap_dir
        self.quick = args.quick
        self.region_mib = args.region or (16 if args.quick else 64)
        self.region_pages = self.region_mib << 8
        self.repeats = args.repeats or (2 if args.quick else 5)
        self.placements: dict[str, Any] = {"default": None, "same-cpu": [GUEST_CPU],
                                           "other-cpu": [1 - GUEST_CPU]}
        if len(os.sched_getaffinity(0)) < 2:
            print("note: one CPU available: only the default placement is measured")
            self.placements = {"default": None}
        self.fault_arounds = (1, 16, 64)
        self.result: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []
        self.t_start = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t_start:6.1f}s] {msg}", flush=True)

    def machine(self, memory: str, placement: str, **kw: Any) -> uvm.Machine:
        # created with this thread's full affinity: threads inherit it, and pagers=None
        # pins one pager per CPU the creating thread may use
        return uvm.Machine(memory, pagers=self.placements[placement], swap_dir=self.swap_dir, **kw)

    # 1. first touch --------------------------------------------------------------------

    def first_touch(self) -> None:
        n = self.region_pages
        pages = Pages(self.lib, n)
        self.log(f"1. first touch: {self.region_mib} MiB regions ({n} pages), {self.repeats} repeats, "
                 f"guest thread on CPU {GUEST_CPU}")
        # warm-up: on a VM the first use of host memory costs extra (EPT faults); touch a
        # few regions' worth through the kernel before timing anything
        for _ in range(3):
            kernel_touch(self.lib, pages, False, True, 1)
            kernel_touch(self.lib, pages, True, False, 1)
        # swap as large as the VM: admission control wants max - min to fit (nothing swaps)
        machines = {p: self.machine("256MiB" if n <= 1 << 14 else f"{4 * self.region_mib}MiB", p,
                                    swap_size=n * PAGE)
                    for p in self.placements}
        runs: dict[tuple[str, int, str], list[float]] = {}
        lats: dict[tuple[str, int, str], list[int]] = {}
        vmstats: dict[tuple[str, int, str], dict[str, int]] = {}
        try:
            for m in machines.values():                # one untimed warm-up run each
                vm = m.create_vm("warm", self.region_pages * PAGE)
                m.fault_around = 16
                time_touch(self.lib, vm.address, pages, False, 1)
                m.destroy_vm(vm)
            for rep in range(self.repeats):
                seed = 1000 + rep
                for kind in ("shmem", "anon"):
                    for order in ("sequential", "random"):
                        per_page, lat = kernel_touch(self.lib, pages, kind == "anon", order == "random", seed)
                        key = (f"kernel-{kind}", 0, order)
                        runs.setdefault(key, []).append(per_page)
                        lats.setdefault(key, []).extend(lat)
                for pl, m in machines.items():
                    for fa in self.fault_arounds:
                        m.fault_around = fa
                        for order in ("sequential", "random"):
                            vm = m.create_vm(f"ft{rep}", self.region_pages * PAGE)
                            per_page, lat = time_touch(self.lib, vm.address, pages, order == "random", seed)
                            st = vm.stats()
                            m.destroy_vm(vm)
                            key = (pl, fa, order)
                            runs.setdefault(key, []).append(per_page)
                            lats.setdefault(key, []).extend(lat)
                            vmstats[key] = st
                            if st["swapouts"] or st["swapouts_zero"] or st["zero_fills"] != n:
                                raise RuntimeError(f"first touch run evicted or missed pages: {st}")
                self.log(f"   repeat {rep + 1}/{self.repeats} done")
        finally:
            for m in machines.values():
                m.close()

        rows: list[dict[str, Any]] = []
        for key, per_runs in runs.items():
            src, fa, order = key
            s = sorted(lats[key])
            rows.append({
                "setup": src, "fault_around": fa, "order": order,
                "ns_per_page_runs": [round(x, 1) for x in per_runs],
                "ns_per_page": round(median(per_runs), 1),
                "touch_ns_p50": pct(s, 0.5), "touch_ns_p90": pct(s, 0.9), "touch_ns_p99": pct(s, 0.99),
                "faults": vmstats[key]["faults_missing"] if key in vmstats else None,
                "filled_ahead": vmstats[key]["fault_around"] if key in vmstats else None,
            })
        self.result["first_touch"] = rows
        self.ft: dict[tuple[str, int, str], dict[str, Any]] = {
            (r["setup"], r["fault_around"], r["order"]): r for r in rows}

        print()
        print(f"First touch, {self.region_mib} MiB, write one word per page; ns/page = wall time / pages, "
              f"median of {self.repeats} runs;")
        print("ratio = against the kernel's shmem first touch in the same order; per-touch latency "
              "percentiles over all runs")
        hdr = f"{'setup':<12} {'FA':>3} {'order':<10} {'ns/page':>9} {'ratio':>7} {'p50':>8} {'p90':>8} {'p99':>9} {'faults':>7}"
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            base = self.ft[("kernel-shmem", 0, r["order"])]["ns_per_page"]
            fa_col = r["fault_around"] or "-"
            print(f"{r['setup']:<12} {fa_col:>3} {r['order']:<10} {r['ns_per_page']:>9.0f} "
                  f"{ratio(r['ns_per_page'], base):>6.2f}x {r['touch_ns_p50']:>8.0f} {r['touch_ns_p90']:>8.0f} "
                  f"{r['touch_ns_p99']:>9.0f} {r['faults'] if r['faults'] is not None else '-':>7}")

        for pl in self.placements:
            k_rand = self.ft[("kernel-shmem", 0, "random")]["ns_per_page"]
            k_seq = self.ft[("kernel-shmem", 0, "sequential")]["ns_per_page"]
            self.target(f"first touch, random order, fault_around 1 [{pl}]",
                        self.ft[(pl, 1, "random")]["ns_per_page"], k_rand, "ns/page", 4.0,
                        "kernel shmem first touch, random order")
            for fa in (16, 64):
                self.target(f"first touch, sequential, fault_around {fa} [{pl}]",
                            self.ft[(pl, fa, "sequential")]["ns_per_page"], k_seq, "ns/page", 1.0,
                            "kernel shmem first touch, sequential")

        best = min(self.placements, key=lambda p: self.ft[(p, 1, "random")]["ns_per_page"])
        self.result["placement"] = {
            "guest_cpu": GUEST_CPU,
            "pagers": {p: self.placements[p] for p in self.placements},
            "fault_around_1_random_ns_per_page": {p: self.ft[(p, 1, "random")]["ns_per_page"]
                                                  for p in self.placements},
            "fault_around_1_sequential_ns_per_page": {p: self.ft[(p, 1, "sequential")]["ns_per_page"]
                                                      for p in self.placements},
            "best": best,
        }
        print(f"\nPlacement (guest thread on CPU {GUEST_CPU}, fault_around 1, random order): " +
              ", ".join(f"{p} {self.ft[(p, 1, 'random')]['ns_per_page']:.0f} ns/page"
                        for p in self.placements) + f"  -> best: {best}")

    # 2. swap-in against zero fill ------------------------------------------------------

    def swap_in(self, pool: bytearray, pool_ptr: int, expected: dict[str, list[int]]) -> None:
        n = self.region_pages // (2 if not self.quick else 1)
        cycles = 3 if not self.quick else 2
        pages = Pages(self.lib, n)
        pool_pages = len(pool) // PAGE
        self.log(f"2. swap-in: {n * PAGE >> 20} MiB VM of mixed pages in a 256 MiB machine, "
                 f"evict all, touch all in random order; {cycles} cycles per placement")
        out: dict[str, Any] = {}
        for pl in self.placements:
            m = self.machine("256MiB", pl, swap_size=2 * n * PAGE)
            try:
                vm = m.create_vm("swapin", n * PAGE)
                pages.set_order(False, 0)
                with pinned(GUEST_CPU):
                    self.lib.copy_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None)
                swap_lat: list[int] = []
                zero_lat: list[int] = []
                by_class: dict[str, list[int]] = {c: [] for c in CLASSES}
                evict_rates = []
                swapin_walls = []
                checks = []
                for cyc in range(cycles):
                    st0 = m.stats()
                    t0 = time.perf_counter()
                    evicted = vm.evict()
                    dt = time.perf_counter() - t0
                    st1 = m.stats()
                    if evicted != n:
                        raise RuntimeError(f"evicted {evicted} of {n} pages")
                    evict_rates.append(n / dt)
                    if cyc == 0:
                        swapped_bytes = st1["swap_bytes"]
                        swapped_pages = st1["swap_pages"]
                        zero_out = st1["swapouts_zero"] - st0["swapouts_zero"]
                    # touch every page once (a load), random order: each is a swap-in (text,
                    # numeric, random pages) or a zero fill (zero pages keep no slot)
                    s0 = vm.stats()
                    per_page, lat = time_touch(self.lib, vm.address, pages, True, 77 + cyc, write=False)
                    s1 = vm.stats()
                    swapin_walls.append(per_page)
                    if s1["swapins"] - s0["swapins"] != n - n // 4 or s1["zero_fills"] - s0["zero_fills"] != n // 4:
                        raise RuntimeError(f"unexpected fault mix: {s0} -> {s1}")
                    for i, p in enumerate(pages.order):
                        c = CLASSES[p % 4]
                        by_class[c].append(lat[i])
                        (zero_lat if c == "zero" else swap_lat).append(lat[i])
                    # every byte back (untimed): nothing lost
                    wall = U64()
                    pages.set_order(False, 0)
                    bad = self.lib.check_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None,
                                               ctypes.byref(wall))
                    checks.append(bad)
                    if bad:
                        raise RuntimeError(f"{bad} pages differ after swap-in")
                m.destroy_vm(vm)
            finally:
                m.close()
            swap_lat.sort()
            zero_lat.sort()
            zf = self.ft[(pl, 1, "random")] if hasattr(self, "ft") else None
            exp_bytes = expected_bytes(expected, n)
            out[pl] = {
                "pages": n,
                "swapin_ns_p50": pct(swap_lat, 0.5), "swapin_ns_p90": pct(swap_lat, 0.9),
                "swapin_ns_p99": pct(swap_lat, 0.99),
                "swapin_ns_mean": round(statistics.fmean(swap_lat), 1),
                "zero_page_refault_ns_p50": pct(zero_lat, 0.5),
                "by_class_ns_p50": {c: pct(sorted(v), 0.5) for c, v in by_class.items()},
                "first_touch_zero_fill_ns_p50": zf["touch_ns_p50"] if zf else None,
                "first_touch_zero_fill_ns_per_page": zf["ns_per_page"] if zf else None,
                "touch_pass_ns_per_page_runs": [round(x, 1) for x in swapin_walls],
                "evict_pages_per_s_runs": [round(x) for x in evict_rates],
                "evict_pages_per_s": round(median(evict_rates)),
                "evict_mb_per_s": round(median(evict_rates) * PAGE / 1e6, 1),
                "swapin_pages_per_s": round(1e9 / pct(swap_lat, 0.5)),
                "swap_pages": swapped_pages, "swap_bytes": swapped_bytes, "evicted_zero": zero_out,
                "compression_ratio": round(swapped_pages * PAGE / swapped_bytes, 3),
                "expected_swap_bytes": exp_bytes,
                "pages_differing_after_swapin": sum(checks),
            }
        self.result["swap_in"] = out

        print()
        print("Swap-in vs zero fill: per-touch latency (one load) of evicted pages, random order; "
              "zero fill = first touch, fault_around 1, random order")
        hdr = (f"{'placement':<10} {'swap-in p50':>11} {'p90':>8} {'p99':>8} {'zero fill p50':>13} {'ratio':>7} "
               f"{'zero-page refault':>17} {'evict pages/s':>13}")
        print(hdr)
        print("-" * len(hdr))
        for pl, r in out.items():
            zf = r["first_touch_zero_fill_ns_p50"]
            print(f"{pl:<10} {r['swapin_ns_p50']:>11.0f} {r['swapin_ns_p90']:>8.0f} {r['swapin_ns_p99']:>8.0f} "
                  f"{zf:>13.0f} {ratio(r['swapin_ns_p50'], zf):>6.2f}x {r['zero_page_refault_ns_p50']:>17.0f} "
                  f"{r['evict_pages_per_s']:>13}")
            print(f"{'':<10} swap-in p50 by class: " +
                  ", ".join(f"{c} {v:.0f} ns" for c, v in r["by_class_ns_p50"].items()))
            self.target(f"swap-in per page vs zero-fill fault [{pl}]", r["swapin_ns_p50"], zf, "ns/touch (p50)",
                        2.0, "first-touch zero fill, fault_around 1, random order (p50)")

    # 3. throughput under overcommit ----------------------------------------------------

    def overcommit(self, pool: bytearray, pool_ptr: int, expected: dict[str, list[int]]) -> None:
        mem_mib = 16 if self.quick else 32
        vm_mib = 4 * mem_mib
        n = vm_mib << 8
        pool_pages = len(pool) // PAGE
        pages = Pages(self.lib, n)
        pages.set_order(False, 0)
        placements: list[str] = [p for p in ("default", "same-cpu") if p in self.placements]
        self.log(f"3. overcommit: {vm_mib} MiB guest of mixed pages on {mem_mib} MiB of machine memory "
                 f"(swap 4x): fill, then read back and compare")
        out: dict[str, Any] = {}
        for pl in placements:
            m = self.machine(f"{mem_mib}MiB", pl)
            try:
                vm = m.create_vm("big", n * PAGE)
                st0 = m.stats()
                with pinned(GUEST_CPU):
                    fill_ns = self.lib.copy_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None)
                st1 = m.stats()
                # evict what is still resident, so every page has been through the swap once:
                # then the ratio covers the whole mix
                vm.evict()
                st2 = m.stats()
                wall = U64()
                with pinned(GUEST_CPU):
                    bad = self.lib.check_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None,
                                               ctypes.byref(wall))
                st3 = m.stats()
                if bad:
                    raise RuntimeError(f"{bad} pages differ after the overcommitted round trip")
                book = {k: st3[k] for k in ("pmap_bytes", "frame_table_bytes", "swap_map_bytes",
                                            "frames_total", "swap_capacity")}
                m.destroy_vm(vm)
            finally:
                m.close()
            fill_s = fill_ns / 1e9
            read_s = wall.value / 1e9
            outs = (st1["swapouts"] + st1["swapouts_zero"]) - (st0["swapouts"] + st0["swapouts_zero"])
            ins = st3["swapins"] - st2["swapins"]
            exp_bytes = expected_bytes(expected, n)
            out[pl] = {
                "machine_mib": mem_mib, "guest_mib": vm_mib, "pages": n,
                "fill_s": round(fill_s, 3), "fill_guest_mb_per_s": round(n * PAGE / fill_s / 1e6, 1),
                "fill_swapouts": outs, "swapout_pages_per_s": round(outs / fill_s),
                "swapout_mb_per_s": round(outs * PAGE / fill_s / 1e6, 1),
                "evict_fault_path": st1["evict_fault_path"] - st0["evict_fault_path"],
                "evict_background": st1["evict_background"] - st0["evict_background"],
                "read_s": round(read_s, 3), "read_guest_mb_per_s": round(n * PAGE / read_s / 1e6, 1),
                "read_swapins": ins, "swapin_pages_per_s": round(ins / read_s),
                "swapin_mb_per_s": round(ins * PAGE / read_s / 1e6, 1),
                "swap_pages": st2["swap_pages"], "swap_bytes": st2["swap_bytes"],
                "swap_file_bytes": st2["swap_file_bytes"], "zero_pages_no_slot": st2["swapouts_zero"],
                "compression_ratio": round(st2["compression_ratio"], 3),
                "compression_ratio_recomputed": round(st2["swap_pages"] * PAGE / st2["swap_bytes"], 3),
                "ratio_incl_zero_pages": round(n * PAGE / st2["swap_bytes"], 3),
                "expected_swap_bytes": exp_bytes,
                "pages_differing": bad,
                "bookkeeping": book,
            }
        self.result["overcommit"] = out

        print()
        print(f"Swap throughput and compression, {vm_mib} MiB guest on {mem_mib} MiB machine, mix 25% zero / "
              f"25% text / 25% numeric / 25% random pages; MB = 10^6 bytes of guest pages")
        hdr = (f"{'placement':<10} {'fill MB/s':>9} {'swap-out pages/s':>16} {'MB/s':>7} {'read MB/s':>9} "
               f"{'swap-in pages/s':>15} {'MB/s':>7} {'ratio':>6} {'evict fault/bg':>15}")
        print(hdr)
        print("-" * len(hdr))
        for pl, r in out.items():
            print(f"{pl:<10} {r['fill_guest_mb_per_s']:>9.1f} {r['swapout_pages_per_s']:>16} "
                  f"{r['swapout_mb_per_s']:>7.1f} {r['read_guest_mb_per_s']:>9.1f} {r['swapin_pages_per_s']:>15} "
                  f"{r['swapin_mb_per_s']:>7.1f} {r['compression_ratio']:>5.2f}x "
                  f"{r['evict_fault_path']:>7}/{r['evict_background']:<7}")
        r = out[placements[0]]
        print(f"compression: {r['swap_pages']} pages hold {r['swap_bytes']} bytes "
              f"(ratio {r['compression_ratio']:.3f} = swap_pages*4096/swap_bytes, recomputed "
              f"{r['compression_ratio_recomputed']:.3f}); {r['zero_pages_no_slot']} zero pages took no slot; "
              f"counting them, {r['ratio_incl_zero_pages']:.3f}; file space in {uvm_lib.UVM_SWAP_UNIT}-byte units "
              f"{r['swap_file_bytes']} bytes")
        for name, exp in r["expected_swap_bytes"].items():
            same = "matches" if exp == r["swap_bytes"] else f"swap_bytes differs by {r['swap_bytes'] - exp:+d}"
            print(f"   computed here with {name}: {exp} bytes, ratio {r['swap_pages'] * PAGE / exp:.3f} ({same})")
        byc = ratio_by_class(expected)
        self.result["compression_by_class"] = byc
        for name, d in byc.items():
            print(f"   ratio by class ({name}): " + ", ".join(f"{c} {v:.2f}" for c, v in d.items() if c != "zero"))
        for sec in ("swap_in", "overcommit"):
            for pl, s in self.result.get(sec, {}).items():
                e = s["expected_swap_bytes"].get("liblz4")
                if e is not None and e != s["swap_bytes"]:
                    print(f"   MISMATCH {sec} [{pl}]: swap_bytes {s['swap_bytes']} but liblz4 gives {e}")

    # 5. API latency during a fault storm -------------------------------------------

    def api_latency(self) -> None:
        """How long a policy thread's call into the core (machine.stats(), which takes the
        machine lock) waits while a guest on another CPU takes first-touch faults."""
        n = self.region_pages
        pages = Pages(self.lib, n)
        other = 1 - GUEST_CPU
        placements: list[str] = [p for p in ("default", "same-cpu") if p in self.placements]
        if len(os.sched_getaffinity(0)) < 2:
            return
        self.log(f"5. API latency: machine.stats() every ms from CPU {other} while the guest "
                 f"(CPU {GUEST_CPU}) first-touches {self.region_mib} MiB, fault_around 1, random order")
        out: dict[str, Any] = {}
        for pl in placements:
            m = self.machine("256MiB", pl, swap_size=n * PAGE)     # admission: the VM fits
            try:
                idle = []
                with pinned(other):
                    for _ in range(200):
                        t = time.perf_counter()
                        m.stats()
                        idle.append(time.perf_counter() - t)
                vm = m.create_vm("storm", n * PAGE)
                pages.set_order(True, 4242)
                lat: list[float] = []
                done = threading.Event()

                def poll_stats() -> None:
                    os.sched_setaffinity(0, {other})
                    while not done.is_set():
                        t = time.perf_counter()
                        m.stats()
                        lat.append(time.perf_counter() - t)
                        time.sleep(0.001)

                th = threading.Thread(target=poll_stats, name="bench-stats")
                th.start()
                time.sleep(0.02)
                with pinned(GUEST_CPU):
                    wall = self.lib.touch_pages(vm.address, pages.order, n, None, 1)
                done.set()
                th.join()
                m.destroy_vm(vm)
            finally:
                m.close()
            lat.sort()
            idle.sort()
            out[pl] = {"touch_ns_per_page": round(wall / n, 1), "calls": len(lat),
                       "stats_us_idle_p50": round(pct(idle, 0.5) * 1e6, 1),
                       "stats_us_p50": round(pct(lat, 0.5) * 1e6, 1),
                       "stats_us_p99": round(pct(lat, 0.99) * 1e6, 1),
                       "stats_us_max": round(lat[-1] * 1e6, 1)}
        self.result["api_latency"] = out
        print()
        print(f"machine.stats() latency from CPU {other} during a first-touch fault storm on CPU {GUEST_CPU} "
              f"(a policy thread's view of the machine lock)")
        hdr = f"{'placement':<10} {'touch ns/page':>13} {'calls':>6} {'idle p50 us':>11} {'p50 us':>9} {'p99 us':>10} {'max us':>10}"
        print(hdr)
        print("-" * len(hdr))
        for pl, r in out.items():
            print(f"{pl:<10} {r['touch_ns_per_page']:>13.0f} {r['calls']:>6} {r['stats_us_idle_p50']:>11.1f} "
                  f"{r['stats_us_p50']:>9.1f} {r['stats_us_p99']:>10.1f} {r['stats_us_max']:>10.1f}")

    # 4. bookkeeping -------------------------------------------------------------------

    def bookkeeping(self) -> None:
        oc = next(iter(self.result["overcommit"].values()))
        b = oc["bookkeeping"]
        guest_pages = oc["pages"]
        frames = b["frames_total"]
        slots = b["swap_capacity"] // PAGE
        rows = [
            ("pmap per guest page", b["pmap_bytes"] / guest_pages, 16.0),
            ("frame table per machine frame", b["frame_table_bytes"] / frames, 16.0),
            ("swap map per swap page (4 KiB of capacity)", b["swap_map_bytes"] / slots, None),
            ("frame table + swap map per machine frame (default swap = 4x memory)",
             (b["frame_table_bytes"] + b["swap_map_bytes"]) / frames, 16.0),
            ("all three per guest page (this guest: 4x machine memory)",
             (b["pmap_bytes"] + b["frame_table_bytes"] + b["swap_map_bytes"]) / guest_pages, None),
        ]
        self.result["bookkeeping"] = {"raw": b, "guest_pages": guest_pages,
                                      "per": {name: round(v, 3) for name, v, _ in rows}}
        print()
        print(f"Host bookkeeping (machine.stats()): pmap {b['pmap_bytes']} B for {guest_pages} guest pages, "
              f"frame table {b['frame_table_bytes']} B for {frames} frames, swap map {b['swap_map_bytes']} B "
              f"for {b['swap_capacity'] >> 20} MiB of swap")
        for name, v, tgt in rows:
            print(f"   {name:<70} {v:7.3f} bytes" + (f"   (target <= {tgt:.0f})" if tgt else ""))
            if tgt:
                self.target(name, v, None, "bytes", tgt, None, absolute=True)

    # 6. the two fault paths (issue 10) -------------------------------------------------

    def fault_paths(self, pool_ptr: int, pool_pages: int) -> None:
        """Pager threads (default placement) against the faulting thread serving its own
        fault (fault_path="thread"), interleaved repeat by repeat so that both see the same
        machine load: random first touch (fault_around 1) against the kernel's shmem first
        touch, and the swap-in of a VM evicted whole (3/4 swap-ins, 1/4 zero fills of its
        zero pages) against a zero fill on the same path."""
        n = self.region_pages
        pages = Pages(self.lib, n)
        self.log(f"6. fault paths: {n * PAGE >> 20} MiB regions, {self.repeats} repeats, "
                 f"guest thread on CPU {GUEST_CPU}, random order")
        for _ in range(3):          # warm-up, as in section 1
            kernel_touch(self.lib, pages, False, True, 1)
        paths = ("pager", "thread")
        touch: dict[str, list[float]] = {"kernel": [], **{p: [] for p in paths}}
        swapin: dict[str, list[float]] = {p: [] for p in paths}
        machines = {p: uvm.Machine("256MiB" if n <= 1 << 14 else f"{4 * self.region_mib}MiB",
                                   swap_size=2 * n * PAGE, swap_dir=self.swap_dir, fault_path=p)
                    for p in paths}
        try:
            for rep in range(self.repeats):
                touch["kernel"].append(kernel_touch(self.lib, pages, False, True, 3000 + rep)[0])
                for p, m in machines.items():
                    vm = m.create_vm("fresh", n * PAGE)
                    touch[p].append(time_touch(self.lib, vm.address, pages, True, 3000 + rep)[0])
                    if vm.stats()["zero_fills"] != n:
                        raise RuntimeError(f"{p}: {vm.stats()} after a first touch of {n} pages")
                    pages.set_order(False, 0)
                    with pinned(GUEST_CPU):
                        self.lib.copy_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None)
                    if vm.evict() != n:
                        raise RuntimeError(f"{p}: not every page evicted")
                    swapin[p].append(time_touch(self.lib, vm.address, pages, True, 4000 + rep,
                                                write=False)[0])
                    wall = U64()
                    pages.set_order(False, 0)
                    bad = self.lib.check_pages(vm.address, pool_ptr, pool_pages, pages.order, n,
                                               None, ctypes.byref(wall))
                    if bad:
                        raise RuntimeError(f"{p}: {bad} pages differ after swap-in")
                    m.destroy_vm(vm)
        finally:
            for m in machines.values():
                m.close()
        med = {k: median(v) for k, v in touch.items()}
        sw = {k: median(v) for k, v in swapin.items()}
        out: dict[str, Any] = {"pages": n, "repeats": self.repeats,
                               "first_touch_ns_per_page": {k: round(v, 1) for k, v in med.items()},
                               "swap_in_ns_per_page": {k: round(v, 1) for k, v in sw.items()}}
        print(f"   random first touch, ns/page: kernel shmem {med['kernel']:.0f}, "
              f"pager {med['pager']:.0f} ({ratio(med['pager'], med['kernel']):.2f}x), "
              f"thread {med['thread']:.0f} ({ratio(med['thread'], med['kernel']):.2f}x)")
        print(f"   swap-in (evicted VM read back), ns/page: pager {sw['pager']:.0f} "
              f"({ratio(sw['pager'], med['pager']):.2f}x its zero fill), thread {sw['thread']:.0f} "
              f"({ratio(sw['thread'], med['thread']):.2f}x its zero fill)")
        self.result["fault_paths"] = out
        self.target("thread path: random first touch, fault_around 1 (vs kernel shmem)",
                    med["thread"], med["kernel"], "ns/page", 2.0, "kernel shmem first touch")
        self.target("thread path: swap-in (vs its zero fill)", sw["thread"], med["thread"],
                    "ns/page", 1.5, "thread-path zero fill")
        self.target("thread path: random first touch (vs pager path)", med["thread"],
                    med["pager"], "ns/page", 1.0, "pager-path first touch")

    # 7. eviction against compression alone (issue 10) ----------------------------------

    def eviction(self, pool_ptr: int, pool_pages: int) -> None:
        """vm.evict() of a whole VM of mixed pages against liblz4 compressing the same pages
        alone (with the same all-zero check), repeat by repeat. Both run on this thread; CPU
        time (time.thread_time) is the figure, as the machine's load disturbs wall time (the
        core does all of eviction's work, system calls included, on the calling thread)."""
        n = self.region_pages
        pages = Pages(self.lib, n)
        pages.set_order(False, 0)
        dst = ctypes.create_string_buffer(2 * PAGE)
        stored = U64()
        self.log(f"7. eviction: {n * PAGE >> 20} MiB VM of mixed pages evicted whole, "
                 f"{self.repeats} repeats, against liblz4 alone")
        evict_cpu, evict_wall, lz4_cpu = [], [], []
        m = uvm.Machine("256MiB" if n <= 1 << 14 else f"{4 * self.region_mib}MiB",
                        swap_size=2 * n * PAGE, swap_dir=self.swap_dir, reclaim=False)
        try:
            vm = m.create_vm("evict", n * PAGE)
            for _ in range(self.repeats):
                with pinned(GUEST_CPU):
                    self.lib.copy_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None)
                    c0, w0 = time.thread_time(), time.perf_counter()
                    if vm.evict() != n:
                        raise RuntimeError("not every page evicted")
                    c1, w1 = time.thread_time(), time.perf_counter()
                    self.lib.compress_pages(pool_ptr, pool_pages, n, dst, ctypes.byref(stored))
                    c2 = time.thread_time()
                evict_cpu.append(c1 - c0)
                evict_wall.append(w1 - w0)
                lz4_cpu.append(c2 - c1)
            wall = U64()
            bad = self.lib.check_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None,
                                       ctypes.byref(wall))
            if bad:
                raise RuntimeError(f"{bad} pages differ after eviction and swap-in")
        finally:
            m.close()
        ev, lz = median(evict_cpu), median(lz4_cpu)
        out = {"pages": n, "evict_pages_per_cpu_s": round(n / ev), "evict_pages_per_s":
               round(n / median(evict_wall)), "lz4_alone_pages_per_cpu_s": round(n / lz),
               "ratio": round(ev / lz, 3)}
        print(f"   eviction {out['evict_pages_per_cpu_s']:,} pages/CPU-s ({out['evict_pages_per_s']:,} "
              f"pages/s wall), liblz4 alone {out['lz4_alone_pages_per_cpu_s']:,} pages/CPU-s: "
              f"{out['ratio']:.2f}x its CPU time")
        self.result["eviction"] = out
        self.target("eviction CPU time per page (vs liblz4 compressing the same pages)",
                    ev / n * 1e9, lz / n * 1e9, "ns/page", 1.3, "liblz4 alone")

    # targets ---------------------------------------------------------------------------

    def target(self, metric: str, value: float, baseline: float | None, unit: str, limit: float,
               baseline_name: str | None, absolute: bool = False) -> None:
        r = value if absolute else ratio(value, baseline or 0.0)
        self.targets.append({"metric": metric, "median": round(value, 3), "unit": unit,
                             "baseline": round(baseline, 1) if baseline is not None else None,
                             "baseline_name": baseline_name,
                             "ratio": None if absolute else round(r, 3),
                             "target": f"<= {limit:g}" + ("" if absolute else "x"),
                             "met": bool(r <= limit)})

    def print_targets(self) -> None:
        print()
        print("Targets (issues 2 and 10)")
        hdr = f"{'metric':<72} {'median':>10} {'baseline':>9} {'ratio':>7} {'target':>8} {'met':>4}"
        print(hdr)
        print("-" * len(hdr))
        for t in self.targets:
            base = f"{t['baseline']:.0f}" if t["baseline"] is not None else "-"
            rat = f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-"
            print(f"{t['metric']:<72} {t['median']:>10.1f} {base:>9} {rat:>7} {t['target']:>8} "
                  f"{'yes' if t['met'] else 'NO':>4}")
        self.result["targets"] = self.targets


class Disturbance(threading.Thread):
    """Counts the CPU time other processes take while the benchmark runs (sampled every
    second from /proc/<pid>/stat, kernel threads included; a process that starts and ends
    between two samples is missed), and the time the hypervisor steals from this VM."""

    def __init__(self) -> None:
        super().__init__(name="bench-disturbance", daemon=True)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.me = os.getpid()
        self.seen = self.sample()
        self.ticks = 0
        self.steal0 = self.steal()
        self.stop = threading.Event()

    def sample(self) -> dict[int, int]:
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == self.me:
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.me:          # our own children (the compiler)
                continue
            out[int(d)] = int(fields[11]) + int(fields[12])
        return out

    @staticmethod
    def steal() -> int:
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.update()

    def update(self) -> None:
        now = self.sample()
        for pid, t in now.items():
            self.ticks += max(0, t - self.seen.get(pid, 0))
        self.seen = now

    def finish(self) -> tuple[float, float]:
        """(CPU-seconds other processes took, seconds stolen)."""
        self.stop.set()
        self.join()
        self.update()
        return self.ticks / self.hz, (self.steal() - self.steal0) / self.hz


def git_rev() -> str | None:
    """The commit of the checkout the measured uvm was imported from, or None."""
    try:
        return subprocess.run(["git", "-C", str(Path(uvm.__file__).resolve().parent.parent),
                               "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(lib: ctypes.CDLL, swap_dir: str) -> dict[str, Any]:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    model = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    rev = git_rev()
    return {
        "kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)), "python": platform.python_version(),
        "uvm": uvm.__version__, "git": rev, "thp_shmem": read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "thp_anon": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "clock_overhead_ns": int(lib.clock_overhead_ns(200000)), "swap_dir": swap_dir,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller regions and fewer repeats (about 8 s here)")
    ap.add_argument("--out", metavar="FILE.json", help="write every figure as JSON to FILE.json")
    ap.add_argument("--repeats", type=int, help="repeats of each first-touch run (default 5, quick 2)")
    ap.add_argument("--region", type=int, metavar="MiB", help="first-touch region size (default 64, quick 16)")
    ap.add_argument("--only", choices=["fault-paths", "eviction"],
                    help="run only this section (6 or 7)")
    ap.add_argument("--swap-dir", help="directory of the swap files (default $TMPDIR or /var/tmp)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats: must be at least 1")
    if args.region is not None and not 1 <= args.region <= 1024:
        ap.error("--region: must be 1..1024 MiB")
    swap_dir = args.swap_dir or os.environ.get("TMPDIR", "/var/tmp")
    if not os.path.isdir(swap_dir):
        ap.error(f"--swap-dir: {swap_dir!r} is not a directory")

    t0 = time.monotonic()
    watch = Disturbance()
    watch.start()
    with tempfile.TemporaryDirectory(prefix="uvm-bench-") as tmp:
        lib = build_helper(tmp)
        env = environment(lib, swap_dir)
        env["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
        print(f"uvm bench_core: {env['cpu']}, {env['cpus']} CPUs, Linux {env['kernel']}, "
              f"Python {env['python']}, uvm {env['uvm']} ({env['git']}), shmem THP {env['thp_shmem']}, "
              f"clock read {env['clock_overhead_ns']} ns; {'quick' if args.quick else 'full'} run")
        b = Bench(args, lib, swap_dir)
        b.result["env"] = env
        b.result["command"] = " ".join(["python", "bench/bench_core.py", *(argv if argv is not None else sys.argv[1:])])
        pool_pages = 1024 if args.quick else 4096
        pool = build_pool(pool_pages)
        expected = expected_stored_lengths(pool)
        pool_buf = (ctypes.c_char * len(pool)).from_buffer(pool)
        pool_ptr = ctypes.addressof(pool_buf)

        if args.only is None:
            b.first_touch()
            b.swap_in(pool, pool_ptr, expected)
            b.overcommit(pool, pool_ptr, expected)
            b.bookkeeping()
            b.api_latency()
        if args.only in (None, "fault-paths"):
            b.fault_paths(pool_ptr, pool_pages)
        if args.only in (None, "eviction"):
            b.eviction(pool_ptr, pool_pages)
        b.print_targets()
        del pool_buf
        b.result["elapsed_s"] = round(time.monotonic() - t0, 1)
        foreign, stolen = watch.finish()
        b.result["env"]["other_processes_cpu_s"] = round(foreign, 2)
        b.result["env"]["steal_s"] = round(stolen, 2)
        b.result["env"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        print(f"\ndone in {b.result['elapsed_s']} s; other processes used {foreign:.2f} CPU-seconds meanwhile "
              f"(kernel threads included), the hypervisor stole {stolen:.1f} s")
        if foreign > 0.1 * b.result["elapsed_s"]:
            print("WARNING: the machine was not idle during the run: its figures are disturbed; run again "
                  "on a quiet machine")
        if stolen > 0.05 * b.result["elapsed_s"]:
            print("WARNING: the hypervisor took CPU time from this VM during the run: its figures are "
                  "disturbed; run again")
        if args.out:
            Path(args.out).write_text(json.dumps(b.result, indent=2) + "\n")
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
