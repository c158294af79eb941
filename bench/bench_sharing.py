#!/usr/bin/env python3
"""uvm's content-based page sharing against Linux KSM, on the same page contents, in one run.

    python bench/bench_sharing.py [--quick] [--out FILE.json]

Content: N "VMs" of M MiB each. Every VM holds the same OS "image" (real files: the installed
standard library's .py sources and the .so files under sys.prefix/lib, each file starting on a
page boundary and zero-padded like a page cache), laid out in a different file order per VM,
interleaved with per-VM private random pages and runs of zero pages.

uvm: the VMs of a Machine big enough never to swap; `machine.share_now()` (one synchronous full
scan, on the calling thread, in C) is repeated until a pass merges nothing. KSM: the same bytes
in anonymous MAP_PRIVATE mappings, madvise(MADV_MERGEABLE), ksmd run at a given pages_to_scan
until pages_sharing/pages_shared stop changing. Every KSM setting the script changes is saved
first and restored at the end, and what KSM merged is unmerged (run=2). Needs root.
See bench/README.md ("bench_sharing.py") for what every figure means."""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import mmap
import os
import platform
import random
import resource
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from bench_core import git_rev

PAGE = 4096
MiB = 1 << 20
KSM = Path("/sys/kernel/mm/ksm")
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_NOHUGEPAGE = 15
MAX_FILE = 4 * MiB          # files larger than this are left out of the image
IMAGE_FRACTION = 0.50       # of each VM: the shared image
ZERO_FRACTION = 0.10        # of each VM: zero pages, in runs of 1..ZERO_RUN pages
ZERO_RUN = 32
PRIVATE_RUN = 64            # private random data, in runs of 1..PRIVATE_RUN pages
UVM_MAX_PASSES = 8
KSM_POLL = 0.01             # seconds between reads of /sys/kernel/mm/ksm
KSM_STABLE_SCANS = 2        # converged: this many full scans without a change


def log(*a: object) -> None:
    print(*a, flush=True)


# -- content ---------------------------------------------------------------------------------

def image_candidates() -> list[Path]:
    """Real files for the image: stdlib .py sources and .so files under sys.prefix/lib."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, Path] = {}
    for p in list(stdlib.rglob("*.py")) + [Path(s) for s in glob.glob(
            os.path.join(sys.prefix, "lib", "**", "*.so*"), recursive=True)]:
        if "site-packages" in p.parts and p.suffix == ".py":
            continue                    # the standard library's sources, not installed packages
        try:
            real = os.path.realpath(p)
            if os.path.isfile(real) and 0 < os.path.getsize(real) <= MAX_FILE:
                found.setdefault(real, Path(real))
        except OSError:
            continue
    return [found[k] for k in sorted(found)]


def build_image(pages: int, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """Returns the image as a list of page-padded files filling at most `pages` pages."""
    cands = image_candidates()
    random.Random(seed).shuffle(cands)
    files: list[bytes] = []
    used = 0
    kinds = {"py": 0, "so": 0}
    for p in cands:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        data += bytes(-len(data) % PAGE)
        n = len(data) // PAGE
        if used + n > pages:
            continue
        files.append(data)
        used += n
        kinds["py" if p.suffix == ".py" else "so"] += 1
        if used == pages:
            break
    if not files:
        sys.exit("bench_sharing: found no standard library files to build the image from")
    return files, {"files": len(files), "py_files": kinds["py"], "so_files": kinds["so"],
                   "pages": used}


def runs(total: int, longest: int, rng: random.Random) -> list[int]:
    """Splits `total` pages into runs of 1..longest pages."""
    out = []
    while total > 0:
        n = min(total, rng.randint(1, longest))
        out.append(n)
        total -= n
    return out


def build_vm(i: int, image: list[bytes], vm_pages: int, seed: int,
             zero_fraction: float = ZERO_FRACTION) -> tuple[bytes, dict[str, int]]:
    """One VM's memory: the image's files in this VM's own order, interleaved with private
    random runs and zero runs."""
    rng = random.Random(seed * 1_000_003 + i)
    image_pages = sum(len(f) for f in image) // PAGE
    zero_pages = int(vm_pages * zero_fraction)
    private_pages = vm_pages - image_pages - zero_pages
    segs: list[tuple[str, Any]] = [("file", f) for f in image]
    segs += [("private", n) for n in runs(private_pages, PRIVATE_RUN, rng)]
    segs += [("zero", n) for n in runs(zero_pages, ZERO_RUN, rng)]
    rng.shuffle(segs)
    parts = []
    for kind, x in segs:
        if kind == "file":
            parts.append(x)
        elif kind == "private":
            parts.append(rng.randbytes(x * PAGE))
        else:
            parts.append(bytes(x * PAGE))
    data = b"".join(parts)
    assert len(data) == vm_pages * PAGE
    return data, {"image": image_pages, "private": private_pages, "zero": zero_pages}


def distinct_pages(contents: list[bytes]) -> tuple[int, int]:
    """Returns (distinct page contents over all VMs, zero pages)."""
    seen = set()
    zero = bytes(PAGE)
    zeros = 0
    for data in contents:
        mv = memoryview(data)
        for off in range(0, len(data), PAGE):
            page = mv[off:off + PAGE]
            if page == zero:
                zeros += 1
            seen.add(hashlib.blake2b(page, digest_size=16).digest())
    return len(seen), zeros


# -- CPU accounting ----------------------------------------------------------------------------

class Clocks:
    """Wall, calling-thread CPU (user+sys), process CPU, and the thread's user/sys split."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.thread = time.thread_time()
        self.process = time.process_time()
        ru = resource.getrusage(resource.RUSAGE_THREAD)
        self.user, self.sys = ru.ru_utime, ru.ru_stime

    def since(self, t0: Clocks) -> dict[str, float]:
        return {"wall_s": self.wall - t0.wall, "thread_cpu_s": self.thread - t0.thread,
                "process_cpu_s": self.process - t0.process, "thread_user_s": self.user - t0.user,
                "thread_sys_s": self.sys - t0.sys}


