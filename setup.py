# The C core is built by cffi; everything else is in pyproject.toml. build_py also records
# the git commit the package is built from (uvm/_build.json in the built package, never in
# the source tree), so that an installed uvm can say which commit it is (uvm/record.py).
import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    """Output of a git command in this source tree, or None outside a checkout."""
    try:
        r = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        commit = _git("rev-parse", "HEAD")
        if commit is None:
            return
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        info = {"commit": commit, "dirty": bool(dirty)}
        target = Path(self.build_lib) / "uvm" / "_build.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(info) + "\n")


setup(cffi_modules=["cext/build.py:ffibuilder"], cmdclass={"build_py": BuildPyWithCommit})
