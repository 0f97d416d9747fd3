"""The guest's balloon driver: Linux drivers/xen/balloon.c, one generation at a time, sans I/O.

The driver chases a target page count set by the toolstack: it asks the hypervisor for pages
(increase_reservation) or gives pages back (decrease_reservation), in batches of at most 512
pages, and retries when a step could not be done. How it retries, what a target write does
to a waiting driver and what it reports differ by generation (`pre-patch`, `seed`, `3.1`,
`current`): guest/generations.py holds each generation's rules with the Linux function each
one follows; this file is the one state machine that applies them.

Driving it (the shell owns sockets and clocks; this core owns every decision):

    balloon.set_target(pages, now)        toolstack wrote memory/target
    action = balloon.poll(now)            Increase(nr) | Decrease(extents) | None
        Increase(nr)       ask the hypervisor for nr pages, then
                           increase_done(granted_extents, now)    (may be fewer; [] = none)
        Decrease(extents)  give these pages back (already taken out of GuestMemory), then
                           decrease_done(now)
        either one, when the RPC itself failed:  request_failed(now)
    balloon.next_wakeup()                 when to poll next (None = idle / waiting on a reply)
    balloon.tune(max_schedule_delay=, max_retry_count=)   the writable sysfs files
    balloon.set_growth_cap(pages, now)    how far the boot balloon lets it grow

    Call poll after set_target, after every reply, and at next_wakeup(). At most one request
    is outstanding; while it is, poll returns None. A failed Decrease's pages go back into
    GuestMemory; a failed request of either kind is a failed step.

One worker step (balloon_process / balloon_thread), when the worker is due:

    credit = effective_target - current_pages
        credit > 0: Increase(min(credit, batch)). All granted: DONE. Some: the pages are kept;
                    DONE in 3.1/current (the loop goes on), a sleep in seed (rc != nr_pages),
                    and in pre-patch the pages go back and cap the driver (a hard limit).
                    None: EAGAIN (a sleep in seed).
        credit < 0: take min(-credit, batch) freeable pages (never the workload, never the
                    kernel floor) and Decrease them; fewer than that: EAGAIN (alloc_page
                    failed mid-batch); none: no RPC at all, EAGAIN.
        credit = 0: DONE (current: the previous state again, see generations.py).
    Then, by generation:
        pre-patch, seed   DONE with credit left: the next step at once; otherwise, while off
                          target, a fixed retry_delay timer (Linux: jiffies + HZ). No counters.
        3.1, current      update_schedule(): DONE resets schedule_delay = retry_delay and
                          retry_count = 1; EAGAIN counts, cancels past a non-zero
                          max_retry_count (ECANCELED), else doubles schedule_delay, capped at
                          max_schedule_delay, and waits that long: 2, 4, 8, 16, 32, 32 s.
                          ECANCELED: 3.1 waits for a target write; current also retries
                          after 3600 s (its kthread's timeout).

The effective target is min(target, maxmem, growth cap) (pre-patch: and its hard limit). The
growth cap is the boot balloon: Linux's current_target() is min(target, current +
balloon_low + balloon_high), and balloon_init() sizes the balloon from the boot maxmem, so a
later mem-max above it does not let the guest grow; None models memory hotplug.

Pacing (guest/pace.py): each step moves at most pace.allowance(now) pages; with allowance 0
the worker sleeps until pace.next_allowed(now) without counting a failure -- a slow guest is
not failing. A stuck guest never sends anything.

The memory-available interrupt (not in any Linux; `wake`) runs a worker waiting to retry now;
it does not revive a cancelled driver (cancelling is what the CVE-2019-17351 fix is for).

Pages are 4 KiB; statistics mirror Linux's /sys/devices/system/xen_memory/xen_memory0/, with
the figures a generation lacks left out (None).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from guest.floor import minimum_target_pages
from guest.generations import DEFAULT_GENERATION, RULES, DriverGeneration, Rules, TargetWake
from guest.memory import GuestMemory, checked_extents
from guest.pace import Pace, Unlimited
from wire.extent import PAGE_KIB, Extent, total_pages


class StepResult(enum.Enum):
    """The outcome of one worker step: Linux's enum bp_state (a sleep is EAGAIN without counters)."""

    DONE = "done"
    EAGAIN = "eagain"
    ECANCELED = "ecanceled"


