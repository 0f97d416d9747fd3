"""The host's page pool: which page frames are free and which domain owns each of the others.

Sans-I/O core (DESIGN.md principle 1): plain Python, no sockets, threads or clock. The books
must always balance (principle 4): free pages + every domain's pages = total pages, and every
page is free or owned by exactly one domain. `audit()` re-checks that independently.

Everything is kept as extents (runs of contiguous pages), never per page, so a 1 TiB host
(2**28 pages) costs memory in proportion to its fragmentation, not its size. Each owner's
holdings are sorted arrays of starts and counts (`_Holdings`), so "does this owner hold all
of [start, start+count)?" is one bisect. Free space (`_FreeSpace`) is hashed
by start and by end, for O(1) merging, and filed by power-of-two size class, for a good-fit
allocation that hands out one extent per grant while any free extent is big enough.
Extents are kept maximal everywhere: neighbours merge.
"""

from __future__ import annotations

import enum
import operator
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from functools import partial

from wire.extent import Extent

__all__ = ["MAX_PAGES", "PagePool", "PoolError", "PoolErrorReason"]

MAX_PAGES = 2**62  # holdings are arrays of signed 64-bit ints; 2**62 pages is 16 EiB

# Extent((start, count)) without the Python-level __new__ of a NamedTuple: half the cost.
_extent = partial(tuple.__new__, Extent)


class PoolErrorReason(enum.Enum):
    """Why a release was refused. The hypervisor maps NOT_OWNED to EPERM, the rest to EINVAL."""

    MALFORMED = "malformed"  # not a (start, count) pair of ints, or count <= 0
    OUT_OF_RANGE = "out of range"  # start < 0 or start + count > total pages
    OVERLAPPING = "overlapping"  # two extents of the same request share pages
    NOT_OWNED = "not owned"  # some page is free or belongs to another domain


