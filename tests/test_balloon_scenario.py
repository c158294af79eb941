"""Scenario files with guest OSes, guest workloads and balloon targets over time; the live
view's balloon and guest-paging columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from uvm import scenario
from uvm.cli import main
from uvm.scenario import ScenarioError

GUEST = """\
[machine]
memory = "32MiB"
swap_dir = "."

[[vm]]
name = "guest"
memory = "16MiB"
[vm.os]
disk_latency = 0.0
balloon_period = 0.05
[vm.workload]
kind = "file-cache"
files = 2
file_size = "2MiB"
[[vm.balloon]]
at = 0.3
target = "8MiB"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "guest.toml"
    path.write_text(text)
    return path


def test_guest_with_os_workload_and_balloon_targets_over_time(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "t.jsonl"
    assert main(["run", str(write(tmp_path, GUEST)), "--duration", "2", "--every", "0.5",
                 "--json", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    samples = [s for s in lines if s["type"] == "sample"]
    first, last = samples[0]["vms"][0], samples[-1]["vms"][0]
    assert first["ballooned_pages"] == 0
    assert last["balloon_target_pages"] == last["ballooned_pages"] == 2048
    assert last["guest"]["cache_pages"] > 0 and last["guest"]["cache_hits"] > 0
    text = capsys.readouterr().out
    assert "balloon 8.0 of 8.0 MiB" in text and "guest: free" in text


@pytest.mark.parametrize("change, expected", [
    ('[vm.os]\n', r"vm\[0\]\.balloon: balloon targets need a guest OS"),
    ('disk_latency = 0.0', r"vm\[0\]\.os\.disk_latency: must be a number >= 0"),
    ('balloon_period = 0.05', r"vm\[0\]\.os\.colour: unknown key"),
    ('target = "8MiB"', r"vm\[0\]\.balloon\[0\]\.target: 4096 pages is beyond the balloon's maximum"),
])
def test_bad_guest_fields_are_named(tmp_path: Path, change: str, expected: str) -> None:
    replacement = {'[vm.os]\n': "", 'disk_latency = 0.0': "disk_latency = -1.0",
                   'balloon_period = 0.05': 'colour = "blue"', 'target = "8MiB"': "target = 4096"}[change]
    text = GUEST.replace(change, replacement)
    if change == '[vm.os]\n':
        text = text.replace("disk_latency = 0.0\nballoon_period = 0.05\n", "")
    with pytest.raises(ScenarioError, match=expected):
        scenario.load(write(tmp_path, text))


def test_a_guest_workload_needs_an_os(tmp_path: Path) -> None:
    text = GUEST.split("[vm.os]")[0] + '[vm.workload]\nkind = "guest-working-set"\nsize = "1MiB"\n'
    with pytest.raises(ScenarioError, match=r"vm\[0\]\.workload\.vm: VM 'guest' has no guest OS"):
        scenario.launch(scenario.load(write(tmp_path, text)))


def test_live_view_shows_balloon_and_guest_paging_columns(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from uvm import live

    machine = scenario.launch(scenario.load(write(tmp_path, GUEST)))
    try:
        out = io.StringIO()
        live.run(machine, "guest", duration=0.6, every=0.3,
                 console=Console(file=out, force_terminal=True, width=220))
    finally:
        machine.close()
    text = out.getvalue()
    assert "balloon MiB" in text and "guest swap in/out" in text and "8.0" in text


def test_os_disk_dir_and_disk_sizes_that_cannot_be(tmp_path: Path) -> None:
    """[vm.os] takes disk_dir like uvm.guest.boot; a disk too large for its filesystem is
    one line naming vm[0].os.disk (it was an EFBIG traceback)."""
    disks = tmp_path / "disks"
    disks.mkdir()
    text = GUEST.replace("disk_latency = 0.0", f'disk_latency = 0.0\ndisk_dir = "{disks}"')
    spec = scenario.load(write(tmp_path, text))
    assert spec.vms[0].os is not None and spec.vms[0].os.disk_dir == str(disks)
    machine = scenario.launch(spec)
    try:
        gos = machine.vm("guest").os
        assert gos is not None
        assert os.readlink(f"/proc/self/fd/{gos.disk.fd}").startswith(f"{disks}/")
    finally:
        machine.close()
    # beyond the size parser's 1 TiB bound: refused when the file is read; within it but
    # larger than the filesystem: refused at boot, when the disk's space is reserved
    for disk, reason in (("'100TiB'", ".* is too large"), (str(2**63 - 1), ".* is too large"),
                         ("'900GiB'", "a .* virtual disk does not fit in")):
        text = GUEST.replace("disk_latency = 0.0", f"disk_latency = 0.0\ndisk = {disk}")
        with pytest.raises(ScenarioError, match=rf": vm\[0\]\.os\.disk: {reason}"):
            scenario.launch(scenario.load(write(tmp_path, text)))
    text = GUEST.replace("disk_latency = 0.0", "disk_latency = 0.0\ndisk_dir = 3")
    with pytest.raises(ScenarioError, match=r"vm\[0\]\.os\.disk_dir: expected"):
        scenario.load(write(tmp_path, text))
