"""The built-in scenario (`uvm run` without a file) shows the paper's mechanisms within its
run: ballooning of the guests that boot the toy OS, sharing between the guests that boot the
same OS image, the idle memory tax moving memory from the idle guest to the busy one, and
the reclamation state moving. Each check reads what the live view shows (the --json
timeline holds the same samples) and fails if that mechanism did nothing."""

from __future__ import annotations

import pytest

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import uvm_cmd
from test_cli import read_timeline

from uvm import scenario
from uvm.sizes import PAGE_SIZE

ZERO = bytes(PAGE_SIZE)
WEBS = ("web1", "web2")         # the guests that boot the same OS image


def by_name(sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A timeline sample's VM lines by name (the policy's view under "policy", the guest
    OS's counters under "guest": docs/record.md)."""
    return {v["name"]: v for v in sample["vms"]}


def shared_nonzero(st: dict[str, Any]) -> int:
    """Pages a VM maps shared with a frame other than the zero frame (vm.stats() names)."""
    return int(st["sharing"]) - int(st["zero_shared"])


def line_shared_nonzero(v: dict[str, Any]) -> int:
    """The same, from a timeline VM line."""
    return int(v["sharing_pages"]) - int(v["zero_shared_pages"])


@pytest.mark.slow
def test_default_run_shows_every_mechanism(tmp_path: Path) -> None:
    out = tmp_path / "default.jsonl"
    r = subprocess.run(uvm_cmd("run", "--json", str(out)), capture_output=True, text=True,
                       timeout=90)
    assert r.returncode == 0, r.stderr
    samples = read_timeline(out)
    assert samples[-1]["t_s"] >= 19.5, "the run ended early"
    vms = [by_name(s) for s in samples]
    states = [s["machine"]["state"] for s in samples]
    for s in samples:
        assert set(v["status"] for v in s["vms"]) == {"running"}, s["vms"]

    # the states: the machine leaves high, and the state changes more than once
    moves = sum(a != b for a, b in zip(states, states[1:]))
    assert set(states) - {"high"} and moves >= 2, states

    # ballooning: the guests with the OS and its driver are reclaimed by their balloons,
    # in the soft state too (not only by host paging)
    guests = [name for name, v in vms[0].items() if v["guest"] is not None]
    assert sorted(guests) == ["busy", "idle"]
    assert max(v[name]["ballooned_pages"] for v in vms for name in guests) > 0
    assert any(state == "soft" and v[name]["policy"]["reclaim"] in ("balloon", "both")
               for state, v in zip(states, vms) for name in guests), list(zip(states, vms))

    # sharing between the two OS-image guests: more of their pages share a frame than the
    # image's own duplicates (12 pages) could explain
    last = vms[-1]
    assert all(line_shared_nonzero(last[name]) > 256 for name in WEBS), [last[n] for n in WEBS]
    assert samples[-1]["machine"]["saved_pages"] > 0

    # the idle memory tax: idle is found idle and its target falls far below that of web1,
    # a guest of the same size and shares that is active; idle gives up most of its memory
    # while busy's target and allocation grow
    policy = [{name: v["policy"] for name, v in sample.items()} for sample in vms]
    idle_peak = max(p["idle"]["allocated_pages"] for p in policy)
    end = policy[-1]
    assert end["idle"]["active"] < 0.2 and end["web1"]["active"] > 0.5, end
    assert end["idle"]["target_pages"] < 0.5 * end["web1"]["target_pages"], end
    assert end["idle"]["allocated_pages"] < 0.5 * idle_peak, (idle_peak, end["idle"])
    assert end["busy"]["target_pages"] > 2 * policy[3]["busy"]["target_pages"], \
        "busy's target never grew"
    assert end["busy"]["allocated_pages"] > 2 * end["idle"]["allocated_pages"], end


def test_os_image_guests_share_pages_with_each_other() -> None:
    """Regression (issue 8, item 10): the machine's scan budget went to the first VMs in
    order, the OS-image guests were never scanned, and never shared a page. Within a few
    seconds of the default scenario they now map the same content from shared frames."""
    machine = scenario.launch(scenario.default())
    try:
        webs = [machine.vm(name) for name in WEBS]
        deadline = time.monotonic() + 30
        while min(shared_nonzero(vm.stats()) for vm in webs) < 64 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert all(vm.stats()["scanned"] > 0 for vm in machine.vms)
        contents = [shared_contents(vm) for vm in webs]
    finally:
        machine.close()
    common = contents[0] & contents[1]
    assert len(common) >= 32, (len(contents[0]), len(contents[1]), len(common))


def shared_contents(vm: Any) -> set[bytes]:
    """Digests of the non-zero pages vm maps shared."""
    digests = set()
    for ppn in range(vm.pages):
        if vm.page_state(ppn) == "shared":
            page = vm.read(ppn * PAGE_SIZE, PAGE_SIZE)
            if page != ZERO:
                digests.add(hashlib.blake2b(page, digest_size=16).digest())
    return digests
