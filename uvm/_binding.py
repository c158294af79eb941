"""The compiled C core (built by cffi from cext/), imported in one place."""

from __future__ import annotations

from typing import Any

try:
    from uvm._core import ffi, lib
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "uvm's C core (uvm._core) is not built: install the package with `pip install .` "
        f"(cffi and gcc are needed) ({e})"
    ) from e

ffi: Any
lib: Any

__all__ = ["ffi", "lib"]