class SystemCPU:
    """Whole-machine CPU from /proc/stat: busy (non-idle) and stolen seconds, and this
    process's and ksmd's CPU, to tell how much else ran during a measurement."""

    def __init__(self, ksmd: int | None = None) -> None:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        self.busy = (sum(v[:8]) - v[3] - v[4] - v[7]) / hz     # all but idle, iowait, steal
        self.steal = v[7] / hz if len(v) > 7 else 0.0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.own = ru.ru_utime + ru.ru_stime
        self.ksmd = ksmd_cpu(ksmd)[1] if ksmd else 0.0

    def since(self, t0: SystemCPU) -> dict[str, float]:
        busy = self.busy - t0.busy
        return {"busy_cpu_s": busy, "steal_s": self.steal - t0.steal,
                "others_cpu_s": max(0.0, busy - (self.own - t0.own) - (self.ksmd - t0.ksmd))}


def count_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


# -- uvm -------------------------------------------------------------------------------------

def run_uvm(contents: list[bytes], vm_pages: int) -> dict[str, Any]:
    import uvm

    total = len(contents) * vm_pages
    frames = total + total // 4 + 4096          # everything resident, plus shared frames, never swapping
    res: dict[str, Any] = {"machine_frames": frames}
    maps0 = count_maps()
    with uvm.Machine(memory=frames * PAGE, fault_around=64, sharing=False) as m:
        vms = [m.create_vm(f"vm{i}", memory=vm_pages * PAGE) for i in range(len(contents))]
        t0 = time.perf_counter()
        for vm, data in zip(vms, contents):
            for off in range(0, len(data), 16 * MiB):
                vm.write(off, data[off:off + 16 * MiB])
        res["write_s"] = time.perf_counter() - t0
        st = m.stats()
        res["before"] = {k: st[k] for k in ("frames_used", "sharing", "swap_pages")}
        res["memfd_pages_before"] = m.memfd_pages()
        passes = []
        for _ in range(UVM_MAX_PASSES):
            s0 = m.stats()
            y0 = SystemCPU()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            c0 = Clocks()
            merged = m.share_now()
            c1 = Clocks()
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            y1 = SystemCPU()
            s1 = m.stats()
            p = c1.since(c0)
            p.update(y1.since(y0), voluntary_switches=r1.ru_nvcsw - r0.ru_nvcsw,
                     involuntary_switches=r1.ru_nivcsw - r0.ru_nivcsw)
            p.update(merged=merged, scanned=s1["scanned"] - s0["scanned"],
                     saved_after=s1["saved"], hint_hits=s1["hint_hits"] - s0["hint_hits"],
                     shared_hits=s1["shared_hits"] - s0["shared_hits"])
            passes.append(p)
            log(f"  uvm pass {len(passes)}: merged {merged:6d}  scanned {p['scanned']:6d}  "
                f"wall {p['wall_s']:.3f} s  thread CPU {p['thread_cpu_s']:.3f} s "
                f"(user {p['thread_user_s']:.3f}, sys {p['thread_sys_s']:.3f})  "
                f"process CPU {p['process_cpu_s']:.3f} s")
            if merged == 0:
                break
        st = m.stats()
        res["passes"] = passes
        res["converged"] = passes[-1]["merged"] == 0
        res["stats"] = {k: st[k] for k in (
            "frames_used", "shared_frames", "sharing", "saved", "zero_shared", "hints",
            "hint_hits", "shared_hits", "hash_collisions", "scanned", "cow_breaks",
            "merge_stopped", "merge_stops", "swap_pages", "swapouts")}
        res["memfd_pages_after"] = m.memfd_pages()
        res["mappings_added"] = count_maps() - maps0
        # the first read of a merged zero page re-maps it onto the zero frame (in the pager:
        # zero pages are merged without a mapping), a cost the passes above do not include;
        # time it, against reading as many pages that need no fault (private, resident)
        zero = bytes(PAGE)
        zeros = [(vm, p) for vm, data in zip(vms, contents) for p in range(vm_pages)
                 if data[p * PAGE:(p + 1) * PAGE] == zero and vm.page_state(p) == "shared"]
        plain = [(vm, p) for vm in vms for p in range(vm_pages)
                 if vm.page_state(p) == "resident"][:len(zeros)]
        for name, pages in (("control", plain), ("zero", zeros)):
            c0 = Clocks()
            for vm, p in pages:
                vm.read(p * PAGE, 8)
            c = Clocks().since(c0)
            res[f"first_read_{name}"] = {"pages": len(pages), "wall_s": c["wall_s"],
                                         "process_cpu_s": c["process_cpu_s"]}
        res["first_read_zero"]["mappings_after"] = count_maps() - maps0
        # nothing lost: every byte of every VM reads back
        t0 = time.perf_counter()
        bad = []
        for i, (vm, data) in enumerate(zip(vms, contents)):
            for off in range(0, len(data), 16 * MiB):
                if vm.read(off, min(16 * MiB, len(data) - off)) != data[off:off + 16 * MiB]:
                    bad.append((i, off))
        res["verify"] = {"pages_checked": total, "mismatched_chunks": bad,
                         "seconds": time.perf_counter() - t0}
        m.check()
    merging = [p for p in passes if p["merged"] > 0] or passes[:1]
    to_final = {k: sum(p[k] for p in merging) for k in ("wall_s", "thread_cpu_s", "process_cpu_s")}
    to_confirm = {k: sum(p[k] for p in passes) for k in ("wall_s", "thread_cpu_s", "process_cpu_s")}
    res["to_final"] = to_final
    res["to_confirmed"] = to_confirm
    # throughput of the pure scan (write-protect, hash, look up, unprotect): a pass that merged
    # nothing; and of the whole first pass, merges included
    scan_pass = passes[-1] if res["converged"] else passes[0]
    cpu = max(scan_pass["thread_cpu_s"], 1e-9)
    res["scan_only"] = {"pages": scan_pass["scanned"], "thread_cpu_s": scan_pass["thread_cpu_s"],
                        "pages_per_cpu_s": scan_pass["scanned"] / cpu,
                        "MB_per_cpu_s": scan_pass["scanned"] * PAGE / cpu / 1e6,
                        "us_per_page": cpu / max(1, scan_pass["scanned"]) * 1e6}
    p0 = passes[0]
    cpu0 = max(p0["thread_cpu_s"], 1e-9)
    res["first_pass"] = {"pages": p0["scanned"], "pages_per_cpu_s": p0["scanned"] / cpu0,
                         "MB_per_cpu_s": p0["scanned"] * PAGE / cpu0 / 1e6,
                         "us_per_page": cpu0 / max(1, p0["scanned"]) * 1e6,
                         "us_per_merged_page": cpu0 / max(1, p0["merged"]) * 1e6}
    return res


