"""Unprivileged use: with UFFD_USER_MODE_ONLY (what any user may have), uvm behaves the
same, because nothing ever makes a syscall touch guest memory. UVM_UFFD_USER_MODE=1 makes
uvm take that path even as root; the check runs in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import uvm
    from uvm.workloads import Fill, Verify
    with uvm.Machine(memory="2MiB", swap_dir=DIR, sharing=True) as m:
        assert m.user_mode, "expected user-mode-only userfaultfd"
        a, b = m.create_vm("a", memory="3MiB"), m.create_vm("b", memory="3MiB")
        for vm in (a, b):
            vm.run(Fill(seed=5)).join(60)       # identical content: shareable; 6 MiB on 2 MiB
        merged = m.share_now() + m.share_now()
        for vm in (a, b):
            vm.run(Verify(seed=5)).join(60)
        a.write(0, b"written after sharing")
        assert a.read(0, 21) == b"written after sharing" and b.read(0, 4) != b"writ"
        st = m.stats()
        assert st["swapouts"] > 0 and st["swapins"] > 0, st
        m.check()
        print("ok", merged, st["swapins"])
""")


def test_same_behaviour_in_user_mode_only(tmp_path: Path) -> None:
    env = dict(os.environ, UVM_UFFD_USER_MODE="1")
    out = subprocess.run([sys.executable, "-c", CHILD.replace("DIR", repr(str(tmp_path)))],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
