"""The page map: each VM's PPNs drawn as a grid coloured by pmap state, in the terminal
(`uvm run --map`) and as PNG frames and an animated GIF (`--map-every SECONDS`).

The data is `VM.page_map()`: one byte per PPN from one call into the C core (the pmap state
and three flags), so a map costs one locked pass over the pmap, never a Python call per
page. Each byte falls into one of the STATES below. A VM with more pages than the grid has
cells is downsampled: a cell covers `k` consecutive PPNs and shows their most common state
(ties: the earlier state in STATES). That is honest about what dominates a region but hides
a few odd pages in it (the hundred pages idle sampling watches are invisible among 30,000),
which is why every map also prints the exact count of each state.

Why a student looks: ballooning takes free guest pages first (a run of `b` appears where the
guest had nothing, not where its working set is); sharing collapses identical pages (`s`
and `z` spread over the VMs that booted the same image); random host paging (`~`) hits the
hot set as often as cold pages, which is the paper's argument for ballooning."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.text import Text

from uvm._binding import lib
from uvm.errors import MissingExtra, UvmError, VMStopped
from uvm.outdir import make_dir
from uvm.periods import check_period

if TYPE_CHECKING:
    from uvm.machine import Machine


@dataclass(frozen=True)
class State:
    """One colour of the map: its name, its character in the terminal, its colour."""
    name: str
    char: str
    rgb: tuple[int, int, int]
    meaning: str


STATES: tuple[State, ...] = (
    State("never touched", ".", (48, 48, 48), "no frame yet: the next touch gets a zeroed one"),
    State("resident", "#", (46, 160, 67), "in its own frame in machine memory"),
    State("sampled", "w", (235, 200, 40), "resident, watched by idle sampling, not touched since"),
    State("shared", "s", (60, 120, 225), "mapped copy-on-write onto a frame other pages share"),
    State("zero-shared", "z", (130, 200, 235), "shared onto the zero page"),
    State("zero", "0", (120, 120, 120), "known to be all zeros: neither frame nor swap slot"),
    State("swapped", "~", (215, 60, 50), "compressed in the host's swap file"),
    State("ballooned", "b", (175, 80, 205), "given to the host by the guest's balloon"),
    State("low", "L", (235, 130, 35), "re-mapped into low memory, which devices reach (I/O remapping)"),
    State("stopped", "x", (110, 20, 20), "the VM was stopped: its pages cannot be reached"),
)
NEVER, RESIDENT, SAMPLED, SHARED, ZERO_SHARED, ZERO, SWAPPED, BALLOONED, LOW, STOPPED = \
    range(len(STATES))
_BY_PMAP = {lib.PM_NONE: NEVER, lib.PM_RESIDENT: RESIDENT, lib.PM_SWAPPED: SWAPPED,
            lib.PM_ZERO: ZERO, lib.PM_SHARED: SHARED, lib.PM_BALLOONED: BALLOONED, lib.PM_LOW: LOW}
IMAGE_WIDTH = 128           # cells per row of a VM's block in an image
IMAGE_CELLS = 128 * 128     # at most this many cells per VM in an image (else downsampled)
IMAGE_SCALE = 3             # pixels per cell, each way
LEGEND_COLUMN = 105         # pixels per legend entry


def state_of(byte: int) -> int:
    """The index in STATES of a page map byte."""
    if byte & lib.MAP_STOPPED:
        return STOPPED
    pm = byte & lib.MAP_STATE_MASK
    if pm == lib.PM_SHARED and byte & lib.MAP_ZERO_SHARED:
        return ZERO_SHARED
    if pm == lib.PM_RESIDENT and byte & lib.MAP_WATCHED:
        return SAMPLED
    return _BY_PMAP.get(pm, NEVER)


_TABLE = bytes(state_of(b) for b in range(256))


def states(page_map: bytes) -> bytes:
    """Each page's index in STATES (one byte per PPN, as page_map)."""
    return page_map.translate(_TABLE)


def counts(cells: bytes) -> list[int]:
    """How many pages (or cells) are in each state, in STATES order."""
    return [cells.count(i) for i in range(len(STATES))]


