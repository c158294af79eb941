"""A file server in the spirit of dbench, the benchmark of the paper's idle-tax and
ballooning figures: `clients` clients share a set of files on the guest's virtual disk
and each does, one operation at a time, what a file server's client does: read a whole
file (70%), rewrite a few pages of one (20%), or create a temporary file and write it, or
unlink its oldest one (10%). Files are chosen with a skewed popularity (zipf, s = 1: the
k-th most popular file is asked for in proportion to 1/k), so the guest's page cache keeps
the popular ones and the hit rate falls gradually, not at a cliff, as memory shrinks:
fewer cache hits, more disk reads, each paying the virtual disk's latency.

One op is one file operation. Every `sync_every` ops the dirty pages are written back (a
flush). The clients are interleaved in the one thread a workload runs on: the toy OS holds
its lock across a disk request, as a disk with one arm serves one request at a time, so
client threads would queue behind each other rather than overlap.

Writes are whole pages whose content names the file, the page and its version, so
`verify` can check every byte of every file against what the clients wrote."""

from __future__ import annotations

import random
from typing import ClassVar

from uvm.errors import UvmError
from uvm.guest.pagecache import File, file_page
from uvm.sizes import PAGE_SIZE, parse_pages
from uvm.vm import VM
from workloads.base import Workload, check_fraction
from workloads.guest import _seed, pick

TEMP_FILES = 2          # temporary files a client keeps at most before it unlinks one
WRITE_PAGES = 4         # pages a rewrite covers at most
MAX_CLIENTS = 4096
MAX_FILES = 1 << 24


def served_page(name: str, index: int, version: int) -> bytes:
    """The content of page `index` of file `name` after its `version`-th write (version 0:
    the file's initial content)."""
    if version == 0:
        return file_page(name, index)
    line = f"{name}#{index}@{version};".encode()
    return (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE]


class Client:
    """One client: its random stream and its temporary files."""

    def __init__(self, number: int, seed: int) -> None:
        self.number = number
        self.rng = random.Random(seed)
        self.temp: list[File] = []
        self.created = 0


class FileServer(Workload):
    """`clients` clients over `files` files of `file_size` (see the module's comment)."""

    kind: ClassVar[str] = "file-server"

    def __init__(self, clients: int = 8, files: int = 512, file_size: int | str = "64KiB",
                 write_fraction: float = 0.2, temp_fraction: float = 0.1,
                 sync_every: int = 1000, seed: int | None = None) -> None:
        for name, value, most in (("clients", clients, MAX_CLIENTS), ("files", files, MAX_FILES),
                                  ("sync_every", sync_every, 2**63)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ValueError(f"{name}: expected an integer from 1 to {most}, got {value!r}")
        self.write_fraction = check_fraction(write_fraction, "write_fraction")
        self.temp_fraction = check_fraction(temp_fraction, "temp_fraction")
        if self.write_fraction + self.temp_fraction > 1:
            raise ValueError(f"temp_fraction: write_fraction + temp_fraction must be <= 1, got "
                             f"{self.write_fraction} + {self.temp_fraction}")
        self.nclients = clients
        self.nfiles = files
        self.file_pages = parse_pages(file_size, "file_size")
        self.sync_every = sync_every
        self.seed = _seed(seed)
        rng = random.Random(self.seed)
        self.clients = [Client(c, rng.getrandbits(64)) for c in range(clients)]
        self.files: list[File] = []
        self.versions: dict[tuple[str, int], int] = {}      # pages written since creation
        self._ops = 0
        self.reads = self.writes = self.creates = self.unlinks = 0

    def start(self, vm: VM) -> None:
        if vm.os is None:
            raise ValueError(f"vm: VM {vm.name!r} has no guest OS (boot it first: uvm.guest.boot(vm))")
        need = (self.nfiles + self.nclients * (TEMP_FILES + 1)) * self.file_pages
        if need > vm.os.disk.free_blocks():
            raise ValueError(f"files: {self.nfiles} files of {self.file_pages * PAGE_SIZE} bytes and "
                             f"the clients' temporary files do not fit on VM {vm.name!r}'s virtual "
                             f"disk ({vm.os.disk.free_blocks()} blocks free)")
        self.files = [vm.os.create_file(f"f{i}", self.file_pages) for i in range(self.nfiles)]

    def step(self, vm: VM) -> int | None:
        assert vm.os is not None
        for client in self.clients:
            self._op(vm, client)
            self._ops += 1
            if self._ops % self.sync_every == 0:
                vm.os.cache.sync()
        return self.nclients

    def _op(self, vm: VM, client: Client) -> None:
        assert vm.os is not None
        cache, rng = vm.os.cache, client.rng
        r = rng.random()
        if r < self.write_fraction:
            f = self.files[pick(rng, "zipf", self.nfiles, 0, 1)[0]]
            first = rng.randrange(f.pages)
            for index in range(first, min(f.pages, first + rng.randint(1, WRITE_PAGES))):
                self._write(vm, f, index)
            self.writes += 1
        elif r < self.write_fraction + self.temp_fraction:
            if len(client.temp) < TEMP_FILES:
                f = cache.allocate(f"c{client.number}t{client.created}", rng.randint(1, self.file_pages))
                client.created += 1
                for index in range(f.pages):
                    self._write(vm, f, index)
                client.temp.append(f)
                self.creates += 1
            else:
                f = client.temp.pop(0)
                for index in range(f.pages):
                    self.versions.pop((f.name, index), None)
                cache.unlink(f)
                self.unlinks += 1
        else:
            f = self.files[pick(rng, "zipf", self.nfiles, 0, 1)[0]]
            cache.read_range(f, 0, f.pages)
            self.reads += 1

    def _write(self, vm: VM, f: File, index: int) -> None:
        """Writes page `index` of f whole, with its next version's content."""
        assert vm.os is not None
        key = (f.name, index)
        version = self.versions.get(key, 0) + 1
        vm.os.cache.write(f, index, served_page(f.name, index, version))
        self.versions[key] = version

    def verify(self, vm: VM) -> None:
        """Reads every page of every file through the cache and compares every byte with
        what the clients wrote; UvmError naming the first page that differs."""
        assert vm.os is not None
        for f in self.files + [t for c in self.clients for t in c.temp]:
            data = vm.os.cache.read_range(f, 0, f.pages)
            for index in range(f.pages):
                want = served_page(f.name, index, self.versions.get((f.name, index), 0))
                if data[index * PAGE_SIZE:(index + 1) * PAGE_SIZE] != want:
                    raise UvmError(f"file-server: page {index} of file {f.name!r} lost its content")