# -- KSM -------------------------------------------------------------------------------------

def ksm_read(name: str) -> str:
    return (KSM / name).read_text().strip()


def ksm_int(name: str) -> int:
    return int(ksm_read(name))


def ksm_write(name: str, value: object) -> None:
    with open(KSM / name, "w") as f:
        f.write(str(value))


def ksm_settings() -> dict[str, str]:
    """Every writable KSM setting and its value (the selected word for [a] b lists)."""
    out = {}
    for p in sorted(KSM.iterdir()):
        if not os.stat(p).st_mode & 0o200:
            continue
        v = p.read_text().strip()
        if "[" in v:
            v = v[v.index("[") + 1:v.index("]")]
        out[p.name] = v
    return out


def ksmd_pid() -> int:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() == "ksmd":
                    return int(d)
            except OSError:
                pass
    raise RuntimeError("no ksmd thread found")


def ksmd_cpu(pid: int) -> tuple[float, float]:
    """ksmd's CPU seconds: (schedstat run time, ns resolution; utime+stime from stat, ticks)."""
    try:
        sched = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        sched = float("nan")
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    ticks = int(f[11]) + int(f[12])
    return sched, ticks / os.sysconf("SC_CLK_TCK")


class Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.madvise.restype = ctypes.c_int

    def madvise(self, addr: int, size: int, advice: int) -> None:
        if self.lib.madvise(addr, size, advice) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"madvise({advice}): {os.strerror(e)}")