class DriverState(enum.StrEnum):
    """What the toolstack is told about the driver."""

    DONE = "done"  # current == effective target
    RETRYING = "retrying"  # still chasing the target: a request, a retry timer or the pace
    CANCELLED = "cancelled"  # gave up after max_retry_count (or at its growth cap: current)
    HARD_LIMITED = "hard-limited"  # pre-patch: stopped at a hard limit below the target


class TuneRefused(ValueError):
    """A tunable this generation does not have (its sysfs file does not exist)."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class BalloonConfig:
    generation: DriverGeneration = DEFAULT_GENERATION
    retry_delay: float = 1.0  # seconds; schedule_delay's reset value, and the timer of pre-patch/seed (HZ)
    max_retry_delay: float = 32.0  # Linux max_schedule_delay (3.1, current)
    max_retries: int | None = None  # Linux max_retry_count; 0 = unlimited; None = the generation's default
    batch_pages: int = 512  # pages per step; Linux: one page of frame list

    def __post_init__(self) -> None:
        if not isinstance(self.generation, DriverGeneration):
            raise ValueError(f"generation must be a DriverGeneration, not {self.generation!r}")
        if not _number(self.retry_delay) or not self.retry_delay > 0:
            raise ValueError(f"retry_delay must be > 0, not {self.retry_delay!r}")
        if not _number(self.max_retry_delay) or not self.max_retry_delay >= self.retry_delay:
            raise ValueError(f"max_retry_delay must be >= retry_delay, not {self.max_retry_delay!r}")
        if self.max_retries is not None and (not _integer(self.max_retries) or self.max_retries < 0):
            raise ValueError(f"max_retries must be an integer >= 0 (0 = unlimited), not {self.max_retries!r}")
        if self.max_retries is not None and not self.rules.backoff:
            raise ValueError(f"the {self.generation} driver has no retry count (max_retries)")
        if not _integer(self.batch_pages) or self.batch_pages < 1:
            raise ValueError(f"batch_pages must be an integer >= 1, not {self.batch_pages!r}")

    @property
    def rules(self) -> Rules:
        return RULES[self.generation]


@dataclass(frozen=True)
class Increase:
    """Ask the hypervisor for `nr` more pages (XENMEM_populate_physmap)."""

    nr: int


@dataclass(frozen=True)
class Decrease:
    """Give these pages back to the hypervisor (XENMEM_decrease_reservation)."""

    extents: tuple[Extent, ...]

    @property
    def nr(self) -> int:
        return total_pages(self.extents)


Action = Increase | Decrease


@dataclass(frozen=True)
class BalloonStats:
    """Linux's xen-balloon sysfs figures as this generation has them (None: it has no such file),
    plus the driver's generation and state and the pre-patch hard limit."""

    target_kb: int
    current_kb: int
    low_kb: int  # ballooned out: maxmem - current
    high_kb: int  # always 0: no highmem
    schedule_delay: float | None  # seconds the pending (or next) retry waits
    max_schedule_delay: float | None
    retry_count: int | None
    max_retry_count: int | None
    state: str  # a DriverState value
    driver: str  # a DriverGeneration value
    hard_limit_kb: int | None  # pre-patch only

    def to_dict(self) -> dict[str, Any]:
        """The heartbeat's map: a figure the generation lacks is left out; hard_limit_kb stays (nil)."""
        return {k: v for k in _STAT_NAMES if (v := getattr(self, k)) is not None or k == "hard_limit_kb"}


_STAT_NAMES = tuple(f.name for f in fields(BalloonStats))  # every heartbeat reads them: not asdict's deep copy


@dataclass(frozen=True)
class _PendingRetry:
    """The Linux retry an interrupt's early step ran ahead of, restored if that step fails."""

    wake_at: float
    backoff_pending: bool
    state: StepResult
    wait_credit: int


def _page_count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
    return value


