"""The host's page pool: which page frames are free and which domain owns each of the others.

Sans-I/O core (DESIGN.md principle 1): plain Python, no sockets, threads or clock. The books
must always balance (principle 4): free pages + every domain's pages = total pages, and every
page is free or owned by exactly one domain. `audit()` re-checks that from the raw extents,
trusting no cached counter and none of the placement hints below.

Everything is kept as extents (runs of contiguous pages), never per page, so a 1 TiB host
(2**28 pages) costs memory in proportion to its fragmentation, not its size. Each owner's
holdings are sorted lists of starts and counts (`_Holdings`), so "does this owner hold all
of [start, start+count)?" is one bisect. Free space (`_FreeSpace`) is hashed by start and
by end, for O(1) merging, and filed by power-of-two size class, for a good-fit allocation
that hands out one extent per grant while any free extent is big enough. Extents are kept
maximal everywhere: neighbours merge.

Where a grant goes decides how fragmented the pool gets, and so how big and slow it gets.
Balloon drivers give back the pages they were granted last (guest/memory.py), so each owner
grows upward from a *frontier*, the page after its newest grant: a grant takes the bottom of
the free run starting there, and a release of the newest pages merges straight back into
that run. An owner's holdings then stay one extent or a few, and free space a run or two per
owner, however long the traffic goes on. Pages given back below the frontier leave holes,
which the owner's next grants refill first. A new owner is placed by good fit; an owner
whose frontier is blocked gets a new region in the middle of a largest free run, with room
to grow above it (`_place`).

That balloon step, both ways, is most of the traffic, so `allocate` and `_give_back` do it
inline, in a few dict and set operations, and hand everything else to the general code
(`_place`, `_FreeSpace.add`...). So is a guest bouncing just above the size it booted with:
its first grant is a new region (its boot extent is blocked above), which it gives back
whole, so `allocate` carves regions inline too and `_give_back` drops a whole extent without
the general split. Every release is validated in full before anything
changes; a one-pair request gets a quicker check that falls back to the general one, which
is the one that explains refusals.
"""

from __future__ import annotations

import enum
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from functools import partial

from wire.extent import Extent

__all__ = ["MAX_PAGES", "PagePool", "PoolError", "PoolErrorReason"]

MAX_PAGES = 2**62  # 16 EiB of 4 KiB pages: far beyond any host, a bound callers can rely on

# Extents without the Python-level __new__ of a NamedTuple (half the cost): _extent((s, c))
# where a callable is handy (map), _new_tuple(Extent, (s, c)), a little faster, in hot paths.
_extent = partial(tuple.__new__, Extent)
_new_tuple = tuple.__new__


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

    def _refile(self, old_start: int, old_count: int, start: int, count: int) -> None:
        """A run moved or changed size; usually it stays in its class, so the mask stays."""
        k = old_count.bit_length() - 1
        members = self.classes[k]
        members.discard(old_start)
        if count >> k == 1:  # 2**k <= count < 2**(k+1): same class
            members.add(start)
        else:
            if not members:
                self.mask &= ~(1 << k)
            self._file(start, count)

    def add(self, start: int, count: int) -> int:
        """Free a run that is not free yet, merging it with free runs on either side.

        Returns the start of the merged free run, where the owner may grow back.
        """
        by_start, by_end = self.by_start, self.by_end
        self.pages += count
        end = start + count
        right = by_start.pop(end, None)
        left = by_end.pop(start, None)
        if left is None:
            if right is None:
                by_start[start] = count
                by_end[end] = start
                self._file(start, count)
            else:  # the run above grows down (a balloon driver giving back its newest pages)
                by_start[start] = right + count
                by_end[end + right] = start
                self._refile(end, right, start, right + count)
            return start
        left_count = by_start[left]
        if right is not None:
            self._unfile(end, right)
            end += right
        by_start[left] = end - left
        by_end[end] = left
        self._refile(left, left_count, left, end - left)
        return left

    def take_bottom(self, start: int, want: int) -> int:
        """Take up to `want` pages from the bottom of the free run at `start`; return how many.

        0 if no free run starts there. This is how an owner grows at its frontier.
        """
        count = self.by_start.pop(start, None)
        if count is None:
            return 0
        if want >= count:
            del self.by_end[start + count]
            self._unfile(start, count)
            self.pages -= count
            return count
        rest = start + want
        self.by_start[rest] = count - want
        self.by_end[start + count] = rest
        self._refile(start, count, rest, count - want)
        self.pages -= want
        return want

    def carve(self, count: int, room: int) -> int | None:
        """Take `count` pages from the middle of a largest free run, or None if runs are small.

        Only when every run of the largest size class holds `count + room` pages, so the new
        region has at least room/2 free pages above it to grow into, and as much below it for
        whoever is placed there next.
        """
        k = self.mask.bit_length() - 1
        if k < 0 or 1 << k < count + room:
            return None
        members = self.classes[k]
        start = members.pop()
        members.add(start)
        size = self.by_start[start]
        mid = start + (size - count) // 2
        top = mid + count
        self.by_start[start] = mid - start
        self.by_end[mid] = start
        self._refile(start, size, start, mid - start)
        self.by_start[top] = start + size - top
        self.by_end[start + size] = top
        self._file(top, start + size - top)
        self.pages -= count
        return mid

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
    """One owner's extents in address order, as two parallel lists, and where it grows next.

    Sorted so that ownership of a run is one bisect (release does it inline), and kept
    maximal (neighbours merged) so that "wholly owned" means "inside one extent". Lists
    rather than arrays: an owner holds a few extents (see the placement policy), and
    reading an array element builds a new int each time, which made every operation
    measurably slower (arrays would save about 60 bytes an extent). Callers guarantee
    disjointness on `add` and containment on `remove`.

    `frontier` and `holes` are hints for placing the owner's next grants, never part of the
    books (audit ignores them; a grant checks free space before using them). `frontier` is
    the page after the owner's newest grant (-1: none yet): the owner grows upward from
    there, and a release ending at it moves it down, so balloon traffic (grant, give the
    newest pages back, grant again) keeps reusing one free run. `holes` stacks the starts
    of the holes its other releases left in its holdings (free pages with its own pages
    right above them): grants fill them first, newest first, so a driver that gives back
    pages from anywhere does not leave the pool riddled with them. None while there are
    none, so the balloon step tests it without touching another object.
    """

    __slots__ = ("starts", "counts", "pages", "frontier", "holes")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.counts: list[int] = []
        self.pages = 0
        self.frontier = -1
        self.holes: list[int] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def extents(self) -> list[Extent]:
        return list(map(_extent, zip(self.starts, self.counts)))

    def after(self, start: int, limit: int) -> list[Extent]:
        """Up to `limit` extents that begin above page `start`, ascending."""
        i = bisect_right(self.starts, start)
        return list(map(_extent, zip(self.starts[i : i + limit], self.counts[i : i + limit])))

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


