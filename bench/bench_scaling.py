#!/usr/bin/env python3
"""How uvm's per-page costs scale (issue 10, item 4), as ratios against baselines measured
in the same run.

    python bench/bench_scaling.py [--quick] [--max-mib N] [--out FILE.json]

1. guest size: from 64 MiB up to --max-mib (default 16 GiB; quick 1 GiB), at each size:
   random first touch (fault_around 1) of a fresh VM against the kernel's first touch of a
   memfd of the same size; a pass of the sharing scanner that merges nothing (pages of
   distinct content), CPU per page; a swap-bound fill (a guest twice the machine's memory
   written sequentially with mixed pages), per page; random swap-ins of that guest, per
   swap-in. Each per-page figure is also given against its value at the smallest size.
2. guest threads: two threads on two CPUs first-touching halves of one VM (random order)
   against one thread touching all of it, on both fault paths, and the kernel's own
   two-thread first touch of a memfd for comparison (rates, pages per second).
3. VM count: the same total memory in 2, 8 and 64 VMs (pairs of VMs hold the same content
   in half of their pages): CPU per merged page of the first sharing pass, per page of a
   pass that merges nothing, and of idle sampling's calls (watch 100 random pages of every
   VM and ask which were touched).

Every byte written is read back and compared. Timing loops are bench/_touch.c (built by
bench_core.build_helper), called through ctypes with the GIL released. bench/README.md says
what every figure means; docs/performance.md has a recorded run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvm
from bench_core import (GUEST_CPU, PAGE, Disturbance, Pages, build_helper, build_pool, environment,
                        kernel_touch, median, pinned, ratio, time_touch)

MiB = 1 << 20
SWAPIN_SAMPLE = 65536       # random reads of the swap-bound guest


def log(msg: str) -> None:
    print(msg, flush=True)


# -- 1. guest size ---------------------------------------------------------------------------

def size_point(lib: ctypes.CDLL, mib: int, pool_ptr: int, pool_pages: int, swap_dir: str,
               seed: int) -> dict[str, Any]:
    n = mib * MiB // PAGE
    pages = Pages(lib, n)
    out: dict[str, Any] = {"mib": mib, "pages": n}
    out["kernel_first_touch_ns"] = kernel_touch(lib, pages, False, True, seed)[0]
    with uvm.Machine(memory=(mib + 16) * MiB, swap_size=mib * MiB, swap_dir=swap_dir) as m:
        vm = m.create_vm("big", n * PAGE)
        out["first_touch_ns"] = time_touch(lib, vm.address, pages, True, seed)[0]
        if vm.stats()["zero_fills"] != n:
            raise RuntimeError(f"{mib} MiB: {vm.stats()} after a first touch of {n} pages")
        # every page now holds its own 8-byte stamp: distinct content, nothing merges
        m.share_now()                   # leaves hints (as many as fit)
        s0, c0 = m.stats()["scanned"], time.thread_time()
        merged = m.share_now()
        cpu, scanned = time.thread_time() - c0, m.stats()["scanned"] - s0
        if merged:
            raise RuntimeError(f"{mib} MiB: {merged} pages of distinct content merged")
        out["share_scan_ns"] = cpu / max(1, scanned) * 1e9
        out["share_scanned"] = scanned
    # swap-bound fill: a guest of n pages on a machine of n / 2 frames
    with uvm.Machine(memory=max(16, mib // 2) * MiB, swap_size=2 * n * PAGE, swap_dir=swap_dir) as m:
        vm = m.create_vm("fill", n * PAGE)
        pages.set_order(False, 0)
        with pinned(GUEST_CPU):
            wall = lib.copy_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None)
        st = m.stats()
        out["swap_fill_ns"] = wall / n
        out["swap_fill_swapouts"] = st["swapouts"] + st["swapouts_zero"]
        k = min(n, SWAPIN_SAMPLE)
        pages.set_order(True, seed + 1)
        sw0 = m.stats()["swapins"]
        with pinned(GUEST_CPU):
            wall = lib.touch_pages(vm.address, pages.order, k, None, 0)
        swapins = m.stats()["swapins"] - sw0
        out["swapin_ns"] = wall / max(1, swapins)
        out["swapins"] = swapins
        pages.set_order(False, 0)
        wall_c = ctypes.c_uint64()
        bad = lib.check_pages(vm.address, pool_ptr, pool_pages, pages.order, n, None,
                              ctypes.byref(wall_c))
        if bad:
            raise RuntimeError(f"{mib} MiB: {bad} pages differ after the swap-bound fill")
        out["bytes_checked"] = n * PAGE
    out["first_touch_x_kernel"] = ratio(out["first_touch_ns"], out["kernel_first_touch_ns"])
    return out


def sizes_section(lib: ctypes.CDLL, sizes: list[int], pool_ptr: int, pool_pages: int,
                  swap_dir: str) -> list[dict[str, Any]]:
    log(f"1. guest size: {', '.join(f'{s} MiB' for s in sizes)}")
    log(f"   {'MiB':>6s} {'kernel ns':>10s} {'touch ns':>9s} {'x kernel':>8s} {'share ns':>9s} "
        f"{'fill ns':>8s} {'swap-in ns':>10s}   (each also x its value at {sizes[0]} MiB)")
    pts = []
    for i, mib in enumerate(sizes):
        p = size_point(lib, mib, pool_ptr, pool_pages, swap_dir, 100 + i)
        pts.append(p)
        base = pts[0]
        for key in ("first_touch_ns", "share_scan_ns", "swap_fill_ns", "swapin_ns",
                    "kernel_first_touch_ns"):
            p[key.replace("_ns", "_x_smallest")] = ratio(p[key], base[key])
        log(f"   {mib:6d} {p['kernel_first_touch_ns']:10.0f} {p['first_touch_ns']:9.0f} "
            f"{p['first_touch_x_kernel']:7.2f}x {p['share_scan_ns']:9.0f} {p['swap_fill_ns']:8.0f} "
            f"{p['swapin_ns']:10.0f}   ({p['first_touch_x_smallest']:.2f}x {p['share_scan_x_smallest']:.2f}x "
            f"{p['swap_fill_x_smallest']:.2f}x {p['swapin_x_smallest']:.2f}x)")
    return pts


# -- 2. guest threads ------------------------------------------------------------------------

def touch_threads(lib: ctypes.CDLL, addr: int, orders: list[Any], counts: list[int]) -> float:
    """Touches with one thread per order, thread i pinned to CPU i; returns the wall seconds
    from the first start to the last end."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with pinned(i):
                lib.touch_pages(addr, orders[i], counts[i], None, 1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), name=f"toucher{i}") for i in range(len(orders))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def paired_speedup(rates: dict[str, list[float]]) -> float:
    """The median over repeats of the two-thread rate over the one-thread rate of the same
    repeat (run back to back, so a slow moment of the machine touches both)."""
    return median([ratio(b, a) for a, b in zip(rates["1"], rates["2"])])


