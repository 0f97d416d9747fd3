"""The balloon driver state machine, driven with a fake clock and a fake hypervisor.

`FakeHypervisor` is a pool of free page frames with each domain's max_pages, granting what it
can as Xen's populate_physmap does; `serve` plays the guest's shell (carry out every action
the driver wants now); `simulate` advances a fake clock from wakeup to wakeup.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import pytest

from guest.generations import DriverGeneration
from guest.balloon import (
    Balloon,
    BalloonConfig,
    BalloonStats,
    Decrease,
    DriverState,
    Increase,
    StepResult,
)
from guest.memory import GuestMemory
from guest.pace import Slow, Stuck, StuckEvery
from wire.extent import Extent, total_pages

# -- test doubles ------------------------------------------------------------------------------


def _coalesce(frames: list[int]) -> list[Extent]:
    out: list[Extent] = []
    for f in sorted(frames):
        if out and out[-1].end == f:
            out[-1] = Extent(out[-1].start, out[-1].count + 1)
        else:
            out.append(Extent(f, 1))
    return out


class FakeHypervisor:
    """A host of `total_pages` frames: a free pool and the frames each domain owns."""

    def __init__(self, total_pages: int) -> None:
        self.total = total_pages
        self.free: list[int] = list(range(total_pages - 1, -1, -1))
        self.owned: dict[int, set[int]] = {}
        self.max_pages: dict[int, int] = {}
        self.populate_calls: list[tuple[int, int, int]] = []  # (domid, asked, granted)

    def create(self, domid: int, pages: int, max_pages: int) -> GuestMemory:
        self.owned[domid] = set()
        self.max_pages[domid] = max_pages
        granted = self.populate(domid, pages)
        assert total_pages(granted) == pages, "host too small for the scenario"
        return GuestMemory(granted)

    def populate(self, domid: int, nr: int) -> list[Extent]:
        """Xen: grant up to nr, short when the pool is short or at the domain's max_pages."""
        n = max(0, min(nr, len(self.free), self.max_pages[domid] - len(self.owned[domid])))
        frames = [self.free.pop() for _ in range(n)]
        self.owned[domid].update(frames)
        self.populate_calls.append((domid, nr, n))
        return _coalesce(frames)

    def release(self, domid: int, extents: Iterable[Extent]) -> None:
        frames = [f for e in extents for f in range(e.start, e.end)]
        assert len(set(frames)) == len(frames)
        assert set(frames) <= self.owned[domid], "a guest gave back pages it does not own"
        self.owned[domid] -= set(frames)
        self.free.extend(frames)

    def count(self, balloons: dict[int, Balloon]) -> None:
        """A cheap audit: page counts only."""
        assert len(self.free) + sum(len(frames) for frames in self.owned.values()) == self.total
        for domid, b in balloons.items():
            assert b.current_pages == len(self.owned[domid])

    def audit(self, balloons: dict[int, Balloon]) -> None:
        """The books balance and each guest's view matches the host's."""
        held = [f for frames in self.owned.values() for f in frames]
        assert len(held) == len(set(held))
        assert len(self.free) + len(held) == self.total
        assert not set(self.free) & set(held)
        for domid, b in balloons.items():
            mine = {p for e in b.memory.extents for p in range(e.start, e.end)}
            in_flight = b.in_flight
            if isinstance(in_flight, Decrease):
                mine |= {p for e in in_flight.extents for p in range(e.start, e.end)}
            assert mine == self.owned[domid]


def serve(hv: FakeHypervisor, domid: int, b: Balloon, now: float) -> list[Increase | Decrease]:
    """The guest's shell: carry out every action the driver wants at `now`."""
    done: list[Increase | Decrease] = []
    while (action := b.poll(now)) is not None:
        if isinstance(action, Increase):
            b.increase_done(hv.populate(domid, action.nr), now)
        else:
            hv.release(domid, action.extents)
            b.decrease_done(now)
        done.append(action)
        assert len(done) < 100_000
    return done


Event = tuple[float, Callable[[float], None]]


