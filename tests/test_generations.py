"""One test per rule of each driver generation, named after the Linux function it follows.

Expected values are written from the sources guest/generations.py cites (mainline
drivers/xen/balloon.c as 2.6.36, 3.x and today; classic XenLinux drivers/xen/balloon/balloon.c),
not from running the code.
"""

from __future__ import annotations

import pytest

from guest.balloon import Balloon, BalloonConfig, Decrease, DriverState, Increase, TuneRefused
from guest.floor import minimum_target_pages
from guest.generations import RULES, DriverGeneration
from guest.memory import GuestMemory
from wire.extent import Extent

pytestmark = pytest.mark.timeout(5)

PRE, SEED, V31, CURRENT = DriverGeneration.PRE_PATCH, DriverGeneration.SEED, DriverGeneration.V3_1, DriverGeneration.CURRENT
_frame = [1_000_000]


def fresh(count: int) -> list[Extent]:
    if count == 0:
        return []
    start = _frame[0]
    _frame[0] += count + 1
    return [Extent(start, count)]


def make(gen: DriverGeneration, current: int = 1000, maxmem: int = 100_000, floor: int = 0, workload: int = 0, **config) -> Balloon:
    memory = GuestMemory(fresh(current), workload_pages=workload, kernel_floor_pages=floor)
    return Balloon(memory, maxmem, config=BalloonConfig(generation=gen, **config))


def fail_increase(b: Balloon, now: float) -> float | None:
    """One step whose populate_physmap grants nothing; returns the next wakeup."""
    assert isinstance(b.poll(now), Increase)
    b.increase_done([], now)
    return b.next_wakeup()


def waits(b: Balloon, n: int, now: float = 0.0) -> tuple[list[float], float]:
    out = []
    for _ in range(n):
        nxt = fail_increase(b, now)
        if nxt is None:
            break
        out.append(nxt - now)
        now = nxt
    return out, now


# -- 3.1 and current: update_schedule(), balloon_init() ------------------------------------------


@pytest.mark.parametrize("gen", [V31, CURRENT])
def test_balloon_init_defaults(gen):
    s = make(gen).stats()
    # schedule_delay = 1, max_schedule_delay = 32, retry_count = 1; max_retry_count
    # RETRY_UNLIMITED (0) in 3.x, 4 since the CVE-2019-17351 fix
    assert (s.schedule_delay, s.max_schedule_delay, s.retry_count) == (1.0, 32.0, 1)
    assert s.max_retry_count == {V31: 0, CURRENT: 4}[gen]


def test_update_schedule_doubles_before_the_wait():
    b = make(V31)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    assert b.stats().schedule_delay == 2.0  # sysfs reads 2 after the first failure
    b2 = make(V31)
    b2.set_target(1100, 0.0)
    assert waits(b2, 7)[0] == [2, 4, 8, 16, 32, 32, 32]


def test_update_schedule_cancels_past_max_retry_count():
    # current: retry_count 1 -> 2, 3, 4 waiting 2, 4, 8; the 4th failure makes it 5 > 4: BP_ECANCELED
    b = make(CURRENT)
    b.set_target(1100, 0.0)
    ws, now = waits(b, 3)
    assert ws == [2, 4, 8] and now == 14.0
    fail_increase(b, now)
    assert b.state is DriverState.CANCELLED
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)  # both reset


def test_balloon_thread_sleeps_an_hour_when_cancelled():
    # balloon_thread(): BP_ECANCELED -> timeout = 3600 * HZ, then another step
    b = make(CURRENT, max_retries=1)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    assert b.state is DriverState.CANCELLED
    assert b.next_wakeup() == 3600.0
    assert b.poll(3599.0) is None
    assert b.poll(3600.0) == Increase(100)


def test_balloon_process_does_not_rearm_after_ecanceled():
    # 3.1 balloon_process(): only BP_EAGAIN schedules the delayed work
    b = make(V31, max_retries=1)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    assert b.state is DriverState.CANCELLED and b.next_wakeup() is None


