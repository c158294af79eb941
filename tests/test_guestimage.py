"""The guest-image workload: what a guest holds after booting its OS image and running its
program comes from what it did. One VM alone shares its zeroed arena and its program's code
(a copy of pages in its cache); two guests share their images but not their inputs; every
byte reads back after sharing."""

from __future__ import annotations

import pytest

import uvm.guest
from workloads import GuestImage
from workloads.guestimage import compute, program_files, program_input
from workloads.image import image_files

PG = 4096


def booted(vm, seed: int) -> GuestImage:  # type: ignore[no-untyped-def]
    uvm.guest.boot(vm, disk_latency=0, balloon=False)
    w = GuestImage(image="4MiB", program="512KiB", input="256KiB", arena="2MiB", seed=seed)
    w.start(vm)
    while not w.booted:
        w.step(vm)
    return w


def test_one_vm_shares_its_zeroed_arena_and_its_code_with_its_cache(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB", reclaim=False)
    vm = m.create_vm("g", memory="12MiB")
    w = booted(vm, 1)
    proc = w.proc
    assert proc is not None and 0 < w.heap_pages < 512
    while m.share_now():
        pass
    st = vm.stats()
    code = 128                                               # 512 KiB of extension modules
    arena = range(code, code + 512)
    zero = [v for v in arena[w.heap_pages:]]
    assert all(vm.page_state(proc.resident[v]) == "shared" for v in range(code))
    assert all(vm.page_state(proc.resident[v]) == "shared" for v in zero)
    assert st["zero_shared"] >= len(zero)
    # the cache holds the image; its code pages match the process's copies one for one
    assert st["sharing"] >= len(zero) + 2 * code
    heap = compute(program_input(list(image_files(4 << 20)), 256 << 10, 1))
    assert b"".join(proc.read(v) for v in arena[:w.heap_pages]) == heap
    assert all(proc.read(v) == bytes(PG) for v in zero)
    m.check()


def test_two_guests_share_the_image_not_their_inputs(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("48MiB", reclaim=False)
    vms = [m.create_vm(f"g{i}", memory="12MiB") for i in range(2)]
    ws = [booted(vm, seed) for vm, seed in zip(vms, (1, 2))]
    files = dict(image_files(4 << 20) + program_files(512 << 10))
    assert len(ws[0].files) == len(files)
    while m.share_now():
        pass
    for vm, w in zip(vms, ws):
        assert vm.os is not None and w.proc is not None
        cache = vm.os.cache
        assert all(vm.page_state(cp.ppn) == "shared" for cp in cache.pages.values())
        inputs = [w.proc.resident[v] for v in range(128, 128 + 64)]     # the input's first pages
        assert all(vm.page_state(p) == "resident" for p in inputs)      # each guest its own
        for f in w.files:                                               # every byte, through COW
            data = files[f.name]
            assert cache.read_range(f, 0, f.pages) == data + bytes(-len(data) % PG)
    m.check()


def test_a_guest_image_that_does_not_fit_names_the_field(make_machine) -> None:  # type: ignore[no-untyped-def]
    m = make_machine("32MiB")
    vm = m.create_vm("g", memory="4MiB")
    uvm.guest.boot(vm, disk_latency=0, balloon=False)
    with pytest.raises(ValueError, match=r"^image: image \+ program \+ arena .* do not fit"):
        GuestImage(image="4MiB").start(vm)
    vm2 = m.create_vm("h", memory="16MiB")
    uvm.guest.boot(vm2, disk_latency=0, balloon=False)
    with pytest.raises(ValueError, match=r"^arena: the program needs \d+ bytes of heap"):
        GuestImage(image="1MiB", input="1MiB", arena="1MiB").start(vm2)
