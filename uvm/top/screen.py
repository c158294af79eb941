"""The esxtop-style memory panel as a rich renderable: the header lines, then one row per
VM with esxtop's columns (uvm.top.fields)."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from uvm.timeline import SampleLine
from uvm.top.fields import COLUMNS, rates, summary_lines


def panel(now: SampleLine, before: SampleLine | None, title: str) -> Group:
    """The panel for sample `now` (`before`, the previous sample, gives the rates)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in COLUMNS:
        # never squeezed into "12.…": a narrow terminal shows fewer columns, as esxtop does
        table.add_column(c.name, justify="left" if c.name == "NAME" else "right", no_wrap=True,
                         min_width=max(len(c.name), 6), overflow="crop")
    per_vm = rates(now, before)
    for v in now.vms:
        table.add_row(*(c.value(v, per_vm[v.name]) for c in COLUMNS))
    head = [Text(f"uvm top: {title}", style="bold", no_wrap=True)]
    head += [Text(line, no_wrap=True, overflow="ellipsis") for line in summary_lines(now)]
    return Group(*head, Text("sizes in MiB (esxtop's /MB); rates in MiB/s; - : needs a memory policy"),
                 table)
