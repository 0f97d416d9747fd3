"""PagePool: the books balance after every operation, and a refused release changes nothing."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from hypervisor.pool import MAX_PAGES, PagePool, PoolError, PoolErrorReason
from wire.extent import Extent

R = PoolErrorReason


def snapshot(pool: PagePool) -> tuple:
    """Everything observable about the pool, to prove a refused request changed nothing."""
    return (
        pool.free_pages,
        pool.allocated_pages,
        pool.free_extents(),
        {o: pool.extents_of(o) for o in pool.owners()},
        {o: pool.owned_pages(o) for o in pool.owners()},
        pool.audit(),
    )


def assert_refused(pool: PagePool, owner: int, extents, reason: PoolErrorReason) -> PoolError:
    before = snapshot(pool)
    with pytest.raises(PoolError) as info:
        pool.release(owner, extents)
    assert info.value.reason is reason, str(info.value)
    assert snapshot(pool) == before
    assert pool.audit() == []
    return info.value


# -- construction and counters ---------------------------------------------------------------


@pytest.mark.timeout(5)
def test_new_pool_is_all_free() -> None:
    pool = PagePool(1000)
    assert (pool.total_pages, pool.free_pages, pool.allocated_pages) == (1000, 1000, 0)
    assert pool.free_extents() == [Extent(0, 1000)]
    assert pool.owners() == [] and pool.extents_of(1) == [] and pool.owned_pages(1) == 0
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_empty_pool() -> None:
    pool = PagePool(0)
    assert pool.free_pages == 0 and pool.free_extents() == []
    assert pool.allocate(1, 10) == []
    assert pool.audit() == []


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [-1, 1.5, "10", None, True, 2**62 + 1])
def test_bad_total_rejected(bad) -> None:
    with pytest.raises(ValueError):
        PagePool(bad)


@pytest.mark.timeout(5)
def test_one_tebibyte_pool_costs_nothing_per_page() -> None:
    """Memory, not time, is the test's measure (timings belong in bench/pool_bench.py): a pool
    that kept anything per page would take gigabytes here."""
    tracemalloc.start()
    pool = PagePool(2**28)
    got = pool.allocate(7, 512)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100_000  # a few KiB
    assert got == [Extent(2**28 - 512, 512)]
    assert pool.free_extents() == [Extent(0, 2**28 - 512)]
    assert pool.audit() == []
    big = pool.allocate(8, 2**27)
    assert sum(e.count for e in big) == 2**27 and pool.free_pages == 2**27 - 512
    assert pool.release_all(8) == 2**27 and pool.release_all(7) == 512
    assert pool.free_extents() == [Extent(0, 2**28)] and pool.audit() == []


@pytest.mark.timeout(5)
def test_largest_pool_edges() -> None:
    pool = PagePool(MAX_PAGES)
    assert pool.allocate(1, 3) == [Extent(MAX_PAGES - 3, 3)]
    assert_refused(pool, 1, [(MAX_PAGES - 4, 2)], R.NOT_OWNED)
    assert_refused(pool, 1, [(MAX_PAGES - 1, 2)], R.OUT_OF_RANGE)
    assert_refused(pool, 1, [(2**64, 2**64)], R.OUT_OF_RANGE)
    assert pool.release(1, [(MAX_PAGES - 2, 1)]) == 1
    assert pool.extents_of(1) == [Extent(MAX_PAGES - 3, 1), Extent(MAX_PAGES - 1, 1)]
    assert pool.audit() == []


# -- allocate ------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_allocate_full_request() -> None:
    pool = PagePool(100)
    got = pool.allocate(1, 30)
    assert got == [Extent(70, 30)] and all(type(e) is Extent for e in got)
    assert (pool.free_pages, pool.allocated_pages, pool.owned_pages(1)) == (70, 30, 30)
    assert pool.extents_of(1) == [Extent(70, 30)] and pool.owners() == [1]
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_allocate_merges_consecutive_grants_for_same_owner() -> None:
    pool = PagePool(100)
    pool.allocate(1, 10)
    pool.allocate(1, 10)
    assert pool.extents_of(1) == [Extent(80, 20)]
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_allocate_partial_when_short() -> None:
    pool = PagePool(100)
    pool.allocate(1, 90)
    got = pool.allocate(2, 50)
    assert got == [Extent(0, 10)]
    assert pool.free_pages == 0 and pool.owned_pages(2) == 10
    assert pool.allocate(3, 1) == []  # pool empty: empty grant, not an error
    assert 3 not in pool.owners()
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_allocate_good_fit_prefers_smallest_sufficient_extent() -> None:
    pool = PagePool(1000)
    pool.allocate(1, 1000)
    pool.release(1, [(100, 64), (500, 300), (900, 3)])
    # 50 pages: the 64-page hole is the smallest size class certain to fit; one extent
    assert pool.allocate(2, 50) == [Extent(114, 50)]
    # 64 pages: nothing of 64..127 left, so the next class up (the 300-page hole)
    assert pool.allocate(3, 64) == [Extent(736, 64)]
    assert pool.free_extents() == [Extent(100, 14), Extent(500, 236), Extent(900, 3)]
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_allocate_gathers_several_free_extents_when_none_fits() -> None:
    pool = PagePool(100)
    pool.allocate(1, 100)
    pool.release(1, [(10, 5), (50, 5), (90, 5)])
    got = pool.allocate(2, 12)
    assert len(got) == 3 and sum(e.count for e in got) == 12 and got == sorted(got)
    assert all(any(h <= e.start and e.end <= h + 5 for h in (10, 50, 90)) for e in got)
    assert pool.extents_of(2) == got
    assert pool.free_pages == 3 and pool.owned_pages(2) == 12
    assert pool.audit() == []


@pytest.mark.timeout(5)
@pytest.mark.parametrize("count", [0, -1, -(2**40)])
def test_allocate_zero_or_negative_is_empty(count: int) -> None:
    pool = PagePool(100)
    assert pool.allocate(1, count) == []
    assert pool.free_pages == 100 and pool.owners() == [] and pool.audit() == []


@pytest.mark.timeout(5)
@pytest.mark.parametrize("count", [1.0, "5", None, True])
def test_allocate_non_int_count_is_type_error(count) -> None:
    pool = PagePool(100)
    with pytest.raises(TypeError):
        pool.allocate(1, count)
    assert pool.free_pages == 100 and pool.audit() == []


@pytest.mark.timeout(5)
def test_allocate_more_than_total() -> None:
    pool = PagePool(64)
    assert pool.allocate(1, 10**12) == [Extent(0, 64)]
    assert pool.free_pages == 0 and pool.audit() == []


# -- release -------------------------------------------------------------------------------


@pytest.fixture
def held() -> PagePool:
    """Domain 1 holds pages 60..99 as one extent, domain 2 holds 40..59."""
    pool = PagePool(100)
    assert pool.allocate(1, 40) == [Extent(60, 40)]
    assert pool.allocate(2, 20) == [Extent(40, 20)]
    return pool


@pytest.mark.timeout(5)
def test_release_whole_extent(held: PagePool) -> None:
    assert held.release(1, [Extent(60, 40)]) == 40
    assert held.owners() == [2] and held.owned_pages(1) == 0
    assert held.free_extents() == [Extent(0, 40), Extent(60, 40)]
    assert held.audit() == []


@pytest.mark.timeout(5)
def test_release_splits_middle(held: PagePool) -> None:
    assert held.release(1, [(70, 5)]) == 5
    assert held.extents_of(1) == [Extent(60, 10), Extent(75, 25)]
    assert held.free_extents() == [Extent(0, 40), Extent(70, 5)]
    assert (held.free_pages, held.owned_pages(1), held.allocated_pages) == (45, 35, 55)
    assert held.audit() == []


@pytest.mark.timeout(5)
def test_release_splits_ends(held: PagePool) -> None:
    assert held.release(1, [(60, 3)]) == 3
    assert held.extents_of(1) == [Extent(63, 37)]
    assert held.release(1, [[97, 3]]) == 3  # lists work as pairs too
    assert held.extents_of(1) == [Extent(63, 34)]
    assert held.free_extents() == [Extent(0, 40), Extent(60, 3), Extent(97, 3)]
    assert held.audit() == []


@pytest.mark.timeout(5)
def test_release_several_in_one_request(held: PagePool) -> None:
    assert held.release(1, [(90, 10), (61, 1), (70, 2)]) == 13
    assert held.extents_of(1) == [Extent(60, 1), Extent(62, 8), Extent(72, 18)]
    assert held.audit() == []


@pytest.mark.timeout(5)
def test_release_adjacent_pieces_in_one_request(held: PagePool) -> None:
    assert held.release(1, [(60, 10), (70, 30)]) == 40
    assert held.free_extents() == [Extent(0, 40), Extent(60, 40)]


@pytest.mark.timeout(5)
def test_release_empty_request_is_noop(held: PagePool) -> None:
    before = snapshot(held)
    assert held.release(1, []) == 0
    assert held.release(99, []) == 0
    assert snapshot(held) == before


@pytest.mark.timeout(5)
def test_release_merges_neighbours_back_to_one_free_extent() -> None:
    pool = PagePool(1000)
    for owner in range(10):
        pool.allocate(owner, 100)
    assert pool.free_pages == 0
    # release in an order that makes free runs join on the left, the right and both sides
    for owner in (3, 5, 4, 0, 9, 1, 2, 8, 6, 7):
        start = pool.extents_of(owner)[0].start
        pool.release(owner, [(start + 50, 50)])
        pool.release(owner, [(start, 50)])
        assert pool.audit() == []
    assert pool.free_extents() == [Extent(0, 1000)]
    assert pool.free_extent_count == 1 and pool.owners() == [] and pool.allocated_pages == 0


@pytest.mark.timeout(5)
def test_owner_holdings_merge_when_gap_is_refilled() -> None:
    pool = PagePool(10)
    pool.allocate(1, 10)
    pool.release(1, [(4, 2)])
    assert pool.extents_of(1) == [Extent(0, 4), Extent(6, 4)]
    assert pool.allocate(1, 2) == [Extent(4, 2)]
    assert pool.extents_of(1) == [Extent(0, 10)]
    assert pool.audit() == []


# -- refused releases: right reason, nothing changed -----------------------------------------


@pytest.mark.timeout(5)
def test_release_free_pages_refused(held: PagePool) -> None:
    err = assert_refused(held, 1, [(0, 10)], R.NOT_OWNED)
    assert "domain 1 does not own" in err.message and "[start=0, count=10]" in err.message
    assert "0 of its 10 pages are domain 1's" in err.message


@pytest.mark.timeout(5)
def test_release_other_owners_pages_refused(held: PagePool) -> None:
    err = assert_refused(held, 1, [(40, 5)], R.NOT_OWNED)
    assert "domain 1" in err.message and "[start=40, count=5]" in err.message


@pytest.mark.timeout(5)
def test_release_by_owner_with_nothing_refused(held: PagePool) -> None:
    assert_refused(held, 3, [(60, 1)], R.NOT_OWNED)


@pytest.mark.timeout(5)
def test_release_partly_owned_refused(held: PagePool) -> None:
    err = assert_refused(held, 1, [(55, 10)], R.NOT_OWNED)  # half domain 2's
    assert "5 of its 10 pages are domain 1's, 5 are free or another domain's" in err.message
    err = assert_refused(held, 2, [(35, 10)], R.NOT_OWNED)  # half free
    assert "5 of its 10 pages are domain 2's" in err.message
    held.release(1, [(97, 3)])
    assert_refused(held, 1, [(95, 5)], R.NOT_OWNED)  # tail already given back


@pytest.mark.timeout(5)
def test_release_spanning_a_hole_refused(held: PagePool) -> None:
    held.release(1, [(70, 1)])
    assert_refused(held, 1, [(65, 10)], R.NOT_OWNED)


@pytest.mark.timeout(5)
def test_good_extents_then_bad_one_changes_nothing(held: PagePool) -> None:
    assert_refused(held, 1, [(60, 5), (80, 5), (45, 1)], R.NOT_OWNED)
    assert_refused(held, 1, [(60, 5), (80, 5), (80, 0)], R.MALFORMED)
    assert_refused(held, 1, [(60, 5), (80, 5), (99, 2)], R.OUT_OF_RANGE)


@pytest.mark.timeout(5)
def test_overlapping_within_request_refused(held: PagePool) -> None:
    err = assert_refused(held, 1, [(60, 10), (65, 10)], R.OVERLAPPING)
    assert "[start=60, count=10]" in err.message and "[start=65, count=10]" in err.message
    assert_refused(held, 1, [(80, 2), (60, 30)], R.OVERLAPPING)  # one inside another, unsorted


@pytest.mark.timeout(5)
def test_duplicate_extent_in_request_refused(held: PagePool) -> None:
    assert_refused(held, 1, [(70, 1), (70, 1)], R.OVERLAPPING)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("extent", [(60, 0), (60, -1), (70, -(2**63))])
def test_zero_or_negative_count_refused(held: PagePool, extent) -> None:
    err = assert_refused(held, 1, [extent], R.MALFORMED)
    assert f"count={extent[1]}" in err.message


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "extents",
    [[(60, 1.0)], [("60", 1)], [(None, 1)], [(60, True)], [(60,)], [(60, 1, 2)], [60], ["ab"], 5, "x", None, [{}],
     [{60: 0, 61: 0}], [{60, 61}], [b"ab"]],
)
def test_malformed_shapes_refused(held: PagePool, extents) -> None:
    assert_refused(held, 1, extents, R.MALFORMED)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("extent", [(-1, 2), (-5, 1), (100, 1), (99, 2), (2**64, 1), (50, 2**64)])
def test_out_of_range_refused(held: PagePool, extent) -> None:
    err = assert_refused(held, 1, [extent], R.OUT_OF_RANGE)
    assert f"[start={extent[0]}, count={extent[1]}]" in err.message


@pytest.mark.timeout(5)
def test_overflow_past_total_refused() -> None:
    pool = PagePool(2**28)
    pool.allocate(1, 100)
    assert_refused(pool, 1, [(2**28 - 50, 2**64 - 2**28 + 50)], R.OUT_OF_RANGE)
    assert_refused(pool, 1, [(2**28 - 50, 51)], R.OUT_OF_RANGE)


@pytest.mark.timeout(5)
def test_iterables_and_generators_accepted(held: PagePool) -> None:
    assert held.release(1, ((s, 1) for s in (60, 62))) == 2
    assert held.release(1, iter([Extent(64, 1)])) == 1
    assert held.audit() == []


# -- release_all and queries -----------------------------------------------------------------


@pytest.mark.timeout(5)
def test_release_all() -> None:
    pool = PagePool(100)
    pool.allocate(1, 10)
    pool.allocate(2, 10)
    pool.allocate(1, 10)
    pool.release(1, [(71, 3)])
    assert pool.extents_of(1) == [Extent(70, 1), Extent(74, 6), Extent(90, 10)]
    assert pool.release_all(1) == 17
    assert pool.release_all(1) == 0 and pool.release_all(42) == 0
    assert pool.owners() == [2] and pool.free_pages == 90 and pool.allocated_pages == 10
    assert pool.free_extents() == [Extent(0, 80), Extent(90, 10)]
    assert pool.release_all(2) == 10
    assert pool.free_extents() == [Extent(0, 100)] and pool.audit() == []


@pytest.mark.timeout(5)
def test_highest_extents(held: PagePool) -> None:
    held.release(1, [(70, 10)])
    assert held.highest_extents(1, 5) == [Extent(95, 5)]
    assert held.highest_extents(1, 25) == [Extent(65, 5), Extent(80, 20)]
    assert held.highest_extents(1, 1000) == [Extent(60, 10), Extent(80, 20)]
    assert held.highest_extents(1, 0) == [] and held.highest_extents(9, 5) == []
    assert held.owned_extent_count(1) == 2 and held.owned_extent_count(9) == 0


@pytest.mark.timeout(5)
def test_owners_sorted_and_dropped_when_empty() -> None:
    pool = PagePool(100)
    for owner in (5, 1, 3):
        pool.allocate(owner, 1)
    assert pool.owners() == [1, 3, 5]
    pool.release(3, pool.extents_of(3))
    assert pool.owners() == [1, 5]


# -- randomized sequences against a per-page model -------------------------------------------


def model_extents(pages: list, owner) -> list[Extent]:
    out: list[Extent] = []
    start = None
    for i, o in enumerate(pages + [object()]):
        if o == owner and start is None:
            start = i
        elif o != owner and start is not None:
            out.append(Extent(start, i - start))
            start = None
    return out


def expected_reason(pages: list, owner: int, request: list[tuple[int, int]]):
    """What the pool must say about `request`, judged from the per-page model."""
    total = len(pages)
    for start, count in request:
        if count <= 0:
            return R.MALFORMED
        if start < 0 or start + count > total:
            return R.OUT_OF_RANGE
    seen: set[int] = set()
    for start, count in request:
        span = set(range(start, start + count))
        if span & seen:
            return R.OVERLAPPING
        seen |= span
    if any(pages[p] != owner for p in seen):
        return R.NOT_OWNED
    return None


def check_against_model(pool: PagePool, pages: list, owners: range) -> None:
    assert pool.audit() == []
    free = pages.count(None)
    assert pool.free_pages == free and pool.allocated_pages == len(pages) - free
    assert pool.free_extents() == model_extents(pages, None)
    for o in owners:
        assert pool.extents_of(o) == model_extents(pages, o)
        assert pool.owned_pages(o) == pages.count(o)
    assert pool.owners() == sorted({p for p in pages if p is not None})


@pytest.mark.timeout(10)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_sequence_matches_per_page_model(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.choice([97, 160, 256])
    owners = range(6)
    pool = PagePool(total)
    pages: list = [None] * total  # the model: owner of each page, None = free
    for _ in range(2500):
        owner = rng.choice(owners)
        roll = rng.random()
        if roll < 0.35:
            count = rng.randint(-2, 40)
            before_free = pool.free_pages
            got = pool.allocate(owner, count)
            assert sum(e.count for e in got) == max(0, min(count, before_free))
            for start, n in got:
                assert all(pages[p] is None for p in range(start, start + n))
                pages[start : start + n] = [owner] * n
        elif roll < 0.75:  # release random sub-ranges of owned extents
            held = pool.extents_of(owner)
            request = []
            for e in rng.sample(held, min(len(held), rng.randint(1, 3))):
                a = rng.randrange(e.start, e.end)
                request.append((a, rng.randint(1, e.end - a)))
            assert pool.release(owner, request) == sum(n for _, n in request)
            for start, n in request:
                pages[start : start + n] = [None] * n
        elif roll < 0.97:  # bogus (or accidentally valid) requests
            request = [
                (rng.randint(-3, total + 3), rng.randint(-2, total // 4)) for _ in range(rng.randint(1, 3))
            ]
            if rng.random() < 0.2:
                request.append(request[0])
            reason = expected_reason(pages, owner, request)
            if reason is None:
                assert pool.release(owner, request) == sum(n for _, n in request)
                for start, n in request:
                    pages[start : start + n] = [None] * n
            else:
                assert_refused(pool, owner, request, reason)
        else:
            assert pool.release_all(owner) == pages.count(owner)
            pages = [None if p == owner else p for p in pages]
        check_against_model(pool, pages, owners)
    for o in owners:
        pool.release_all(o)
    assert pool.free_extents() == [Extent(0, total)] and pool.audit() == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize("seed", [11, 12])
def test_random_sequence_large_pool_totals(seed: int) -> None:
    """Balloon-like traffic on a big pool: audit and totals after every step (no page model)."""
    rng = random.Random(seed)
    total = 2**28
    pool = PagePool(total)
    owned = {o: 0 for o in range(32)}
    for _ in range(600):
        owner = rng.randrange(32)
        n = rng.randint(1, 512)
        if rng.random() < 0.5 or not owned[owner]:
            owned[owner] += sum(e.count for e in pool.allocate(owner, n))
        else:
            window = pool.highest_extents(owner, n)
            e = rng.choice(window)
            a = rng.randrange(e.start, e.end)
            b = rng.randint(a + 1, e.end)
            assert pool.release(owner, [(a, b - a)]) == b - a
            owned[owner] -= b - a
            if rng.random() < 0.1:
                with pytest.raises(PoolError) as info:
                    pool.release(owner, [(a, b - a)])  # already given back
                assert info.value.reason is R.NOT_OWNED
        assert pool.audit() == []
        assert pool.allocated_pages == sum(owned.values())
        assert pool.free_pages + pool.allocated_pages == total
        assert pool.owned_pages(owner) == owned[owner]
    for o in owned:
        assert pool.release_all(o) == owned[o]
    assert pool.free_extents() == [Extent(0, total)]


# -- placement: owners grow from a frontier (balloon drivers give back their newest pages) ----


class Guest:
    """A guest's view of its pages, as guest/memory.py keeps them: extents in grant order
    (a grant starting where the newest ends extends it), newest given back first."""

    def __init__(self) -> None:
        self.extents: list[list[int]] = []  # [start, count], oldest first

    def add(self, granted: list[Extent]) -> None:
        for start, count in granted:
            if self.extents and sum(self.extents[-1]) == start:
                self.extents[-1][1] += count
            else:
                self.extents.append([start, count])

    def take(self, n: int) -> list[tuple[int, int]]:
        taken = []
        while n:
            start, count = self.extents[-1]
            if count <= n:
                self.extents.pop()
                taken.append((start, count))
                n -= count
            else:
                self.extents[-1][1] = count - n
                taken.append((start + count - n, n))
                n = 0
        taken.reverse()
        return taken

    def pages(self) -> int:
        return sum(count for _, count in self.extents)

    def merged(self) -> list[Extent]:
        out: list[Extent] = []
        for start, count in sorted(self.extents):
            if out and out[-1].end == start:
                out[-1] = Extent(out[-1].start, out[-1].count + count)
            else:
                out.append(Extent(start, count))
        return out


@pytest.mark.timeout(5)
def test_owner_grows_at_its_frontier_in_a_new_region() -> None:
    pool = PagePool(2**20)
    assert pool.allocate(1, 10) == [Extent(2**20 - 10, 10)]  # a new owner: good fit, top
    region = pool.allocate(1, 10)  # its frontier is the end of the pool: a new region...
    (start, count), = region
    assert count == 10 and 2**18 < start < 2**19 + 2**18  # ...in the middle of free space
    assert pool.allocate(1, 30) == [Extent(start + 10, 30)]  # then it grows upward from there
    assert pool.extents_of(1) == [Extent(start, 40), Extent(2**20 - 10, 10)]
    assert pool.free_extent_count == 2 and pool.audit() == []


@pytest.mark.timeout(5)
def test_newest_pages_given_back_merge_back_and_come_back() -> None:
    pool = PagePool(2**20)
    pool.allocate(1, 10)
    (start, _), = pool.allocate(1, 100)
    free_runs = pool.free_extent_count
    assert pool.release(1, [(start + 60, 40)]) == 40  # the newest 40 pages
    assert pool.free_extent_count == free_runs  # merged into the free run above
    assert pool.extents_of(1)[0] == Extent(start, 60)
    assert pool.allocate(1, 25) == [Extent(start + 60, 25)]  # the same pages again
    assert pool.release(1, [(start + 45, 40)]) == 40  # across two grants, merged in the books
    assert pool.extents_of(1)[0] == Extent(start, 45) and pool.audit() == []


@pytest.mark.timeout(5)
def test_hole_in_holdings_is_refilled_first() -> None:
    pool = PagePool(2**20)
    pool.allocate(1, 10)
    (start, _), = pool.allocate(1, 100)
    pool.release(1, [(start + 20, 10)])  # a hole, with the owner's pages on both sides
    assert pool.allocate(1, 4) == [Extent(start + 20, 4)]
    # the rest of the hole, then the frontier; ascending
    assert pool.allocate(1, 10) == [Extent(start + 24, 6), Extent(start + 100, 4)]
    assert pool.extents_of(1) == [Extent(start, 104), Extent(2**20 - 10, 10)]
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_emptied_owner_grows_back_where_it_was_until_destroyed() -> None:
    pool = PagePool(1000)
    for owner in (1, 2, 3):
        pool.allocate(owner, 100)  # 1: 900..999, 2: 800..899, 3: 700..799
    assert pool.release(2, [(800, 100)]) == 100
    assert pool.owners() == [1, 3] and pool.owned_pages(2) == 0 and pool.extents_of(2) == []
    assert pool.audit() == []
    assert pool.allocate(2, 30) == [Extent(800, 30)]  # where it was (good fit: 870)
    assert pool.release_all(2) == 30  # destroyed: the domain id may be reused...
    assert pool.allocate(2, 30) == [Extent(870, 30)]  # ...by a new domain: good fit
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_emptied_owner_comes_back_with_any_integral_count() -> None:
    class Pages(int):
        pass

    pools = [PagePool(1000), PagePool(1000)]
    for pool in pools:
        for owner in (1, 2, 3):
            pool.allocate(owner, 100)  # 1: 900..999, 2: 800..899, 3: 700..799
        pool.release(2, [(800, 100)])  # domain 2 now holds nothing
    assert pools[0].allocate(2, Pages(5)) == pools[1].allocate(2, 5) == [Extent(800, 5)]
    assert pools[0].owners() == [1, 2, 3] and pools[0].audit() == []


@pytest.mark.timeout(5)
def test_blocked_owner_in_a_small_pool_gets_good_fit() -> None:
    pool = PagePool(1000)
    pool.allocate(1, 100)  # 900..999
    pool.allocate(2, 100)  # 800..899, under 1: its frontier is blocked
    # no free run leaves room to grow (2048 pages): good fit, the top of 0..799
    assert pool.allocate(2, 10) == [Extent(790, 10)]
    assert pool.extents_of(2) == [Extent(790, 110)] and pool.audit() == []


@pytest.mark.timeout(5)
def test_one_pair_release_refused_like_any_other(held: PagePool) -> None:
    """The quick path for one [start, count] pair must not accept what the general one refuses."""
    held.release(1, [(90, 10)])  # domain 1: 60..89, free above it
    assert_refused(held, 1, [(85, 10)], R.NOT_OWNED)  # its top and free pages
    assert_refused(held, 2, [(85, 5)], R.NOT_OWNED)  # another domain's top
    assert_refused(held, 1, [(55, 5)], R.NOT_OWNED)  # the top of another domain's extent
    assert_refused(held, 1, [(89, 1), (89, 1)], R.OVERLAPPING)
    assert_refused(held, 1, [(85, 5.0)], R.MALFORMED)
    assert_refused(held, 1, [(True, 5)], R.MALFORMED)
    for pair in ((85, 5), [80, 5], Extent(75, 5)):
        assert held.release(1, [pair]) == 5
    assert held.release(1, ((70, 5),)) == 5  # a tuple of pairs
    assert held.extents_of(1) == [Extent(60, 10)] and held.audit() == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_balloon_traffic_matches_per_page_model(seed: int) -> None:
    """Grants and newest-first releases, as guests make them, against the per-page model.

    The pool is big enough for owners to get regions of their own and small enough to fill
    up, so every placement rule (frontier, hole, new region, good fit, short grants) runs.
    """
    rng = random.Random(seed)
    total = 12_000
    owners = range(6)
    pool = PagePool(total)
    pages: list = [None] * total
    guests = {o: Guest() for o in owners}
    for step in range(3000):
        owner = rng.choice(owners)
        guest = guests[owner]
        n = rng.randint(1, 600)
        if guest.pages() and rng.random() < 0.5:
            request = guest.take(min(n, guest.pages()))
            assert pool.release(owner, request) == sum(c for _, c in request)
            for start, count in request:
                assert pages[start : start + count] == [owner] * count
                pages[start : start + count] = [None] * count
        elif rng.random() < 0.02:
            assert pool.release_all(owner) == guest.pages()
            guest.extents.clear()
            pages = [None if p == owner else p for p in pages]
        else:
            free = pool.free_pages
            got = pool.allocate(owner, n)
            assert sum(c for _, c in got) == min(n, free) and got == sorted(got)
            for start, count in got:
                assert pages[start : start + count] == [None] * count
                pages[start : start + count] = [owner] * count
            guest.add(got)
        assert pool.audit() == []
        assert pool.extents_of(owner) == guest.merged()
        if step % 50 == 0:
            check_against_model(pool, pages, owners)
    check_against_model(pool, pages, owners)


@pytest.mark.timeout(20)
def test_balloon_traffic_keeps_books_small() -> None:
    """Many owners on a 1 TiB host: holdings stay a few extents each, memory stays small."""
    rng = random.Random(5)
    pool = PagePool(2**28)
    guests = [Guest() for _ in range(256)]
    tracemalloc.start()
    for _ in range(20_000):
        owner = rng.randrange(len(guests))
        guest = guests[owner]
        n = rng.randint(1, 512)
        if guest.pages() and rng.random() < 0.5:
            pool.release(owner, guest.take(min(n, guest.pages())))
        else:
            guest.add(pool.allocate(owner, n))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = [pool.owned_extent_count(o) for o in range(len(guests))]
    assert max(held) <= 8 and sum(held) <= 2 * len(guests)
    assert pool.free_extent_count <= 2 * len(guests)
    assert all(pool.extents_of(o) == g.merged() for o, g in enumerate(guests))
    assert pool.audit() == []
    assert current < 2_000_000  # the guests' lists and the pool's books: no per-page state


@pytest.mark.timeout(20)
def test_pages_given_back_from_anywhere_are_refilled() -> None:
    """A driver giving back random runs near its top: the holes are refilled, not hoarded."""
    rng = random.Random(7)
    pool = PagePool(2**24)
    owned = [0] * 64
    for _ in range(20_000):
        owner = rng.randrange(len(owned))
        n = rng.randint(1, 512)
        if owned[owner] and rng.random() < 0.5:
            window = pool.highest_extents(owner, n)
            e = rng.choice(window)
            a = rng.randrange(e.start, e.end)
            b = rng.randint(a + 1, e.end)
            owned[owner] -= pool.release(owner, [(a, b - a)])
        else:
            owned[owner] += sum(c for _, c in pool.allocate(owner, n))
    assert [pool.owned_pages(o) for o in range(len(owned))] == owned
    assert sum(pool.owned_extent_count(o) for o in range(len(owned))) <= 8 * len(owned)
    assert pool.free_extent_count <= 8 * len(owned)
    assert pool.audit() == []


@pytest.mark.timeout(5)
def test_holes_remembered_are_bounded() -> None:
    pool = PagePool(2**20)
    pool.allocate(1, 10)
    (start, _), = pool.allocate(1, 1000)
    for page in range(start + 1, start + 999, 2):  # 499 one-page holes, no grant in between
        pool.release(1, [(page, 1)])
    assert len(pool._owned[1].holes or ()) <= 32 and pool.audit() == []
    # the 32 newest holes are refilled, then the frontier; the older holes are left to good fit
    holes = [Extent(start + page, 1) for page in range(935, 999, 2)]
    assert pool.allocate(1, 40) == holes + [Extent(start + 1000, 8)]
    assert pool.owned_pages(1) == 10 + 1000 - 499 + 40 and pool.audit() == []


# -- audit detects corruption ----------------------------------------------------------------


def busy_pool() -> PagePool:
    pool = PagePool(100)
    assert pool.allocate(1, 30) == [Extent(70, 30)]
    assert pool.allocate(2, 20) == [Extent(50, 20)]
    pool.release(1, [(80, 5)])
    assert pool.free_extents() == [Extent(0, 50), Extent(80, 5)]
    assert pool._free.classes[5] == {0} and pool._free.classes[2] == {80}
    assert pool.audit() == []
    return pool


def tamper_free_count(p: PagePool) -> None:
    p._free.by_start[0] += 1  # free 0..50 now overlaps domain 2


def tamper_owned_overlap(p: PagePool) -> None:
    p._owned[2].starts.insert(0, 10)  # domain 2 also claims free page 10
    p._owned[2].counts.insert(0, 1)
    p._owned[2].pages += 1
    p._allocated += 1


def tamper_lost_pages(p: PagePool) -> None:
    p._owned[1].starts.pop()  # pages vanish from the books
    p._owned[1].counts.pop()


def tamper_cached_free(p: PagePool) -> None:
    p._free.pages -= 1


def tamper_cached_allocated(p: PagePool) -> None:
    p._allocated += 3


def tamper_unsorted(p: PagePool) -> None:
    p._owned[1].starts.reverse()
    p._owned[1].counts.reverse()


def tamper_owner_unmerged(p: PagePool) -> None:
    held = p._owned[1]  # 70..79 becomes 70..74 + 75..79, consistently but not maximal
    assert list(held.starts) == [70, 85] and list(held.counts) == [10, 15]
    held.counts[0] = 5
    held.starts.insert(1, 75)
    held.counts.insert(1, 5)


def tamper_free_unmerged(p: PagePool) -> None:
    fs = p._free  # 0..49 becomes 0..19 + 20..49 in every map, but not merged
    fs._unfile(0, 50)
    del fs.by_end[50]
    fs.by_start[0], fs.by_end[20] = 20, 0
    fs.by_start[20], fs.by_end[50] = 30, 20
    fs._file(0, 20)
    fs._file(20, 30)


def tamper_free_end_map(p: PagePool) -> None:
    del p._free.by_end[85]


def tamper_misfiled(p: PagePool) -> None:
    p._free.classes[5].discard(0)
    p._free.classes[3].add(0)


def tamper_class_mask(p: PagePool) -> None:
    p._free.mask ^= 1 << 7


def tamper_double_owner(p: PagePool) -> None:
    p._owned[3] = type(p._owned[2])()
    p._owned[3].add(55, 5)
    p._allocated += 5
    p._free.pages -= 5  # totals fudged to look right; the overlap must still show


def tamper_bad_count(p: PagePool) -> None:
    p._owned[1].counts[0] = 0


def tamper_out_of_range(p: PagePool) -> None:
    p._owned[1].counts[1] += 5
    p._owned[1].pages += 5
    p._allocated += 5


def tamper_empty_owner(p: PagePool) -> None:
    p._owned[9] = type(p._owned[1])()


def tamper_ragged_holdings(p: PagePool) -> None:
    p._owned[1].counts.append(3)  # a count with no start


def tamper_parked_with_pages(p: PagePool) -> None:
    p._parked[1] = p._owned.pop(1)  # an owner's pages hidden among owners that hold nothing


def tamper_parked_and_owner(p: PagePool) -> None:
    p._parked[2] = type(p._owned[2])()  # listed as holding nothing while it holds pages


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "tamper",
    [
        tamper_free_count,
        tamper_owned_overlap,
        tamper_lost_pages,
        tamper_cached_free,
        tamper_cached_allocated,
        tamper_unsorted,
        tamper_owner_unmerged,
        tamper_free_unmerged,
        tamper_free_end_map,
        tamper_misfiled,
        tamper_class_mask,
        tamper_double_owner,
        tamper_bad_count,
        tamper_out_of_range,
        tamper_empty_owner,
        tamper_ragged_holdings,
        tamper_parked_with_pages,
        tamper_parked_and_owner,
    ],
)
def test_audit_detects_corruption(tamper) -> None:
    pool = busy_pool()
    tamper(pool)
    problems = pool.audit()
    assert problems and all(isinstance(p, str) and p for p in problems)


@pytest.mark.timeout(5)
def test_audit_names_the_double_claim() -> None:
    pool = busy_pool()
    tamper_double_owner(pool)
    assert any("claimed twice" in p and "domain 2" in p and "domain 3" in p for p in pool.audit())
