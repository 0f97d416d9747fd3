"""A running guest's control keys: what the toolstack may change in a guest without restarting it.

Like the keys a Xen toolstack writes under a domain's xenstore path (`memory/target` is one),
these live with the domain at the hypervisor, which pushes them to the guest; the guest applies
them to its driver. One table here is read by both sides and by the command line:

    key                  wire value                      command line (`hypervisor guest-set`)
    rate                 number 0..2^32 pages/s (0 = no limit)   rate=500 | rate=0
    stuck                true/false                      stuck=on | stuck=off
    floor_pages          int 0..2^32 (the workload)      floor=180m
    ceiling_pages        int 0..2^32, or nil (none)      ceiling=300m | ceiling=none
    inaccuracy_pages     int 0..2^32                     inaccuracy=4k
    max_schedule_delay   number of seconds (0, 86400]    max_schedule_delay=32
    max_retry_count      int 0..2^63-1 (0 = unlimited)   max_retry_count=4
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from wire.errors import ErrorCode, WireError
from wire.heartbeat import MAX_COUNT, MAX_DELAY_S
from wire.shown import shown
from wire.sizes import size_to_pages

MAX_PAGES = 1 << 32  # wire.operations.MAX_DOMAIN_PAGES (imported there from here would be a cycle)
MAX_RATE = float(1 << 32)  # pages a second: far beyond any host

Check = Callable[[str, Any], Any]


def _refuse(name: str, expected: str, value: Any) -> WireError:
    return WireError(ErrorCode.EINVAL, f"'{name}': expected {expected}, got {shown(value, 60)}")


def _rate(name: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_RATE:
        raise _refuse(name, f"a number of pages a second 0..{MAX_RATE:g} (0: no limit)", value)
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _refuse(name, "true or false", value)
    return value


def _pages(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_PAGES:
        raise _refuse(name, f"an integer number of pages 0..{MAX_PAGES}", value)
    return value


def _pages_or_nil(name: str, value: Any) -> int | None:
    return None if value is None else _pages(name, value)


def _delay(name: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= MAX_DELAY_S:
        raise _refuse(name, f"a number of seconds above 0, at most {MAX_DELAY_S:g}", value)
    return float(value)


def _count(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise _refuse(name, f"an integer 0..{MAX_COUNT} (0: never give up)", value)
    return value


KEYS: dict[str, Check] = {
    "rate": _rate,
    "stuck": _flag,
    "floor_pages": _pages,
    "ceiling_pages": _pages_or_nil,
    "inaccuracy_pages": _pages,
    "max_schedule_delay": _delay,
    "max_retry_count": _count,
}


def control_keys(name: str, value: Any) -> dict[str, Any]:
    """The `keys` of a `guest_set`: a map of 1..len(KEYS) known keys, each of its kind."""
    if type(value) is not dict or not 1 <= len(value) <= len(KEYS):
        raise _refuse(name, f"a map of 1..{len(KEYS)} control keys ({', '.join(KEYS)})", value)
    unknown = [key for key in value if key not in KEYS]
    if unknown:
        raise WireError(ErrorCode.EINVAL, f"'{name}': unknown key(s) {shown(unknown, 60)}; known: {', '.join(KEYS)}")
    return {key: KEYS[key](f"{name}.{key}", item) for key, item in value.items()}


# --- as people write them: the command line and scenario files ---------------------------------

# human name -> wire key; sizes are xl-style (a bare number is KiB)
HUMAN = {
    "rate": "rate",
    "stuck": "stuck",
    "floor": "floor_pages",
    "ceiling": "ceiling_pages",
    "inaccuracy": "inaccuracy_pages",
    "max_schedule_delay": "max_schedule_delay",
    "max_retry_count": "max_retry_count",
}
_ON, _OFF = {"on", "true", "yes", "1"}, {"off", "false", "no", "0"}


def from_human(key: str, value: str | bool | int | float) -> tuple[str, Any]:
    """(wire key, wire value) from a key as people write it; ValueError saying what was wanted.

    `value` is text from a command line, or the typed value of a scenario file (a TOML bool,
    number or size string)."""
    if key not in HUMAN:
        raise ValueError(f"unknown key {key!r}: expected one of {', '.join(HUMAN)}")
    wire = HUMAN[key]
    try:
        if wire == "stuck":
            if isinstance(value, bool):
                return wire, value
            if isinstance(value, str) and value.lower() in _ON | _OFF:
                return wire, value.lower() in _ON
            raise ValueError("expected on or off")
        if wire in ("floor_pages", "ceiling_pages", "inaccuracy_pages"):
            if wire == "ceiling_pages" and value == "none":
                return wire, None
            if not isinstance(value, str):
                raise ValueError("expected a size such as 180m (a bare number is KiB)" + (" or none" if wire == "ceiling_pages" else ""))
            return wire, KEYS[wire](key, size_to_pages(value))
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = value if isinstance(value, (int, float)) else _number(value)
        if wire == "max_retry_count":
            if not isinstance(number, int):
                raise ValueError("expected a whole number")
            return wire, _count(key, number)
        return wire, KEYS[wire](key, number)
    except WireError as err:
        raise ValueError(err.message) from None
    except ValueError as err:
        raise ValueError(f"{key}={value!r}: {err}") from None


def _number(text: str) -> int | float:
    """ASCII digits only (float() would read other scripts' digits)."""
    if not text.isascii():
        raise ValueError("expected a number in ASCII digits")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


def parse_assignments(texts: list[str]) -> dict[str, Any]:
    """`key=value ...` from a command line, as a `guest_set`'s `keys`; ValueError on the first bad one."""
    keys: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not value:
            raise ValueError(f"{text!r}: expected KEY=VALUE (keys: {', '.join(HUMAN)})")
        wire, checked = from_human(key.strip(), value.strip())
        keys[wire] = checked
    if not keys:
        raise ValueError(f"nothing to set (keys: {', '.join(HUMAN)})")
    return keys
