"""uvm top (esxtop's memory panel), uvm run --wide / --map / --map-every, and the page map's
bytes. The views are driven in a real pseudo-terminal (Python's pty module: no system
package needed), and the assertions are on the text the screen shows."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import uvm_cmd

import uvm
from uvm import pagemap, scenario
from uvm._binding import lib
from uvm.sizes import parse_size
from uvm.timeline import MachineLine, SampleLine, VMLine
from uvm.top import fields

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")
PANEL_FIELDS = ("MEMSZ", "GRANT", "AMIN", "ASHRS", "SZTGT", "TCHD", "MCTLSZ", "MCTLTGT", "SWCUR", "SWTGT",
                "SHRD", "ZERO", "SHRDSVD", "COWH", "OVHD", "PMEM", "PSHARE", "MEMCTL")
DEFAULT_VMS = tuple(vm.name for vm in scenario.default().vms)      # the built-in scenario's


class Terminal:
    """A command running on a pseudo-terminal of rows x cols; `text` is what it printed,
    escape sequences removed. A thread drains the terminal all along, so the command never
    blocks on a full terminal while the test waits for another."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 60, cols: int = 220) -> None:
        import fcntl
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.raw = b""
        self._eof = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="pty-reader", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:                 # EIO: the command exited and closed the terminal
                chunk = b""
            if not chunk:
                self._eof.set()
                return
            self.raw += chunk

    def read(self, timeout: float) -> str:
        """Waits until the command exits and its output is read; fails after timeout s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._eof.wait(0.1) and self.proc.poll() is not None:
                return self.text
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.proc.args} timed out after {timeout} s; screen:\n{self.text[-3000:]}")

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    def wait_for(self, text: str, count: int, timeout: float) -> None:
        """Waits until `text` was printed `count` times; fails after timeout seconds."""
        deadline = time.monotonic() + timeout
        while self.text.count(text) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args}: {text!r} not printed {count} times; "
                                     f"screen:\n{self.text[-3000:]}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        self.read(timeout)
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self._reader.join(timeout=10)
        os.close(self.master)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the commands: a runtime dir of the test's own, so that runs of
    other processes on this machine are not seen, and a colour terminal."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "TERM": "xterm-256color",
            "COLUMNS": "", "LINES": ""}


def _socket_of(runtime: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((runtime / "uvm").glob("run-*.sock")) if (runtime / "uvm").is_dir() else []
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("uvm run made no socket")


def test_top_attaches_to_a_running_run_and_wide_mode_shows_the_panel(env: dict[str, str]) -> None:
    run = Terminal(uvm_cmd("run", "--duration", "120", "--wide"), env)   # ended below
    top = None
    try:
        runtime = Path(env["XDG_RUNTIME_DIR"])
        sock = _socket_of(runtime, 30)
        # private: the directory 0700 and the socket 0600, named after the run's pid
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert sock.name == f"run-{run.proc.pid}.sock"
        listed = subprocess.run(uvm_cmd("top", "--list"), capture_output=True, text=True,
                                timeout=30, env=env)
        assert listed.stdout == f"{run.proc.pid}\t{sock}\n", listed
        top = Terminal(uvm_cmd("top"), env)          # the only run: no PID needed
        top.wait_for("MEMSZ", count=2, timeout=60)  # attached: a panel per sample
        os.kill(run.proc.pid, signal.SIGTERM)         # the run ends (its end line) ...
        assert top.wait(60) == 0, top.text           # ... and so does uvm top
        assert run.wait(60) == 128 + signal.SIGTERM
        assert "(interrupted)" in run.text
        for screen in (top.text, run.text):
            for name in PANEL_FIELDS + DEFAULT_VMS:
                assert name in screen, (name, screen[-2000:])
        assert "uvm top: default_scenario (pid" in top.text
        # a VM's row: its name, then MEMSZ (its configured size) and more numbers
        first = scenario.default().vms[0]
        size = parse_size(first.memory, "memory") / 2**20
        assert re.search(rf"{first.name}\s+{size:.2f}\s+\d+\.\d\d\s+\d+\.\d\d", top.text), \
            top.text[-2000:]
        assert not sock.exists()                      # removed when the run ended
    finally:
        run.close()
        if top is not None:
            top.close()


@pytest.mark.slow
def test_map_shows_each_vms_grid_and_map_every_writes_frames(env: dict[str, str],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "maps"
    timeline = tmp_path / "t.jsonl"
    run = Terminal(uvm_cmd("run", "--duration", "3", "--map", "--map-every", "1",
                           "--map-out", str(out), "--json", str(timeline)), env)
    try:
        assert run.wait(60) == 0
        screen = run.text
    finally:
        run.close()
    for vm in DEFAULT_VMS:
        assert re.search(rf"{vm}: \d+ pages, a cell = \d+ pages? · ", screen), vm
    assert "each cell: the most common state of its pages" in screen
    for state in pagemap.STATES:
        assert f"{state.char} {state.name}" in screen
    # rows of grid characters under the titles
    assert re.search(r"^[.#wsz0~bx]{100,}$", screen, re.M), screen[-2000:]
    frames = sorted(out.glob("pagemap-*.png"))
    assert len(frames) >= 3                          # t = 0, 1, 2 (and maybe 3)
    from PIL import Image

    with Image.open(out / "pagemap.gif") as gif:
        assert gif.n_frames == len(frames)
    # the timeline the run wrote, followed by uvm top --json (no terminal: plain panels)
    r = subprocess.run(uvm_cmd("top", "--json", str(timeline)), capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    samples = sum(1 for line in timeline.read_text().splitlines() if '"type":"sample"' in line)
    assert r.stdout.count("MEMSZ") == samples
    assert all(vm in r.stdout for vm in DEFAULT_VMS)


def test_top_follows_a_timeline_as_it_grows(env: dict[str, str], tmp_path: Path) -> None:
    """--json FILE is tail -f: it waits for lines not yet written, and stops at the end line."""
    lines = _small_timeline(tmp_path).read_text().splitlines(keepends=True)
    grow = tmp_path / "grow.jsonl"
    grow.write_text("".join(lines[:2]))
    proc = subprocess.Popen(uvm_cmd("top", "--json", str(grow)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.0)
        assert proc.poll() is None                    # waiting for more
        with grow.open("a") as f:
            f.write(lines[2][:30])                    # half a line: not read yet
            f.flush()
            time.sleep(0.5)
            f.write("".join(lines[2:])[30:])
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.count("MEMSZ") == sum(1 for line in lines if '"type":"sample"' in line)
    # no memory policy in this scenario: its target and touched estimate cannot be shown
    assert re.search(r"^a\s+4\.00\s+\d+\.\d\d\s+0\.00\s+1000\s+-\s+-\s+-\s+N\s", out, re.M), out


def test_a_narrow_terminal_and_a_log_show_every_column(env: dict[str, str], tmp_path: Path) -> None:
    """On an 80 x 24 terminal the columns wrap into blocks (NAME first in each) instead of
    being cropped after MCTL? (which hid swap and sharing), and the panel fits the screen;
    piped (a log, 160 columns) nothing is cropped either (SHRDSVD, COWH, OVHD were)."""
    timeline = _small_timeline(tmp_path)
    names = [c.name for c in fields.COLUMNS]
    top = Terminal(uvm_cmd("top", "--json", str(timeline), "--once"), env, rows=24, cols=80)
    try:
        assert top.wait(60) == 0, top.text
        screen = top.text.strip("\n").splitlines()
    finally:
        top.close()
    assert len(screen) <= 24 and max(map(len, screen)) <= 80, screen
    shown = {w for line in screen for w in line.split()}
    assert set(names) <= shown, set(names) - shown
    rows = [line for line in screen if line.startswith("a ")]
    assert len(rows) >= 2 and sum(line.startswith("NAME ") for line in screen) == len(rows)
    r = subprocess.run(uvm_cmd("top", "--json", str(timeline), "--once"), capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    logged = {w for line in r.stdout.splitlines() for w in line.split()}
    assert set(names) <= logged, set(names) - logged


def test_wide_map_on_an_80x24_terminal_leaves_rows_to_the_grids(env: dict[str, str]) -> None:
    """`uvm run --wide --map`: the panel above the maps keeps to one block (cropped), so the
    grids still get rows on 80 x 24; wrapped, the panel alone filled the screen."""
    run = Terminal(uvm_cmd("run", "--duration", "2", "--wide", "--map"), env, rows=24, cols=80)
    try:
        assert run.wait(60) == 0, run.text
        screen = run.text
    finally:
        run.close()
    panels = screen.count("MEMSZ")
    assert panels >= 2, screen[-3000:]
    # every frame drawn holds the first VM's grid under the panel
    assert len(re.findall(r"^busy: \d+ pages, a cell = ", screen, re.M)) == panels, screen[-3000:]
    assert re.search(r"^[.#wsz0~bx]{60,}$", screen, re.M), screen[-3000:]


def test_a_run_killed_while_top_is_attached_is_reported(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The socket of a run killed by SIGKILL closes without the end line: uvm top says so
    and exits 1, where it used to exit 0 as if the run had ended normally."""
    import io

    from rich.console import Console

    from uvm.top import client

    lines = _small_timeline(tmp_path).read_text().splitlines(keepends=True)
    assert '"type":"end"' in lines[-1]
    console = Console(file=io.StringIO(), width=200)
    assert client.watch(iter(lines), "pid 1", console) == 0
    assert capsys.readouterr().err == ""
    assert client.watch(iter(lines[:-1]), "pid 1", console) == 1
    err = capsys.readouterr().err
    assert err == "uvm top: tiny (pid 1) stopped before its end line (killed or crashed?)\n", err