def simulate(
    hv: FakeHypervisor, balloons: dict[int, Balloon], until: float, events: Iterable[Event] = (), start: float = 0.0
) -> float:
    """Run every driver from wakeup to wakeup (and scheduled events), from `start` up to `until`.

    Returns the time of the last thing that happened.
    """
    pending = sorted(events, key=lambda e: e[0])
    now = start
    while True:
        while pending and pending[0][0] <= now:
            pending.pop(0)[1](now)
        for domid, b in balloons.items():
            serve(hv, domid, b, now)
        hv.count(balloons)
        times = [t for b in balloons.values() if (t := b.next_wakeup()) is not None]
        times += [t for t, _ in pending]
        if not times:
            break
        nxt = min(times)
        assert nxt >= now
        if nxt > until:
            break
        now = nxt
    hv.audit(balloons)
    return now


_next_frame = [10_000_000]


def fresh(count: int) -> list[Extent]:
    """Pages the test's hypervisor grants (frames never used before)."""
    if count == 0:
        return []
    start = _next_frame[0]
    _next_frame[0] += count + 1  # +1: never contiguous with the previous grant
    return [Extent(start, count)]


def make(current: int = 1000, maxmem: int = 100_000, workload: int = 0, pace=None, **config) -> Balloon:
    """A driver; the 3.1 generation (Kiper's backoff, unlimited retries) unless `generation` says."""
    memory = GuestMemory(fresh(current), workload_pages=workload)
    config.setdefault("generation", DriverGeneration.V3_1)
    return Balloon(memory, maxmem, config=BalloonConfig(**config), pace=pace)


def waits_of_consecutive_failures(b: Balloon, fail: Callable[[Balloon, float], None], n: int, now: float = 0.0):
    """Let `n` consecutive steps fail; return the waits between them."""
    waits = []
    for _ in range(n):
        fail(b, now)
        nxt = b.next_wakeup()
        assert nxt is not None
        assert b.poll(nxt - 1e-6) is None  # nothing happens before the timer
        waits.append(nxt - now)
        now = nxt
    return waits, now


def zero_grant(b: Balloon, now: float) -> None:
    action = b.poll(now)
    assert isinstance(action, Increase)
    b.increase_done([], now)


def blocked_decrease(b: Balloon, now: float) -> None:
    assert b.poll(now) is None  # nothing freeable: no RPC at all
    assert b.in_flight is None


# update_schedule() doubles schedule_delay (reset to 1) before the wait it arms, capped at
# max_schedule_delay = 32 (balloon_init)
BACKOFF = [2, 4, 8, 16, 32, 32, 32]

# -- the retry schedule ------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_backoff_for_increases_getting_zero_grants():
    b = make(current=1000)
    b.set_target(1200, 0.0)
    waits, _ = waits_of_consecutive_failures(b, zero_grant, 7)
    assert waits == BACKOFF
    assert b.stats().retry_count == 8
    assert b.stats().schedule_delay == 32
    assert b.state is DriverState.RETRYING


@pytest.mark.timeout(5)
def test_backoff_for_decreases_blocked_by_workload():
    b = make(current=1000, workload=1000)
    b.set_target(800, 0.0)
    waits, _ = waits_of_consecutive_failures(b, blocked_decrease, 7)
    assert waits == BACKOFF
    assert b.current_pages == 1000


@pytest.mark.timeout(5)
def test_backoff_keeps_the_cap_forever_with_unlimited_retries():
    b = make(current=10)
    b.set_target(20, 0.0)
    waits, _ = waits_of_consecutive_failures(b, zero_grant, 40)
    assert waits[6:] == [32] * 34
    assert b.stats().retry_count == 41


@pytest.mark.timeout(5)
def test_backoff_with_other_settings():
    b = make(current=10, retry_delay=0.25, max_retry_delay=3.0)
    b.set_target(20, 0.0)
    waits, _ = waits_of_consecutive_failures(b, zero_grant, 7)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


@pytest.mark.timeout(5)
def test_stats_schedule_delay_is_the_pending_wait():
    b = make(current=10)
    assert b.stats().schedule_delay == 1.0 and b.stats().retry_count == 1
    b.set_target(20, 0.0)
    zero_grant(b, 0.0)
    assert (b.stats().schedule_delay, b.stats().retry_count) == (2.0, 2)  # sysfs reads 2 after the first failure
    zero_grant(b, 2.0)
    assert (b.stats().schedule_delay, b.stats().retry_count) == (4.0, 3)


