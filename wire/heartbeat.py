"""The schema of a guest's heartbeat statistics (`status`'s `balloon` map).

The figures are Linux's xen-balloon sysfs files, plus the driver's state: what `hypervisor
list` and `top` show an administrator. A guest is a peer, not a friend, so the hypervisor
stores none of it unchecked: each key has a type and a range, the state is one of the driver
states the protocol document lists, and a map with anything else is refused whole.

Room for driver generations: a generation that reports another figure or state adds it to
`FIELDS` or `DRIVER_STATES` here (and to docs/protocol.md) -- the one place both sides read.
Every key is optional: a driver that has no retry timer simply does not send its figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from wire.errors import ErrorCode, WireError
from wire.extent import PAGE_KIB
from wire.shown import shown

MAX_KIB = (1 << 32) * PAGE_KIB  # 16 TiB: wire.operations.MAX_DOMAIN_PAGES, in KiB
MAX_DELAY_S = 86_400.0  # a retry timer longer than a day is a bug, not a setting
MAX_COUNT = (1 << 63) - 1  # fits a C client's int64

# What the driver says it is doing (guest/balloon.py DriverState).
DRIVER_STATES = frozenset({
    "done",  # at its target
    "retrying",  # still chasing the target: a request, a retry timer or its pace
    "cancelled",  # gave up after max_retry_count; waits for the target to be written again
    "hard-limited",  # the driver before "try harder": stopped at a hard limit below the target
})

# Which Linux driver generation the guest runs (guest/generations.py DriverGeneration).
DRIVER_GENERATIONS = frozenset({"pre-patch", "seed", "3.1", "current"})

Check = Callable[[str, Any], Any]


def _refuse(name: str, expected: str, value: Any) -> WireError:
    return WireError(ErrorCode.EINVAL, f"'{name}': expected {expected}, got {shown(value)}")


def _kib(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_KIB:
        raise _refuse(name, f"an integer number of KiB 0..{MAX_KIB}", value)
    return value


def _kib_or_nil(name: str, value: Any) -> int | None:
    return None if value is None else _kib(name, value)


def _seconds(name: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_DELAY_S:
        raise _refuse(name, f"a number of seconds 0..{MAX_DELAY_S:g}", value)
    return float(value)


def _count(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise _refuse(name, f"an integer 0..{MAX_COUNT}", value)
    return value


def _generation(name: str, value: Any) -> str:
    if type(value) is not str or value not in DRIVER_GENERATIONS:
        raise _refuse(name, "one of " + ", ".join(sorted(DRIVER_GENERATIONS)), value)
    return value


def _state(name: str, value: Any) -> str:
    if type(value) is not str or value not in DRIVER_STATES:
        raise _refuse(name, "one of " + ", ".join(sorted(DRIVER_STATES)), value)
    return value


FIELDS: dict[str, Check] = {
    "target_kb": _kib,  # the target the driver chases
    "current_kb": _kib,  # what the domain holds
    "low_kb": _kib,  # ballooned out: maxmem - current
    "high_kb": _kib,  # ballooned-out highmem (always 0 here)
    "schedule_delay": _seconds,  # what the pending (or next) retry waits (3.1, current only)
    "max_schedule_delay": _seconds,  # the cap of the doubling
    "retry_count": _count,  # consecutive failed steps
    "max_retry_count": _count,  # give up after this many (0: never)
    "state": _state,
    "driver": _generation,  # the generation; seed and pre-patch send no schedule_delay/retry figures
    "hard_limit_kb": _kib_or_nil,  # the driver before "try harder" only; nil otherwise
}


def balloon_stats(name: str, value: Any) -> dict[str, Any]:
    """The checked statistics, a new map; WireError(EINVAL) naming the first bad entry."""
    if type(value) is not dict or len(value) > len(FIELDS):
        raise _refuse(name, f"a map of at most {len(FIELDS)} statistics", value)
    checked: dict[str, Any] = {}
    for key, item in value.items():
        check = FIELDS.get(key) if type(key) is str else None
        if check is None:
            raise WireError(ErrorCode.EINVAL, f"'{name}': unknown statistic {shown(key)}; known: {', '.join(FIELDS)}")
        checked[key] = check(f"{name}.{key}", item)
    return checked
