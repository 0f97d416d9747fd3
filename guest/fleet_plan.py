"""Which guests a fleet starts, each as a `guest run` command line: names, and sizes spread over a
range or read from a file. Pure: the launcher (guest/fleet.py) forks one process per entry.

A fleet is a host population for studying policies, so its variety is deterministic: a range
LO..HI gives guest i of N the size LO + (HI - LO) * i / (N - 1), rounded to whole pages, and
the same command line gives the same host every time.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wire.extent import PAGE_SIZE
from wire.sizes import size_to_pages

MAX_FLEET = 10_000  # guests in one fleet: more than any one machine runs
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,47}")  # a prefix; the index follows
_FLAGS_A_FLEET_SETS = ("--name",)  # per guest, from the plan; a file line names its guest first


class PlanError(ValueError):
    """A fleet that cannot be planned; the message says what to change."""


@dataclass(frozen=True)
class SizeRange:
    """A size, or sizes spread evenly over LO..HI across the fleet, in pages."""

    low_pages: int
    high_pages: int

    @classmethod
    def parse(cls, text: str) -> SizeRange:
        low, dots, high = text.partition("..")
        try:
            lo = size_to_pages(low)
            hi = size_to_pages(high) if dots else lo
        except ValueError as err:
            raise PlanError(str(err)) from None
        if hi < lo:
            raise PlanError(f"range {text!r}: the high end is below the low end")
        return cls(lo, hi)

    def pages_for(self, index: int, count: int) -> int:
        if count <= 1 or self.high_pages == self.low_pages:
            return self.low_pages
        return self.low_pages + round((self.high_pages - self.low_pages) * index / (count - 1))


@dataclass(frozen=True)
class GuestLaunch:
    """One guest of the fleet: its name and its `guest run` arguments (after `run`)."""

    name: str
    argv: tuple[str, ...]


def _size_arg(pages: int) -> str:
    return f"{pages * PAGE_SIZE >> 10}k"


def from_ranges(
    count: int,
    prefix: str,
    memory: SizeRange,
    maxmem: SizeRange | None = None,
    workload: SizeRange | None = None,
    first: int = 1,
    common: Sequence[str] = (),
) -> list[GuestLaunch]:
    """`count` guests named PREFIX<first>..PREFIX<first+count-1>; `common` (flags every guest
    gets, e.g. --speed 10) comes last, so it may not set what the plan sets per guest."""
    if not 1 <= count <= MAX_FLEET:
        raise PlanError(f"--count must be 1..{MAX_FLEET}, got {count}")
    if _NAME.fullmatch(prefix) is None:
        raise PlanError(f"--name-prefix {prefix!r}: letters, digits, _ . - (at most 48), starting with a letter or _")
    _refuse_per_guest_flags(common, "the flags after --")
    launches = []
    for i in range(count):
        name = f"{prefix}{first + i}"
        mem = memory.pages_for(i, count)
        argv = ["--name", name, "--memory", _size_arg(mem)]
        if maxmem is not None:
            top = maxmem.pages_for(i, count)
            if top < mem:
                raise PlanError(f"guest {name}: maxmem {_size_arg(top)} is below its memory {_size_arg(mem)}: raise --maxmem's range")
            argv += ["--maxmem", _size_arg(top)]
        if workload is not None:
            argv += ["--workload", _size_arg(workload.pages_for(i, count))]
        launches.append(GuestLaunch(name, (*argv, *common)))
    return launches


def from_lines(lines: Iterable[str], common: Sequence[str] = (), source: str = "the fleet file") -> list[GuestLaunch]:
    """A fleet file: one guest per line, `NAME FLAGS...` with `guest run`'s flags (shell quoting;
    `#` starts a comment), e.g. `db --memory 600m --maxmem 768m --workload 300m`."""
    _refuse_per_guest_flags(common, "the flags after --")
    launches: list[GuestLaunch] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise PlanError(f"{source} line {number}: {err}") from None
        if not words:
            continue
        name, flags = words[0], words[1:]
        if name.startswith("-"):
            raise PlanError(f"{source} line {number}: a line starts with the guest's name, then its flags")
        if name in seen:
            raise PlanError(f"{source} line {number}: guest {name!r} is named twice")
        _refuse_per_guest_flags(flags, f"{source} line {number}")
        seen.add(name)
        launches.append(GuestLaunch(name, ("--name", name, *flags, *common)))
        if len(launches) > MAX_FLEET:
            raise PlanError(f"{source}: more than {MAX_FLEET} guests")
    if not launches:
        raise PlanError(f"{source} names no guest")
    return launches


def _refuse_per_guest_flags(flags: Sequence[str], where: str) -> None:
    for flag in flags:
        if flag.split("=", 1)[0] in _FLAGS_A_FLEET_SETS:
            raise PlanError(f"{where}: {flag.split('=', 1)[0]} is set per guest by the fleet")
