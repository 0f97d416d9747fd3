"""The Linux balloon-driver generations a guest can run, each with the rules it had.

A generation is chosen per guest (`guest run --driver GEN`, `driver = "GEN"` in a scenario);
guest/balloon.py is one state machine that asks the generation's `Rules` at each point where
the generations differ. Sources (the function named is the one each rule follows):

pre-patch  classic XenLinux drivers/xen/balloon/balloon.c (read in the 2.6.18 tree
           bronson/linux-2.6.18.8-ovz-xen; mainline pvops before 2.6.36 had the same
           hard limit). A grant smaller than asked means "We hit the Xen hard limit:
           reprobe": increase_reservation() hands the pages back, sets
           hard_limit = current + granted and returns 0, so balloon_process()'s loop goes on
           at once and re-probes up to that limit in the same pass; current_target() =
           min(target, hard_limit, current + balloon), so once there, current ==
           current_target() and no timer is armed: the driver stays below its target until
           balloon_set_new_target() resets the limit. A failed decrease (alloc_page fails)
           sets need_sleep: mod_timer(&balloon_timer, jiffies + HZ) while off target.
           balloon_set_new_target() clamps the target at minimum_target() (guest/floor.py)
           and schedule_work()s the worker: a write wakes it at once. No retry counters:
           its sysfs/proc files have none.
seed       mainline drivers/xen/balloon.c after "xen: balloon: try harder to balloon up
           under memory pressure" (Ian Campbell, 2010, the commit that removed the hard
           limit; read as the 2.6.36-era file): increase_reservation() keeps a partial
           grant and returns `rc != nr_pages`, so a short or empty grant sets need_sleep;
           balloon_process() then arms mod_timer(&balloon_timer, jiffies + HZ) while
           current_target() != current: a fixed 1 s retry in both directions, no count, no
           cancel. balloon_set_new_target() calls schedule_work(): a write runs the worker
           at once. sysfs (xen_memory0) has target_kb, current_kb, low_kb, high_kb,
           driver_kb only: no schedule_delay, retry_count or their maxima.
3.1        Daniel Kiper's backoff (mainline 2.6.39/3.0 .. 5.14; read at torvalds/linux
           02e2407858fd and 965c0aaafe3e): update_schedule() resets schedule_delay = 1 and
           retry_count = 1 on BP_DONE; on BP_EAGAIN increments retry_count, cancels
           (BP_ECANCELED, both reset) past a non-zero max_retry_count, else doubles
           schedule_delay *before* the wait, capped at max_schedule_delay: waits 2, 4, 8,
           16, 32, 32 s. balloon_init(): max_schedule_delay = 32, max_retry_count =
           RETRY_UNLIMITED (0). increase_reservation(): rc <= 0 is BP_EAGAIN, a partial grant
           is BP_DONE and balloon_process()'s `while (credit && state == BP_DONE)` goes on.
           balloon_process() arms schedule_delayed_work(&balloon_worker, schedule_delay * HZ)
           on BP_EAGAIN only; on BP_ECANCELED nothing. balloon_set_new_target() calls
           schedule_delayed_work(&balloon_worker, 0), which does nothing while the work is
           already pending: a write during a backoff waits for it. The CVE-2019-17351 fix set
           max_retry_count = 4 in this driver too (5.x before the kthread, and stable
           backports): run those as `--driver 3.1 --max-retries 4`.
current    the kthread driver (5.15 onwards, "xen/balloon: use a kernel thread instead a
           workqueue", and the CVE-2019-17351 fix "xen: let alloc_xenballooned_pages() fail
           if not enough memory free" that set max_retry_count = 4 in balloon_init()):
           balloon_thread() does one step per wake and waits in
           wait_event_freezable_timeout(balloon_thread_wq, balloon_thread_cond(credit),
           timeout) with timeout = schedule_delay s after BP_EAGAIN and 3600 s after BP_DONE
           or BP_ECANCELED. balloon_thread_cond() is true when the state is BP_DONE and
           current_credit() != 0, or, in any other state, when current_credit() differs from
           the credit at the start of the wait: balloon_set_new_target()'s wake_up() ends a
           backoff only if the credit changed. update_schedule() leaves balloon_state as it
           is on a step with credit 0 (neither branch assigns it): such a step counts as the
           previous state again. The boot balloon is all it can grow into: once it is empty,
           reserve_additional_memory() (without CONFIG_XEN_BALLOON_MEMORY_HOTPLUG) sets
           target_pages = current_pages and returns BP_ECANCELED.

The mainline drivers also cannot grow past the balloon they sized at boot: current_target()
(seed, 3.1) is min(target, current + balloon_low + balloon_high); see Balloon.set_growth_cap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DriverGeneration(enum.StrEnum):
    PRE_PATCH = "pre-patch"
    SEED = "seed"
    V3_1 = "3.1"
    CURRENT = "current"


DEFAULT_GENERATION = DriverGeneration.CURRENT


class TargetWake(enum.Enum):
    """What a write of memory/target does to a driver waiting to retry."""

    AT_ONCE = "at once"  # schedule_work(): the worker runs now
    UNLESS_PENDING = "unless a retry is pending"  # schedule_delayed_work(.., 0): no-op while pending
    IF_CREDIT_CHANGED = "if the credit changed"  # wake_up() + balloon_thread_cond()


@dataclass(frozen=True)
class Rules:
    linux: str  # the Linux versions that ran it
    backoff: bool  # update_schedule(): doubling schedule_delay, retry_count, max_retry_count
    hard_limit: bool  # a short grant is handed back and caps the driver (pre-patch)
    clamps_to_minimum_target: bool  # balloon_set_new_target() raises the target to minimum_target()
    partial_grant_sleeps: bool  # a short grant ends the pass (seed: rc != nr_pages is need_sleep)
    target_wake: TargetWake
    max_retry_count: int | None  # balloon_init()'s default; None: the generation has no counter
    cancelled_timeout_s: float | None  # how long a cancelled driver sleeps before trying again
    zero_credit_keeps_state: bool  # a step with credit 0 repeats the previous state (kthread)
    cancels_at_growth_cap: bool  # reserve_additional_memory() without hotplug: target := current

    @property
    def retry(self) -> str:
        return "2, 4, 8 .. max_schedule_delay s (doubling first)" if self.backoff else "fixed 1 s timer"


RULES: dict[DriverGeneration, Rules] = {
    DriverGeneration.PRE_PATCH: Rules(
        linux="XenLinux 2.6.18 .. (classic); pvops before 2.6.36",
        backoff=False, hard_limit=True, clamps_to_minimum_target=True, partial_grant_sleeps=False,
        target_wake=TargetWake.AT_ONCE, max_retry_count=None, cancelled_timeout_s=None,
        zero_credit_keeps_state=False, cancels_at_growth_cap=False,
    ),
    DriverGeneration.SEED: Rules(
        linux="mainline from the try-harder commit (~2.6.36) to Kiper's backoff (~2.6.39)",
        backoff=False, hard_limit=False, clamps_to_minimum_target=False, partial_grant_sleeps=True,
        target_wake=TargetWake.AT_ONCE, max_retry_count=None, cancelled_timeout_s=None,
        zero_credit_keeps_state=False, cancels_at_growth_cap=False,
    ),
    DriverGeneration.V3_1: Rules(
        linux="~2.6.39 .. 5.14 (5.x after the CVE-2019-17351 fix: add --max-retries 4)",
        backoff=True, hard_limit=False, clamps_to_minimum_target=False, partial_grant_sleeps=False,
        target_wake=TargetWake.UNLESS_PENDING, max_retry_count=0, cancelled_timeout_s=None,
        zero_credit_keeps_state=False, cancels_at_growth_cap=False,
    ),
    DriverGeneration.CURRENT: Rules(
        linux="5.15 onwards (max_retry_count 4 since the CVE-2019-17351 fix)",
        backoff=True, hard_limit=False, clamps_to_minimum_target=False, partial_grant_sleeps=False,
        target_wake=TargetWake.IF_CREDIT_CHANGED, max_retry_count=4, cancelled_timeout_s=3600.0,
        zero_credit_keeps_state=True, cancels_at_growth_cap=True,
    ),
}


def parse_generation(text: str) -> DriverGeneration:
    """A generation from its name; ValueError listing the names."""
    try:
        return DriverGeneration(text)
    except ValueError:
        raise ValueError(f"unknown driver {text!r}: expected one of {', '.join(g.value for g in DriverGeneration)}") from None
