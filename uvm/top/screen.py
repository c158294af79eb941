"""The esxtop-style memory panel as a rich renderable: the header lines, then one row per
VM with esxtop's columns (uvm.top.fields).

The panel lays itself out for the width it is drawn in. esxtop crops what does not fit and
lets its user pick fields; uvm top has no keys, and cropping hid all but nine of the 21
columns on an 80-column terminal (and the last three in a 160-column log), swap and sharing
among them. So when the columns do not fit they wrap: further blocks of columns below the
first, each starting with NAME, without the rule under the header, so that four VMs' panel
fits 80 x 24."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from uvm.timeline import SampleLine
from uvm.top.fields import COLUMNS, Column, rates, summary_lines

EVERY_COLUMN = list(range(len(COLUMNS)))      # indices of COLUMNS (0: NAME)
UNITS = "sizes in MiB (esxtop's /MB); rates in MiB/s; - : needs a memory policy"


@dataclass(frozen=True)
class Panel:
    """The panel of one sample, drawn at whatever width it is given."""
    head: tuple[Text, ...]
    rows: tuple[tuple[str, ...], ...]       # one per VM, one cell per COLUMNS entry
    wrap: bool = True                       # False: one block, cropped to the width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        yield from self.head
        blocks = _blocks(self.rows, console, options) if self.wrap else [EVERY_COLUMN]
        for block in blocks:
            yield _table(block, self.rows, ruled=len(blocks) == 1)


def panel(now: SampleLine, before: SampleLine | None, title: str, wrap: bool = True) -> Panel:
    """The panel for sample `now` (`before`, the previous sample, gives the rates); `wrap`
    False keeps the columns in one block, cropped to the width (above the page maps, which
    need the screen's rows more)."""
    per_vm = rates(now, before)
    rows = tuple(tuple(c.value(v, per_vm[v.name]) for c in COLUMNS) for v in now.vms)
    head = [Text(f"uvm top: {title}", style="bold", no_wrap=True)]
    head += [Text(line, no_wrap=True, overflow="ellipsis") for line in summary_lines(now)]
    return Panel((*head, Text(UNITS)), rows, wrap)


def _table(columns: Sequence[int], rows: Sequence[Sequence[str]], ruled: bool) -> Table:
    """A table of the columns at these indices of COLUMNS (the first is NAME)."""
    table = Table(box=box.SIMPLE_HEAD if ruled else None, pad_edge=False, show_edge=False,
                  header_style="bold underline" if not ruled else "bold")
    for i in columns:
        c: Column = COLUMNS[i]
        table.add_column(c.name, justify="left" if c.name == "NAME" else "right", no_wrap=True,
                         min_width=max(len(c.name), 6), overflow="crop")
    for row in rows:
        table.add_row(*(row[i] for i in columns))
    return table


def _blocks(rows: Sequence[Sequence[str]], console: Console, options: ConsoleOptions) -> list[list[int]]:
    """COLUMNS' indices in blocks that each fit options.max_width, NAME (index 0) first in
    each; one block when everything fits. A column too wide alone still gets a block."""
    unbounded = options.update(width=10_000)

    def fits(columns: list[int]) -> bool:
        width = Measurement.get(console, unbounded, _table(columns, rows, ruled=True)).maximum
        return width <= options.max_width

    blocks: list[list[int]] = [[0]]
    for i in EVERY_COLUMN[1:]:
        if len(blocks[-1]) > 1 and not fits([*blocks[-1], i]):
            blocks.append([0])
        blocks[-1].append(i)
    return blocks