def map_address(mm: mmap.mmap) -> int:
    buf = ctypes.c_char.from_buffer(mm)
    addr = ctypes.addressof(buf)
    del buf                     # release the export so the mapping can be closed later
    return addr


def run_ksm(contents: list[bytes], pages_to_scan: int, timeout: float, libc: Libc,
            pid: int) -> dict[str, Any]:
    """Merges `contents` with KSM at `pages_to_scan`; returns what it measured. The caller
    restores KSM's settings."""
    size = len(contents[0])
    total = len(contents) * size // PAGE
    maps = []
    res: dict[str, Any] = {"pages_to_scan": pages_to_scan,
                           "sleep_millisecs": ksm_int("sleep_millisecs")}
    try:
        for data in contents:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
            addr = map_address(mm)
            libc.madvise(addr, size, MADV_NOHUGEPAGE)
            mm[:] = data
            libc.madvise(addr, size, MADV_MERGEABLE)
            maps.append((mm, addr))
        ksm_write("pages_to_scan", pages_to_scan)
        base = {k: ksm_int(k) for k in ("pages_sharing", "pages_shared", "full_scans",
                                       "pages_scanned", "ksm_zero_pages")}
        res["baseline"] = base
        y0 = SystemCPU(pid)
        c0 = ksmd_cpu(pid)
        t0 = time.perf_counter()
        ksm_write("run", 1)
        # one sample per poll: (wall s, ksmd CPU s from schedstat, from stat ticks, pages_sharing,
        # pages_shared, full scans done)
        samples = [(0.0, 0.0, 0.0, base["pages_sharing"], base["pages_shared"], 0)]
        last = (base["pages_sharing"], base["pages_shared"])
        fs_last = 0
        converged = False
        while True:
            time.sleep(KSM_POLL)
            now = time.perf_counter() - t0
            sharing, shared = ksm_int("pages_sharing"), ksm_int("pages_shared")
            fs = ksm_int("full_scans") - base["full_scans"]
            c = ksmd_cpu(pid)
            samples.append((now, c[0] - c0[0], c[1] - c0[1], sharing, shared, fs))
            if (sharing, shared) != last:
                last, fs_last = (sharing, shared), fs
            # the last change happened during scan fs_last + 1; one more whole scan changed nothing
            if fs >= fs_last + KSM_STABLE_SCANS and fs >= KSM_STABLE_SCANS + 1:
                converged = True
                break
            if now > timeout:
                break
        t_end = time.perf_counter() - t0
        c_end = ksmd_cpu(pid)
        ksm_write("run", 0)
        res["system"] = SystemCPU(pid).since(y0)
        end = {k: ksm_int(k) for k in ("pages_sharing", "pages_shared", "full_scans", "pages_scanned",
                                      "pages_unshared", "pages_volatile", "ksm_zero_pages",
                                      "stable_node_chains", "stable_node_dups")}
        sharing = end["pages_sharing"] - base["pages_sharing"]
        shared = end["pages_shared"] - base["pages_shared"]
        zero_saved = end["ksm_zero_pages"] - base["ksm_zero_pages"]
        res.update(converged=converged, timeout_s=timeout, end=end,
                   pages_sharing=sharing, pages_shared=shared, ksm_zero_pages=zero_saved,
                   saved=sharing + zero_saved, merged=sharing + shared + zero_saved,
                   full_scans=end["full_scans"] - base["full_scans"],
                   pages_scanned=end["pages_scanned"] - base["pages_scanned"],
                   samples=len(samples))
        # the final count was first seen at sample i (upper bound: ksmd may have worked on after
        # reaching it) and not yet at sample i - 1 (lower bound); likewise for the end of the
        # confirming scan
        i = 1 + max((n for n, x in enumerate(samples) if (x[3], x[4]) != last), default=-1)
        j = next((n for n, x in enumerate(samples) if x[5] >= fs_last + KSM_STABLE_SCANS), len(samples) - 1)
        for key, k in (("to_final", i), ("to_confirmed", j)):
            hi, lo = samples[k], samples[max(0, k - 1)]
            res[key] = {"wall_s": hi[0], "cpu_s": hi[1], "cpu_ticks_s": hi[2],
                        "wall_s_lower": lo[0], "cpu_s_lower": lo[1]}
        res["after_stop"] = {"wall_s": t_end, "cpu_s": c_end[0] - c0[0], "cpu_ticks_s": c_end[1] - c0[1]}
        res["trace"] = [x for n, x in enumerate(samples)
                        if n == 0 or x[3:] != samples[n - 1][3:]][:400]
        cpu = max(res["after_stop"]["cpu_s"], 1e-9)
        res["pages_scanned_per_cpu_s"] = res["pages_scanned"] / cpu
        res["distinct_left"] = total - res["saved"]
        # nothing lost
        bad = [i for i, ((mm, _), data) in enumerate(zip(maps, contents)) if mm[:] != data]
        res["verify"] = {"pages_checked": total, "mismatched_vms": bad}
        # unmerge: echo 2 > run (the caller restores the old run value)
        t0 = time.perf_counter()
        ksm_write("run", 2)
        res["unmerge_s"] = time.perf_counter() - t0
        res["pages_sharing_after_unmerge"] = ksm_int("pages_sharing")
        ksm_write("run", 0)
    finally:
        for mm, addr in maps:
            try:
                libc.madvise(addr, size, MADV_UNMERGEABLE)
            except OSError:
                pass
            mm.close()
    return res