def downsample(pages: bytes, cells: int) -> tuple[bytes, int]:
    """States of at most `cells` cells, each the most common state of k consecutive pages
    (the last cell may cover fewer); returns them and k."""
    k = max(1, math.ceil(len(pages) / max(1, cells)))
    if k == 1:
        return pages, 1
    out = bytearray()
    for i in range(0, len(pages), k):
        chunk = pages[i:i + k]
        first = chunk[0]
        if chunk.count(first) == len(chunk):
            out.append(first)
        else:
            out.append(max(range(len(STATES)), key=lambda s: (chunk.count(s), -s)))
    return bytes(out), k


@dataclass(frozen=True)
class VMMap:
    """One VM's page map at one instant: its name and each page's index in STATES."""
    name: str
    pages: bytes


def take(machine: Machine) -> list[VMMap]:
    """Every live VM's page map (a VM destroyed meanwhile is left out)."""
    maps = []
    for vm in machine.vms:
        try:
            maps.append(VMMap(vm.name, states(vm.page_map())))
        except VMStopped:
            pass
    return maps


# -- the terminal ---------------------------------------------------------------------------

def legend() -> Text:
    """What each character means, and what a cell is."""
    text = Text("each cell: the most common state of its pages · ")
    for i, s in enumerate(STATES):
        text.append(s.char, style=_style(i))
        text.append(f" {s.name}" + ("  " if i < len(STATES) - 1 else ""))
    return text


def _style(i: int) -> str:
    r, g, b = STATES[i].rgb
    return f"bold rgb({r},{g},{b})"


def _percentages(pages: bytes) -> str:
    n = max(1, len(pages))
    return " ".join(f"{STATES[i].name} {100 * c / n:.0f}%" for i, c in enumerate(counts(pages)) if c)


def grid(vm: VMMap, width: int, rows: int) -> Group:
    """A VM's map as `rows` lines of at most `width` cells, under a title line with its page
    count, what a cell covers and the share of each state."""
    cells, k = downsample(vm.pages, max(1, width * rows))
    title = Text(f"{vm.name}: {len(vm.pages)} pages, a cell = {k} page{'s' if k > 1 else ''} · "
                 f"{_percentages(vm.pages)}", no_wrap=True, overflow="ellipsis")
    text = Text(no_wrap=True, overflow="crop")
    for r in range(0, len(cells), width):
        if r:
            text.append("\n")
        row = cells[r:r + width]
        start = 0
        for j in range(1, len(row) + 1):
            if j == len(row) or row[j] != row[start]:
                text.append(STATES[row[start]].char * (j - start), style=_style(row[start]))
                start = j
    return Group(title, text)


