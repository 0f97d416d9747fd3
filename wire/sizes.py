"""Memory sizes as xl writes them: a bare number is KiB; suffixes b, k, m, g, t."""

from __future__ import annotations

from wire.extent import PAGE_SIZE

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
    try:
        value = float(s) if "." in s else int(s)
    except ValueError:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional suffix b, k, m, g or t") from None
    if value < 0:
        raise ValueError(f"invalid size {text!r}: must not be negative")
    return int(value * unit)


def size_to_pages(text: str) -> int:
    """A size rounded up to whole 4 KiB pages."""
    return -(-parse_size(text) // PAGE_SIZE)


def pages_to_mib(pages: int) -> int:
    return pages * PAGE_SIZE >> 20
