"""Random operation sequences against a dict model: whatever the pager, the evictor, page
sharing, ballooning and destroy do, every page reads back as the model says (a ballooned
page as zeros: the guest gave it up)."""

from __future__ import annotations

import os
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import uvm
from uvm.vm import PAGE_STATES

PAGE_STATE_CODES = {name: code for code, name in PAGE_STATES.items()}
PAGE = 4096
FRAMES = 48
STRESS = os.environ.get("UVM_STRESS") == "1"


class PagerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.vms: dict[str, uvm.VM] = {}
        self.model: dict[str, dict[int, bytes]] = {}
        self.created = 0

    @initialize(reclaim=st.booleans(), fault_around=st.sampled_from([1, 4, 16]),
                readahead=st.sampled_from([1, 4, 32]))
    def machine_up(self, reclaim: bool, fault_around: int, readahead: int) -> None:
        """With the background reclaimer on, pages move between any two calls."""
        self.reclaim = reclaim
        self.machine = uvm.Machine(memory=FRAMES * PAGE, swap_size="2MiB", swap_dir=self.dir.name,
                                   fault_around=fault_around, swap_readahead=readahead,
                                   reclaim=reclaim)

    def teardown(self) -> None:
        if hasattr(self, "machine"):
            self.machine.close()
        self.dir.cleanup()

    def _page(self, name: str, ppn: int) -> bytes:
        return self.model[name].get(ppn, bytes(PAGE))

    @precondition(lambda self: len(self.vms) < 3)
    @rule(pages=st.integers(1, 80))
    def create(self, pages: int) -> None:
        name = f"vm{self.created}"
        self.created += 1
        self.vms[name] = self.machine.create_vm(name, memory=pages * PAGE)
        self.model[name] = {}

    @precondition(lambda self: self.vms)
    @rule(data=st.data(), offset=st.integers(0, PAGE - 1), payload=st.binary(min_size=1, max_size=64),
          whole=st.sampled_from([None, b"\0", b"\x5a", b"text "]))
    def write(self, data: st.DataObject, offset: int, payload: bytes, whole: bytes | None) -> None:
        name = data.draw(st.sampled_from(sorted(self.vms)))
        vm = self.vms[name]
        ppn = data.draw(st.integers(0, vm.pages - 1))
        page = bytearray(self._page(name, ppn))
        if whole is not None:                   # whole-page content: zero, or compressible
            page[:] = (whole * PAGE)[:PAGE]
        payload = payload[:PAGE - offset]
        page[offset:offset + len(payload)] = payload
        vm.memory[ppn * PAGE:(ppn + 1) * PAGE] = bytes(page)
        self.model[name][ppn] = bytes(page)

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.vms)))
        vm = self.vms[name]
        ppn = data.draw(st.integers(0, vm.pages - 1))
        assert vm.memory[ppn * PAGE:(ppn + 1) * PAGE] == self._page(name, ppn)

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.vms)))
        vm = self.vms[name]
        ppns = data.draw(st.lists(st.integers(0, vm.pages - 1), max_size=40))
        vm.evict(ppns)
        for p in ppns:
            assert vm.page_state(p) != "resident"

    @precondition(lambda self: self.vms)
    @rule(data=st.data(), count=st.integers(0, 30))
    def evict_random(self, data: st.DataObject, count: int) -> None:
        vm = self.vms[data.draw(st.sampled_from(sorted(self.vms)))]
        before = vm.stats()["resident"]
        evicted = vm.evict_random(count)
        assert evicted <= min(count, before) if self.reclaim else evicted == min(count, before)

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def balloon(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.vms)))
        vm = self.vms[name]
        ppns = data.draw(st.lists(st.integers(0, vm.pages - 1), max_size=40))
        vm.balloon_pages(ppns)
        for p in ppns:
            assert vm.page_state(p) == "ballooned"
            self.model[name].pop(p, None)

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def unballoon(self, data: st.DataObject) -> None:
        vm = self.vms[data.draw(st.sampled_from(sorted(self.vms)))]
        ppns = data.draw(st.lists(st.integers(0, vm.pages - 1), max_size=40))
        before = vm.stats()["ballooned"]
        assert vm.unballoon_pages(ppns) == before - vm.stats()["ballooned"]

    @precondition(lambda self: self.vms)
    @rule()
    def share_now(self) -> None:
        self.machine.share_now()

    @precondition(lambda self: self.vms)
    @rule(data=st.data(), count=st.integers(1, 20))
    def share_random(self, data: st.DataObject, count: int) -> None:
        vm = self.vms[data.draw(st.sampled_from(sorted(self.vms)))]
        self.machine._share_scan(vm, count, random=True)

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.vms)))
        self.machine.destroy_vm(self.vms.pop(name))
        del self.model[name]

    @invariant()
    def accounting(self) -> None:
        self.machine.check()
        ms, vs = self.machine.stats_with_vms(list(self.vms.values()))
        assert ms["frames_used"] <= FRAMES
        assert self.machine.memfd_pages() <= FRAMES
        if not self.reclaim:                    # quiet machine: the kernel's count is exact
            assert self.machine.memfd_pages() == ms["frames_used"]
        assert ms["frames_used"] == sum(v["resident"] for v in vs) + ms["shared_frames"]
        assert ms["sharing"] == sum(v["sharing"] for v in vs)
        assert ms["swap_pages"] == sum(v["swapped"] for v in vs)
        for v in vs:
            assert v["resident"] + v["swapped"] + v["sharing"] + v["ballooned"] + v["zero"] == v["pages"]
            assert v["stopped"] == 0
        assert ms["hints"] == sum(v["hints"] for v in vs)      # each hint names a live VM's page
        assert sum(v["shared_saved"] for v in vs) <= ms["saved"]

    @invariant()
    def page_map_agrees(self) -> None:
        """The page map (one call per VM) says what page_state says, page by page."""
        if self.reclaim:
            return                              # pages move between the two reads
        for vm in self.vms.values():
            states = [b & 7 for b in vm.page_map()]
            assert [PAGE_STATE_CODES[vm.page_state(p)] for p in range(vm.pages)] == states

    @invariant()
    def everything_reads_back(self) -> None:
        for name, vm in self.vms.items():
            for ppn, content in self.model[name].items():
                assert vm.read(ppn * PAGE, PAGE) == content, f"{name} page {ppn}"


PagerModel.TestCase.settings = settings(max_examples=400 if STRESS else 40,
                                        stateful_step_count=60 if STRESS else 30,
                                        deadline=None)
TestPagerModel = PagerModel.TestCase
