"""The live view's hooks for `uvm run --wide` (esxtop's panel) and `--map` (the page map),
alone or together (the panel above the grids)."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType

from uvm import pagemap
from uvm.live import Sample, View, machine_line
from uvm.machine import Machine
from uvm.timeline import SampleLine
from uvm.top.screen import panel


class Wide:
    """`uvm run --wide`: draws each sample as the panel (the previous one gives rates)."""

    def __init__(self, title: str, wrap: bool = True) -> None:
        self.title = title
        self.wrap = wrap
        self.before: SampleLine | None = None

    def __call__(self, sample: Sample) -> RenderableType:
        line = sample.line()
        view = panel(line, self.before, self.title, self.wrap)
        self.before = line
        return view


def run_view(machine: Machine, console: Console, title: str, wide: bool, maps: bool) -> View | None:
    """The view `uvm run` shows: the panel, the page maps sized to the rest of the
    terminal, both, or None (the live table)."""
    draw_panel = Wide(title, wrap=not maps) if wide else None
    if not maps:
        return draw_panel

    def view(s: Sample) -> RenderableType:
        width, height = console.size
        top = draw_panel(s) if draw_panel is not None else None
        used = len(console.render_lines(top, pad=False)) if top is not None else 0
        grids = pagemap.screen(pagemap.take(machine), width, height - used, machine_line(s))
        return Group(top, grids) if top is not None else grids
    return view
