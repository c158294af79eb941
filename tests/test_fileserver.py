"""The file-server workload (dbench-like): its hit rate falls gradually, not at a cliff, as
the guest's memory shrinks; every byte of every file survives the cache's write-back,
dropping and re-reading under memory pressure; readahead reads are transactional."""

from __future__ import annotations

import pytest

import uvm.guest
from uvm.guest import DiskError
from uvm.guest.pagecache import file_page
from workloads import FileServer

PG = 4096


def miss_rate(make_machine, tmp_path, mib: int) -> float:  # type: ignore[no-untyped-def]
    """Page-cache misses per page accessed over 500 steps after 250 of warm-up, the same
    operations at every size (one seed, no timing involved)."""
    m = make_machine("64MiB")
    vm = m.create_vm(f"g{mib}", memory=f"{mib}MiB")
    gos = uvm.guest.boot(vm, disk="32MiB", disk_dir=str(tmp_path), disk_latency=0, balloon=False)
    w = FileServer(files=192, file_size="64KiB", seed=5)     # a 12 MiB file set
    w.start(vm)
    for _ in range(250):
        w.step(vm)
    before = gos.stats()
    for _ in range(500):
        w.step(vm)
    after = gos.stats()
    hits, misses = (after[k] - before[k] for k in ("guest_cache_hits", "guest_cache_misses"))
    m.destroy_vm(vm)
    return float(misses / (hits + misses))


@pytest.mark.slow
def test_the_hit_rate_falls_gradually_as_memory_shrinks(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rates = [miss_rate(make_machine, tmp_path, mib) for mib in (8, 6, 4, 3)]
    # more misses with less memory, each step a moderate factor: no cliff, and the smallest
    # guest still serves most pages from its cache (the popular files)
    for bigger, smaller in zip(rates, rates[1:]):
        assert 1.05 < smaller / bigger < 2.5, rates
    assert 0.05 < rates[0] and rates[-1] < 0.6, rates


def test_every_byte_survives_write_back_and_rereading(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="2MiB")                     # 512 pages for 8 MiB of files
    gos = uvm.guest.boot(vm, disk="24MiB", disk_dir=str(tmp_path), disk_latency=0, balloon=False)
    w = FileServer(clients=4, files=128, file_size="64KiB", write_fraction=0.4,
                   temp_fraction=0.2, sync_every=97, seed=11)
    w.start(vm)
    used = gos.disk.used
    for _ in range(600):
        assert w.step(vm) == 4
    assert w.reads and w.writes > 100 and w.creates and w.unlinks
    st = gos.stats()
    assert st["guest_reclaimed"] > 1000 and st["guest_disk_writes"] > 10   # pressure did work
    temp = sum(f.pages for c in w.clients for f in c.temp)
    assert gos.disk.used == used + temp                      # unlinked files gave their blocks
    w.verify(vm)                                             # every page of every file
    vm.os.cache.sync()
    w.verify(vm)
    f = w.files[0]
    w.versions[(f.name, 0)] = w.versions.get((f.name, 0), 0) + 1    # a model that disagrees
    with pytest.raises(uvm.UvmError, match="page 0 of file 'f0' lost its content"):
        w.verify(vm)


def test_a_failed_readahead_leaves_the_cache_as_it_was(make_machine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="4MiB")
    gos = uvm.guest.boot(vm, disk_dir=str(tmp_path), disk_latency=0, balloon=False)
    f = gos.create_file("data", 16)
    assert gos.cache.read_range(f, 4, 2) == file_page("data", 4) + file_page("data", 5)
    reads, free, cached = gos.disk.reads, len(gos.free), set(gos.cache.pages)
    gos.disk.inject_fault("disk-read", 1)
    with pytest.raises(DiskError):
        gos.cache.read_range(f, 0, 16)
    assert (len(gos.free), set(gos.cache.pages)) == (free, cached)
    data = gos.cache.read_range(f, 0, 16)
    assert data == b"".join(file_page("data", i) for i in range(16))
    # pages 4 and 5 were cached: the rest came in two runs, two requests (plus the failed one)
    assert gos.disk.reads == reads + 3
    gos.cache.unlink(f)
    assert not gos.cache.pages and len(gos.free) == free + 2 and gos.disk.used == 0
    with pytest.raises(ValueError, match=r"^index: pages \[0, 1\) are not within"):
        gos.cache.read_range(f, 0, 1)


def test_bad_parameters_name_the_field() -> None:
    for kwargs, msg in (({"clients": 0}, "clients: expected an integer from 1 to 4096"),
                        ({"files": 2**64}, "files: expected an integer from 1 to"),
                        ({"write_fraction": 1.5}, "write_fraction: must be a number in"),
                        ({"write_fraction": 0.6, "temp_fraction": 0.6}, "temp_fraction: write_fraction +"),
                        ({"file_size": 0}, "file_size: must be positive")):
        with pytest.raises(ValueError, match=f"^{msg}"):
            FileServer(**kwargs)  # type: ignore[arg-type]
