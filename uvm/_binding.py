"""The compiled C core (built by cffi from cext/), imported in one place. The raw binding
is untyped (Any): the typed API is machine.py and vm.py."""

from __future__ import annotations

from typing import Any

try:
    import uvm._core as _core
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "uvm's C core (uvm._core) is not built: install the package with `pip install .` "
        f"(cffi and gcc are needed) ({e})"
    ) from e

ffi: Any = _core.ffi
lib: Any = _core.lib

__all__ = ["ffi", "lib"]
