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
    if len(extents) == 1:  # most grants and releases: no generator for those
        return extents[0][1]
    return sum(e.count for e in extents)
