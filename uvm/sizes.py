"""Parsing of memory sizes as users write them: 64MiB, 1GiB, 4096 (bytes)."""

from __future__ import annotations

import re

PAGE_SIZE = 4096
MAX_SIZE = 1 << 40      # the machine-frame (MPN) address space: no size uvm takes is larger

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, name: str, zero: bool = False, limit: int = MAX_SIZE) -> int:
    """Returns a size in bytes; raises ValueError naming `name` for anything that is not a
    positive size ("-3", "64XB", 0 unless `zero`, True) or is larger than `limit` (default:
    the 1 TiB MPN space, which bounds every memory, swap and disk size uvm can use)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name}: expected a size such as '64MiB' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise ValueError(f"{name}: {value!r} is not a size (write e.g. '64MiB', '1GiB' or a number of bytes)")
        size = int(float(m.group(1)) * _UNITS[unit])
    if size < 0 or (size == 0 and not zero):
        raise ValueError(f"{name}: must be {'>= 0' if zero else 'positive'}, got {value!r}")
    if size > limit:
        raise ValueError(f"{name}: {value!r} is too large (at most {format_size(limit)})")
    return size


def parse_pages(value: object, name: str, zero: bool = False, limit: int = MAX_SIZE) -> int:
    """Returns a size in whole pages (rounded up); raises ValueError if it is under a page
    (and not 0 when `zero` allows it) or over `limit` bytes."""
    size = parse_size(value, name, zero, limit)
    if size < PAGE_SIZE and not (zero and size == 0):
        raise ValueError(f"{name}: {value!r} is smaller than one page ({PAGE_SIZE} bytes)")
    return -(-size // PAGE_SIZE)


def format_size(nbytes: float) -> str:
    """Formats bytes for people: 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