def threads_section(lib: ctypes.CDLL, mib: int, repeats: int, swap_dir: str) -> dict[str, Any]:
    n = mib * MiB // PAGE
    log(f"2. guest threads: {mib} MiB, random first touch, 1 thread (CPU 0) against 2 "
        f"(CPUs 0 and 1, half each), {repeats} repeats")
    whole = Pages(lib, n)
    half = n // 2
    a, b = (ctypes.c_uint32 * half)(), (ctypes.c_uint32 * (n - half))()
    rates: dict[str, dict[int, list[float]]] = {k: {1: [], 2: []} for k in ("kernel", "pager", "thread")}
    for rep in range(repeats):
        whole.set_order(True, 500 + rep)
        ctypes.memmove(a, whole.order, half * 4)
        ctypes.memmove(b, ctypes.addressof(whole.order) + half * 4, (n - half) * 4)
        for who in ("kernel", "pager", "thread"):
            for nthreads in (1, 2):
                orders, counts = ([whole.order], [n]) if nthreads == 1 else ([a, b], [half, n - half])
                if who == "kernel":
                    addr = lib.baseline_map(n * PAGE, 0)
                    try:
                        secs = touch_threads(lib, addr, orders, counts)
                    finally:
                        lib.baseline_unmap(addr, n * PAGE)
                else:
                    with uvm.Machine(memory=(mib + 16) * MiB, swap_size=mib * MiB, swap_dir=swap_dir,
                                     fault_path=who) as m:
                        vm = m.create_vm("t", n * PAGE)
                        secs = touch_threads(lib, vm.address, orders, counts)
                        if vm.stats()["zero_fills"] != n:
                            raise RuntimeError(f"{who}: {vm.stats()} after {nthreads}-thread touch")
                rates[who][nthreads].append(n / secs)
    out: dict[str, Any] = {"mib": mib, "pages": n, "repeats": repeats}
    for who, r in rates.items():
        one, two = median(r[1]), median(r[2])
        speedup = paired_speedup({str(k): v for k, v in r.items()})
        out[who] = {"one_thread_pages_per_s": one, "two_threads_pages_per_s": two,
                    "speedup": speedup, "all": {str(k): v for k, v in r.items()}}
        log(f"   {who:7s} 1 thread {one:10.0f} pages/s, 2 threads {two:10.0f} pages/s: "
            f"{speedup:.2f}x (median of each repeat's ratio)")
    return out


