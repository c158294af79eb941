"""A guest that boots an OS image and runs a program, on the toy guest OS, so that the
pages sharing finds come from what the guest does rather than from a mix chosen in advance
(the paper's sharing figure: identical VMs booting the same OS and running the same
benchmark on their own inputs).

The guest OS reads the image (real files: the installed standard library's sources, see
workloads.image, and the program: its extension modules, real machine code) through its
page cache, in the same order in every guest. Then one program runs: the loader copies
the program's code from the page cache into the process's own pages, as a private mapping
of a file is filled; the program allocates a heap arena, which it clears (the OS gives it zeroed
pages), reads its input (text drawn from the image's sources by the guest's seed: each
guest its own), and does a real interpreter's chores on it: tokenizes it, interns the
words, counts them and writes into the arena the input, the token array and the sorted
table of counts. Whatever of the arena the computation did not need stays zero.

So a guest holds identical pages across guests (the image in its cache, the program's
code, the OS's page-frame array), duplicates within itself (the program's code is also in
the cache), zero pages (the rest of the arena), and private pages (its input and results).
How much of each there is depends on the files and the computation, not on a fraction set
here. Once booted the guest keeps serving: every step reads one file of its image through
the cache (one op per page) after a short nap."""

from __future__ import annotations

import functools
import random
import re
import sysconfig
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from uvm.guest.pagecache import File
from uvm.guest.process import Process
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_seed
from workloads.image import image_files

NAP = 0.05          # seconds between steps once booted
WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=4)
def program_files(max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """The program's code: (name, bytes) of the installed Python's extension modules (real
    machine code), in a fixed order, up to max_bytes in all (a file may be cut short)."""
    files: list[tuple[str, bytes]] = []
    left = max_bytes
    for path in sorted((Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload").glob("*.so")):
        try:
            data = path.read_bytes()[:left]
        except OSError:
            continue
        if data:
            files.append((f"lib-dynload/{path.name}", data))
            left -= len(data) + (-len(data) % PAGE_SIZE)
        if left <= 0:
            break
    if not files:
        raise ValueError("program: no extension modules found for the program's code")
    return tuple(files)


def program_input(files: list[tuple[str, bytes]], size: int, seed: int) -> bytes:
    """`size` bytes of text: lines of the image's Python sources, drawn by `seed`."""
    lines = [ln for name, data in files if name.endswith(".py")
             for ln in data.rstrip(b"\0").split(b"\n") if ln.strip()]
    if not lines:
        raise ValueError("image: the OS image has no source lines to draw the program's input from")
    rng, out, n = random.Random(seed), [], 0
    while n < size:
        line = rng.choice(lines) + b"\n"
        out.append(line)
        n += len(line)
    return b"".join(out)[:size]


def compute(text: bytes) -> bytes:
    """The program's heap after its run: the input, the token array (the interned word
    ids, 4 bytes each), then the table of words sorted by count, each part page-aligned."""
    ids: dict[bytes, int] = {}
    tokens = array("I", (ids.setdefault(w, len(ids)) for w in WORD.findall(text)))
    counts = Counter(tokens)
    words = list(ids)
    table = b"".join(b"%s %d\n" % (words[i], c) for i, c in counts.most_common())
    return b"".join(part + bytes(-len(part) % PAGE_SIZE) for part in (text, tokens.tobytes(), table))


class GuestImage(Workload):
    """Boots `image` of the OS image through the guest's page cache and runs the program
    (its code: up to `program` of the installed extension modules; its input: `input` of
    text; its heap: an `arena`), as the module's comment describes. One op is one page."""

    kind: ClassVar[str] = "guest-image"

    def __init__(self, image: int | str = "16MiB", program: int | str = "2MiB",
                 input: int | str = "1MiB", arena: int | str = "8MiB", seed: int = 1) -> None:
        self.image_pages = parse_pages(image, "image")
        self.program_pages = parse_pages(program, "program")
        self.input_bytes = parse_pages(input, "input") * PAGE_SIZE
        self.arena_pages = parse_pages(arena, "arena")
        self.seed = check_seed(seed)
        self.files: list[File] = []
        self.proc: Process | None = None
        self.heap_pages = 0         # arena pages the program wrote (the rest stay zero)
        self._plan: Iterator[int] | None = None
        self._rng = random.Random(seed)

    def start(self, vm: VM) -> None:
        if vm.os is None:
            raise ValueError(f"vm: VM {vm.name!r} has no guest OS (boot it first: uvm.guest.boot(vm))")
        image = list(image_files(self.image_pages * PAGE_SIZE))
        program = list(program_files(self.program_pages * PAGE_SIZE))
        need = (sum(len(d) for _, d in image) // PAGE_SIZE
                + 2 * sum(-(-len(d) // PAGE_SIZE) for _, d in program) + self.arena_pages)
        room = len(vm.os.free)
        if need > room:
            raise ValueError(f"image: image + program + arena ({need * PAGE_SIZE} bytes) do not fit "
                             f"in VM {vm.name!r}'s free memory ({room * PAGE_SIZE} bytes)")
        heap = compute(program_input(image, self.input_bytes, self.seed))
        if len(heap) > self.arena_pages * PAGE_SIZE:
            raise ValueError(f"arena: the program needs {len(heap)} bytes of heap for its input, "
                             f"more than the arena's {self.arena_pages * PAGE_SIZE}")
        self.files = [vm.os.cache.create_data(name, data) for name, data in image + program]
        self._plan = self._boot(vm, self.files[len(image):], heap)

    def _boot(self, vm: VM, code: list[File], heap: bytes) -> Iterator[int]:
        """The boot and the program's run, a file or a few pages per step."""
        assert vm.os is not None
        cache = vm.os.cache
        for f in self.files:                    # the OS reads its image
            cache.read_range(f, 0, f.pages)
            yield f.pages
        self.proc = proc = vm.os.spawn("program")
        for f in code:                          # the loader: code pages, a private copy
            data = cache.read_range(f, 0, f.pages)
            for k, vpn in enumerate(proc.alloc(f.pages)):
                proc.write(vpn, data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
            yield f.pages
        arena = proc.alloc(self.arena_pages)
        for first in range(0, self.arena_pages, 256):   # cleared: the OS zero-fills each page
            for vpn in arena[first:first + 256]:
                proc.read(vpn)
            yield min(256, self.arena_pages - first)
        self.heap_pages = len(heap) // PAGE_SIZE
        for first in range(0, self.heap_pages, 256):    # the program's results
            for k in range(first, min(first + 256, self.heap_pages)):
                proc.write(arena[k], heap[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
            yield min(256, self.heap_pages - first)

    @property
    def booted(self) -> bool:
        """Whether the image is read and the program has written its results."""
        return self._plan is None

    def step(self, vm: VM) -> int | None:
        assert vm.os is not None
        if self._plan is not None:
            try:
                return next(self._plan)
            except StopIteration:
                self._plan = None
        time.sleep(NAP)
        f = self._rng.choice(self.files)
        vm.os.cache.read_range(f, 0, f.pages)
        return f.pages