@pytest.mark.parametrize("gen", [V31, CURRENT])
def test_increase_reservation_partial_grant_is_bp_done(gen):
    # rc > 0 is BP_DONE: pages kept, counters reset, the next step at once
    b = make(gen)
    b.set_target(1400, 0.0)
    fail_increase(b, 0.0)  # retry_count 2, schedule_delay 2
    assert b.poll(2.0) == Increase(400)
    b.increase_done(fresh(100), 2.0)
    assert b.current_pages == 1100
    assert (b.stats().retry_count, b.stats().schedule_delay) == (1, 1.0)
    assert b.poll(2.0) == Increase(300)


# -- what a target write does to a waiting driver --------------------------------------------------


def test_balloon_set_new_target_schedule_delayed_work_is_a_noop_while_pending():
    b = make(V31)
    b.set_target(1100, 0.0)
    ws, now = waits(b, 3)  # 2, 4, 8: the next run is due at 14 + 16 = 30
    assert now == 14.0
    fail_increase(b, now)
    b.set_target(5000, 20.0)
    assert b.next_wakeup() == 30.0 and b.poll(20.0) is None


def test_balloon_thread_cond_wakes_only_if_the_credit_changed():
    b = make(CURRENT)
    b.set_target(1100, 0.0)
    assert fail_increase(b, 0.0) == 2.0
    b.set_target(1100, 1.0)  # the same value: current_credit() is what it was: no wake
    assert b.next_wakeup() == 2.0 and b.poll(1.0) is None
    b.set_target(1200, 1.5)  # a new credit: the thread runs now
    assert b.poll(1.5) == Increase(200)


def test_balloon_thread_cond_same_target_does_not_resume_a_cancelled_thread():
    b = make(CURRENT, max_retries=1)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    b.set_target(1100, 10.0)
    assert b.state is DriverState.CANCELLED and b.poll(10.0) is None
    b.set_target(1050, 11.0)
    assert b.poll(11.0) == Increase(50)


def test_balloon_thread_keeps_balloon_state_on_a_step_with_no_credit():
    # The target is written back to current during a backoff: the credit changed, the thread
    # wakes, neither branch runs, and update_schedule() sees BP_EAGAIN again.
    b = make(CURRENT)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    b.set_target(1000, 1.0)
    assert b.poll(1.0) is None
    assert (b.stats().retry_count, b.stats().schedule_delay) == (3, 4.0)
    # 3.1's balloon_process() starts each pass from BP_DONE: the same write resets
    c = make(V31)
    c.set_target(1100, 0.0)
    fail_increase(c, 0.0)
    c.set_target(1000, 1.0)  # nothing pending? the backoff is: it runs at 2
    assert c.poll(2.0) is None
    assert (c.stats().retry_count, c.stats().schedule_delay) == (1, 1.0)


@pytest.mark.parametrize("gen", [PRE, SEED])
def test_balloon_set_new_target_schedule_work_runs_at_once(gen):
    b = make(gen, workload=1000)
    b.set_target(500, 0.0)
    assert b.poll(0.0) is None and b.next_wakeup() == 1.0  # nothing freeable: the 1 s timer
    b.set_target(1500, 0.5)
    assert b.poll(0.5) == Increase(500)


# -- seed ------------------------------------------------------------------------------------------


def test_seed_balloon_process_retries_on_a_fixed_one_second_timer():
    b = make(SEED)
    b.set_target(1100, 0.0)
    ws, _ = waits(b, 40)
    assert ws == [1.0] * 40  # mod_timer(&balloon_timer, jiffies + HZ): no doubling, no cancel
    assert b.state is DriverState.RETRYING