def screen(maps: Sequence[VMMap], width: int, height: int, heading: str = "") -> Group:
    """Every VM's grid, sized to fill a width x height terminal, with the legend."""
    free = height - 2 - (1 if heading else 0) - len(maps)   # heading, legend, VM titles
    rows = max(1, free // max(1, len(maps)))
    parts: list[RenderableType] = [Text(heading, no_wrap=True, overflow="ellipsis")] if heading else []
    parts += [grid(vm, max(8, width), rows) for vm in maps]
    parts.append(legend())
    return Group(*parts)


# -- images ---------------------------------------------------------------------------------

def _pillow() -> Any:
    """PIL's Image and ImageDraw, or MissingExtra saying how to get them."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise MissingExtra("page-map images need Pillow: pip install 'uvm[plot]' "
                           "(or pip install pillow)") from e
    return Image, ImageDraw


def image(maps: Sequence[VMMap], caption: str = "") -> Any:
    """A PIL image (palette mode) of every VM's map: one block per VM, IMAGE_WIDTH cells
    wide, a cell one page unless the VM has more than IMAGE_CELLS pages, under its name."""
    Image, ImageDraw = _pillow()
    label = 14
    blocks = []
    for vm in maps:
        cells, k = downsample(vm.pages, IMAGE_CELLS)
        rows = max(1, math.ceil(len(cells) / IMAGE_WIDTH))
        padded = cells + bytes([len(STATES)]) * (rows * IMAGE_WIDTH - len(cells))
        block = Image.frombytes("P", (IMAGE_WIDTH, rows), padded)
        blocks.append((vm, k, block.resize((IMAGE_WIDTH * IMAGE_SCALE, rows * IMAGE_SCALE),
                                           Image.Resampling.NEAREST)))
    width = max(IMAGE_WIDTH * IMAGE_SCALE, 420)
    per_row = width // LEGEND_COLUMN
    legend_rows = math.ceil(len(STATES) / per_row)
    height = label + sum(label + b.height + 4 for _, _, b in blocks) + label * legend_rows
    paper, ink = len(STATES), len(STATES) + 1      # palette: the states, white, black
    img = Image.new("P", (width, height), paper)
    img.putpalette([c for s in STATES for c in s.rgb] + [255, 255, 255] + [0, 0, 0])
    draw = ImageDraw.Draw(img)
    y = 0
    draw.text((2, y), caption, fill=ink)
    y += label
    for vm, k, block in blocks:
        draw.text((2, y), f"{vm.name}: {len(vm.pages)} pages"
                          + (f", a cell = {k} pages" if k > 1 else ""), fill=ink)
        y += label
        img.paste(block, (0, y))
        y += block.height + 4
    for i, s in enumerate(STATES):
        x, row = (i % per_row) * LEGEND_COLUMN, y + (i // per_row) * label
        draw.rectangle((x + 2, row + 2, x + 11, row + 11), fill=i)
        draw.text((x + 16, row), s.name, fill=ink)
    return img


class MapRecorder:
    """Writes a PNG frame of the machine's page maps every `every` seconds into `out`
    (pagemap-0000.png, ...) on a thread of its own, and at stop() an animated GIF of them
    (pagemap.gif, read back from the PNGs so no frame stays in memory), one frame per period. Errors on the thread are re-raised by stop()."""

    def __init__(self, machine: Machine, out: Path, every: float) -> None:
        self.every = check_period(every, "map_every")
        _pillow()
        make_dir(out, "--map-out")
        self.machine = machine
        self.out = out
        self.frames: list[Path] = []
        self.gif: Path | None = None
        self.error: BaseException | None = None
        self._started = machine.uptime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="uvm-pagemap", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            while True:
                self.frame()
                if self._stop.wait(self.every):
                    return
        except BaseException as e:          # re-raised by stop()
            self.error = e

    def frame(self) -> Path | None:
        """Writes one frame now; returns its path (None if the machine is closed)."""
        try:
            maps = take(self.machine)
        except UvmError:
            return None
        t = self.machine.uptime - self._started
        img = image(maps, f"uvm page map, t = {t:.1f} s")
        path = self.out / f"pagemap-{len(self.frames):04d}.png"
        img.save(path)
        self.frames.append(path)
        return path

    def stop(self) -> Path | None:
        """Stops the thread, writes the GIF; returns its path (None without frames)."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        if not self.frames:
            return None
        Image, _ = _pillow()
        self.gif = self.out / "pagemap.gif"
        with Image.open(self.frames[0]) as first:
            rest = _opened(Image, self.frames[1:])      # read as the GIF is written
            first.save(self.gif, save_all=True, append_images=rest, loop=0,
                       duration=max(100, min(1000, round(self.every * 1000))))
        return self.gif

    def report(self) -> str:
        """What it wrote, in one line."""
        return (f"wrote {len(self.frames)} page-map frames ({self.out}/pagemap-NNNN.png)"
                + (f" and {self.gif}" if self.gif else ""))


def _opened(Image: Any, paths: list[Path]) -> Iterator[Any]:
    """Each image file in turn, closed once the next is wanted."""
    for path in paths:
        with Image.open(path) as img:
            yield img


@contextmanager
def recording(machine: Machine, out: Path, every: float | None) -> Iterator[MapRecorder | None]:
    """Records page-map frames of `machine` into `out` while the block runs (nothing if
    every is None); the GIF is written when it ends."""
    if every is None:
        yield None
        return
    rec = MapRecorder(machine, out, every)
    try:
        yield rec
    finally:
        rec.stop()
