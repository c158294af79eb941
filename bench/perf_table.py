#!/usr/bin/env python3
"""Writes the measured tables of docs/performance.md from the benchmark scripts' JSON
outputs, so that they are regenerated from what the scripts wrote, never edited by hand:

    python bench/perf_table.py --targets docs/results/perf/*.json            # print them
    python bench/perf_table.py --write docs/performance.md --block latest --targets docs/results/perf/*.json

Each file is recognized by its content: bench_core.py (sections 6 and 7: fault paths,
eviction), bench_sharing.py, or bench_scaling.py. Runs of bench_core.py make one table with
a column per run; every other file makes tables of its own. --write replaces what lies
between the lines `<!-- perf_table: begin BLOCK -->` and `<!-- perf_table: end BLOCK -->`
of the file. --targets puts first a table of issue 10's targets, each judged over every run
given (so give it one set of runs measured alike).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def table(head: Sequence[str], body: Sequence[Sequence[str]], right: bool = True) -> list[str]:
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i == 0 or not right else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return out


def source(name: str, run: dict[str, Any]) -> str:
    env = run.get("env") or run.get("host") or {}
    where = ", ".join(str(x) for x in (env.get("git") and f"checkout at {env['git']}", env.get("time"))
                      if x)
    disturbed = env.get("other_processes_cpu_s")
    return (f"`{name}`: `{run.get('command', '?')}`" + (f" ({where})" if where else "")
            + (f"; other processes took {disturbed} CPU-s, {env.get('steal_s', '?')} s stolen"
               if disturbed is not None else ""))


def core_rows(run: dict[str, Any]) -> dict[str, str]:
    """The cells of one bench_core.py run (sections 6 and 7), by row name."""
    out: dict[str, str] = {}
    env = run.get("env", {})
    out["other processes' CPU-s / run s"] = f"{env.get('other_processes_cpu_s', '-')} / {run.get('elapsed_s', '-')}"
    fp = run.get("fault_paths")
    if fp:
        t, s = fp["first_touch_ns_per_page"], fp["swap_in_ns_per_page"]
        k = t["kernel"]
        out["first touch, random, fault_around 1: kernel shmem (ns/page)"] = f"{k:.0f}"
        for p in ("pager", "thread"):
            out[f"first touch: {p} path (ns/page, x kernel)"] = f"{t[p]:.0f} ({t[p] / k:.2f}x)"
        out["first touch: thread / pager"] = f"{t['thread'] / t['pager']:.2f}x"
        for p in ("pager", "thread"):
            out[f"swap-in: {p} path (ns/page, x its zero fill)"] = f"{s[p]:.0f} ({s[p] / t[p]:.2f}x)"
    ev = run.get("eviction")
    if ev:
        out["eviction: pages per CPU-second (wall pages/s)"] = \
            f"{ev['evict_pages_per_cpu_s']:,} ({ev['evict_pages_per_s']:,})"
        out["eviction: liblz4 alone, pages per CPU-second"] = f"{ev['lz4_alone_pages_per_cpu_s']:,}"
        out["eviction: CPU time x liblz4 alone"] = f"{ev['ratio']:.2f}x"
    return out


def core_table(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    cells = [(name, core_rows(run)) for name, run in runs]
    names: list[str] = []
    for _, r in cells:
        names += [n for n in r if n not in names]
    lines = ["**Fault paths and eviction** (bench_core.py sections 6 and 7):", ""]
    lines += table(["", *(name for name, _ in cells)],
                   [[n, *(r.get(n, "-") for _, r in cells)] for n in names])
    lines += [""] + [f"- {source(name, run)}" for name, run in runs]
    return lines


def sharing_tables(name: str, run: dict[str, Any]) -> list[str]:
    u, c = run["uvm"], run["content"]
    us = u["stats"]
    head = ["", "uvm share_now", *(f"KSM pages_to_scan={k['pages_to_scan']}" for k in run["ksm"])]
    ucpu = {key: max(u[key]["thread_cpu_s"], u[key]["process_cpu_s"]) for key in ("to_final", "to_confirmed")}
    body = [["frames saved (ideal " + str(c["ideal_saved"]) + ")", str(us["saved"]),
             *(str(k["saved"]) for k in run["ksm"])]]
    for key, what in (("to_final", "to the final count"), ("to_confirmed", "to confirmed convergence")):
        body.append([f"CPU s, {what}", f"{ucpu[key]:.3f}", *(f"{k[key]['cpu_s']:.3f}" for k in run["ksm"])])
        body.append([f"saved frames per CPU-s, {what}", f"{us['saved'] / ucpu[key]:,.0f}",
                     *(f"{k['saved'] / k[key]['cpu_s']:,.0f} (uvm {us['saved'] / ucpu[key] / (k['saved'] / k[key]['cpu_s']):.2f}x)"
                       for k in run["ksm"])])
    lines = [f"**Sharing against KSM** ({c['vms']} VMs x {c['vm_mib']} MiB of bench_sharing.py's "
             f"content; target: uvm saves 10x KSM's frames per CPU-second):", ""]
    lines += table(head, body)
    so, fp = u["scan_only"], u["first_pass"]
    lines += ["", f"- pass that merges nothing: {so['us_per_page']:.2f} us per page ({so['pages']} "
              f"pages; target 0.6 us); first pass: {fp['us_per_merged_page']:.2f} us per merged page"]
    for res in run.get("identical", []):
        f = res["first_pass"]
        lines.append(f"- {res['vms']} identical VMs x {res['vm_mib']} MiB: {f['us_per_merged_page']:.2f} "
                     f"us of CPU per merged page ({res['passes'][0]['merged']} merged; target 2 us)")
    lines += [f"- {source(name, run)}"]
    return lines


def scaling_tables(name: str, run: dict[str, Any]) -> list[str]:
    lines = ["**Scaling with guest size** (bench_scaling.py section 1; ns per page, and x the "
             "smallest size):", ""]
    body = [[str(p["mib"]), f"{p['kernel_first_touch_ns']:.0f} ({p['kernel_first_touch_x_smallest']:.2f}x)",
             f"{p['first_touch_ns']:.0f} ({p['first_touch_x_smallest']:.2f}x)",
             f"{p['first_touch_x_kernel']:.2f}x",
             f"{p['share_scan_ns']:.0f} ({p['share_scan_x_smallest']:.2f}x)",
             f"{p['swap_fill_ns']:.0f} ({p['swap_fill_x_smallest']:.2f}x)",
             f"{p['swapin_ns']:.0f} ({p['swapin_x_smallest']:.2f}x)"] for p in run["sizes"]]
    lines += table(["guest MiB", "kernel first touch", "uvm first touch", "uvm x kernel",
                    "sharing scan (CPU)", "swap-bound fill", "swap-in (under pressure)"], body)
    t = run["threads"]
    lines += ["", f"**Two guest threads** (section 2: {t['mib']} MiB, random first touch, "
              f"median of {t['repeats']}; target 1.8x):", ""]
    lines += table(["", "1 thread pages/s (median)", "2 threads pages/s (median)",
                    "2 / 1 (median of each repeat's ratio)"],
                   [[who, f"{t[who]['one_thread_pages_per_s']:,.0f}", f"{t[who]['two_threads_pages_per_s']:,.0f}",
                     f"{t[who]['speedup']:.2f}x"] for who in ("kernel", "pager", "thread")])
    lines += ["", "**VM count** (section 3: the same memory in more VMs; ns of CPU per page, "
              "and x the fewest VMs):", ""]
    lines += table(["VMs", "merge", "scan merging nothing", "sampling (watch + query)"],
                   [[str(p["vms"]), f"{p['merge_ns_per_page']:.0f} ({p['merge_x_fewest']:.2f}x)",
                     f"{p['scan_ns_per_page']:.0f} ({p['scan_x_fewest']:.2f}x)",
                     f"{p['sample_ns_per_page']:.0f} ({p['sample_x_fewest']:.2f}x)"] for p in run["vm_counts"]])
    lines += ["", f"- {source(name, run)}"]
    return lines


FLAT = 1.25    # "stays flat": within this factor of the value at the smallest size / fewest VMs


def verdict(values: list[float], ok: Any) -> str:
    met = sum(1 for v in values if ok(v))
    return "yes" if met == len(values) else "**no**" if met == 0 else f"in {met} of {len(values)} runs"


def span(values: list[float], fmt: str = ".2f", unit: str = "x") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}{unit}" if lo == hi else f"{lo:{fmt}}..{hi:{fmt}}{unit}"


def targets(core: list[dict[str, Any]], sharing: list[dict[str, Any]],
            scaling: list[dict[str, Any]]) -> list[str]:
    """Issue 10's targets against these runs: one row each, the figure over all runs given."""
    rows: list[list[str]] = []

    def add(what: str, values: list[float], ok: Any, fmt: str = ".2f", unit: str = "x") -> None:
        if values:
            rows.append([what, span(values, fmt, unit), verdict(values, ok)])

    fp = [r["fault_paths"] for r in core if "fault_paths" in r]
    t = [f["first_touch_ns_per_page"] for f in fp]
    s = [f["swap_in_ns_per_page"] for f in fp]
    add("random first touch, fault_around 1, thread path: <= 2.0x kernel shmem (stretch 1.6x)",
        [x["thread"] / x["kernel"] for x in t], lambda v: v <= 2.0)
    add("the same, pager path (the default): <= 2.0x", [x["pager"] / x["kernel"] for x in t], lambda v: v <= 2.0)
    add("swap-in, thread path: <= 1.5x its zero fill", [b["thread"] / a["thread"] for a, b in zip(t, s)],
        lambda v: v <= 1.5)
    add("swap-in, pager path: <= 1.5x its zero fill", [b["pager"] / a["pager"] for a, b in zip(t, s)],
        lambda v: v <= 1.5)
    add("eviction: CPU <= 1.3x liblz4 compressing the same pages alone",
        [r["eviction"]["ratio"] for r in core if "eviction" in r], lambda v: v <= 1.3)
    for r in sharing:
        add("sharing: CPU per merged page, identical VMs, <= 2 us",
            [x["first_pass"]["us_per_merged_page"] for x in r.get("identical", [])], lambda v: v <= 2.0,
            unit=" us")
        add("sharing: a pass that merges nothing, <= 0.6 us per page",
            [r["uvm"]["scan_only"]["us_per_page"]], lambda v: v <= 0.6, unit=" us")
        u = r["uvm"]
        ratios = []
        for key in ("to_final", "to_confirmed"):
            cpu = max(u[key]["thread_cpu_s"], u[key]["process_cpu_s"])
            ratios += [(u["stats"]["saved"] / cpu) / (k["saved"] / k[key]["cpu_s"]) for k in r["ksm"]]
        add("sharing: saved frames per CPU-second >= 10x KSM's (every KSM budget, final and "
            "confirmed)", ratios, lambda v: v >= 10)
    for r in scaling:
        big = r["sizes"][-1]
        for key, what in (("first_touch", "first touch"), ("share_scan", "sharing scan"),
                          ("swap_fill", "swap-bound fill"), ("swapin", "swap-in")):
            add(f"{what} per page flat from {r['sizes'][0]['mib']} MiB to {big['mib']} MiB "
                f"(within {FLAT}x of the smallest)", [big[f"{key}_x_smallest"]], lambda v: v <= FLAT)
        for who in ("pager", "thread"):
            add(f"two guest threads >= 1.8x one, {who} path", [r["threads"][who]["speedup"]],
                lambda v: v >= 1.8)
        many = r["vm_counts"][-1]
        for key, what in (("merge", "sharing merge"), ("scan", "sharing scan"), ("sample", "sampling")):
            add(f"{what} per page with {many['vms']} VMs within {FLAT}x of {r['vm_counts'][0]['vms']} VMs",
                [many[f"{key}_x_fewest"]], lambda v: v <= FLAT)
    if not rows:
        return []
    return ["**Issue 10's targets** (the figure over every run listed below):", ""] + \
        table(["target", "measured", "met"], rows, right=False)


