"""Memory sizes as xl writes them: a bare number is KiB; suffixes b, k, m, g, t."""

from __future__ import annotations

import re

from wire.extent import PAGE_SIZE

_NUMBER = re.compile(r"[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30}")
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Return the size in bytes; raise ValueError with a message a user can act on."""
    s = text.strip().lower()
    if s.endswith("ib"):  # accept "MiB", "GiB" too
        s = s[:-2]
    elif s.endswith("b") and len(s) > 1 and s[-2] in "kmgt":  # "MB", "GB"
        s = s[:-1]
    unit = _UNITS["k"]
    if s and s[-1] in _UNITS:
        unit = _UNITS[s[-1]]
        s = s[:-1]
    if _NUMBER.fullmatch(s) is None:  # ASCII digits only: float() would read "١٢" as 12
        raise ValueError(f"invalid size {text!r}: expected a non-negative number in ASCII digits with an optional suffix b, k, m, g or t")
    value = float(s) if "." in s else int(s)
    return int(value * unit)


def size_to_pages(text: str) -> int:
    """A size rounded up to whole 4 KiB pages."""
    return -(-parse_size(text) // PAGE_SIZE)


def pages_to_mib(pages: int) -> int:
    return pages * PAGE_SIZE >> 20