def test_seed_increase_reservation_short_grant_is_kept_and_sleeps():
    # returns rc != nr_pages: need_sleep, so the loop stops and the timer rearms
    b = make(SEED)
    b.set_target(1400, 0.0)
    assert b.poll(0.0) == Increase(400)
    b.increase_done(fresh(100), 0.0)
    assert b.current_pages == 1100
    assert b.poll(0.0) is None and b.next_wakeup() == 1.0


@pytest.mark.parametrize("gen", [PRE, SEED])
def test_sysfs_has_no_retry_files_before_the_backoff(gen):
    d = make(gen).stats().to_dict()
    assert not {"schedule_delay", "max_schedule_delay", "retry_count", "max_retry_count"} & set(d)
    assert d["driver"] == gen.value


# -- pre-patch -------------------------------------------------------------------------------------


def test_pre_patch_increase_reservation_reprobes_in_the_same_pass_then_stops():
    b = make(PRE)
    b.set_target(1600, 0.0)
    assert b.poll(0.0) == Increase(512)
    b.increase_done(fresh(40), 0.0)
    assert isinstance(b.poll(0.0), Decrease)  # the 40 pages go back
    b.decrease_done(0.0)
    assert b.poll(0.0) == Increase(40)  # and are asked for again, in the same pass
    b.increase_done([], 0.0)  # Xen grants nothing now: hard_limit = current
    assert b.hard_limit == 1000 and b.next_wakeup() is None
    assert b.state is DriverState.HARD_LIMITED


def test_pre_patch_balloon_set_new_target_clamps_at_minimum_target():
    b = make(PRE, current=1000, floor=300)
    b.set_target(100, 0.0)
    assert b.target_pages == 300
    # "Don't enforce growth": minimum_target() is at most current_target() (the old target)
    c = make(PRE, current=200, floor=300)
    c.set_target(100, 0.0)
    assert c.target_pages == 200


def test_tune_is_refused_without_the_sysfs_files():
    for gen in (PRE, SEED):
        with pytest.raises(TuneRefused):
            make(gen).tune(max_retry_count=3)


# -- the kernel floor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mib, floor_mib",
    [(16, 16), (32, 24), (128, 72), (512, 168), (2048, 360), (8192, 552), (32768, 1320), (131072, 4392)],
)
def test_minimum_target(mib, floor_mib):
    assert minimum_target_pages(mib * 256) == floor_mib * 256


@pytest.mark.parametrize("gen", [SEED, V31, CURRENT])
def test_gfp_balloon_allocations_fail_at_the_kernel_floor(gen):
    b = make(gen, current=1000, floor=700)
    b.set_target(0, 0.0)
    action = b.poll(0.0)
    assert isinstance(action, Decrease) and action.nr == 300
    b.decrease_done(0.0)  # asked for 512, got 300: a failed step
    assert b.current_pages == 700 and b.target_pages == 0
    assert b.state in (DriverState.RETRYING, DriverState.CANCELLED)


# -- the growth cap ------------------------------------------------------------------------------


@pytest.mark.parametrize("gen", [PRE, SEED, V31])
def test_current_target_caps_growth_at_the_boot_balloon(gen):
    b = make(gen, current=1000, maxmem=1500)
    b.set_maxmem(3000, 0.0)  # mem-max raised after boot
    b.set_target(2500, 0.0)
    assert b.poll(0.0) == Increase(500)
    b.increase_done(fresh(500), 0.0)
    assert b.poll(0.0) is None and b.next_wakeup() is None
    assert b.state is DriverState.DONE and b.stats().target_kb == 2500 * 4
    b.set_growth_cap(None, 1.0)  # memory hotplug
    assert b.poll(1.0) == Increase(512)


def test_reserve_additional_memory_without_hotplug_cancels_current():
    b = make(CURRENT, current=1000, maxmem=1500)
    b.set_maxmem(3000, 0.0)
    b.set_target(2500, 0.0)
    assert b.poll(0.0) == Increase(500)
    b.increase_done(fresh(500), 0.0)
    assert b.poll(0.0) is None  # the balloon is empty: target_pages = current_pages, BP_ECANCELED
    assert b.state is DriverState.CANCELLED
    assert b.stats().target_kb == 1500 * 4


