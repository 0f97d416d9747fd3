"""Checks for the register fields the controller models take: the IOAPIC's redirection entries
and MSI messages are written from outside, so each field is checked before it is stored."""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

_E = TypeVar("_E", bound=IntEnum)


def check_int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in {lo:#x}..{hi:#x}, got {value!r}")
    return value


def check_flag(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{what} must be a bool, got {value!r}")


def as_enum(enum: type[_E], value: object, what: str) -> _E:
    """Accept an enum member or its integer encoding; name the legal values otherwise."""
    if isinstance(value, enum):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum(value)
        except ValueError:
            pass
    legal = ", ".join(f"{m.name}={m.value}" for m in enum)
    raise ValueError(f"{what} must be one of {legal}; got {value!r}")