_PAIRS = (tuple, Extent, list)  # what one [start, count] pair may arrive as

# A blocked owner is moved to a new region only if that leaves it this much room to grow:
# a few balloon batches (512 pages each). Smaller runs are left to good fit.
_ROOM = 2048

# Holes remembered per owner (see _Holdings): a bound, so hints never cost more than a little
# per owner, whatever the traffic. Any hole left over is still reused, by good fit.
_MAX_HOLES = 32


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
        self._parked: dict[int, _Holdings] = {}  # owners holding nothing now: their hints
        self._allocated = 0
        # Owners whose holdings changed since a journal last took them (hypervisor/journal.py
        # drains it at each commit): one set.add per change, whoever made it.
        self.dirty: set[int] = set()

    @classmethod
    def from_holdings(cls, total_pages: int, holdings: dict[int, Iterable[tuple[int, int]]]) -> PagePool:
        """A pool rebuilt from each owner's extents, as a journal keeps them; free space is the
        rest. Raises ValueError, naming the first problem, on extents that are malformed, outside
        the pool, or claimed twice; the caller audits the result before trusting it.

        Each owner's frontier (a placement hint, never part of the books) is put after its
        highest extent, where a balloon driver's newest pages usually are."""
        pool = cls(total_pages)
        claimed: list[tuple[int, int, int]] = []
        for owner, extents in holdings.items():
            if type(owner) is not int or owner < 0:
                raise ValueError(f"owner {owner!r} is not a domid")
            try:
                request = pool._validate(list(extents))
            except PoolError as err:
                raise ValueError(f"domain {owner}: {err.message}") from None
            claimed += [(start, count, owner) for start, count in request]
        claimed.sort()
        for (a, n, x), (b, m, y) in zip(claimed, claimed[1:]):
            if b < a + n:
                raise ValueError(f"pages from {b} are claimed twice: by domain {x} [start={a}, count={n}] and by domain {y} [start={b}, count={m}]")
        free = pool._free
        if pool._total:
            free.by_start.clear()
            free.by_end.clear()
            for members in free.classes:
                members.clear()
            free.mask = 0
            free.pages = 0
        edge = 0
        for start, count, owner in claimed:
            if start > edge:
                free.add(edge, start - edge)
            held = pool._owned.get(owner)
            if held is None:
                held = pool._owned[owner] = _Holdings()
            held.add(start, count)
            held.frontier = max(held.frontier, start + count)
            pool._allocated += count
            edge = start + count
        if edge < pool._total:
            free.add(edge, pool._total - edge)
        return pool

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

    def extents_after(self, owner: int, after: int, limit: int) -> list[Extent]:
        """A page of the owner's holdings: up to `limit` extents beginning above page `after`,
        sorted and maximal; costs only the extents returned."""
        held = self._owned.get(owner)
        return held.after(after, limit) if held is not None else []

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
        ascending, usually one. The usual balloon step grows the owner at its frontier;
        the rest is _place's.
        """
        held = self._owned.get(owner)
        if held is None and owner in self._parked and type(count) is int and count > 0 and self._free.pages:
            held = self._owned[owner] = self._parked.pop(owner)  # back where it was
        if held is not None and held.holes is None and type(count) is int and count > 0:
            start = held.frontier
            free = self._free
            by_start = free.by_start
            room = by_start.pop(start, 0)
            if room > count:
                # The balloon step up: grow at the frontier. The free run above it now begins
                # `count` pages higher (its end stays, and usually its size class)...
                end = start + count
                rest = room - count
                by_start[end] = rest
                free.by_end[start + room] = end
                free.pages -= count
                k = room.bit_length() - 1
                members = free.classes[k]
                members.discard(start)
                if rest >> k:
                    members.add(end)
                else:
                    if not members:
                        free.mask ^= 1 << k
                    free._file(end, rest)
                # ...and the owner's extent that ends at the frontier grows over those pages.
                starts, counts = held.starts, held.counts
                i = bisect_left(starts, start) - 1
                if i >= 0 and starts[i] + counts[i] == start:
                    counts[i] += count
                else:
                    starts.insert(i + 1, start)
                    counts.insert(i + 1, count)
                held.pages += count
                held.frontier = end
                self._allocated += count
                self.dirty.add(owner)
                return [_new_tuple(Extent, (start, count))]
            if room:
                by_start[start] = room  # too small: put it back for the general path
            elif start >= 0 and (region := free.carve(count, _ROOM)) is not None:
                # Blocked: another owner grew at the frontier, or the owner gave back a whole
                # region and its frontier went down to the bottom of a shared free run. A new
                # region, as _place makes one, inlined because a guest that balloons around
                # the size it booted with does this on every grant. Carved runs have free
                # pages on both sides, so the region joins none of the owner's extents.
                starts, counts = held.starts, held.counts
                i = bisect_left(starts, region)
                starts.insert(i, region)
                counts.insert(i, count)
                held.pages += count
                held.frontier = region + count
                self._allocated += count
                self.dirty.add(owner)
                return [_new_tuple(Extent, (region, count))]
        if type(count) is not int:
            n = _as_int(count)
            if n is None:
                raise TypeError(f"count must be an int, not {count!r}")
            count = n
        if count <= 0 or not self._free.pages:
            return []
        if held is None:
            held = self._parked.pop(owner, None)  # (a count of another integral type)
            if held is None:
                held = _Holdings()
            self._owned[owner] = held
        granted = self._place(held, count)
        for start, c in granted:
            held.add(start, c)
            self._allocated += c
        if granted:
            self.dirty.add(owner)
        return granted

    def _place(self, held: _Holdings, count: int) -> list[Extent]:
        """Where a grant goes when the owner cannot simply grow at its frontier.

        First the holes the owner left, then the frontier. A new owner is placed by good
        fit. An owner whose frontier is blocked moves to a new region carved from the
        middle of a largest free run, so it has room to grow again; when free space is too
        fragmented for that, good fit.
        """
        free = self._free
        granted: list[Extent] = []
        holes = held.holes
        while holes:
            hole = holes.pop()
            got = free.take_bottom(hole, count)  # 0 if no longer free (merged, or taken)
            if got:
                granted.append(_extent((hole, got)))
                count -= got
                if not count:
                    if hole + got in free.by_start:
                        holes.append(hole + got)  # the rest of this hole comes next
                    elif not holes:
                        held.holes = None
                    granted.sort()
                    return granted
        held.holes = None
        frontier = held.frontier
        if free.by_start.get(frontier, 0) >= count:
            free.take_bottom(frontier, count)
            placed = [_extent((frontier, count))]
        elif frontier >= 0 and (start := free.carve(count, _ROOM)) is not None:
            placed = [_extent((start, count))]
        else:
            placed = free.take(count)  # may come short, or empty once the hole took the rest
        if placed:
            start, count = placed[-1]
            held.frontier = start + count
            granted += placed
            if len(granted) > 1:
                granted.sort()
        return granted

    def release(self, owner: int, extents: Iterable[tuple[int, int]]) -> int:
        """Give back `extents` of `owner`'s pages; return how many pages were released.

        All or nothing: every extent is validated before anything changes, and the first
        problem raises PoolError with the pool untouched. Part of an owned extent may be
        given back (it is split). Freed runs merge with neighbouring free space.
        """
        if type(extents) is list and len(extents) == 1:
            # The balloon driver's usual request, checked in a few steps: one well-formed
            # pair, inside one of the owner's extents (owned pages are in range, so that
            # proves start and count are). Anything else, bad input included, takes the
            # general path below, which is the one that explains refusals.
            pair = extents[0]
            if type(pair) in _PAIRS and len(pair) == 2:
                start, count = pair
                held = self._owned.get(owner)
                if type(start) is int and type(count) is int and count > 0 and held is not None:
                    i = bisect_right(held.starts, start) - 1
                    if i >= 0 and start + count <= held.starts[i] + held.counts[i]:
                        self._give_back(held, owner, i, start, count)
                        return count
        request = self._validate(extents)
        if not request:
            return 0
        held = self._owned.get(owner)
        pieces = []  # (start, count, index of the owner's extent holding it)
        for start, count in request:
            i = bisect_right(held.starts, start) - 1 if held is not None else -1
            if i < 0 or start + count > held.starts[i] + held.counts[i]:
                raise PoolError(PoolErrorReason.NOT_OWNED, self._not_owned_message(owner, start, count))
            pieces.append((start, count, i))
        # Highest first: giving back a piece only moves the owner's extents from its own
        # index up, so the indices found above stay right; and adjacent pieces walk the
        # frontier down.
        pieces.sort(reverse=True)
        released = 0
        for start, count, i in pieces:
            self._give_back(held, owner, i, start, count)
            released += count
        return released

    def _give_back(self, held: _Holdings, owner: int, i: int, start: int, count: int) -> None:
        """Move [start, start+count), inside extent i of `held`, to free space; move hints."""
        self.dirty.add(owner)
        starts, counts = held.starts, held.counts
        base = starts[i]
        end = start + count
        free = self._free
        by_start = free.by_start
        if end == base + counts[i] and base < start and (right := by_start.pop(end, None)) is not None:
            # The balloon step down: the top of an extent, under a free run (usually its
            # frontier run). That run grows down over the pages: its end stays, and usually
            # its size class. Inlined, as most releases come here.
            size = right + count
            by_start[start] = size
            free.by_end[end + right] = start
            free.pages += count
            k = right.bit_length() - 1
            members = free.classes[k]
            members.discard(end)
            if size >> k == 1:
                members.add(start)
            else:
                if not members:
                    free.mask ^= 1 << k
                free._file(start, size)
            counts[i] = start - base
            held.pages -= count
            self._allocated -= count
            if end == held.frontier:
                held.frontier = start
            elif i + 1 < len(starts) and starts[i + 1] == end + right:
                self._note_hole(held, start)
            return
        if start == base and end == base + counts[i]:
            # A whole extent (a region given back entire): nothing to split.
            del starts[i], counts[i]
            held.pages -= count
        else:
            held.remove(start, count)
        merged = free.add(start, count)
        self._allocated -= count
        if end == held.frontier:
            held.frontier = merged
        elif merged != held.frontier and starts:
            # A hole in the owner's holdings (its own pages right above it) is refilled
            # next; free pages above an older region are just room, left to whoever needs it.
            top = merged + by_start[merged]
            j = bisect_left(starts, top)
            if j < len(starts) and starts[j] == top:
                self._note_hole(held, merged)
        if not held.pages:
            del self._owned[owner]
            held.holes = None  # no holdings, no holes in them
            self._parked[owner] = held  # so it grows back where it was

    def _note_hole(self, held: _Holdings, start: int) -> None:
        """Remember a hole for the owner's next grants, keeping a few: they are only hints."""
        holes = held.holes
        if holes is None:
            held.holes = [start]
        elif holes and holes[-1] not in self._free.by_start:
            holes[-1] = start  # the last one is gone: refilled, or part of this one now
        else:
            if len(holes) >= _MAX_HOLES:
                del holes[0]
            holes.append(start)

    def release_all(self, owner: int) -> int:
        """Return every page of `owner` to the pool (the domain was destroyed).

        Its placement hints go too: domain ids are reused.
        """
        self._parked.pop(owner, None)
        held = self._owned.pop(owner, None)
        if held is None:
            return 0
        self.dirty.add(owner)
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
        for owner, held in self._parked.items():  # owners keeping only their placement hints
            if owner in self._owned:
                problems.append(f"domain {owner} is both an owner and parked")
            if held.pages or held.starts or held.counts:
                problems.append(f"domain {owner} is parked but still has extents or pages")
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