@pytest.mark.timeout(5)
def test_decrease_partly_blocked_gives_back_what_it_can_and_retries():
    b = make(current=1000, workload=950)
    b.set_target(800, 0.0)
    action = b.poll(0.0)
    assert isinstance(action, Decrease) and action.nr == 50
    assert b.current_pages == 950  # taken out of the guest already
    b.decrease_done(0.0)
    assert b.next_wakeup() == 2.0  # a short decrease is EAGAIN
    assert b.poll(0.0) is None
    assert b.stats().retry_count == 2


@pytest.mark.timeout(5)
def test_progress_resets_the_backoff():
    b = make(current=1000)
    b.set_target(1300, 0.0)
    _, now = waits_of_consecutive_failures(b, zero_grant, 4)  # waits 2, 4, 8, 16
    assert now == 30.0
    action = b.poll(now)
    assert action == Increase(300)
    b.increase_done(fresh(100), now)  # some progress: DONE
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)
    assert b.next_wakeup() == now  # loop continues at once
    waits, _ = waits_of_consecutive_failures(b, zero_grant, 3, now)
    assert waits == [2, 4, 8]


@pytest.mark.timeout(5)
def test_decrease_progress_resets_the_backoff():
    b = make(current=1000, workload=1000)
    b.set_target(500, 0.0)
    _, now = waits_of_consecutive_failures(b, blocked_decrease, 5)
    assert b.stats().retry_count == 6
    b.memory.workload_pages = 0
    action = b.poll(now)
    assert isinstance(action, Decrease) and action.nr == 500
    b.decrease_done(now)
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)
    assert b.state is DriverState.DONE
    assert b.next_wakeup() is None


@pytest.mark.timeout(5)
def test_partial_grant_is_kept_and_the_loop_continues():
    b = make(current=1000)
    b.set_target(1400, 0.0)
    assert b.poll(0.0) == Increase(400)
    b.increase_done(fresh(150), 0.0)
    assert b.current_pages == 1150
    assert b.stats().retry_count == 1  # a partial grant is progress
    assert b.poll(0.0) == Increase(250)  # at once
    b.increase_done([], 0.0)  # now nothing: EAGAIN
    assert b.current_pages == 1150
    assert b.next_wakeup() == 2.0
    assert b.stats().retry_count == 2
    assert b.poll(2.0) == Increase(250)


@pytest.mark.timeout(5)
def test_batches_of_at_most_512_up():
    b = make(current=1000)
    b.set_target(3000, 0.0)
    asked = []
    while (action := b.poll(0.0)) is not None:
        asked.append(action.nr)
        b.increase_done(fresh(action.nr), 0.0)
    assert asked == [512, 512, 512, 464]
    assert b.current_pages == 3000
    assert b.state is DriverState.DONE
    assert b.next_wakeup() is None


@pytest.mark.timeout(5)
def test_batches_of_at_most_512_down():
    b = make(current=3000)
    b.set_target(1000, 0.0)
    given = []
    while (action := b.poll(0.0)) is not None:
        given.append(action.nr)
        b.decrease_done(0.0)
    assert given == [512, 512, 512, 464]
    assert b.current_pages == 1000
    assert b.state is DriverState.DONE


@pytest.mark.timeout(5)
def test_batch_size_is_a_setting():
    b = make(current=0, batch_pages=100)
    b.set_target(250, 0.0)
    assert [serve_one(b, 0.0) for _ in range(3)] == [100, 100, 50]


def serve_one(b: Balloon, now: float) -> int:
    action = b.poll(now)
    if isinstance(action, Increase):
        b.increase_done(fresh(action.nr), now)
    else:
        b.decrease_done(now)
    return action.nr


@pytest.mark.timeout(5)
def test_decrease_gives_back_the_most_recent_pages_first():
    memory = GuestMemory([Extent(0, 100)])
    memory.add([Extent(500, 30)])
    b = Balloon(memory, 1000)
    b.set_target(90, 0.0)
    action = b.poll(0.0)
    assert action == Decrease((Extent(90, 10), Extent(500, 30)))