def test_set_growth_cap_below_current_does_not_shrink_a_guest_already_there():
    b = make(SEED, current=1000, maxmem=2000)
    b.set_growth_cap(800, 0.0)
    assert b.effective_target == 800  # min(target 1000, maxmem, cap)
    with pytest.raises(ValueError):
        b.set_growth_cap(-1, 0.0)


# -- tunables and the memory-available interrupt ---------------------------------------------------


def test_tune_max_schedule_delay_and_max_retry_count():
    b = make(V31)
    b.tune(max_schedule_delay=8)
    b.set_target(1100, 0.0)
    ws, now = waits(b, 5)
    assert ws == [2, 4, 8, 8, 8]
    b.tune(max_retry_count=7)  # retry_count is 6: the next failure makes it 7, the one after cancels
    fail_increase(b, now)
    assert b.state is DriverState.RETRYING
    now = b.next_wakeup()
    fail_increase(b, now)
    assert b.state is DriverState.CANCELLED
    s = b.stats()
    assert (s.max_schedule_delay, s.max_retry_count) == (8.0, 7)


@pytest.mark.parametrize(
    "kwargs", [{}, {"max_schedule_delay": 0}, {"max_schedule_delay": "8"}, {"max_schedule_delay": float("inf")},
               {"max_retry_count": -1}, {"max_retry_count": 1.5}, {"max_retry_count": True},
               {"max_schedule_delay": 8, "max_retry_count": -1}],
)
def test_tune_refuses_bad_values_without_change(kwargs):
    b = make(CURRENT)
    with pytest.raises(ValueError):
        b.tune(**kwargs)
    assert (b.stats().max_schedule_delay, b.stats().max_retry_count) == (32.0, 4)


def test_memory_interrupt_does_not_revive_a_cancelled_current_driver():
    b = make(CURRENT, max_retries=1)
    b.set_target(1100, 0.0)
    fail_increase(b, 0.0)
    b.wake(5.0)
    assert b.poll(5.0) is None and b.state is DriverState.CANCELLED
    c = make(V31)
    c.set_target(1100, 0.0)
    fail_increase(c, 0.0)
    c.wake(0.5)  # a pending backoff runs now
    assert c.poll(0.5) == Increase(100)


def test_every_generation_has_rules():
    assert set(RULES) == set(DriverGeneration)
    assert BalloonConfig().generation is CURRENT


@pytest.mark.parametrize("gen", [V31, CURRENT])
def test_a_memory_interrupt_that_finds_nothing_changes_no_linux_figure(gen):
    """Not a Linux rule (no Linux has the interrupt): an early step that gets nothing leaves
    update_schedule()'s figures and the pending retry as they were, so four interrupts in a
    second cannot use up current's max_retry_count of 4."""
    b = make(gen)
    b.set_target(1100, 0.0)
    assert fail_increase(b, 0.0) == 2.0  # retry_count 2, schedule_delay 2
    for i in range(10):
        now = 0.1 * (i + 1)
        b.wake(now)
        assert isinstance(b.poll(now), Increase)
        b.increase_done([], now)
        assert b.next_wakeup() == 2.0 and b.state is DriverState.RETRYING
    stats = b.stats()
    assert (stats.retry_count, stats.schedule_delay) == (2, 2.0)
    assert b.early_misses == 10 and b.failed_steps == 1
    b.wake(1.5)  # one that finds memory: a DONE, and update_schedule() resets as Linux's would
    assert b.poll(1.5) == Increase(100)
    b.increase_done(fresh(100), 1.5)
    assert (b.stats().retry_count, b.stats().schedule_delay, b.state) == (1, 1.0, DriverState.DONE)