def render(paths: Sequence[str], with_targets: bool) -> str:
    core: list[tuple[str, dict[str, Any]]] = []
    sharing: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    blocks: list[list[str]] = []
    for a in paths:
        run = json.loads(Path(a).read_text())
        name = Path(a).name
        if "sizes" in run and "threads" in run:
            blocks.append(scaling_tables(name, run))
            scaling.append(run)
        elif "uvm" in run and "content" in run:
            blocks.append(sharing_tables(name, run))
            sharing.append(run)
        elif "fault_paths" in run or "eviction" in run:
            core.append((name, run))
        else:
            raise SystemExit(f"perf_table: {a}: not a bench_core, bench_sharing or bench_scaling output")
    if core:
        blocks.insert(0, core_table(core))
    goals = targets([run for _, run in core], sharing, scaling) if with_targets else []
    if goals:
        blocks.insert(0, goals)
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", metavar="FILE.md", help="replace the generated part of FILE.md")
    ap.add_argument("--block", default="latest", help="which generated part (default: latest)")
    ap.add_argument("--targets", action="store_true",
                    help="begin with issue 10's targets, judged over every run given")
    ap.add_argument("json", nargs="+", help="benchmark outputs (--out FILE.json)")
    a = ap.parse_args(argv)
    text = render(a.json, a.targets)
    if not a.write:
        print(text, end="")
        return 0
    doc = Path(a.write)
    old = doc.read_text()
    BEGIN, END = f"<!-- perf_table: begin {a.block} -->", f"<!-- perf_table: end {a.block} -->"
    if BEGIN not in old or END not in old:
        raise SystemExit(f"perf_table: {doc} has no {BEGIN} ... {END} lines")
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n<!-- generated by: python bench/perf_table.py --write {a.write} "
                   f"--block {a.block}{' --targets' if a.targets else ''} {' '.join(a.json)} -->\n\n"
                   f"{text}\n{END}{tail}")
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