@pytest.mark.timeout(5)
def test_decrease_stops_at_the_workload_floor():
    hv = FakeHypervisor(5000)
    memory = hv.create(1, 1000, 5000)
    memory.workload_pages = 700
    b = Balloon(memory, 5000, config=BalloonConfig(generation=DriverGeneration.V3_1))
    b.set_target(0, 0.0)
    now = simulate(hv, {1: b}, until=10.0)
    assert b.current_pages == 700
    assert b.state is DriverState.RETRYING
    assert b.stats().retry_count > 2
    # the guest's workload shrinks: the next retry gives back what became free
    memory.workload_pages = 200
    now = simulate(hv, {1: b}, until=100.0, start=now)
    assert b.current_pages == 200
    memory.workload_pages = 0
    simulate(hv, {1: b}, until=1000.0, start=now)
    assert b.current_pages == 0
    assert b.state is DriverState.DONE
    assert len(hv.free) == 5000


@pytest.mark.timeout(5)
def test_target_is_capped_at_maxmem():
    b = make(current=1000, maxmem=1200)
    b.set_target(5000, 0.0)
    assert b.poll(0.0) == Increase(200)
    b.increase_done(fresh(200), 0.0)
    assert b.poll(0.0) is None
    assert b.state is DriverState.DONE
    assert b.next_wakeup() is None
    assert b.stats().target_kb == 5000 * 4  # sysfs shows the target as written
    assert b.stats().low_kb == 0


@pytest.mark.timeout(5)
def test_lowering_maxmem_below_current_balloons_down():
    b = make(current=1000, maxmem=2000)
    b.set_maxmem(600, 0.0)
    assert isinstance(b.poll(0.0), Decrease)


# -- cancellation ------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_max_retries_cancels_and_set_target_resumes():
    # As Linux: retry_count starts at 1 and counts tries; the try that would make it exceed
    # max_retry_count (the 4th consecutive failure, "retry" 4 in Linux's numbering) cancels.
    b = make(current=1000, max_retries=4)
    b.set_target(1100, 0.0)
    waits, now = waits_of_consecutive_failures(b, zero_grant, 3)
    assert waits == [2, 4, 8]
    assert b.stats().retry_count == 4
    zero_grant(b, now)
    assert b.state is DriverState.CANCELLED
    assert b.next_wakeup() is None  # ECANCELED: no timer
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)
    assert b.poll(now + 10_000) is None
    b.set_target(1100, now + 10_000)  # even the same value resumes
    assert b.state is DriverState.RETRYING
    assert b.poll(now + 10_000) == Increase(100)
    b.increase_done([], now + 10_000)
    assert b.next_wakeup() == now + 10_002  # a fresh backoff


@pytest.mark.timeout(5)
def test_max_retries_cancels_decreases_too():
    b = make(current=1000, workload=1000, max_retries=2)
    b.set_target(500, 0.0)
    blocked_decrease(b, 0.0)
    assert b.next_wakeup() == 2.0
    blocked_decrease(b, 2.0)
    assert b.state is DriverState.CANCELLED and b.next_wakeup() is None
    b.memory.workload_pages = 0
    assert b.poll(1000.0) is None  # freeing memory does not resume a cancelled driver
    b.set_target(500, 1000.0)
    assert b.poll(1000.0).nr == 500


@pytest.mark.timeout(5)
def test_maxmem_change_does_not_resume_a_cancelled_driver():
    b = make(current=1000, maxmem=2000, max_retries=1)
    b.set_target(1100, 0.0)
    zero_grant(b, 0.0)
    assert b.state is DriverState.CANCELLED
    b.set_maxmem(500, 1.0)
    assert b.poll(1.0) is None and b.next_wakeup() is None
    b.set_target(1100, 2.0)
    assert isinstance(b.poll(2.0), Decrease)  # capped at the new maxmem


@pytest.mark.timeout(5)
def test_set_target_during_the_cancelling_request_still_runs():
    b = make(current=1000, max_retries=1)
    b.set_target(1100, 0.0)
    assert b.poll(0.0) == Increase(100)
    b.set_target(1050, 0.5)  # written while the request is in flight
    b.increase_done([], 0.6)  # ECANCELED, but the new target queued the worker
    assert b.state is DriverState.RETRYING
    assert b.next_wakeup() == 0.5
    assert b.poll(0.6) == Increase(50)


# -- set_target --------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_balloon_set_new_target_does_not_preempt_a_pending_backoff():
    # 3.1: balloon_set_new_target() calls schedule_delayed_work(&balloon_worker, 0), a no-op
    # while the delayed work is pending: the new target waits for the armed backoff.
    b = make(current=1000)
    b.set_target(1100, 0.0)
    _, now = waits_of_consecutive_failures(b, zero_grant, 3)  # waits 2, 4, 8
    assert now == 14.0
    zero_grant(b, now)
    assert b.next_wakeup() == 30.0  # schedule_delay 16
    b.set_target(1200, 20.0)
    assert b.next_wakeup() == 30.0 and b.poll(20.0) is None
    assert b.poll(30.0) == Increase(200)
    b.increase_done([], 30.0)
    assert b.next_wakeup() == 30.0 + 32  # the counters carried on
    assert b.stats().retry_count == 6