class Balloon:
    def __init__(
        self,
        memory: GuestMemory,
        maxmem_pages: int,
        *,
        target_pages: int | None = None,
        config: BalloonConfig | None = None,
        pace: Pace | None = None,
    ) -> None:
        """A driver for `memory`, idle until `set_target` (its target starts at current).

        Its balloon is sized from `maxmem_pages` now (balloon_init): that is the growth cap
        until set_growth_cap says otherwise.
        """
        self.memory = memory
        self.config = config or BalloonConfig()
        self.rules = self.config.rules
        self.pace: Pace = pace if pace is not None else Unlimited()
        self._maxmem = _page_count("maxmem_pages", maxmem_pages)
        self._growth_cap: int | None = self._maxmem
        self._target = memory.current_pages if target_pages is None else _page_count("target_pages", target_pages)
        self._hard_limit: int | None = None  # pre-patch only
        # Linux balloon_stats (3.1, current)
        self._schedule_delay = self.config.retry_delay
        self._retry_count = 1
        self._max_schedule_delay = self.config.max_retry_delay
        default_max = self.rules.max_retry_count
        self._max_retry_count = self.config.max_retries if self.config.max_retries is not None else default_max
        # the worker
        self._wake_at: float | None = None  # when the worker is next due; None = not queued
        self._backoff_pending = False  # the queued run is a backoff (3.1's pending delayed work)
        self._state = StepResult.DONE  # the last step's result (current: balloon_state)
        self._wait_credit = 0  # current: current_credit() when its wait began
        self._cancelled = False  # last step ended in ECANCELED
        self._failed_steps = 0
        self._early: _PendingRetry | None = None  # the retry an interrupt's early step stands in for
        self._early_misses = 0  # early steps that got nothing (not counted as failures)
        self._cancel_timeout_at: float | None = None  # current: the 3600 s timeout of a cancelled thread
        self._inflight: Action | None = None  # the request the shell is carrying out
        self._inflight_is_handback = False
        self._decrease_wanted = 0  # pages the in-flight decrease step wanted to give back
        self._handback: tuple[Extent, ...] = ()  # pre-patch: a partial grant to return
        self._handback_due = 0.0

    # -- the toolstack's side ----------------------------------------------------------------

    def set_target(self, pages: int, now: float) -> None:
        """The target was written (even with the same value): balloon_set_new_target()."""
        pages = _page_count("target_pages", pages)
        if self.rules.hard_limit:
            self._hard_limit = None  # "Resets the Xen limit"
        if self.rules.clamps_to_minimum_target:
            # minimum_target() is computed with the old target: min(floor, current_target())
            pages = max(pages, min(self.memory.kernel_floor_pages, self.effective_target))
        self._target = pages
        self._early = None  # the step after a write counts, whatever woke it
        wake = self.rules.target_wake
        if wake is TargetWake.AT_ONCE:  # schedule_work()
            self._schedule(now)
        elif wake is TargetWake.UNLESS_PENDING:  # schedule_delayed_work(&balloon_worker, 0)
            if not self._backoff_pending:
                self._schedule(now)
        elif self._thread_cond():  # wake_up(&balloon_thread_wq)
            self._wake_at = now

    def set_maxmem(self, pages: int, now: float) -> None:
        """The domain's maxmem changed: the driver never chases a target above it.

        Not Linux's (the guest does not see Xen's max_pages): the emulation wakes the worker,
        unless it is cancelled (only a target write resumes it).
        """
        self._maxmem = _page_count("maxmem_pages", pages)
        if not self._cancelled:
            self._schedule(now)

    def retarget(self, pages: int, now: float) -> None:
        """The guest itself now aims elsewhere (an inaccurate guest's aim moved, guest/control.py).

        Not a Linux event and not a target write: no generation's write rule runs (a hard
        limit stays, a pending retry stands); an idle worker runs now, a cancelled one stays.
        """
        self._target = _page_count("target_pages", pages)
        if not self._cancelled and self._wake_at is None:
            self._schedule(now)

    def set_growth_cap(self, pages: int | None, now: float) -> None:
        """How far this guest can grow (current + its balloon); None: no cap beyond maxmem.

        Linux's current_target() caps at current + balloon_low + balloon_high, the balloon
        balloon_init() sized from the boot maxmem; the boot value is set by __init__. None
        models memory hotplug (CONFIG_XEN_BALLOON_MEMORY_HOTPLUG). Wakes the worker like
        set_maxmem.
        """
        self._growth_cap = None if pages is None else _page_count("growth cap", pages)
        if not self._cancelled:
            self._schedule(now)

    def tune(self, *, max_schedule_delay: float | None = None, max_retry_count: int | None = None) -> None:
        """Write the sysfs files xen_memory0/max_schedule_delay and max_retry_count (3.1, current).

        Takes effect at the next update_schedule(); a wait already armed is not changed (Linux
        stores the number and reads it there). max_retry_count 0 = unlimited. A generation
        without these files refuses (TuneRefused); a bad value is a ValueError, and nothing
        changes unless both values are good.
        """
        if max_schedule_delay is None and max_retry_count is None:
            raise ValueError("tune: give max_schedule_delay and/or max_retry_count")
        if not self.rules.backoff:
            raise TuneRefused(f"the {self.config.generation} driver has no max_schedule_delay or max_retry_count")
        if max_schedule_delay is not None and (not _number(max_schedule_delay) or not max_schedule_delay >= self.config.retry_delay):
            raise ValueError(f"max_schedule_delay must be a number of seconds >= {self.config.retry_delay:g}, not {max_schedule_delay!r}")
        if max_retry_count is not None and (not _integer(max_retry_count) or max_retry_count < 0):
            raise ValueError(f"max_retry_count must be an integer >= 0 (0 = unlimited), not {max_retry_count!r}")
        if max_schedule_delay is not None:
            self._max_schedule_delay = float(max_schedule_delay)
        if max_retry_count is not None:
            self._max_retry_count = max_retry_count

    def set_pace(self, pace: Pace, now: float) -> None:
        """The guest's pace changed (a control key): a worker that was waiting for the old
        pace runs now, unless it is cancelled (only a target write resumes it)."""
        self.pace = pace
        if not self._cancelled:
            self._schedule(now)

    def wake(self, now: float) -> None:
        """Memory became available: a worker waiting out its retry timer runs now instead.

        Not in Linux (its timer is the only retry); the emulation's memory-available
        interrupt calls it. A cancelled or idle driver stays as it is. The interrupt can only
        bring a success forward, never change what Linux's rules do: if the early step fails
        (another guest took the memory first), it is not counted -- retry_count,
        schedule_delay and the pending retry stay as they were -- so a driver with
        max_retry_count 4 is not cancelled by a burst of interrupts it could not use.
        """
        if self._cancelled or self._wake_at is None or self._wake_at <= now:
            return
        if self._early is None:
            self._early = _PendingRetry(self._wake_at, self._backoff_pending, self._state, self._wait_credit)
        self._wake_at = now

    # -- the shell's side --------------------------------------------------------------------

    def poll(self, now: float) -> Action | None:
        """What the shell must send now, if anything."""
        if self._inflight is not None:
            return None
        if self._handback:
            self._inflight = Decrease(self._handback)
            self._inflight_is_handback = True
            self._handback = ()
            return self._inflight
        if self._wake_at is None or now < self._wake_at:
            return None
        self._wake_at = None
        self._backoff_pending = False
        return self._step(now)

    def increase_done(self, granted: Iterable[Extent], now: float) -> None:
        """The hypervisor granted these pages (possibly fewer than asked, possibly none)."""
        asked = self._inflight
        if not isinstance(asked, Increase):
            raise RuntimeError(f"increase_done without an Increase in flight (in flight: {asked!r})")
        extents = checked_extents(granted)
        got = total_pages(extents)
        if got > asked.nr:
            raise ValueError(f"granted {got} pages but asked for {asked.nr}")
        self._inflight = None
        if self.rules.hard_limit and got < asked.nr:
            # pre-patch increase_reservation(): "We hit the Xen hard limit: reprobe." The pages
            # go back, the limit is recorded, and it returns 0: the loop goes on at once.
            self._hard_limit = self.memory.current_pages + got
            if extents:
                self._handback = tuple(extents)
                self._handback_due = now
            self._conclude(StepResult.DONE, now)
            return
        self.memory.add(extents)
        self.pace.consume(got, now)
        if got == 0 or (self.rules.partial_grant_sleeps and got < asked.nr):
            self._conclude(StepResult.EAGAIN, now)
        else:
            self._conclude(StepResult.DONE, now)

    def decrease_done(self, now: float) -> None:
        """The hypervisor took back the pages of the Decrease in flight."""
        sent = self._inflight
        if not isinstance(sent, Decrease):
            raise RuntimeError(f"decrease_done without a Decrease in flight (in flight: {sent!r})")
        self._inflight = None
        if self._inflight_is_handback:
            self._inflight_is_handback = False  # not a step: its increase was concluded
            return
        self.pace.consume(sent.nr, now)
        self._conclude(StepResult.DONE if sent.nr == self._decrease_wanted else StepResult.EAGAIN, now)

    def request_failed(self, now: float) -> None:
        """The request in flight failed as an RPC: nothing moved; the step failed.

        (pre-patch: Linux's loop would spin on a failing hypercall; ballonet waits its timer.)
        """
        sent = self._inflight
        if sent is None:
            raise RuntimeError("request_failed without a request in flight")
        self._inflight = None
        if isinstance(sent, Decrease) and self._inflight_is_handback:
            # The guest still holds the pages it tried to return: keep them (nothing is lost).
            self._inflight_is_handback = False
            self.memory.add(sent.extents)
            return
        if isinstance(sent, Decrease):
            self.memory.put_back(sent.extents)
        self._conclude(StepResult.EAGAIN, now)

    def next_wakeup(self) -> float | None:
        """When poll should next be called; None while idle or while a reply is awaited.

        A time at or before the shell's clock means: poll now.
        """
        if self._inflight is not None:
            return None
        if self._handback:
            return self._handback_due
        return self._wake_at

    # -- the worker (balloon_process / balloon_thread) -------------------------------------

    def _step(self, now: float) -> Action | None:
        self._cancelled = False
        current = self.memory.current_pages
        if (
            self.rules.cancels_at_growth_cap
            and self._growth_cap is not None
            and current == self._growth_cap  # above it (a ceiling lowered under it): give back first
            and min(self._target, self._maxmem) > current
        ):
            # current: the balloon is empty, so increase_reservation() is not tried;
            # reserve_additional_memory() without hotplug sets target_pages = current_pages.
            self._target = current
            self._conclude(StepResult.ECANCELED, now)
            return None
        credit = self.effective_target - current
        if credit == 0:
            # balloon_thread(): neither branch assigns balloon_state, update_schedule() sees
            # the previous one; balloon_process() starts each pass from BP_DONE.
            self._conclude(self._state if self.rules.zero_credit_keeps_state else StepResult.DONE, now)
            return None
        allowance = self.pace.allowance(now)
        if allowance <= 0:  # a slow or stuck guest: wait for the pace, not a failure
            self._schedule(self.pace.next_allowed(now))
            return None
        if credit > 0:
            self._inflight = Increase(min(credit, self.config.batch_pages, allowance))
            return self._inflight
        wanted = min(-credit, self.config.batch_pages, allowance)
        taken = self.memory.take(wanted)
        if not taken:  # nothing freeable: alloc_page(GFP_BALLOON) fails at once
            self._conclude(StepResult.EAGAIN, now)
            return None
        self._decrease_wanted = wanted
        self._inflight = Decrease(tuple(taken))
        return self._inflight

    def _conclude(self, result: StepResult, now: float) -> None:
        """After a step: update_schedule (3.1, current), then queue the worker (or not)."""
        early, self._early = self._early, None
        if early is not None and result is not StepResult.DONE:
            # an interrupt's early step that got nothing: as if it never ran (see wake)
            self._wake_at = early.wake_at if self._wake_at is None else min(self._wake_at, early.wake_at)
            self._backoff_pending = early.backoff_pending
            self._state, self._wait_credit = early.state, early.wait_credit
            self._early_misses += 1
            return
        remaining = self.effective_target - self.memory.current_pages
        if result is not StepResult.DONE:
            self._failed_steps += 1
        if not self.rules.backoff:
            # pre-patch, seed: balloon_process() loops while credit && !need_sleep, then
            # mod_timer(&balloon_timer, jiffies + HZ) if current_target() != current.
            if remaining != 0:
                self._schedule(now if result is StepResult.DONE else now + self.config.retry_delay)
            return
        if self.rules.cancels_at_growth_cap:  # current_credit() is target - current: no cap in it
            remaining = min(self._target, self._maxmem) - self.memory.current_pages
        result = self._update_schedule(result)
        self._state = result
        self._wait_credit = self._target - self.memory.current_pages  # current_credit()
        if result is StepResult.DONE:
            if remaining != 0:
                self._schedule(now)  # balloon_process loops on; balloon_thread_cond is true
        elif result is StepResult.EAGAIN:
            self._schedule(now + self._schedule_delay)
            self._backoff_pending = True
        else:
            self._cancelled = True
            if self.rules.cancelled_timeout_s is not None:  # balloon_thread: timeout = 3600 * HZ
                self._cancel_timeout_at = now + self.rules.cancelled_timeout_s
                self._schedule(self._cancel_timeout_at)

    def _update_schedule(self, result: StepResult) -> StepResult:
        """Linux update_schedule(): the delay doubles before the wait it sets."""
        if result is StepResult.ECANCELED:  # current: "if (balloon_state == BP_ECANCELED) return"
            return result
        if result is StepResult.DONE:
            self._schedule_delay = self.config.retry_delay
            self._retry_count = 1
            return StepResult.DONE
        self._retry_count += 1
        if self._max_retry_count != 0 and self._retry_count > self._max_retry_count:
            self._schedule_delay = self.config.retry_delay
            self._retry_count = 1
            return StepResult.ECANCELED
        self._schedule_delay = min(self._schedule_delay * 2, self._max_schedule_delay)
        return StepResult.EAGAIN

    def _thread_cond(self) -> bool:
        """current's balloon_thread_cond(): would a wake_up() end the thread's wait now?"""
        credit = self._target - self.memory.current_pages
        if self._inflight is not None or self._handback:
            return False  # the thread is running a step, not waiting
        if self._state is StepResult.DONE:
            return credit != 0
        return credit != self._wait_credit

    def _schedule(self, at: float | None) -> None:
        """Queue the worker at `at` (None: not at all); an earlier queued run stands."""
        if at is not None and (self._wake_at is None or at < self._wake_at):
            self._wake_at = at

    # -- what can be observed ----------------------------------------------------------------

    @property
    def generation(self) -> DriverGeneration:
        return self.config.generation

    @property
    def target_pages(self) -> int:
        return self._target

    @property
    def maxmem_pages(self) -> int:
        return self._maxmem

    @property
    def growth_cap(self) -> int | None:
        return self._growth_cap

    @property
    def current_pages(self) -> int:
        return self.memory.current_pages

    @property
    def hard_limit(self) -> int | None:
        return self._hard_limit

    @property
    def effective_target(self) -> int:
        """min(target, maxmem, growth cap[, hard limit]): Linux's current_target()."""
        target = min(self._target, self._maxmem)
        if self._growth_cap is not None:
            target = min(target, self._growth_cap)
        return target if self._hard_limit is None else min(target, self._hard_limit)

    @property
    def _balloon_top(self) -> int:
        """current + balloon_low: what the balloon lets it grow to."""
        return self._maxmem if self._growth_cap is None else min(self._maxmem, self._growth_cap)

    @property
    def failed_steps(self) -> int:
        """Steps that ended in EAGAIN or ECANCELED so far (the shell logs each)."""
        return self._failed_steps

    @property
    def early_misses(self) -> int:
        """Steps the memory-available interrupt ran early that got nothing (not failures)."""
        return self._early_misses

    @property
    def in_flight(self) -> Action | None:
        return self._inflight

    @property
    def state(self) -> DriverState:
        if self._inflight is not None or self._handback:
            return DriverState.RETRYING
        if self._cancelled and self._wake_at in (None, self._cancel_timeout_at):  # no run queued but the timeout
            return DriverState.CANCELLED
        current = self.memory.current_pages
        if current != self.effective_target:
            return DriverState.RETRYING
        if self._hard_limit is not None and self._hard_limit < min(self._target, self._maxmem):
            return DriverState.HARD_LIMITED
        return DriverState.DONE

    def stats(self) -> BalloonStats:
        backoff = self.rules.backoff
        return BalloonStats(
            target_kb=self._target * PAGE_KIB,
            current_kb=self.memory.current_pages * PAGE_KIB,
            low_kb=max(0, self._balloon_top - self.memory.current_pages) * PAGE_KIB,
            high_kb=0,
            schedule_delay=float(self._schedule_delay) if backoff else None,
            max_schedule_delay=float(self._max_schedule_delay) if backoff else None,
            retry_count=self._retry_count if backoff else None,
            max_retry_count=self._max_retry_count if backoff else None,
            state=self.state.value,
            driver=self.config.generation.value,
            hard_limit_kb=None if self._hard_limit is None else self._hard_limit * PAGE_KIB,
        )

    def __repr__(self) -> str:
        return (
            f"Balloon({self.config.generation}, current={self.current_pages}, target={self._target}, "
            f"maxmem={self._maxmem}, state={self.state.value}, retry_count={self._retry_count})"
        )
