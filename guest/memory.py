"""The guest's populated pages, as the balloon driver sees them.

`GuestMemory` holds the page frames the hypervisor has granted this guest, as a list of
extents in the order they were granted (contiguous neighbours merge), plus `workload_pages`:
the pages the guest's own kernel and processes are using. Those cannot be ballooned out —
Linux's balloon driver gets them only by `alloc_page()`, which fails when the guest is out of
free memory; squeezed calls the same quantity a guest's "hidden floor". `kernel_floor_pages`
is what the guest's kernel keeps however idle it is (guest/floor.py): the driver can take
pages only above max(workload, kernel floor) -- the workload counts the kernel's own use too.

Ballooning down takes the most recently granted pages first (LIFO), splitting an extent when
only part of it is needed, as Linux's balloon hands back the pages it populated last.
"""

from __future__ import annotations

from collections.abc import Iterable

from wire.extent import Extent, total_pages


def checked_extents(extents: Iterable[Extent]) -> list[Extent]:
    """`extents` as a list of Extent, or ValueError if any is not [start >= 0, count >= 1]."""
    out = []
    for e in extents:
        try:
            start, count = e
        except (TypeError, ValueError):
            raise ValueError(f"extent {e!r}: expected a (start, count) pair") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count)):
            raise ValueError(f"extent {e!r}: start and count must be integers")
        if start < 0 or count < 1:
            raise ValueError(f"extent {e!r}: need start >= 0 and count >= 1")
        out.append(Extent(start, count))
    return out


class GuestMemory:
    def __init__(self, extents: Iterable[Extent] = (), workload_pages: int = 0, kernel_floor_pages: int = 0) -> None:
        self._extents: list[Extent] = []
        self._pages = 0
        self.workload_pages = workload_pages
        if not isinstance(kernel_floor_pages, int) or isinstance(kernel_floor_pages, bool) or kernel_floor_pages < 0:
            raise ValueError(f"kernel_floor_pages must be an integer >= 0, not {kernel_floor_pages!r}")
        self.kernel_floor_pages = kernel_floor_pages
        self.add(extents)

    # -- what the guest holds ----------------------------------------------------------------

    @property
    def workload_pages(self) -> int:
        """Pages the guest itself is using; they can never be ballooned out."""
        return self._workload

    @workload_pages.setter
    def workload_pages(self, pages: int) -> None:
        if not isinstance(pages, int) or isinstance(pages, bool) or pages < 0:
            raise ValueError(f"workload_pages must be an integer >= 0, not {pages!r}")
        self._workload = pages

    @property
    def current_pages(self) -> int:
        return self._pages

    @property
    def freeable_pages(self) -> int:
        """Pages the driver could balloon out right now (the rest is the workload or the kernel's)."""
        return max(0, self._pages - max(self._workload, self.kernel_floor_pages))

    @property
    def extents(self) -> list[Extent]:
        """A copy of the held extents, oldest grant first."""
        return list(self._extents)

    # -- changes -----------------------------------------------------------------------------

    def add(self, extents: Iterable[Extent]) -> None:
        """Record newly granted pages (the newest end of the list). Validated before any change."""
        new = checked_extents(extents)
        for e in new:
            self._append(e)
        self._pages += total_pages(new)

    def take(self, n: int) -> list[Extent]:
        """Remove up to min(n, freeable_pages) pages, newest first; return them oldest first.

        The returned list, handed to `put_back`, restores the exact previous state.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"take: n must be an integer >= 0, not {n!r}")
        want = min(n, self.freeable_pages)
        taken: list[Extent] = []
        while want > 0:
            last = self._extents[-1]
            if last.count <= want:
                self._extents.pop()
                piece = last
            else:
                keep = last.count - want
                self._extents[-1] = Extent(last.start, keep)
                piece = Extent(last.start + keep, want)
            taken.append(piece)
            want -= piece.count
            self._pages -= piece.count
        taken.reverse()
        return taken

    def put_back(self, extents: Iterable[Extent]) -> None:
        """Undo a `take` whose pages were not given away after all."""
        self.add(extents)

    def _append(self, e: Extent) -> None:
        if self._extents and self._extents[-1].end == e.start:
            last = self._extents[-1]
            self._extents[-1] = Extent(last.start, last.count + e.count)
        else:
            self._extents.append(e)

    def __repr__(self) -> str:
        return f"GuestMemory(current={self._pages}, workload={self._workload}, extents={len(self._extents)})"