@pytest.mark.timeout(5)
def test_balloon_set_new_target_runs_an_idle_worker_at_once():
    b = make(current=1000, max_retries=1)  # 3.1 with max_retry_count written: a cancel
    b.set_target(1100, 0.0)
    zero_grant(b, 0.0)
    assert b.state is DriverState.CANCELLED and b.next_wakeup() is None  # no work pending
    b.set_target(1100, 5.0)  # nothing pending: schedule_delayed_work(.., 0) queues it now
    assert b.poll(5.0) == Increase(100)


@pytest.mark.timeout(5)
def test_set_target_while_a_request_is_in_flight_runs_right_after_the_reply():
    b = make(current=1000)
    b.set_target(1100, 0.0)
    assert b.poll(0.0) == Increase(100)
    assert b.next_wakeup() is None  # awaiting the reply
    b.set_target(1000, 0.2)
    assert b.poll(0.2) is None  # one request at a time
    b.increase_done([], 0.3)
    assert b.next_wakeup() == 0.2
    assert b.poll(0.3) is None  # target == current: a DONE step
    assert b.state is DriverState.DONE
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)


@pytest.mark.timeout(5)
def test_idle_driver_does_nothing():
    b = make(current=1000)
    assert b.target_pages == 1000
    assert b.poll(0.0) is None and b.next_wakeup() is None
    assert b.state is DriverState.DONE
    b.set_target(1000, 5.0)
    assert b.poll(5.0) is None and b.next_wakeup() is None


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_bad_target_is_refused_without_change(bad):
    b = make(current=1000)
    with pytest.raises(ValueError):
        b.set_target(bad, 0.0)
    assert b.target_pages == 1000 and b.next_wakeup() is None
    with pytest.raises(ValueError):
        b.set_maxmem(bad, 0.0)


# -- failed requests and protocol misuse -------------------------------------------------------


@pytest.mark.timeout(5)
def test_failed_decrease_puts_the_pages_back():
    b = make(current=1000)
    before = b.memory.extents
    b.set_target(700, 0.0)
    action = b.poll(0.0)
    assert isinstance(action, Decrease) and action.nr == 300
    assert b.current_pages == 700
    b.request_failed(0.0)
    assert b.current_pages == 1000
    assert b.memory.extents == before
    assert b.next_wakeup() == 2.0  # EAGAIN
    assert b.stats().retry_count == 2
    assert b.poll(2.0) == action  # the same pages, offered again


@pytest.mark.timeout(5)
def test_failed_increase_is_eagain():
    b = make(current=1000)
    b.set_target(1100, 0.0)
    b.poll(0.0)
    b.request_failed(0.0)
    assert b.current_pages == 1000
    assert b.next_wakeup() == 2.0
    b.poll(2.0)
    b.request_failed(2.0)
    assert b.next_wakeup() == 6.0


@pytest.mark.timeout(5)
def test_replies_without_a_request_are_refused():
    b = make(current=1000)
    with pytest.raises(RuntimeError):
        b.increase_done([], 0.0)
    with pytest.raises(RuntimeError):
        b.decrease_done(0.0)
    with pytest.raises(RuntimeError):
        b.request_failed(0.0)
    b.set_target(1100, 0.0)
    b.poll(0.0)
    with pytest.raises(RuntimeError):
        b.decrease_done(0.0)  # an Increase is in flight


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "granted", [[Extent(0, 101)], [Extent(0, 60), Extent(100, 60)], [Extent(5, 0)], [Extent(-1, 2)]]
)
def test_bad_grants_are_refused_without_change(granted):
    b = make(current=1000)
    b.set_target(1100, 0.0)
    b.poll(0.0)
    with pytest.raises(ValueError):
        b.increase_done(granted, 0.0)
    assert b.current_pages == 1000
    assert b.in_flight == Increase(100)
    b.increase_done(fresh(100), 0.0)  # the real reply is still accepted
    assert b.current_pages == 1100


