"""Content-based page sharing: identical pages really share one frame, copy-on-write keeps
every VM's bytes its own, and nothing is lost through sharing, COW and swap together."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

import uvm

PAGE = 4096


def content(tag: int) -> bytes:
    """A distinct, partly compressible 4 KiB page for each tag."""
    head = hashlib.blake2b(str(tag).encode(), digest_size=64).digest() * 8
    return head + (b"tag %d " % tag * 600)[:PAGE - len(head)]


def fill(vm: uvm.VM, tags: list[int | None]) -> None:
    for p, tag in enumerate(tags):
        vm.memory[p * PAGE:(p + 1) * PAGE] = bytes(PAGE) if tag is None else content(tag)


def check(vm: uvm.VM, tags: list[int | None]) -> None:
    for p, tag in enumerate(tags):
        want = bytes(PAGE) if tag is None else content(tag)
        assert vm.read(p * PAGE, PAGE) == want, f"{vm.name} page {p}"


@pytest.mark.parametrize("kind", ["identical", "partly", "different"])
def test_frames_equal_distinct_contents_after_a_full_scan(make_machine, kind: str) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB")
    n_vms, pages = 4, 256
    layouts: list[list[int | None]] = []
    for i in range(n_vms):
        if kind == "identical":
            tags: list[int | None] = list(range(pages))
        elif kind == "partly":                  # half common, a quarter private, a quarter zero
            tags = [p if p < pages // 2 else (None if p % 2 else 10_000 * (i + 1) + p)
                    for p in range(pages)]
        else:
            tags = [10_000 * (i + 1) + p for p in range(pages)]
        layouts.append(tags)
    vms = [m.create_vm(f"vm{i}", memory=pages * PAGE) for i in range(n_vms)]
    for vm, tags in zip(vms, layouts):
        fill(vm, tags)
    merged = m.share_now()
    merged += m.share_now()     # pages that were first seen as hints merge now at the latest
    distinct = {t for tags in layouts for t in tags}   # None: the zero page
    st = m.stats()
    assert st["frames_used"] == len(distinct), {k: v for k, v in st.items() if "swap" not in k}
    assert st["swap_pages"] == 0
    total = n_vms * pages
    if kind == "different":
        assert st["sharing"] == 0 and merged == 0
    else:
        assert st["sharing"] == merged == total - (st["frames_used"] - st["shared_frames"])
        assert st["saved"] == st["sharing"] - st["shared_frames"]
    if kind == "partly":
        assert st["zero_shared"] == n_vms * pages // 4
    for vm, tags in zip(vms, layouts):
        check(vm, tags)
    m.check()


def twins(m: uvm.Machine) -> tuple[uvm.VM, uvm.VM]:
    """Two 16-page VMs holding the same 16 pages (not merged yet)."""
    a, b = m.create_vm("a", memory="64KiB"), m.create_vm("b", memory="64KiB")
    fill(a, list(range(16)))
    fill(b, list(range(16)))
    return a, b


def test_sharing_is_real_one_physical_page(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB")
    a, b = twins(m)
    used = m.memfd_pages()
    assert m.share_now() + m.share_now() == 32
    assert m.memfd_pages() == used - 16        # the kernel's own count drops by what merged
    assert a.page_state(3) == b.page_state(3) == "shared"
    pfn = [pagemap_pfn(vm.address + 3 * PAGE) for vm in (a, b)]
    assert pfn[0] and pfn[0] == pfn[1]


def pagemap_pfn(addr: int) -> int:
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        e = int.from_bytes(f.read(8), "little")
    return e & ((1 << 55) - 1) if e >> 63 else 0


def test_cow_break_keeps_other_sharers_bytes(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB")
    vms = [m.create_vm(f"v{i}", memory="64KiB") for i in range(3)]
    for vm in vms:
        fill(vm, [7] * 16)                      # 48 pages, one content
    m.share_now()
    m.share_now()
    assert m.stats()["frames_used"] == 1
    vms[1].memory[5 * PAGE + 100] = 0xEE
    assert vms[1].page_state(5) == "resident" and vms[1].stats()["cow_breaks"] == 1
    page = bytearray(content(7))
    page[100] = 0xEE
    assert vms[1].read(5 * PAGE, PAGE) == bytes(page)
    for vm in (vms[0], vms[2]):
        check(vm, [7] * 16)
    check(vms[1], [7] * 5)
    assert m.stats()["frames_used"] == 2 and m.stats()["cow_breaks"] == 1
    m.check()


def test_concurrent_writers_while_the_scanner_runs(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("16MiB", sharing=True, share_rate=20000, share_rate_vm=10000)
    pages = 128
    vms = [m.create_vm(f"w{i}", memory=pages * PAGE) for i in range(4)]
    model = [[bytearray(content(p % 32)) for p in range(pages)] for _ in vms]
    for vm, pgs in zip(vms, model):
        for p, data in enumerate(pgs):
            vm.memory[p * PAGE:(p + 1) * PAGE] = bytes(data)
    m.share_now()
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            rng = np.random.default_rng(i)
            words = np.frombuffer(vms[i].memory, dtype=np.uint8)
            for k in range(3000):
                p = int(rng.integers(pages))
                off = int(rng.integers(PAGE))
                val = int(rng.integers(256))
                if k % 3 == 0:          # sometimes write the shared content back: re-mergeable
                    vms[i].memory[p * PAGE:(p + 1) * PAGE] = content(p % 32)
                    model[i][p][:] = content(p % 32)
                else:
                    words[p * PAGE + off] = val
                    model[i][p][off] = val
            del words
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,), name=f"writer{i}") for i in range(len(vms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    time.sleep(0.3)
    st = m.stats()
    assert st["cow_breaks"] > 0 and st["scanned"] > 0
    for vm, pgs in zip(vms, model):
        for p, data in enumerate(pgs):
            assert vm.read(p * PAGE, PAGE) == bytes(data), f"{vm.name} page {p}"
    m.check()


def test_a_page_written_between_its_hash_and_its_merge_stays_private(make_machine) -> None:  # type: ignore[no-untyped-def]
    """A pass hashes pages without write-protecting them and freezes only the runs it will
    merge, comparing them again frozen (share.c, "Batches and races"). A guest thread
    toggling one byte of pages that match (another VM's content, or zeros) lands writes in
    that window; such a merge is given up (merge_races) and no byte is lost."""
    pages = 512
    m = make_machine("16MiB", sharing=True, share_rate=0.001)
    a = m.create_vm("a", memory=pages * PAGE)
    b = m.create_vm("b", memory=pages * PAGE)
    model = [bytearray(content(p % 64) if p % 2 else bytes(PAGE)) for p in range(pages)]
    for p in range(pages):
        a.memory[p * PAGE:(p + 1) * PAGE] = content(p % 64)
        b.memory[p * PAGE:(p + 1) * PAGE] = bytes(model[p])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            rng = np.random.default_rng(1)
            mem = b.memory
            while not stop.is_set():
                p = int(rng.integers(pages))
                model[p][100] ^= 1          # the page matches half of the time
                mem[p * PAGE + 100] = model[p][100]
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer, name="toggler")
    t.start()
    deadline = time.monotonic() + 60
    try:
        while m.stats()["merge_races"] == 0 and time.monotonic() < deadline:
            m.share_now()
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    st = m.stats()
    assert st["merge_races"] > 0, "no write landed between a hash and its merge in 60 s"
    assert st["cow_breaks"] > 0 and st["sharing"] > 0
    for p in range(pages):
        assert b.read(p * PAGE, PAGE) == bytes(model[p]), f"b page {p}"
        assert a.read(p * PAGE, PAGE) == content(p % 64), f"a page {p}"
    m.check()
    m.share_now()                       # what still matches merges now that writes stopped
    assert m.stats()["sharing"] >= st["sharing"]
    for p in range(pages):
        assert b.read(p * PAGE, PAGE) == bytes(model[p]), f"b page {p}"


def test_sharing_and_swap_together(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("1MiB")                    # 256 frames for 3 x 128 pages + private data
    vms = [m.create_vm(f"s{i}", memory=192 * PAGE) for i in range(3)]
    layouts = [[p % 64 if p < 128 else 1000 * (i + 1) + p for p in range(192)] for i in range(3)]
    for vm, tags in zip(vms, layouts):
        fill(vm, tags)
    # a merge needs a free frame for its shared copy (the scanner never evicts to share):
    # wait for the background reclaimer to make some, which may lag on a loaded machine
    deadline = time.monotonic() + 10
    while m.stats()["frames_free"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    m.share_now()
    m.share_now()
    assert m.stats()["sharing"] > 0
    shared = [p for p in range(128) if vms[0].page_state(p) == "shared"]
    assert shared
    assert vms[0].evict(shared[:10]) == 10      # a shared page pages out as a private copy
    assert all(vms[0].page_state(p) in ("swapped", "zero") for p in shared[:10])
    for vm, tags in zip(vms, layouts):         # everything back, through swap-in and COW
        check(vm, tags)
    for vm, tags in zip(vms, layouts):
        for p in range(0, 192, 7):
            vm.memory[p * PAGE] = 0x33
    for vm, tags in zip(vms, layouts):
        for p in range(192):
            want = bytearray(content(tags[p]))  # type: ignore[arg-type]
            if p % 7 == 0:
                want[0] = 0x33
            assert vm.read(p * PAGE, PAGE) == bytes(want)
    assert m.stats()["frames_used"] <= 256
    m.check()


def test_destroy_releases_shared_frames(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("8MiB")
    a, b = twins(m)
    assert m.share_now() + m.share_now() == 32
    m.destroy_vm(a)
    assert m.stats()["shared_frames"] == 16 and m.stats()["sharing"] == 16
    check(b, list(range(16)))
    m.destroy_vm(b)
    st = m.stats()
    assert st["shared_frames"] == st["sharing"] == st["frames_used"] == 0 == m.memfd_pages()


def test_rates_are_settable_and_checked(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("4MiB", sharing=True)
    m.share_rate = 1000
    m.share_rate_vm = 10
    vm = m.create_vm("a", memory="1MiB")
    vm.share_rate = 500
    assert (m.share_rate, m.share_rate_vm, vm.share_rate) == (1000, 10, 500)
    with pytest.raises(ValueError, match="^share_rate: "):
        m.share_rate = -1
    with pytest.raises(ValueError, match="^share_rate: "):
        vm.share_rate = "fast"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="^share_rate_vm: "):
        uvm.Machine(memory="1MiB", share_rate_vm=float("nan"))
    off = make_machine("1MiB")
    with pytest.raises(uvm.UvmError, match="sharing is off"):
        off.share_rate = 5


@pytest.fixture
def low_map_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """Makes new machines believe vm.max_map_count is just above what this process uses
    (UVM_MAX_MAP_COUNT; the system-wide sysctl is left alone)."""
    with open("/proc/self/maps") as f:
        used = sum(1 for _ in f)
    monkeypatch.setenv("UVM_MAX_MAP_COUNT", str(used + 2048 + 600))
    return used


def test_merging_stops_at_the_mapping_limit(make_machine, low_map_limit: int) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    a, b = m.create_vm("a", memory="8MiB"), m.create_vm("b", memory="8MiB")
    tags = [p * 2 for p in range(2048)]         # every other page: no runs, one VMA each
    for vm in (a, b):
        fill(vm, [t if p % 2 == 0 else 10**6 + p + (vm is b) * 10**5 for p, t in enumerate(tags)])
    m.share_now()
    m.share_now()
    st = m.stats()
    assert st["merge_stopped"] == 1 and st["merge_stops"] >= 1
    assert 0 < st["sharing"] < 2048
    with open("/proc/self/maps") as f:
        assert sum(1 for _ in f) < low_map_limit + 2048 + 600 - 1024   # headroom kept
    for p in range(0, 2048, 2):                 # COW still works at the limit
        a.memory[p * PAGE] = 1
    for p in range(0, 2048, 2):
        want = bytearray(content(p * 2))
        want[0] = 1
        assert a.read(p * PAGE, PAGE) == bytes(want)
        assert b.read(p * PAGE, PAGE) == content(p * 2)
    m.check()


def test_zero_pages_merge_without_mappings(make_machine) -> None:  # type: ignore[no-untyped-def]
    """Zero pages share the zero frame without a mapping each; a read maps the zero frame
    (still shared), a write gets a private page; eviction and ballooning still work."""
    m = make_machine("8MiB")
    a, b = twins(m)
    z = m.create_vm("z", memory="256KiB")       # 64 pages: 0..31 zero, 32..63 private
    fill(z, [None] * 32 + [500 + p for p in range(32)])
    for vm in (a, b):                           # two zero pages in each twin as well
        vm.memory[3 * PAGE:5 * PAGE] = bytes(2 * PAGE)
    maps0 = count_maps()
    assert m.share_now() + m.share_now() == 28 + 36
    st = m.stats()
    assert st["zero_shared"] == 36 and st["shared_frames"] == 15
    assert st["frames_used"] == m.memfd_pages() == 15 + 32
    assert count_maps() - maps0 <= 2 * 2        # one alias per twin's two runs, none for zeros
    assert z.page_state(7) == "shared"
    assert z.read(7 * PAGE, PAGE) == bytes(PAGE)            # a read maps the zero frame
    assert a.read(3 * PAGE, PAGE) == bytes(PAGE)
    assert z.page_state(7) == a.page_state(3) == "shared"
    pfn = [pagemap_pfn(vm.address + p * PAGE) for vm, p in ((z, 7), (a, 3))]
    assert pfn[0] and pfn[0] == pfn[1]
    assert m.stats()["frames_used"] == m.memfd_pages() == 47
    z.memory[8 * PAGE + 5] = 0x44                           # a write: private, no copy needed
    assert z.page_state(8) == "resident" and z.stats()["cow_breaks"] == 1
    assert z.read(8 * PAGE, 8) == b"\0" * 5 + b"\x44\0\0"
    z.memory[7 * PAGE] = 0x45                               # a read-mapped one breaks as usual
    assert z.page_state(7) == "resident" and z.stats()["cow_breaks"] == 2
    assert z.evict([9]) == 1 and z.page_state(9) == "zero"
    assert z.balloon_pages([10]) == 1 and z.page_state(10) == "ballooned"
    st = m.stats()
    assert st["zero_shared"] == 32 and st["frames_used"] == m.memfd_pages() == 15 + 32 + 2
    for p in range(32):
        if p not in (7, 8, 10):
            assert z.read(p * PAGE, PAGE) == bytes(PAGE), p
    check(a, list(range(3)))
    m.check()


def count_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_scan_budget_reaches_every_vm_in_proportion_to_its_rate(make_machine) -> None:  # type: ignore[no-untyped-def]
    """Regression (issue 8, item 10): per-VM rates adding up to more than the machine's
    budget were served in VM order, so the first VM took the whole budget and the others
    were never scanned. Every VM now gets the budget in proportion to its own rate (a VM at
    rate 0 gets none), and all together stay within the machine's rate. Exact arithmetic
    per round makes the ratios independent of how many rounds the scanner got to run."""
    m = make_machine("16MiB", sharing=True, share_rate=400, share_rate_vm=400)
    vms = [m.create_vm(f"v{i}", memory="1MiB") for i in range(5)]
    vms[3].share_rate = 800                     # twice the others' rate
    vms[4].share_rate = 0                       # never scanned
    for i, vm in enumerate(vms):                # distinct pages: all stay resident, unmerged
        fill(vm, [1000 * (i + 1) + p for p in range(256)])
    time.sleep(0.3)                             # rounds begun before the rates were set are over
    before = [vm.stats()["scanned"] for vm in vms]
    t0 = time.monotonic()
    time.sleep(2.0)
    got = [vm.stats()["scanned"] - b for vm, b in zip(vms, before)]
    elapsed = time.monotonic() - t0
    equal = got[:3]                             # rates 400, 400, 400, 800, 0 scaled to 400 in all
    assert min(equal) > 0 and min(equal) >= 0.8 * max(equal), got
    assert 1.5 * max(equal) <= got[3] <= 2.5 * min(equal), got
    assert got[4] == 0, got
    assert sum(got) <= 400 * (elapsed + 0.3) + len(vms), (got, elapsed)
    assert m.stats()["sharing"] == 0            # nothing to merge: the counts are all scans
