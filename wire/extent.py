"""A run of contiguous 4 KiB pages: the unit pages travel in, on the wire and in every core."""

from __future__ import annotations

from typing import NamedTuple

PAGE_SIZE = 4096
PAGE_KIB = PAGE_SIZE // 1024


class Extent(NamedTuple):
    """`count` pages starting at page frame `start`; on the wire, the pair [start, count]."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


def total_pages(extents: "list[Extent] | tuple[Extent, ...]") -> int:
    return sum(e.count for e in extents)