def _small_timeline(tmp_path: Path) -> Path:
    """A real timeline of a tiny scenario (two VMs, a second)."""
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('[machine]\nmemory = "8MiB"\n\n[run]\nduration = 1\nevery = 0.25\n\n'
                        '[[vm]]\nname = "a"\nmemory = "4MiB"\n[vm.workload]\nkind = "idle"\n'
                        'touch = "2MiB"\n')
    timeline = tmp_path / "tiny.jsonl"
    r = subprocess.run(uvm_cmd("run", str(scenario), "--json", str(timeline)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return timeline


def test_an_unwritable_map_or_results_directory_is_a_one_line_error(env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """--map-out / --out where no directory can be made (as a student: another user's
    directory; here: under a file, or a name too long) is `uvm: error: ...`, exit 2, where
    both were tracebacks of uvm's own."""
    under_a_file = tmp_path / "file"
    under_a_file.write_text("")
    for args, message in (
            (["run", "--duration", "1", "--map-every", "1", "--map-out", str(under_a_file / "maps")],
             f"uvm: error: --map-out: cannot create the directory '{under_a_file / 'maps'}': Not a directory\n"),
            (["experiment", "side-channel", "--quick", "--out", str(tmp_path / ("x" * 300))],
             f"uvm: error: --out: cannot create the directory '{tmp_path / ('x' * 300)}': File name too long\n")):
        r = subprocess.run(uvm_cmd(*args), capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2 and r.stderr.endswith(message), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["top"], "no running `uvm run` found"),
    (["top", "999999999"], "PID: no uvm run with pid 999999999"),
    (["top", "/etc/passwd"], "PATH: '/etc/passwd' is not a socket"),
    (["top", "1", "--json", "x"], "PID: name a run (PID or PATH) or a timeline"),
    (["top", "--json", "/nonexistent/t.jsonl"], "--json: cannot read"),
])
def test_top_mistakes_are_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    r = subprocess.run(uvm_cmd(*args), capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("uvm: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_top_rejects_a_file_that_is_not_a_timeline(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "sample", "t_s": "soon"}\n')
    r = subprocess.run(uvm_cmd("top", "--json", str(bad)), capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 2 and "line 1 is not a uvm timeline line" in r.stderr, r.stderr


def test_socket_directory_of_another_mode_is_refused(env: dict[str, str]) -> None:
    loose = Path(env["XDG_RUNTIME_DIR"]) / "uvm"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    r = subprocess.run(uvm_cmd("top"), capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2 and "closed to others (mode 0700)" in r.stderr, r.stderr


def test_a_killed_runs_socket_is_named_as_such_and_removed_by_the_next_run(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL leaves a run's socket behind. `uvm top PID` says that run is not running
    (it said 'PATH: cannot attach ... Connection refused'), and the next run removes the
    sockets of dead pids in the user's directory, and only those."""
    import socket as sockets

    from uvm.top import server

    gone = subprocess.Popen(["true"])
    gone.wait()                                 # a pid that no longer exists
    d = Path(env["XDG_RUNTIME_DIR"]) / "uvm"
    d.mkdir(mode=0o700)
    stale, live = d / f"run-{gone.pid}.sock", d / "run-1.sock"      # pid 1 is alive
    for path in (stale, live):
        s = sockets.socket(sockets.AF_UNIX)
        s.bind(str(path))
        s.close()                               # closed, never unlinked: as SIGKILL leaves it
    r = subprocess.run(uvm_cmd("top", str(gone.pid)), capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2 and r.stderr == (
        f"uvm: error: PID: run {gone.pid} is not running (its socket '{stale}' is left from a run "
        f"that was killed; the next uvm run removes it)\n"), r.stderr
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    with server.serving(lambda why: pytest.fail(why)) as serving:
        assert serving is not None
        assert sorted(d.iterdir()) == sorted([live, server.socket_path(os.getpid())])
    assert list(d.iterdir()) == [live]


def test_another_users_socket_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvm top /tmp/uvm-0/run-N.sock` as another user: the 0700 directory refuses it, and
    the message says so, not that the socket is no run's (it is one)."""
    from uvm.top import client

    def denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(client.os, "stat", denied)
    with pytest.raises(ValueError, match=r"^PATH: '/tmp/uvm-0/run-1\.sock': permission denied "
                                         r"\(a run's socket is open to the user who started it only\)$"):
        client.find("/tmp/uvm-0/run-1.sock")


# -- the page map's bytes ------------------------------------------------------------------

PM = {"none": lib.PM_NONE, "resident": lib.PM_RESIDENT, "swapped": lib.PM_SWAPPED,
      "zero": lib.PM_ZERO, "shared": lib.PM_SHARED, "ballooned": lib.PM_BALLOONED}


def test_page_map_bytes_agree_with_page_state_in_every_state(make_machine: Any) -> None:
    m = make_machine("4MiB")
    vm = m.create_vm("a", memory="1MiB")           # 256 pages
    page = 4096
    rnd = os.urandom(40 * page)
    vm.write(0, rnd[:20 * page])                   # 0..19: unique content (resident, hinted)
    vm.write(20 * page, b"S" * page * 4)           # 20..23: identical (shared)
    vm.write(24 * page, bytes(page * 4))           # 24..27: zero (zero-shared)
    vm.write(28 * page, rnd[20 * page:30 * page])  # 28..37: to be swapped
    vm.write(38 * page, bytes(page * 2))           # 38..39: zero, to be evicted (PM_ZERO)
    vm.write(40 * page, rnd[30 * page:40 * page])  # 40..49: to be ballooned
    assert m.share_now() > 0
    for p in (38, 39):
        assert vm.page_state(p) == "shared"
    vm.evict(range(28, 40))
    vm.balloon_pages(range(40, 50))
    watched = vm.watch(range(0, 5))
    assert watched == [0, 1, 2, 3, 4]
    want = {**{p: "sampled" for p in range(0, 5)}, **{p: "resident" for p in range(5, 20)},
            **{p: "shared" for p in range(20, 24)}, **{p: "zero-shared" for p in range(24, 28)},
            **{p: "swapped" for p in range(28, 38)}, **{p: "zero" for p in range(38, 40)},
            **{p: "ballooned" for p in range(40, 50)}, **{p: "never touched" for p in range(50, 256)}}

    raw = vm.page_map()
    assert len(raw) == vm.pages
    names = [pagemap.STATES[i].name for i in pagemap.states(raw)]
    for p in range(vm.pages):
        assert raw[p] & lib.MAP_STATE_MASK == PM[vm.page_state(p)], p
        assert names[p] == want[p], (p, names[p], want[p])
        assert not raw[p] & lib.MAP_STOPPED
    assert pagemap.counts(pagemap.states(raw)) == [
        sum(1 for w in want.values() if w == s.name) for s in pagemap.STATES]
    m.check()

    # a stopped VM: every byte says so, and keeps its state underneath
    m.inject_fault("swap-read", 1)
    with pytest.raises(uvm.VMStopped):
        vm.read(28 * page, 8)
    stopped = vm.page_map()
    assert all(b & lib.MAP_STOPPED for b in stopped)
    assert bytes(b & ~lib.MAP_STOPPED & 0xff for b in stopped) == raw
    assert set(pagemap.states(stopped)) == {pagemap.STOPPED}


def test_hints_and_shared_saved_per_vm(make_machine: Any) -> None:
    """COWH: hints name unshared, scanned pages, per VM, and leave with their VM; SHRDSVD:
    a page on a frame with r sharers saves (r - 1) / r of a frame."""
    m = make_machine("8MiB")
    a = m.create_vm("a", memory="1MiB")
    b = m.create_vm("b", memory="1MiB")
    page = 4096
    a.write(0, os.urandom(12 * page))              # 12 unique pages: 12 hints
    b.write(0, os.urandom(5 * page))               # 5 unique pages: 5 hints
    a.write(20 * page, b"X" * 3 * page)            # X: 3 sharers in a, 1 in b (r = 4)
    b.write(20 * page, b"X" * page)
    a.write(30 * page, bytes(6 * page))            # zero page: 6 sharers in a (r = 6)
    m.share_now()
    sa, sb = a.stats(), b.stats()
    assert (sa["hints"], sb["hints"]) == (12, 5)
    assert m.stats()["hints"] == 17
    # a: 3 * 3/4 + 6 * 5/6 = 7.25 -> 7; b: 1 * 3/4 -> 0
    assert (sa["shared_saved"], sb["shared_saved"]) == (7, 0)
    assert sa["shared_saved"] + sb["shared_saved"] <= m.stats()["saved"]
    m.check()
    m.destroy_vm(a)
    assert m.stats()["hints"] == 5 and b.stats()["hints"] == 5
    m.check()
    c = m.create_vm("c", memory="1MiB")            # may reuse a's slot: starts with none
    assert c.stats()["hints"] == 0
    m.check()


# -- rendering -----------------------------------------------------------------------------

def test_downsample_takes_the_most_common_state_of_each_cell() -> None:
    s = bytes([pagemap.RESIDENT] * 3 + [pagemap.SWAPPED] + [pagemap.SHARED] * 2
              + [pagemap.BALLOONED] * 2 + [pagemap.NEVER])
    cells, k = pagemap.downsample(s, 3)
    assert k == 3
    assert cells == bytes([pagemap.RESIDENT, pagemap.SHARED, pagemap.BALLOONED])
    assert pagemap.downsample(s, 100) == (s, 1)


def test_grid_says_what_a_cell_is_and_counts_every_state() -> None:
    from rich.console import Console

    pages = bytes([pagemap.SWAPPED] * 30 + [pagemap.NEVER] * 70)
    console = Console(width=40, record=True, color_system=None)
    console.print(pagemap.grid(pagemap.VMMap("v", pages), 10, 2))
    text = console.export_text()
    title, *rows = text.splitlines()
    assert title.startswith("v: 100 pages, a cell = 5 pages · ")    # cut to the width
    assert len(title) <= 40
    assert rows == ["~~~~~~....", ".........."]
    wide = Console(width=100, record=True, color_system=None)
    wide.print(pagemap.grid(pagemap.VMMap("v", pages), 10, 2))
    assert "· never touched 70% swapped 30%" in wide.export_text()


def test_fields_from_a_sample() -> None:
    line = SampleLine.model_validate(json.loads(_SAMPLE))
    v = line.vms[0]
    assert fields.grant(v) == 300 + 50
    assert fields.target(v) == 200
    assert fields.touched(v) == pytest.approx(0.5 * 350)
    # swapped 100, above target by 150, the balloon will take 40 more: 110 more to swap
    assert fields.swap_target(v) == 100 + 150 - 40
    assert fields.overhead_bytes(v) == 1024 * 8
    later = line.model_copy(update={"t_s": 3.0, "vms": [v.model_copy(update={"swapins": v.swapins + 512})]})
    assert fields.rates(later, line)["a"].read == pytest.approx(512 * 4096 / 2**20 / 2.0)


def test_touched_estimate_never_exceeds_what_the_vm_holds() -> None:
    """TCHD is f of the memory the VM holds (idle sampling watches random pages of its
    machine memory, and the tax's P is that memory), not of its configured size: a busy VM
    squeezed to a third of its size cannot have touched more than it holds."""
    line = SampleLine.model_validate(json.loads(_SAMPLE))
    v = line.vms[0]
    assert v.policy is not None
    busy = v.model_copy(update={"policy": v.policy.model_copy(update={"active": 1.0})})
    assert fields.touched(busy) == fields.grant(busy) == 350
    assert fields.touched(busy) < busy.size_pages


def _zeros(model: Any) -> dict[str, Any]:
    """Every int field of a timeline model at 0 (a test overrides what it looks at)."""
    return {name: 0 for name, f in model.model_fields.items() if f.annotation is int}


_SAMPLE = json.dumps({
    "type": "sample", "t_s": 1.0,
    "machine": _zeros(MachineLine) | {"compression_ratio": 1.0, "scan_rate_pages_per_s": 0.0,
                                      "state": "soft", "tax_rate": 0.75, "merge_stopped": False,
                                      "frames_total_pages": 1000},
    "vms": [_zeros(VMLine) | {
        "name": "a", "workload": "fill", "status": "running", "stopped": None, "ops_per_s": 1.0,
        "size_pages": 1024, "resident_pages": 300, "swapped_pages": 100, "sharing_pages": 50,
        "ballooned_pages": 20, "balloon_target_pages": 60, "balloon_max_pages": 600,
        "balloon_active": True, "balloon_error": None, "blocked": False, "guest": None,
        "policy": {"target_pages": 200, "allocated_pages": 350, "active": 0.5,
                   "reclaim": "balloon", "host_paged": 0}}],
})


# -- --map-every in experiments ------------------------------------------------------------

def test_every_experiment_opens_its_machines_through_the_trial() -> None:
    """--map-every reaches every experiment: each opens its machines with trial.machine.
    (side-channel's attack runs in uvm.sidechannel, shared with its lab; its savings part,
    the sharing experiment's measure, is drawn.)"""
    import inspect

    from uvm import experiments

    for exp in experiments.REGISTRY.values():
        source = inspect.getsource(inspect.getmodule(exp.run))  # type: ignore[arg-type]
        assert "with Machine(" not in source, exp.name
        assert "trial.machine(" in source or exp.name == "side-channel", exp.name


def test_trial_machine_records_page_maps(tmp_path: Path) -> None:
    from PIL import Image

    from uvm.experiments.base import MapSpec, Trial

    said: list[str] = []
    trial = Trial(quick=True, seed=5, log=said.append, maps=MapSpec(0.2, tmp_path))
    with trial.machine(memory="4MiB") as m:
        vm = m.create_vm("v", memory="1MiB")
        vm.write(0, b"x" * 4096 * 100)
        time.sleep(0.7)
        with trial.machine(memory="4MiB"):
            pass                                  # a second machine: a directory of its own
    first, second = tmp_path / "pagemap" / "5-0", tmp_path / "pagemap" / "5-1"
    frames = sorted(first.glob("pagemap-*.png"))
    assert len(frames) >= 3 and (second / "pagemap-0000.png").exists()
    with Image.open(first / "pagemap.gif") as gif:
        assert gif.n_frames == len(frames)
    with Image.open(frames[-1]) as last:           # the last frame shows v's 100 resident pages
        assert last.mode == "P" and pagemap.RESIDENT in {c for _, c in last.getcolors()}
    assert any("wrote" in line and str(first) in line for line in said)
    no_maps = Trial(quick=True, seed=5, log=said.append)
    with no_maps.machine(memory="4MiB"):
        pass
    assert not (tmp_path / "pagemap" / "5-2").exists()


def test_images_without_pillow_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                 make_machine: Any, tmp_path: Path) -> None:
    import sys

    from uvm.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "PIL", None)   # import PIL fails, as without the package
    m = make_machine("4MiB")
    with pytest.raises(MissingExtra, match=r"pip install 'uvm\[plot\]'"):
        pagemap.MapRecorder(m, tmp_path / "maps", 1.0)
    assert not (tmp_path / "maps").exists()         # nothing written before the check


# -- the socket server ---------------------------------------------------------------------

class _Client:
    """A uvm top client of the server, reading lines (each read bounded by a timeout)."""

    def __init__(self, path: Path) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("r", encoding="utf-8")

    def lines(self, n: int) -> list[dict[str, Any]]:
        return [json.loads(self.file.readline()) for _ in range(n)]


def test_server_gives_late_clients_the_header_and_latest_sample_and_drops_slow_ones(
        tmp_path: Path) -> None:
    from uvm import record
    from uvm.timeline import EndLine, HeaderLine
    from uvm.top.server import SEND_TIMEOUT, TimelineServer

    head = HeaderLine(**record.header(kind="run", name="t", config={}, seed=1).model_dump())
    sample = SampleLine.model_validate(json.loads(_SAMPLE))
    server = TimelineServer(tmp_path / "run-1.sock")
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "run-1.sock").st_mode) == 0o600
        server.send(head)
        server.send(sample.model_copy(update={"t_s": 0.0}))
        slow = _Client(server.path)               # connects, never reads
        early = _Client(server.path)              # accepted after slow (in connect order)
        got = early.lines(2)                      # on accepting: the header, the latest sample
        assert got[0]["type"] == "header" and got[0]["name"] == "t"
        assert got[1]["type"] == "sample" and got[1]["t_s"] == 0.0
        for i in (1, 2):
            server.send(sample.model_copy(update={"t_s": float(i)}))
        assert [d["t_s"] for d in early.lines(2)] == [1.0, 2.0]     # then every line
        late = _Client(server.path)
        assert [d.get("t_s") for d in late.lines(2)] == [None, 2.0]
        # slow fills its socket and is dropped: the run is held up about SEND_TIMEOUT once,
        # not for every line
        start = time.monotonic()
        for i in range(3, 400):
            server.send(sample.model_copy(update={"t_s": float(i)}))
            assert early.lines(1)[0]["t_s"] == late.lines(1)[0]["t_s"] == float(i)
        assert time.monotonic() - start < 10 * SEND_TIMEOUT
        assert _drain(slow.sock) == b""           # what was sent, then EOF: dropped
        server.send(EndLine(duration_s=1.0, partial=False, samples=400))
        assert early.lines(1)[0]["type"] == "end"
    finally:
        server.close()
    assert not (tmp_path / "run-1.sock").exists()
    assert early.file.readline() == ""            # closed by the server


def _drain(s: Any) -> bytes:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return chunk
