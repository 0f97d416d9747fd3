"""GuestMemory: populated pages as extents, the workload floor, LIFO take and exact put_back."""

from __future__ import annotations

import pytest

from guest.memory import GuestMemory, checked_extents
from wire.extent import Extent, total_pages


@pytest.mark.timeout(5)
def test_empty_memory():
    m = GuestMemory()
    assert m.current_pages == 0
    assert m.freeable_pages == 0
    assert m.extents == []
    assert m.take(10) == []


@pytest.mark.timeout(5)
def test_add_keeps_grant_order_and_merges_contiguous_neighbours():
    m = GuestMemory([Extent(100, 10)])
    m.add([Extent(110, 5), Extent(0, 3)])
    m.add([Extent(50, 2)])
    assert m.extents == [Extent(100, 15), Extent(0, 3), Extent(50, 2)]
    assert m.current_pages == 20


@pytest.mark.timeout(5)
def test_freeable_is_current_minus_workload_never_negative():
    m = GuestMemory([Extent(0, 100)], workload_pages=30)
    assert m.freeable_pages == 70
    m.workload_pages = 100
    assert m.freeable_pages == 0
    m.workload_pages = 500
    assert m.freeable_pages == 0
    m.workload_pages = 0
    assert m.freeable_pages == 100


@pytest.mark.timeout(5)
def test_take_is_lifo_from_the_most_recent_grant_and_splits():
    m = GuestMemory([Extent(0, 10), Extent(100, 5)])
    taken = m.take(7)
    # the whole newest extent, then the top 2 pages of the older one; returned oldest first
    assert taken == [Extent(8, 2), Extent(100, 5)]
    assert m.extents == [Extent(0, 8)]
    assert m.current_pages == 8


@pytest.mark.timeout(5)
def test_take_stops_at_the_workload_floor():
    m = GuestMemory([Extent(0, 100)], workload_pages=60)
    taken = m.take(512)
    assert total_pages(taken) == 40
    assert m.current_pages == 60
    assert m.take(1) == []
    assert m.current_pages == 60


@pytest.mark.timeout(5)
def test_take_exact_extent_boundary():
    m = GuestMemory([Extent(0, 4), Extent(10, 4)])
    assert m.take(4) == [Extent(10, 4)]
    assert m.extents == [Extent(0, 4)]


@pytest.mark.timeout(5)
def test_take_zero_changes_nothing():
    m = GuestMemory([Extent(0, 4)])
    assert m.take(0) == []
    assert m.extents == [Extent(0, 4)]


@pytest.mark.timeout(5)
def test_put_back_undoes_take_exactly():
    before = [Extent(0, 10), Extent(100, 5), Extent(50, 7)]
    m = GuestMemory(before)
    for n in range(0, 23):
        taken = m.take(n)
        assert total_pages(taken) == min(n, 22)
        m.put_back(taken)
        assert m.extents == before
        assert m.current_pages == 22


@pytest.mark.timeout(5)
def test_taken_pages_are_disjoint_and_were_held():
    m = GuestMemory([Extent(0, 10), Extent(100, 5), Extent(50, 7)])
    held = {p for e in m.extents for p in range(e.start, e.end)}
    seen: set[int] = set()
    while taken := m.take(3):
        for e in taken:
            pages = set(range(e.start, e.end))
            assert pages <= held and not pages & seen
            seen |= pages
    assert seen == held


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [[Extent(0, 0)], [Extent(-1, 3)], [(1.5, 2)], [(True, 2)], [(1, 2, 3)], [5]])
def test_bad_extents_are_refused_without_change(bad):
    m = GuestMemory([Extent(0, 4)])
    with pytest.raises(ValueError):
        m.add([Extent(10, 1), *bad])
    assert m.extents == [Extent(0, 4)]
    assert m.current_pages == 4


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [-1, 1.0, True, "3"])
def test_bad_counts_are_refused(bad):
    m = GuestMemory([Extent(0, 4)])
    with pytest.raises(ValueError):
        m.take(bad)
    with pytest.raises(ValueError):
        m.workload_pages = bad
    with pytest.raises(ValueError):
        GuestMemory(workload_pages=bad)


@pytest.mark.timeout(5)
def test_checked_extents_accepts_pairs():
    assert checked_extents([(3, 4), [10, 1]]) == [Extent(3, 4), Extent(10, 1)]