class PoolError(Exception):
    """A refused request. Raised before any state is touched, so the pool is unchanged."""

    def __init__(self, reason: PoolErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _FreeSpace:
    """Free extents, indexed for O(1) merging and fast good-fit allocation.

    Free space can fragment into hundreds of thousands of holes, so it keeps no sorted
    list (inserting into one would memmove megabytes). Instead: `by_start` start -> count
    and `by_end` end -> start find the neighbours a freed run merges with, and
    `classes[k]` holds the starts of extents whose count has bit_length k + 1 (sizes
    2**k .. 2**(k+1) - 1), with bit k of `mask` set while that class is non-empty.
    Extents are kept maximal: no two free extents touch.
    """

    __slots__ = ("by_start", "by_end", "classes", "mask", "pages")

    def __init__(self, total: int) -> None:
        self.by_start: dict[int, int] = {}
        self.by_end: dict[int, int] = {}
        self.classes: list[set[int]] = [set() for _ in range(max(total.bit_length(), 1))]
        self.mask = 0
        self.pages = 0

    def __len__(self) -> int:
        return len(self.by_start)

    def extents(self) -> list[Extent]:
        return [_extent(e) for e in sorted(self.by_start.items())]

    def _file(self, start: int, count: int) -> None:
        k = count.bit_length() - 1
        self.classes[k].add(start)
        self.mask |= 1 << k

    def _unfile(self, start: int, count: int) -> None:
        k = count.bit_length() - 1
        members = self.classes[k]
        members.discard(start)  # discard: take() may have popped it already
        if not members:
            self.mask &= ~(1 << k)

    def add(self, start: int, count: int) -> None:
        """Free a run that is not free yet, merging it with free runs on either side."""
        by_start, by_end = self.by_start, self.by_end
        self.pages += count
        end = start + count
        right = by_start.pop(end, None)
        if right is not None:
            self._unfile(end, right)
            del by_end[end + right]
            end += right
        left = by_end.pop(start, None)
        if left is not None:
            self._unfile(left, by_start[left])
            start = left
        by_start[start] = end - start
        by_end[end] = start
        self._file(start, end - start)

    def take(self, count: int) -> list[Extent]:
        """Remove up to `count` pages and return them as extents, ascending.

        Good fit: the top of an extent from the smallest size class whose every member
        holds `count` pages, so a grant is one extent and big runs are kept for big
        requests. Only when no such class is populated (the pool is short or badly
        fragmented) does it gather several extents, largest classes first.
        """
        k = count.bit_length() - 1
        if count & (count - 1):
            k += 1  # not a power of two: class k - 1 may hold extents that are too small
        fits = self.mask >> k
        if fits:
            return [self._take_from_class(k + (fits & -fits).bit_length() - 1, count)]
        taken: list[Extent] = []
        while count and self.mask:
            piece = self._take_from_class(self.mask.bit_length() - 1, count)
            taken.append(piece)
            count -= piece.count
        taken.sort()
        return taken

    def _take_from_class(self, k: int, want: int) -> Extent:
        # set.pop resumes where the last pop left off: O(1) amortized, unlike next(iter(s))
        return self._take_top_of(self.classes[k].pop(), want)

    def _take_top_of(self, start: int, want: int) -> Extent:
        """Take up to `want` pages from the top end of the free extent at `start`."""
        count = self.by_start[start]
        self._unfile(start, count)
        end = start + count
        del self.by_end[end]
        if want >= count:
            del self.by_start[start]
            want = count
        else:
            left = count - want
            self.by_start[start] = left
            self.by_end[start + left] = start
            self._file(start, left)
        self.pages -= want
        return _extent((end - want, want))


class _Holdings:
    """One owner's extents in address order, as two parallel arrays of machine ints.

    Sorted so that ownership of a run is one bisect, and kept maximal (neighbours merged)
    so that "wholly owned" means "inside one extent". Arrays rather than lists and dicts:
    16 bytes an extent, contiguous, so a bisect does not chase a pointer per probe.
    Callers guarantee disjointness on `add` and containment on `remove`.
    """

    __slots__ = ("starts", "counts", "pages")

    def __init__(self) -> None:
        self.starts = array("q")
        self.counts = array("q")
        self.pages = 0

    def __len__(self) -> int:
        return len(self.starts)

    def extents(self) -> list[Extent]:
        return list(map(_extent, zip(self.starts, self.counts)))

    def covers(self, start: int, count: int) -> bool:
        """True if [start, start+count) lies inside one extent (so wholly inside the set)."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and start + count <= self.starts[i] + self.counts[i]

    def overlap(self, start: int, count: int) -> int:
        """How many pages of [start, start+count) the set holds (used for error messages)."""
        starts, counts, end = self.starts, self.counts, start + count
        i = max(bisect_right(starts, start) - 1, 0)
        total = 0
        while i < len(starts) and starts[i] < end:
            total += max(0, min(end, starts[i] + counts[i]) - max(start, starts[i]))
            i += 1
        return total

    def add(self, start: int, count: int) -> None:
        """Insert a run disjoint from the set, merging with neighbours to stay maximal."""
        starts, counts = self.starts, self.counts
        i = bisect_left(starts, start)
        joins_next = i < len(starts) and starts[i] == start + count
        if i > 0 and starts[i - 1] + counts[i - 1] == start:
            if joins_next:
                counts[i - 1] += count + counts[i]
                del starts[i], counts[i]
            else:
                counts[i - 1] += count
        elif joins_next:
            starts[i] = start
            counts[i] += count
        else:
            starts.insert(i, start)
            counts.insert(i, count)
        self.pages += count

    def remove(self, start: int, count: int) -> None:
        """Cut out a run lying inside one extent, splitting that extent if needed."""
        starts, counts = self.starts, self.counts
        i = bisect_right(starts, start) - 1
        s = starts[i]
        e = s + counts[i]
        end = start + count
        if s == start:
            if end == e:
                del starts[i], counts[i]
            else:
                starts[i] = end
                counts[i] = e - end
        else:
            counts[i] = start - s
            if end < e:
                starts.insert(i + 1, end)
                counts.insert(i + 1, e - end)
        self.pages -= count

    def top(self, max_pages: int) -> list[Extent]:
        """The highest-addressed pages, up to `max_pages`, ascending; the set is unchanged."""
        starts, counts = self.starts, self.counts
        out: list[Extent] = []
        i = len(starts) - 1
        while max_pages > 0 and i >= 0:
            s, c = starts[i], counts[i]
            if c >= max_pages:
                out.append(_extent((s + c - max_pages, max_pages)))
                break
            out.append(_extent((s, c)))
            max_pages -= c
            i -= 1
        out.reverse()
        return out


def _as_int(value: object) -> int | None:
    """An int from anything integral except bool (True is not a page count); else None."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


class PagePool:
    """All page frames of one host: free space plus each owner's (domid's) holdings."""

    def __init__(self, total_pages: int) -> None:
        total = _as_int(total_pages)
        if total is None or not 0 <= total <= MAX_PAGES:
            raise ValueError(f"total_pages must be an int in 0..2**62, not {total_pages!r}")
        self._total = total
        self._free = _FreeSpace(total)
        if total:
            self._free.add(0, total)
        self._owned: dict[int, _Holdings] = {}
        self._allocated = 0

    # -- queries -----------------------------------------------------------------------------

    @property
    def total_pages(self) -> int:
        return self._total

    @property
    def free_pages(self) -> int:
        return self._free.pages

    @property
    def allocated_pages(self) -> int:
        return self._allocated

    @property
    def free_extent_count(self) -> int:
        """How fragmented free space is (1 when nothing is allocated)."""
        return len(self._free)

    def free_extents(self) -> list[Extent]:
        """Free space, sorted. O(E log E): for inspection, not for hot paths."""
        return self._free.extents()

    def owned_pages(self, owner: int) -> int:
        held = self._owned.get(owner)
        return held.pages if held is not None else 0

    def owned_extent_count(self, owner: int) -> int:
        held = self._owned.get(owner)
        return len(held) if held is not None else 0

    def extents_of(self, owner: int) -> list[Extent]:
        """The owner's holdings, sorted and maximal (adjacent runs merged)."""
        held = self._owned.get(owner)
        return held.extents() if held is not None else []

    def highest_extents(self, owner: int, max_pages: int) -> list[Extent]:
        """The owner's highest-addressed pages, up to `max_pages`, ascending; read-only.

        Costs only the extents returned, for a driver that gives back some of its pages
        without listing all of its holdings.
        """
        held = self._owned.get(owner)
        return held.top(max_pages) if held is not None else []

    def owners(self) -> list[int]:
        """Owners holding at least one page, sorted."""
        return sorted(self._owned)

    # -- operations --------------------------------------------------------------------------

    def allocate(self, owner: int, count: int) -> list[Extent]:
        """Give `owner` up to `count` pages; fewer (or none) when the pool is short.

        A short grant is normal (Xen's increase_reservation grants what it can and the
        balloon driver keeps it), so it is not an error. Returns only the new extents,
        usually one (see _FreeSpace.take).
        """
        if type(count) is not int:
            n = _as_int(count)
            if n is None:
                raise TypeError(f"count must be an int, not {count!r}")
            count = n
        if count <= 0 or not self._free.pages:
            return []
        taken = self._free.take(count)
        held = self._owned.get(owner)
        if held is None:
            held = self._owned[owner] = _Holdings()
        for start, c in taken:
            held.add(start, c)
            self._allocated += c
        return taken

    def release(self, owner: int, extents: Iterable[tuple[int, int]]) -> int:
        """Give back `extents` of `owner`'s pages; return how many pages were released.

        All or nothing: every extent is validated before anything changes, and the first
        problem raises PoolError with the pool untouched. Part of an owned extent may be
        given back (it is split). Freed runs merge with neighbouring free space.
        """
        request = self._validate(extents)
        if not request:
            return 0
        held = self._owned.get(owner)
        for start, count in request:
            if held is None or not held.covers(start, count):
                raise PoolError(PoolErrorReason.NOT_OWNED, self._not_owned_message(owner, start, count))
        assert held is not None
        free = self._free
        released = 0
        for start, count in request:
            held.remove(start, count)
            free.add(start, count)
            released += count
        self._allocated -= released
        if not held.pages:
            del self._owned[owner]
        return released

    def release_all(self, owner: int) -> int:
        """Return every page of `owner` to the pool (the domain was destroyed)."""
        held = self._owned.pop(owner, None)
        if held is None:
            return 0
        free = self._free
        for s, c in zip(held.starts, held.counts):
            free.add(s, c)
        self._allocated -= held.pages
        return held.pages

    # -- validation --------------------------------------------------------------------------

    def _validate(self, extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Shape, range and self-overlap checks, independent of who owns what."""
        if isinstance(extents, (str, bytes)):
            raise PoolError(PoolErrorReason.MALFORMED, f"extents must be a list of [start, count] pairs, not {extents!r}")
        try:
            items = extents if type(extents) in (list, tuple) else list(extents)
        except TypeError:
            raise PoolError(
                PoolErrorReason.MALFORMED, f"extents must be a list of [start, count] pairs, not {extents!r}"
            ) from None
        request: list[tuple[int, int]] = []
        total = self._total
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise PoolError(PoolErrorReason.MALFORMED, f"extent {item!r} is not a [start, count] pair")
            start, count = item
            if type(start) is not int or type(count) is not int:
                start, count = _as_int(start), _as_int(count)
                if start is None or count is None:
                    raise PoolError(PoolErrorReason.MALFORMED, f"extent {item!r}: start and count must be ints")
            if count <= 0:
                raise PoolError(PoolErrorReason.MALFORMED, f"extent [start={start}, count={count}]: count must be positive")
            if start < 0 or start + count > total:
                raise PoolError(
                    PoolErrorReason.OUT_OF_RANGE,
                    f"extent [start={start}, count={count}] is outside the pool (pages 0 to {total - 1})",
                )
            request.append((start, count))
        if len(request) > 1:
            ordered = sorted(request)
            for (a, n), (b, m) in zip(ordered, ordered[1:]):
                if b < a + n:
                    raise PoolError(
                        PoolErrorReason.OVERLAPPING,
                        f"extents [start={a}, count={n}] and [start={b}, count={m}] of the same request overlap",
                    )
        return request

    def _not_owned_message(self, owner: int, start: int, count: int) -> str:
        """Say how much of the extent the owner does hold, so the refusal can be acted on.

        Free space keeps no address order (see _FreeSpace), so the rest is not split into
        free and other domains' pages: that would cost a scan of every extent.
        """
        held = self._owned.get(owner)
        mine = held.overlap(start, count) if held is not None else 0
        return (
            f"domain {owner} does not own all of extent [start={start}, count={count}]: "
            f"{mine} of its {count} pages are domain {owner}'s, {count - mine} are free or another domain's"
        )

    # -- audit -------------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Re-check the books from the raw extents; return the problems (empty = balanced).

        Recomputes every sum and index rather than trusting cached counters, and checks
        across owners and free space that no page is claimed twice and none is lost.
        O(E log E) for E extents.
        """
        problems: list[str] = []
        tagged: list[tuple[int, int, str]] = []  # (start, count, who) for every extent
        problems += self._audit_free(tagged)
        owned_sum = 0
        for owner in sorted(self._owned):
            held, name = self._owned[owner], f"domain {owner}"
            if len(held.starts) != len(held.counts):
                problems.append(f"{name}: {len(held.starts)} starts but {len(held.counts)} counts")
            pages = 0
            prev_end = None
            for s, c in zip(held.starts, held.counts):
                if not self._sane(name, s, c, problems):
                    continue
                if prev_end is not None:
                    if s < prev_end:
                        problems.append(f"{name}: extent at {s} is unsorted or overlaps the previous one (ends {prev_end})")
                    elif s == prev_end:
                        problems.append(f"{name}: extents meeting at {s} are not merged")
                prev_end = s + c
                pages += c
                tagged.append((s, c, name))
            if pages != held.pages:
                problems.append(f"{name}: cached page count {held.pages} != recomputed {pages}")
            if not pages:
                problems.append(f"{name}: holds no pages but is still listed as an owner")
            owned_sum += pages
        if owned_sum != self._allocated:
            problems.append(f"cached allocated_pages {self._allocated} != recomputed {owned_sum}")
        tagged.sort()
        covered = 0
        reach: tuple[int, int, str] | None = None  # the extent reaching furthest so far
        for s, c, name in tagged:
            if reach is not None and s < reach[0] + reach[1]:
                problems.append(
                    f"pages from {s} are claimed twice: by {reach[2]} [start={reach[0]}, count={reach[1]}]"
                    f" and by {name} [start={s}, count={c}]"
                )
            covered += c
            if reach is None or s + c > reach[0] + reach[1]:
                reach = (s, c, name)
        if covered != self._total:
            problems.append(f"free + owned = {covered} pages, but the pool has {self._total}")
        return problems

    def _sane(self, name: str, start: object, count: object, problems: list[str]) -> bool:
        """One extent on its own: int fields, positive count, inside the pool."""
        if type(start) is not int or type(count) is not int or count <= 0:
            problems.append(f"{name}: extent at {start!r} has bad count {count!r}")
            return False
        if start < 0 or start + count > self._total:
            problems.append(f"{name}: extent [start={start}, count={count}] out of range 0..{self._total}")
        return True

    def _audit_free(self, tagged: list[tuple[int, int, str]]) -> list[str]:
        """Free space: both maps and the size-class index agree, extents are maximal."""
        free, problems = self._free, []
        pages = 0
        filed: dict[int, int] = {}  # start -> class it should be filed under
        for s, c in free.by_start.items():
            if not self._sane("free", s, c, problems):
                continue
            if free.by_end.get(s + c) != s:
                problems.append(f"free: extent [start={s}, count={c}] missing from the end map")
            if (s + c) in free.by_start:
                problems.append(f"free: extents meeting at {s + c} are not merged")
            pages += c
            filed[s] = c.bit_length() - 1
            tagged.append((s, c, "free"))
        if len(free.by_end) != len(free.by_start):
            problems.append(f"free: end map has {len(free.by_end)} entries, start map {len(free.by_start)}")
        mask = 0
        for k, members in enumerate(free.classes):
            if members:
                mask |= 1 << k
            for s in members:
                if filed.pop(s, None) != k:
                    problems.append(f"free: start {s} wrongly filed in size class {k}")
        for s, k in filed.items():
            problems.append(f"free: extent at {s} missing from size class {k}")
        if mask != free.mask:
            problems.append(f"free: class mask {free.mask:#x} != recomputed {mask:#x}")
        if pages != free.pages:
            problems.append(f"free: cached page count {free.pages} != recomputed {pages}")
        return problems