# -- 3. VM count -----------------------------------------------------------------------------

def vms_section(total_mib: int, counts: list[int], swap_dir: str) -> list[dict[str, Any]]:
    log(f"3. VM count: {total_mib} MiB in {', '.join(map(str, counts))} VMs (VM 2j and 2j+1 "
        f"hold the same content in the first half of their pages)")
    log(f"   {'VMs':>4s} {'merge ns/page':>13s} {'scan ns/page':>12s} {'sample ns/page':>14s}")
    out = []
    for k in counts:
        per = total_mib * MiB // k
        pp = per // PAGE
        pairs = [os.urandom(per // 2) for _ in range(k // 2)]
        contents = [pairs[i // 2] + os.urandom(per - per // 2) for i in range(k)]
        with uvm.Machine(memory=total_mib * MiB * 5 // 4 + 16 * MiB, swap_size=total_mib * MiB,
                         swap_dir=swap_dir, fault_around=64) as m:
            vms = [m.create_vm(f"vm{i}", per) for i in range(k)]
            for vm, data in zip(vms, contents):
                vm.write(0, data)
            c0 = time.thread_time()
            merged = m.share_now()
            merge_cpu = time.thread_time() - c0
            s0, c0 = m.stats()["scanned"], time.thread_time()
            again = m.share_now()
            scan_cpu, scanned = time.thread_time() - c0, m.stats()["scanned"] - s0
            c0 = time.thread_time()
            watched = 0
            for vm in vms:
                ppns = vm.watch_random(100)
                vm.watched(ppns)
                watched += len(ppns)
            sample_cpu = time.thread_time() - c0
            for vm, data in zip(vms, contents):
                if vm.read(0, per) != data:
                    raise RuntimeError(f"{k} VMs: {vm.name} read back differs")
            m.check()
        want = k // 2 * 2 * (pp // 2)
        if merged != want or again:
            raise RuntimeError(f"{k} VMs: merged {merged} then {again}, expected {want} then 0")
        p = {"vms": k, "vm_pages": pp, "merged": merged, "merge_ns_per_page": merge_cpu / merged * 1e9,
             "scanned_no_merge": scanned, "scan_ns_per_page": scan_cpu / max(1, scanned) * 1e9,
             "watched": watched, "sample_ns_per_page": sample_cpu / max(1, watched) * 1e9}
        out.append(p)
        log(f"   {k:4d} {p['merge_ns_per_page']:13.0f} {p['scan_ns_per_page']:12.0f} "
            f"{p['sample_ns_per_page']:14.0f}")
    for p in out:
        for key in ("merge_ns_per_page", "scan_ns_per_page", "sample_ns_per_page"):
            p[key.replace("_ns_per_page", "_x_fewest")] = ratio(p[key], out[0][key])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="up to 1 GiB, smaller sections (about a minute)")
    ap.add_argument("--max-mib", type=int, help="largest guest of section 1 (default 16384; quick 1024)")
    ap.add_argument("--out", metavar="FILE.json", help="write every figure as JSON")
    ap.add_argument("--swap-dir", help="directory of the swap files (default $TMPDIR or /var/tmp)")
    args = ap.parse_args(argv)
    max_mib = args.max_mib or (1024 if args.quick else 16384)
    if max_mib < 64:
        ap.error("--max-mib: must be at least 64")
    if len(os.sched_getaffinity(0)) < 2:
        ap.error("needs two CPUs (section 2 pins a guest thread to each of CPUs 0 and 1)")
    swap_dir = args.swap_dir or os.environ.get("TMPDIR", "/var/tmp")
    sizes = [64]
    while sizes[-1] * 4 <= max_mib:
        sizes.append(sizes[-1] * 4)
    watch = Disturbance()
    watch.start()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="uvm-bench-") as tmp:
        lib = build_helper(tmp)
        env = environment(lib, swap_dir)
        log(f"uvm bench_scaling: {env['cpu']}, {env['cpus']} CPUs, Linux {env['kernel']}, uvm "
            f"{env['uvm']} ({env['git']}); sizes up to {sizes[-1]} MiB")
        pool_pages = 4096
        pool = build_pool(pool_pages)
        pool_buf = (ctypes.c_char * len(pool)).from_buffer(pool)
        pool_ptr = ctypes.addressof(pool_buf)
        res: dict[str, Any] = {"env": env, "command": " ".join(["python", "bench/bench_scaling.py",
                                                                  *(argv if argv is not None else sys.argv[1:])])}
        res["sizes"] = sizes_section(lib, sizes, pool_ptr, pool_pages, swap_dir)
        res["threads"] = threads_section(lib, 256 if args.quick else 1024, 2 if args.quick else 3,
                                         swap_dir)
        res["vm_counts"] = vms_section(64 if args.quick else 256, [2, 8, 64], swap_dir)
        del pool_buf
    foreign, stolen = watch.finish()
    res["env"]["other_processes_cpu_s"] = round(foreign, 2)
    res["env"]["steal_s"] = round(stolen, 2)
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    big = res["sizes"][-1]
    thr = res["threads"]
    vc = res["vm_counts"][-1]
    log("\nTargets (issue 10, item 4):")
    log(f"  per-page costs flat from {sizes[0]} MiB to {sizes[-1]} MiB (at the largest, x the "
        f"smallest): first touch {big['first_touch_x_smallest']:.2f}x (kernel's own "
        f"{big['kernel_first_touch_x_smallest']:.2f}x), sharing scan {big['share_scan_x_smallest']:.2f}x, "
        f"swap-bound fill {big['swap_fill_x_smallest']:.2f}x, swap-in {big['swapin_x_smallest']:.2f}x")
    for who in ("pager", "thread"):
        sp = thr[who]["speedup"]
        log(f"  two guest threads >= 1.8x one, {who} path: {sp:.2f}x -> {'met' if sp >= 1.8 else 'NOT MET'} "
            f"(kernel's own: {thr['kernel']['speedup']:.2f}x)")
    log(f"  64 VMs against 2, per page: merge {vc['merge_x_fewest']:.2f}x, scan {vc['scan_x_fewest']:.2f}x, "
        f"sampling {vc['sample_x_fewest']:.2f}x")
    log(f"\ndone in {res['elapsed_s']} s; other processes used {foreign:.2f} CPU-seconds meanwhile, "
        f"the hypervisor stole {stolen:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
