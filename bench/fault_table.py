#!/usr/bin/env python3
"""Prints the markdown table of docs/performance.md's "Fault paths and batched eviction"
section from bench_core.py JSON outputs (sections 6 and 7), one column per run, so that the
table is regenerated from what the script wrote, never edited by hand:

    python bench/fault_table.py docs/results/fault-path/*.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def rows(run: dict[str, Any]) -> dict[str, str]:
    """The table's cells of one run, by row name."""
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


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = [(Path(a).stem, rows(json.loads(Path(a).read_text()))) for a in argv]
    names: list[str] = []
    for _, r in runs:
        names += [n for n in r if n not in names]
    print("| | " + " | ".join(name for name, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for n in names:
        print(f"| {n} | " + " | ".join(r.get(n, "-") for _, r in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
