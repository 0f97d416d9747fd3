"""The guest's balloon driver: Linux drivers/xen/balloon.c (~v3.0) as a sans-I/O state machine.

The driver chases a target page count set by the toolstack: it asks the hypervisor for pages
(increase_reservation) or gives pages back (decrease_reservation), in batches of at most 512
pages, and retries on a timer when a step could not be done. This file follows Linux after
the commit "xen: balloon: try harder to balloon up under memory pressure"; the driver before
that commit is kept as an opt-in mode (`legacy_hard_limit=True`) for comparison.

Driving it (the shell owns sockets and clocks; this core owns every decision):

    balloon.set_target(pages, now)        toolstack wrote memory/target: wake up now
    action = balloon.poll(now)            Increase(nr) | Decrease(extents) | None
        Increase(nr)       ask the hypervisor for nr pages, then
                           increase_done(granted_extents, now)    (may be fewer; [] = none)
        Decrease(extents)  give these pages back (already taken out of GuestMemory), then
                           decrease_done(now)
        either one, when the RPC itself failed:  request_failed(now)
    balloon.next_wakeup()                 when to poll next (None = idle / waiting on a reply)

    Call poll after set_target, after every reply, and at next_wakeup(). At most one request
    is outstanding; while it is, poll returns None. A failed Decrease's pages go back into
    GuestMemory; a failed request of either kind is an EAGAIN step.

The worker (Linux balloon_process), run by poll when the worker is due:

    credit = effective_target - current_pages
        credit > 0: Increase(min(credit, batch)). Granted everything or some: the pages are
                    KEPT and the step is DONE. Granted nothing: EAGAIN.
        credit < 0: take min(-credit, batch) freeable pages (never the guest's workload) and
                    Decrease them. Could take fewer than that: give back what we have, and the
                    step is EAGAIN (Linux: alloc_page fails mid-batch). Could take none: no
                    RPC at all, EAGAIN.
        credit = 0: nothing to do: DONE.
    After each step, update_schedule:
        DONE    schedule_delay = retry_delay, retry_count = 1; if credit remains, the next
                step runs at once (poll returns it right after the reply).
        EAGAIN  retry_count += 1; past max_retries (when not 0): reset both and ECANCELED --
                no timer, nothing until the target is written again. (retry_count starts
                at 1, so max_retries=4 cancels on the 4th consecutive failed step, the one
                Linux numbers retry 4.) Otherwise wait
                schedule_delay and retry. Consecutive EAGAINs wait 1, 2, 4, 8, 16, 32, 32 s
                (defaults): the first retry waits retry_delay and each further one doubles,
                capped at max_retry_delay. NOTE: Linux doubles *before* its first wait
                (2, 4, 8, ...); we follow the project's stated sequence instead.
    Increases and decreases retry on the same timer. set_target wakes the worker at once,
    even mid-backoff (Linux schedules the work with delay 0), clears ECANCELED and the
    legacy hard limit, but does not reset retry_count / schedule_delay (only a DONE does;
    note that a target equal to current makes the next step a DONE).

The effective target is min(target, maxmem) (and, in legacy mode, min(..., hard_limit)).

Legacy mode (the driver before the commit): a grant smaller than asked is taken to mean "we
hit our hard limit": the granted pages are handed straight back (the next poll returns
Decrease(them); not a ballooning step), `hard_limit = current + granted` is recorded, and the
driver never goes above it -- however much memory frees up -- until set_target is called
again, even with the same value. (A zero grant sets hard_limit = current.) The driver then
re-probes up to the hard limit. Retries use a fixed retry_delay while current != effective
target, without doubling, counting or cancelling (the old driver had none of that). If the
hand-back RPC itself fails, the guest keeps those pages (it still holds them: nothing is lost).

Pacing (guest/pace.py): each step moves at most pace.allowance(now) pages; with allowance 0
the worker sleeps until pace.next_allowed(now) without counting an EAGAIN -- a slow guest is
not failing. A stuck guest never sends anything.

Pages are 4 KiB; statistics mirror Linux's /sys/devices/system/xen_memory/xen_memory0/.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from guest.memory import GuestMemory, checked_extents
from guest.pace import Pace, Unlimited
from wire.extent import PAGE_KIB, Extent, total_pages


class StepResult(enum.Enum):
    """The outcome of one worker step: Linux's enum bp_state."""

    DONE = "done"
    EAGAIN = "eagain"
    ECANCELED = "ecanceled"


class DriverState(enum.StrEnum):
    """What the toolstack is told about the driver."""

    DONE = "done"  # current == effective target
    RETRYING = "retrying"  # still chasing the target: a request, a retry timer or the pace
    CANCELLED = "cancelled"  # gave up after max_retries; waits for the target to be written
    HARD_LIMITED = "hard-limited"  # legacy: stopped at a hard limit below the target