# -- report ----------------------------------------------------------------------------------

def fmt(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if x == x else "n/a"


def ucpu(u: dict[str, Any], key: str) -> float:
    """uvm's CPU for a span: the larger of calling-thread and whole-process CPU."""
    return float(max(u[key]["thread_cpu_s"], u[key]["process_cpu_s"]))


def report(r: dict[str, Any]) -> None:
    u, ks = r["uvm"], r["ksm"]
    c = r["content"]
    us = u["stats"]
    log("")
    log(f"== {c['vms']} VMs x {c['vm_mib']} MiB = {c['total_pages']} pages: image {c['image_pages']} "
        f"pages/VM ({c['image']['py_files']} .py + {c['image']['so_files']} .so files), private "
        f"{c['private_pages']}/VM, zero {c['zero_pages']}/VM; distinct contents {c['distinct']}, "
        f"ideal saving {c['ideal_saved']} frames")
    head = f"{'':36s}{'uvm share_now':>16s}"
    for k in ks:
        head += f"{'KSM pts=' + str(k['pages_to_scan']):>18s}"
    log(head)

    def row(label: str, uv: str, kv: list[str]) -> None:
        log(f"{label:36s}{uv:>16s}" + "".join(f"{x:>18s}" for x in kv))

    def kcpu(k: dict[str, Any], key: str) -> str:
        return f"{k[key]['cpu_s']:.3f} (>{k[key]['cpu_s_lower']:.3f})"

    row("converged", "yes" if u["converged"] else "NO", ["yes" if k["converged"] else "NO (timeout)" for k in ks])
    row("pages merged (mapping a shared pg)", str(us["sharing"]), [str(k["merged"]) for k in ks])
    row("frames saved", str(us["saved"]), [str(k["saved"]) for k in ks])
    row("  of the ideal saving", f"{us['saved'] / max(1, c['ideal_saved']):.1%}",
        [f"{k['saved'] / max(1, c['ideal_saved']):.1%}" for k in ks])
    row("distinct pages left", str(us["frames_used"]), [str(k["distinct_left"]) for k in ks])
    row("shared frames / KSM pages_shared", str(us["shared_frames"]), [str(k["pages_shared"]) for k in ks])
    row("to the final count: wall s", f"{u['to_final']['wall_s']:.3f}", [f"{k['to_final']['wall_s']:.3f}" for k in ks])
    row("                    CPU s", f"{ucpu(u, 'to_final'):.3f}", [kcpu(k, "to_final") for k in ks])
    row("confirmed (+1 clean pass): wall s", f"{u['to_confirmed']['wall_s']:.3f}",
        [f"{k['to_confirmed']['wall_s']:.3f}" for k in ks])
    row("                           CPU s", f"{ucpu(u, 'to_confirmed'):.3f}", [kcpu(k, "to_confirmed") for k in ks])
    row("  uvm thread/process CPU; ksmd ticks", f"{u['to_confirmed']['thread_cpu_s']:.3f}/{u['to_confirmed']['process_cpu_s']:.3f}",
        [f"{k['to_confirmed']['cpu_ticks_s']:.2f}" for k in ks])
    row("passes / full scans", str(len(u["passes"])), [str(k["full_scans"]) for k in ks])
    row("pages scanned", str(us["scanned"]), [str(k["pages_scanned"]) for k in ks])
    row("pages scanned per CPU-s", f"{us['scanned'] / max(1e-9, ucpu(u, 'to_confirmed')):.0f}",
        [f"{k['pages_scanned_per_cpu_s']:.0f}" for k in ks])
    row("saved frames per CPU-s, final", f"{us['saved'] / max(1e-9, ucpu(u, 'to_final')):.0f}",
        [f"{k['saved'] / max(k['to_final']['cpu_s'], 1e-9):.0f}" for k in ks])
    row("saved frames per CPU-s, confirmed", f"{us['saved'] / max(1e-9, ucpu(u, 'to_confirmed')):.0f}",
        [f"{k['saved'] / max(k['to_confirmed']['cpu_s'], 1e-9):.0f}" for k in ks])
    row("all bytes read back equal", "yes" if not u["verify"]["mismatched_chunks"] else "NO",
        ["yes" if not k["verify"]["mismatched_vms"] else "NO" for k in ks])
    log("(KSM CPU: ksmd's run time from /proc/PID/schedstat at the first poll that saw the state; "
        "'>' the poll before, a lower bound)")
    log("")
    log(f"uvm scan throughput (pass that merged nothing: read + hash + look up): "
        f"{u['scan_only']['pages_per_cpu_s']:.0f} pages/CPU-s = {u['scan_only']['MB_per_cpu_s']:.0f} MB/s, "
        f"{u['scan_only']['us_per_page']:.2f} us/page")
    log(f"uvm first pass (merges included): {u['first_pass']['pages_per_cpu_s']:.0f} pages/CPU-s = "
        f"{u['first_pass']['MB_per_cpu_s']:.0f} MB/s, {u['first_pass']['us_per_merged_page']:.2f} us "
        f"per merged page; mappings added {u['mappings_added']}, merge_stopped "
        f"{us['merge_stopped']}, stops {us['merge_stops']}, hash collisions "
        f"{us['hash_collisions']}; memfd pages {u['memfd_pages_before']} -> "
        f"{u['memfd_pages_after']}; swap pages {us['swap_pages']}")
    others = [("uvm passes", sum(p["others_cpu_s"] for p in u["passes"]),
               sum(p["steal_s"] for p in u["passes"]), ucpu(u, "to_confirmed"))]
    others += [(f"KSM pts={k['pages_to_scan']}", k["system"]["others_cpu_s"], k["system"]["steal_s"],
                k["after_stop"]["cpu_s"]) for k in ks]
    log("other processes' CPU / stolen time during: " + "; ".join(
        f"{n} {o:.2f} / {st:.2f} s" for n, o, st, _ in others) + " (/proc/stat, 10 ms ticks)")
    for n, o, st, mine in others:
        if o + st > max(0.05, 0.2 * mine):
            log(f"  warning: {n} was disturbed ({o + st:.2f} s of other work or steal against "
                f"{mine:.2f} s measured): run again on an idle machine")
    kset = r["ksm_settings_before"]
    fz, fc = u["first_read_zero"], u["first_read_control"]
    log(f"zero pages: uvm merges all {us['zero_shared']} into one shared zero frame (counted in sharing, "
        f"saved = sharing - shared frames) without mapping them; the first read of each maps the zero "
        f"frame: after the passes, reading one word of each of the {fz['pages']} took "
        f"{fz['process_cpu_s']:.3f} CPU-s ({fz['wall_s']:.3f} s wall; mappings then "
        f"{fz['mappings_after']} more than before merging), against {fc['process_cpu_s']:.3f} CPU-s for "
        f"as many private pages (no fault). KSM use_zero_pages={kset.get('use_zero_pages')}: "
        + ("zero pages map the kernel zero page, counted in ksm_zero_pages, added to saved here"
           if kset.get("use_zero_pages") == "1" else
           f"zero pages merge like any content, up to max_page_sharing={kset.get('max_page_sharing')} "
           f"sharers per KSM page, counted in pages_shared/pages_sharing (saved = pages_sharing)"))
    report_identical(r)
    log("")
    log("Targets (issue 3): uvm saves at least as many frames as KSM; uvm's saved frames per "
        "CPU-second >= 2x KSM's (issue 10: >= 10x)")
    r["targets"] = []
    for k in ks:
        t: dict[str, Any] = {"pages_to_scan": k["pages_to_scan"], "saved_uvm": us["saved"],
                             "saved_ksm": k["saved"], "finds_at_least_as_many": us["saved"] >= k["saved"]}
        log(f"  vs KSM pages_to_scan={k['pages_to_scan']}: frames saved {us['saved']} vs {k['saved']} "
            f"-> {'met' if t['finds_at_least_as_many'] else 'NOT MET'}")
        for key, what in (("to_final", "to the final count"), ("to_confirmed", "to confirmed convergence")):
            uc, kc, kcl = ucpu(u, key), k[key]["cpu_s"], k[key]["cpu_s_lower"]
            ratio = kc / max(uc, 1e-9)          # = ratio of saved per CPU-s when both save the same
            ratio_saved = (us["saved"] / max(uc, 1e-9)) / max(k["saved"] / max(kc, 1e-9), 1e-9)
            ratio_lo = (us["saved"] / max(uc, 1e-9)) / max(k["saved"] / max(kcl, 1e-9), 1e-9)
            t[key] = {"uvm_cpu_s": uc, "ksm_cpu_s": kc, "ksm_cpu_s_lower": kcl,
                      "saved_per_cpu_s_uvm": us["saved"] / max(uc, 1e-9),
                      "saved_per_cpu_s_ksm": k["saved"] / max(kc, 1e-9),
                      "ratio": ratio_saved, "ratio_with_ksm_lower_bound": ratio_lo,
                      "cpu_ratio": ratio, "at_least_2x": ratio_saved >= 2.0,
                      "wall_ratio": k[key]["wall_s"] / max(u[key]["wall_s"], 1e-9)}
            t[key]["at_least_10x"] = ratio_saved >= 10.0
            log(f"    {what:25s} uvm {uc:.3f} CPU-s, KSM {kc:.3f} (>{kcl:.3f}): saved per CPU-s "
                f"{ratio_saved:.2f}x (>= {ratio_lo:.2f}x) -> {'met' if ratio_saved >= 2 else 'NOT MET'}"
                f", 10x {'met' if ratio_saved >= 10 else 'not met'}"
                f"{'' if (ratio_lo >= 2) == (ratio_saved >= 2) else ' (verdict within the poll uncertainty)'}"
                f"; wall KSM/uvm {t[key]['wall_ratio']:.1f}x")
        r["targets"].append(t)


def report_identical(r: dict[str, Any]) -> None:
    """Issue 10's per-page targets: CPU per merged page with identical VMs, and the pass that
    merges nothing (from the main content's confirming pass)."""
    u = r["uvm"]
    log("")
    log("Targets (issue 10): a merged page costs at most 2 us of CPU (identical VMs); a pass "
        "that merges nothing at most 0.6 us per page")
    for res in r.get("identical", []):
        fp = res["first_pass"]
        log(f"  {res['vms']} identical VMs x {res['vm_mib']} MiB: first pass {fp['pages']} pages, "
            f"{res['passes'][0]['merged']} merged in {res['passes'][0]['thread_cpu_s']:.3f} CPU-s: "
            f"{fp['us_per_merged_page']:.2f} us per merged page -> "
            f"{'met' if fp['us_per_merged_page'] <= 2.0 else 'NOT MET'}; all bytes equal: "
            f"{'yes' if not res['verify']['mismatched_chunks'] else 'NO'}")
    so = u["scan_only"]
    log(f"  pass that merged nothing ({so['pages']} pages): {so['us_per_page']:.2f} us per page -> "
        f"{'met' if so['us_per_page'] <= 0.6 else 'NOT MET'}")


# -- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 VMs x 16 MiB instead of 4 x 64 MiB")
    ap.add_argument("--out", metavar="FILE.json", help="write every figure as JSON")
    ap.add_argument("--vms", type=int, help="number of VMs (default 4, quick 2)")
    ap.add_argument("--vm-mib", type=int, help="MiB per VM (default 64, quick 16)")
    ap.add_argument("--pages-to-scan", default=None,
                    help="comma-separated KSM pages_to_scan values to run (default 10000,100)")
    ap.add_argument("--zero-fraction", type=float, default=ZERO_FRACTION,
                    help=f"fraction of each VM that is zero pages (default {ZERO_FRACTION}); the "
                         f"rest that is not image is private")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-ksm", action="store_true", help="uvm only (no root needed for KSM)")
    ap.add_argument("--identical-mib", default=None,
                    help="comma-separated VM sizes (MiB) of the identical-VMs runs: --vms VMs each "
                         "holding the first VM's content (default 16,64,256; quick 16; '' skips)")
    a = ap.parse_args()
    n_vms = a.vms or (2 if a.quick else 4)
    vm_mib = a.vm_mib or (16 if a.quick else 64)
    pts = [int(x) for x in (a.pages_to_scan or "10000,100").split(",") if x]
    if n_vms < 2 or vm_mib < 1:
        ap.error("--vms must be >= 2 and --vm-mib >= 1")
    if not 0 <= a.zero_fraction <= 1 - IMAGE_FRACTION:
        ap.error(f"--zero-fraction must be in [0, {1 - IMAGE_FRACTION}]")
    if not a.skip_ksm:
        if os.geteuid() != 0:
            ap.error("KSM needs root (writes /sys/kernel/mm/ksm); run as root or pass --skip-ksm")
        if not KSM.is_dir():
            ap.error("this kernel has no /sys/kernel/mm/ksm (CONFIG_KSM); pass --skip-ksm")

    started = time.perf_counter()
    vm_pages = vm_mib * MiB // PAGE
    log(f"bench_sharing: {n_vms} VMs x {vm_mib} MiB; building content ...")
    t0 = time.perf_counter()
    image, image_info = build_image(int(vm_pages * IMAGE_FRACTION), a.seed)
    built = [build_vm(i, image, vm_pages, a.seed, a.zero_fraction) for i in range(n_vms)]
    contents = [data for data, _ in built]
    layouts = [layout for _, layout in built]
    del image
    distinct, zeros = distinct_pages(contents)
    total = n_vms * vm_pages
    r: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_at_start": os.getloadavg(), "git": git_rev(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "content": {"vms": n_vms, "vm_mib": vm_mib, "total_pages": total, "image": image_info,
                    "image_pages": layouts[0]["image"], "private_pages": layouts[0]["private"],
                    "zero_pages": layouts[0]["zero"], "zero_pages_all": zeros,
                    "distinct": distinct, "ideal_saved": total - distinct,
                    "build_s": time.perf_counter() - t0}}
    c = r["content"]
    log(f"  {total} pages, {distinct} distinct contents ({zeros} zero pages in all): ideal saving "
        f"{total - distinct} frames; built in {c['build_s']:.1f} s")

    log("uvm: Machine.share_now() until a pass merges nothing ...")
    r["uvm"] = run_uvm(contents, vm_pages)
    log(f"  wrote content in {r['uvm']['write_s']:.2f} s; saved {r['uvm']['stats']['saved']} frames")

    r["identical"] = []
    sizes = a.identical_mib if a.identical_mib is not None else ("16" if a.quick else "16,64,256")
    for mib in [int(x) for x in sizes.split(",") if x]:
        pages = mib * MiB // PAGE
        image, _ = build_image(int(pages * IMAGE_FRACTION), a.seed)
        one = build_vm(0, image, pages, a.seed, a.zero_fraction)[0]
        del image
        log(f"uvm: {n_vms} identical VMs x {mib} MiB, share_now() until a pass merges nothing ...")
        res = run_uvm([one] * n_vms, pages)
        res.update(vms=n_vms, vm_mib=mib)
        r["identical"].append(res)
        del one

    r["ksm"] = []
    if not a.skip_ksm:
        saved = ksm_settings()
        r["ksm_settings_before"] = saved
        libc = Libc()
        pid = ksmd_pid()
        try:
            if int(saved["run"]) == 1 or ksm_int("pages_sharing"):
                log(f"  warning: KSM was already running (run={saved['run']}, pages_sharing="
                    f"{ksm_int('pages_sharing')}): figures are deltas, and may be disturbed")
            ksm_write("run", 0)
            for p in pts:
                timeout = 40.0 if p >= 1000 else (100.0 if not a.quick else 30.0)
                log(f"KSM: pages_to_scan={p}, sleep_millisecs={ksm_read('sleep_millisecs')}, "
                    f"smart_scan={saved.get('smart_scan')}, until {KSM_STABLE_SCANS} full scans "
                    f"change nothing (timeout {timeout:.0f} s) ...")
                k = run_ksm(contents, p, timeout, libc, pid)
                r["ksm"].append(k)
                log(f"  pages_sharing {k['pages_sharing']}, pages_shared {k['pages_shared']} after "
                    f"{k['to_final']['wall_s']:.2f} s wall, ksmd {k['to_final']['cpu_s']:.3f} s CPU; "
                    f"{k['full_scans']} full scans, converged: {k['converged']}; unmerge "
                    f"{k['unmerge_s']:.2f} s")
        finally:
            restored = []
            for name, val in saved.items():
                try:
                    now = ksm_settings().get(name)
                    if now != val and name != "run":
                        ksm_write(name, val)
                        restored.append(name)
                except OSError as e:
                    log(f"  warning: could not restore KSM {name}={val}: {e}")
            if ksm_settings().get("run") != saved["run"]:
                ksm_write("run", saved["run"])
                restored.append("run")
            after = ksm_settings()
            r["ksm_settings_after"] = after
            log(f"KSM settings restored ({', '.join(restored) or 'nothing changed'}): "
                f"{'identical to before' if after == saved else 'DIFFERENT: ' + str(after)}")
        report(r)
    else:
        r["ksm_settings_before"] = {}
        log("(KSM skipped)")
        report_identical(r)
    r["total_s"] = time.perf_counter() - started
    ru = resource.getrusage(resource.RUSAGE_SELF)
    r["process_cpu_s"] = ru.ru_utime + ru.ru_stime
    log(f"\ntotal {r['total_s']:.1f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