# -- legacy mode (before the commit) -----------------------------------------------------------


@pytest.mark.timeout(5)
def test_increase_reservation_hard_limit_is_returned_and_reprobed_in_the_same_pass():
    # classic increase_reservation(): rc < nr_pages hands the rc pages back, sets hard_limit =
    # current + rc and returns 0, so balloon_process()'s loop re-probes at once (credit =
    # current_target() - current = rc); at the limit current_target() == current: no timer.
    b = make(current=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(1600, 0.0)
    assert b.poll(0.0) == Increase(512)
    granted = fresh(100)
    b.increase_done(granted, 0.0)
    assert b.current_pages == 1000  # not kept
    assert b.hard_limit == 1100
    assert b.effective_target == 1100
    assert b.next_wakeup() == 0.0
    assert b.poll(0.0) == Decrease(tuple(granted))  # handed straight back
    assert b.stats().retry_count is None  # the old driver kept no such count
    b.decrease_done(0.0)
    assert b.current_pages == 1000
    # it re-probes up to the hard limit in the same pass, never above it
    assert b.next_wakeup() == 0.0
    assert b.poll(0.0) == Increase(100)
    b.increase_done(fresh(100), 0.0)
    assert b.current_pages == 1100
    assert b.state is DriverState.HARD_LIMITED
    assert b.stats().hard_limit_kb == 1100 * 4
    assert b.next_wakeup() is None
    assert b.poll(10_000.0) is None  # memory may have freed: no tries above the limit
    b.set_target(1600, 10_000.0)  # written again, same value: the limit is gone
    assert b.hard_limit is None
    assert b.poll(10_000.0) == Increase(500)


@pytest.mark.timeout(5)
def test_legacy_zero_grant_is_a_hard_limit_at_current():
    b = make(current=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(1600, 0.0)
    b.poll(0.0)
    b.increase_done([], 0.0)
    assert b.hard_limit == 1000
    assert b.state is DriverState.HARD_LIMITED
    assert b.next_wakeup() is None
    assert b.stats().to_dict()["state"] == "hard-limited"


@pytest.mark.timeout(5)
def test_legacy_full_grants_behave_normally():
    b = make(current=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(2000, 0.0)
    asked = []
    while (a := b.poll(0.0)) is not None:
        asked.append(a.nr)
        b.increase_done(fresh(a.nr), 0.0)
    assert asked == [512, 488]
    assert b.state is DriverState.DONE and b.hard_limit is None


@pytest.mark.timeout(5)
def test_legacy_retries_on_a_fixed_delay():
    b = make(current=1000, workload=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(500, 0.0)
    waits, _ = waits_of_consecutive_failures(b, blocked_decrease, 6)
    assert waits == [1, 1, 1, 1, 1, 1]
    b2 = make(current=1000, generation=DriverGeneration.PRE_PATCH, retry_delay=0.5)
    b2.set_target(1100, 0.0)
    b2.poll(0.0)
    b2.request_failed(0.0)  # a failed RPC is not a hard limit
    assert b2.hard_limit is None
    assert b2.next_wakeup() == 0.5


@pytest.mark.timeout(5)
def test_legacy_never_cancels():
    b = make(current=1000, workload=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(500, 0.0)
    waits, _ = waits_of_consecutive_failures(b, blocked_decrease, 5)
    assert waits == [1] * 5
    assert b.state is DriverState.RETRYING


@pytest.mark.timeout(5)
def test_legacy_failed_handback_keeps_the_pages():
    b = make(current=1000, generation=DriverGeneration.PRE_PATCH)
    b.set_target(1600, 0.0)
    b.poll(0.0)
    b.increase_done(fresh(100), 0.0)
    assert isinstance(b.poll(0.0), Decrease)
    b.request_failed(0.0)
    assert b.current_pages == 1100  # the guest still holds them: nothing lost
    assert b.poll(1.0) is None
    assert b.state is DriverState.HARD_LIMITED


# -- pace ------------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_slow_guest_moves_at_its_rate():
    hv = FakeHypervisor(10_000)
    b = Balloon(hv.create(1, 1000, 10_000), 10_000, pace=Slow(100, created=0.0))
    b.set_target(2000, 0.0)
    now = simulate(hv, {1: b}, until=5.0)
    assert 490 <= b.current_pages - 1000 <= 500
    assert b.stats().retry_count == 1  # waiting for the pace is not failing
    end = simulate(hv, {1: b}, until=100.0, start=now)
    assert b.current_pages == 2000
    assert end == pytest.approx(10.0)
    b.set_target(1500, 100.0)
    simulate(hv, {1: b}, until=102.0, start=100.0)
    assert 1500 <= b.current_pages <= 1800  # down at most 200 + the saved-up batch


@pytest.mark.timeout(5)
def test_slow_guest_step_bounded_by_allowance():
    b = make(current=1000, pace=Slow(10, created=0.0))
    b.set_target(2000, 0.0)
    assert b.poll(0.0) is None
    assert b.next_wakeup() == pytest.approx(0.1)
    assert b.poll(3.0) == Increase(30)  # the tokens saved since creation, here 3 s of them
    b.increase_done(fresh(30), 3.0)
    assert b.poll(3.0) is None
    assert b.next_wakeup() == pytest.approx(3.1)


@pytest.mark.timeout(5)
def test_stuck_guest_never_acts():
    b = make(current=1000, pace=Stuck())
    b.set_target(2000, 0.0)
    assert b.poll(0.0) is None
    assert b.next_wakeup() is None
    b.set_target(0, 50.0)
    assert b.poll(50.0) is None and b.poll(1e6) is None
    assert b.current_pages == 1000
    assert b.state is DriverState.RETRYING
    assert b.stats().retry_count == 1


@pytest.mark.timeout(5)
def test_stuck_every_guest_alternates():
    hv = FakeHypervisor(100_000)
    b = Balloon(hv.create(1, 1000, 100_000), 100_000, pace=StuckEvery(10, created=0.0))
    b.set_target(3000, 12.0)  # written during the stuck phase [10, 20)
    assert b.poll(12.0) is None
    assert b.next_wakeup() == 20.0
    now = simulate(hv, {1: b}, until=19.9, start=12.0, events=[(15.0, lambda now: b.set_target(3000, now))])
    assert b.current_pages == 1000
    simulate(hv, {1: b}, until=20.0, start=now)
    assert b.current_pages == 3000  # moving phase: at full speed
    b.set_target(500, 25.0)  # still moving until 30
    actions = serve(hv, 1, b, 25.0)
    assert b.current_pages == 500 and len(actions) == 5


@pytest.mark.timeout(5)
def test_stuck_every_guest_stops_mid_chase():
    b = make(current=0, pace=StuckEvery(10, created=0.0))
    b.set_target(1000, 9.0)
    assert serve_one(b, 9.0) == 512
    # the phase turns at 10 before the next step
    assert b.poll(10.0) is None
    assert b.next_wakeup() == 20.0
    assert b.poll(20.0) == Increase(488)


# -- statistics --------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_stats_figures():
    b = make(current=1000, maxmem=4096, max_retries=7, max_retry_delay=16.0)
    s = b.stats()
    assert s == BalloonStats(
        target_kb=4000,
        current_kb=4000,
        low_kb=(4096 - 1000) * 4,
        high_kb=0,
        schedule_delay=1.0,
        max_schedule_delay=16.0,
        retry_count=1,
        max_retry_count=7,
        state="done",
        driver="3.1",
        hard_limit_kb=None,
    )
    b.set_target(1500, 0.0)
    b.poll(0.0)
    b.increase_done(fresh(200), 0.0)
    zero_grant(b, 0.0)
    zero_grant(b, 2.0)
    s = b.stats()
    assert (s.target_kb, s.current_kb, s.low_kb) == (6000, 4800, (4096 - 1200) * 4)
    assert (s.schedule_delay, s.retry_count, s.state) == (4.0, 3, "retrying")


@pytest.mark.timeout(5)
def test_stats_to_dict_is_plain():
    b = make(current=10, generation=DriverGeneration.PRE_PATCH)
    b.set_target(20, 0.0)
    b.poll(0.0)
    b.increase_done(fresh(3), 0.0)
    d = b.stats().to_dict()
    # the pre-patch driver has no schedule_delay/retry files: those figures are left out
    lacking = {"schedule_delay", "max_schedule_delay", "retry_count", "max_retry_count"}
    assert set(d) == {f.name for f in dataclasses.fields(BalloonStats)} - lacking
    assert d["hard_limit_kb"] == 13 * 4
    for value in d.values():
        assert value is None or type(value) in (int, float, str)


@pytest.mark.timeout(5)
def test_enums():
    assert [s.value for s in DriverState] == ["done", "retrying", "cancelled", "hard-limited"]
    assert {r.name for r in StepResult} == {"DONE", "EAGAIN", "ECANCELED"}


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "bad",
    [
        {"retry_delay": 0},
        {"retry_delay": -1},
        {"retry_delay": "1"},
        {"max_retry_delay": 0.5},
        {"max_retry_delay": 0},
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"batch_pages": 0},
        {"batch_pages": 2.0},
        {"generation": "3.1"},
        {"generation": DriverGeneration.SEED, "max_retries": 2},  # seed has no retry count
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        BalloonConfig(**bad)


@pytest.mark.timeout(5)
def test_config_defaults():
    c = BalloonConfig()
    assert (c.generation, c.retry_delay, c.max_retry_delay, c.max_retries, c.batch_pages) == (
        DriverGeneration.CURRENT, 1.0, 32.0, None, 512,
    )
    BalloonConfig(retry_delay=2.0, max_retry_delay=2.0)  # max == initial is fine


# -- the scenario of the patch -----------------------------------------------------------------


def patch_scenario(generation: DriverGeneration):
    """Host nearly full; A and B balloon down slowly while C and D balloon up.

    8192 pages; A and B hold 3000 each, C and D 1000 each: 192 free. The toolstack sets A to
    1000 and B to 2000 (they move 200 and 100 pages/s) and C and D to 2500 each, which fits
    once A and B are done (192 + 3000 = 3000 + 192).
    """
    hv = FakeHypervisor(8192)
    config = BalloonConfig(generation=generation)
    b = {
        1: Balloon(hv.create(1, 3000, 4000), 4000, config=config, pace=Slow(200, created=0.0)),
        2: Balloon(hv.create(2, 3000, 4000), 4000, config=config, pace=Slow(100, created=0.0)),
        3: Balloon(hv.create(3, 1000, 4000), 4000, config=config),
        4: Balloon(hv.create(4, 1000, 4000), 4000, config=config),
    }
    targets = {1: 1000, 2: 2000, 3: 2500, 4: 2500}
    for domid, t in targets.items():
        b[domid].set_target(t, 0.0)
    return hv, b, targets


@pytest.mark.timeout(5)
@pytest.mark.parametrize("generation", [DriverGeneration.SEED, DriverGeneration.V3_1])
def test_patch_scenario_retrying_driver_reaches_every_target(generation):
    hv, b, targets = patch_scenario(generation)
    now = simulate(hv, b, until=2.5)
    assert b[3].current_pages < 2500 and b[4].current_pages < 2500  # the up-ballooners wait
    assert all(x.failed_steps >= 1 for x in (b[3], b[4]))
    # with short grants KEPT along the way
    assert any(0 < granted < asked for _, asked, granted in hv.populate_calls)
    end = simulate(hv, b, until=1000.0, start=now)
    assert b[1].current_pages == 1000 and b[2].current_pages == 2000  # down by t = 10 s
    for domid, t in targets.items():
        assert b[domid].current_pages == t
        assert b[domid].state is DriverState.DONE
        assert b[domid].stats().retry_count in (1, None)
    assert end < 10 + 32 + 1  # reached on the backoff timer soon after memory freed
    assert len(hv.free) == 192
    hv.audit(b)


@pytest.mark.timeout(5)
def test_patch_scenario_legacy_driver_stays_below_target():
    hv, b, targets = patch_scenario(DriverGeneration.PRE_PATCH)
    simulate(hv, b, until=1000.0)
    assert b[1].current_pages == 1000 and b[2].current_pages == 2000
    limited = [d for d in (3, 4) if b[d].current_pages < targets[d]]
    assert limited, "a guest that met the shortage should have stopped"
    for d in limited:
        assert b[d].state is DriverState.HARD_LIMITED
        assert b[d].next_wakeup() is None
    assert len(hv.free) >= 2500 - b[limited[0]].current_pages  # the memory is there, unused
    # only writing the target again (same value) lets them reach it
    for d in limited:
        b[d].set_target(targets[d], 1000.0)
    simulate(hv, b, until=2000.0, start=1000.0)
    for domid, t in targets.items():
        assert b[domid].current_pages == t
    hv.audit(b)