@dataclass(frozen=True)
class BalloonConfig:
    retry_delay: float = 1.0  # seconds; Linux schedule_delay's reset value
    max_retry_delay: float = 32.0  # Linux max_schedule_delay
    max_retries: int = 0  # Linux max_retry_count; 0 = retry forever
    legacy_hard_limit: bool = False  # behave as the driver before the commit
    batch_pages: int = 512  # pages per step; Linux: one page of frame list

    def __post_init__(self) -> None:
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not number(self.retry_delay) or not self.retry_delay > 0:
            raise ValueError(f"retry_delay must be > 0, not {self.retry_delay!r}")
        if not number(self.max_retry_delay) or not self.max_retry_delay >= self.retry_delay:
            raise ValueError(f"max_retry_delay must be >= retry_delay, not {self.max_retry_delay!r}")
        if not integer(self.max_retries) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0 (0 = unlimited), not {self.max_retries!r}")
        if not isinstance(self.legacy_hard_limit, bool):
            raise ValueError(f"legacy_hard_limit must be a bool, not {self.legacy_hard_limit!r}")
        if not integer(self.batch_pages) or self.batch_pages < 1:
            raise ValueError(f"batch_pages must be an integer >= 1, not {self.batch_pages!r}")


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
    """Linux's xen-balloon sysfs figures, plus the driver state and the legacy hard limit."""

    target_kb: int
    current_kb: int
    low_kb: int  # ballooned out: maxmem - current
    high_kb: int  # always 0: no highmem
    schedule_delay: float  # seconds the pending (or next) retry waits
    max_schedule_delay: float
    retry_count: int
    max_retry_count: int
    state: str  # a DriverState value
    hard_limit_kb: int | None  # legacy mode only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        """A driver for `memory`, idle until `set_target` (its target starts at current)."""
        self.memory = memory
        self.config = config or BalloonConfig()
        self.pace: Pace = pace if pace is not None else Unlimited()
        self._maxmem = _page_count("maxmem_pages", maxmem_pages)
        self._target = memory.current_pages if target_pages is None else _page_count("target_pages", target_pages)
        self._hard_limit: int | None = None  # legacy mode only
        self._growth_cap: int | None = None  # the most the guest can hold (set_growth_cap)
        # Linux balloon_stats
        self._schedule_delay = self.config.retry_delay
        self._retry_count = 1
        # the worker
        self._wake_at: float | None = None  # when the worker is next due; None = not queued
        self._cancelled = False  # last step ended in ECANCELED
        self._inflight: Action | None = None  # the request the shell is carrying out
        self._inflight_is_handback = False
        self._decrease_wanted = 0  # pages the in-flight decrease step wanted to give back
        self._handback: tuple[Extent, ...] = ()  # legacy: a partial grant to return
        self._handback_due = 0.0

    # -- the toolstack's side ----------------------------------------------------------------

    def set_target(self, pages: int, now: float) -> None:
        """The target was written (even with the same value): wake the worker now."""
        self._target = _page_count("target_pages", pages)
        self._hard_limit = None
        self._cancelled = False
        self._schedule(now)

    def set_maxmem(self, pages: int, now: float) -> None:
        """The domain's maxmem changed: the driver never chases a target above it.

        Wakes the worker, unless it is cancelled (only a target write resumes it).
        """
        self._maxmem = _page_count("maxmem_pages", pages)
        if not self._cancelled:
            self._schedule(now)

    def set_growth_cap(self, pages: int | None, now: float) -> None:
        """The most pages this guest can hold (None: no cap below maxmem), and wake the worker.

        Linux balloon.c current_target() caps the target at current_pages + balloon_low +
        balloon_high: the pages the kernel has struct pages for (the boot balloon). A guest
        never asks past it, so the hypervisor is never asked: the driver settles at the cap.
        """
        self._growth_cap = None if pages is None else _page_count("growth cap", pages)
        if not self._cancelled:
            self._schedule(now)

    def tune(self, *, max_schedule_delay: float | None = None, max_retry_count: int | None = None) -> None:
        """The two xen-balloon sysfs files an administrator may write (Linux balloon.c
        `max_schedule_delay`, `max_retry_count`); ValueError, and nothing changed, if the
        result is not a valid configuration."""
        changes: dict[str, Any] = {}
        if max_schedule_delay is not None:
            changes["max_retry_delay"] = max_schedule_delay
        if max_retry_count is not None:
            changes["max_retries"] = max_retry_count
        self.config = replace(self.config, **changes)  # a pending wait stands; the next doubling is capped

    def set_pace(self, pace: Pace, now: float) -> None:
        """The guest's pace changed (a control key): a worker that was waiting for the old
        pace runs now, unless it is cancelled (only a target write resumes it)."""
        self.pace = pace
        if not self._cancelled:
            self._schedule(now)

    def wake(self, now: float) -> None:
        """Memory became available: a worker waiting out its retry timer runs now instead.

        Not in Linux (its timer is the only retry); the emulation's memory-available
        interrupt calls it. A cancelled or idle driver stays as it is.
        """
        if not self._cancelled and self._wake_at is not None:
            self._wake_at = min(self._wake_at, now)

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
        if self.config.legacy_hard_limit and got < asked.nr:
            # "We hit the Xen hard limit: reprobe." Return the pages, remember the limit.
            self._hard_limit = self.memory.current_pages + got
            if extents:
                self._handback = tuple(extents)
                self._handback_due = now
            self._conclude(StepResult.EAGAIN, now)
            return
        self.memory.add(extents)
        self.pace.consume(got, now)
        self._conclude(StepResult.DONE if got else StepResult.EAGAIN, now)

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
        """The request in flight failed as an RPC: nothing moved; the step is EAGAIN."""
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

    # -- the worker (Linux balloon_process) -------------------------------------------------

    def _step(self, now: float) -> Action | None:
        self._cancelled = False
        credit = self.effective_target - self.memory.current_pages
        if credit == 0:
            self._conclude(StepResult.DONE, now)
            return None
        allowance = self.pace.allowance(now)
        if allowance <= 0:  # a slow or stuck guest: wait for the pace, no EAGAIN
            self._schedule(self.pace.next_allowed(now))
            return None
        if credit > 0:
            self._inflight = Increase(min(credit, self.config.batch_pages, allowance))
            return self._inflight
        wanted = min(-credit, self.config.batch_pages, allowance)
        taken = self.memory.take(wanted)
        if not taken:  # nothing freeable: the guest needs all it has
            self._conclude(StepResult.EAGAIN, now)
            return None
        self._decrease_wanted = wanted
        self._inflight = Decrease(tuple(taken))
        return self._inflight

    def _conclude(self, result: StepResult, now: float) -> None:
        """After a step: update_schedule, then queue the worker (or not)."""
        remaining = self.effective_target - self.memory.current_pages
        if self.config.legacy_hard_limit:  # the old driver: a fixed timer while off target
            if remaining != 0:
                self._schedule(now if result is StepResult.DONE else now + self.config.retry_delay)
            return
        result = self._update_schedule(result)
        if result is StepResult.DONE:
            if remaining != 0:
                self._schedule(now)  # balloon_process loops on
        elif result is StepResult.EAGAIN:
            self._schedule(now + self._schedule_delay)
        else:
            self._cancelled = True

    def _update_schedule(self, result: StepResult) -> StepResult:
        """Linux update_schedule, except that the first EAGAIN after a DONE does not double."""
        if result is StepResult.DONE:
            self._schedule_delay = self.config.retry_delay
            self._retry_count = 1
            return StepResult.DONE
        self._retry_count += 1
        if self.config.max_retries != 0 and self._retry_count > self.config.max_retries:
            self._schedule_delay = self.config.retry_delay
            self._retry_count = 1
            return StepResult.ECANCELED
        if self._retry_count > 2:  # a further consecutive EAGAIN: back off
            self._schedule_delay = min(self._schedule_delay * 2, self.config.max_retry_delay)
        return StepResult.EAGAIN

    def _schedule(self, at: float | None) -> None:
        """Queue the worker at `at` (None: not at all); an earlier queued run stands."""
        if at is not None and (self._wake_at is None or at < self._wake_at):
            self._wake_at = at

    # -- what can be observed ----------------------------------------------------------------

    @property
    def target_pages(self) -> int:
        return self._target

    @property
    def maxmem_pages(self) -> int:
        return self._maxmem

    @property
    def current_pages(self) -> int:
        return self.memory.current_pages

    @property
    def hard_limit(self) -> int | None:
        return self._hard_limit

    @property
    def effective_target(self) -> int:
        target = min(self._target, self._maxmem)
        if self._growth_cap is not None:
            target = min(target, self._growth_cap)
        return target if self._hard_limit is None else min(target, self._hard_limit)

    @property
    def in_flight(self) -> Action | None:
        return self._inflight

    @property
    def state(self) -> DriverState:
        if self._inflight is not None or self._handback:
            return DriverState.RETRYING
        if self._cancelled and self._wake_at is None:
            return DriverState.CANCELLED
        current = self.memory.current_pages
        if current != self.effective_target:
            return DriverState.RETRYING
        if self._hard_limit is not None and self._hard_limit < min(self._target, self._maxmem):
            return DriverState.HARD_LIMITED
        return DriverState.DONE

    def stats(self) -> BalloonStats:
        return BalloonStats(
            target_kb=self._target * PAGE_KIB,
            current_kb=self.memory.current_pages * PAGE_KIB,
            low_kb=max(0, self._maxmem - self.memory.current_pages) * PAGE_KIB,
            high_kb=0,
            schedule_delay=float(self._schedule_delay),
            max_schedule_delay=float(self.config.max_retry_delay),
            retry_count=self._retry_count,
            max_retry_count=self.config.max_retries,
            state=self.state.value,
            hard_limit_kb=None if self._hard_limit is None else self._hard_limit * PAGE_KIB,
        )

    def __repr__(self) -> str:
        return (
            f"Balloon(current={self.current_pages}, target={self._target}, maxmem={self._maxmem}, "
            f"state={self.state.value}, retry_count={self._retry_count})"
        )
