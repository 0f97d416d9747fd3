"""Each driver generation's retry timeline, end to end with real processes, at `--speed 40`.

The expected waits are Linux's, in Linux seconds (guest/generations.py cites each source): the
guest logs every failed step with its driver-clock time and the wait it armed; the real time
between the steps shows the time scale is applied.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.processes import Host, wait_for

pytestmark = pytest.mark.timeout(60)
SPEED = 40.0
LINUX_TIMERS = ("--retry-delay", "1", "--max-retry-delay", "32", "--speed", str(SPEED))


@pytest.fixture
def host(procs):
    return Host(procs, memory="64m")


def failed_steps(host: Host, name: str) -> list[dict]:
    return [e for e in host.procs.log_events(name) if e.get("event") == "step failed"]


def real_seconds(a: dict, b: dict) -> float:
    return (datetime.fromisoformat(b["timestamp"]) - datetime.fromisoformat(a["timestamp"])).total_seconds()


# (driver, flags, the waits Linux arms after consecutive failed steps, the state it ends in)
TIMELINES = [
    # seed balloon_process(): mod_timer(&balloon_timer, jiffies + HZ), no count
    ("seed", (), [1, 1, 1, 1, 1, 1], "retrying"),
    # 3.1 update_schedule(): doubles before the wait, capped at 32; RETRY_UNLIMITED
    ("3.1", (), [2, 4, 8, 16, 32, 32], "retrying"),
    # current: the same doubling; max_retry_count 4 cancels the 4th failed step (then 3600 s)
    ("current", (), [2, 4, 8, 3600], "cancelled"),
]


def test_retry_timelines_of_guests_that_cannot_grow(host):
    """seed, 3.1 and current side by side on a full host: every step gets no pages."""
    host.guest("hog", "--memory", "52m")
    for driver, flags, _, _ in TIMELINES:
        host.guest(driver, "--memory", "4m", "--maxmem", "32m", "--driver", driver, *LINUX_TIMERS, *flags)
    host.wait_registered("hog", *(t[0] for t in TIMELINES))
    for driver, *_ in TIMELINES:
        assert host.tool("mem-set", driver, "16m").returncode == 0  # no page is free
    for driver, _, expected, end_state in TIMELINES:
        steps = wait_for(
            lambda: (s := failed_steps(host, driver)) and len(s) >= len(expected) and s, 20, f"{len(expected)} failed {driver} steps"
        )[: len(expected)]
        assert [s["retry_in"] for s in steps] == pytest.approx(expected, abs=0.5), driver  # logged just after the step
        assert steps[-1]["state"] == end_state
        # each retry ran once its wait was up (later by the RPC's round trip, 40 times as long here)
        gaps = [b["driver_time"] - a["driver_time"] for a, b in zip(steps, steps[1:])]
        assert all(gap >= wait - 0.5 for gap, wait in zip(gaps, expected)), (driver, gaps)
        span = sum(expected[:-1])
        assert real_seconds(steps[0], steps[-1]) >= 0.9 * span / SPEED  # the waits, scaled...
        assert real_seconds(steps[0], steps[-1]) < span / SPEED + 5  # ...not in real seconds
        balloon = host.domains()[driver]["balloon"]
        assert balloon["driver"] == driver
        assert ("retry_count" in balloon) == (driver != "seed")


def test_pre_patch_timer_and_the_default_kernel_floor(host):
    # classic balloon_process(): need_sleep, then mod_timer(.., jiffies + HZ) while off target
    host.guest("busy", "--memory", "16m", "--workload", "12m", "--driver", "pre-patch", *LINUX_TIMERS)
    # 32 MiB of maxmem: classic minimum_target() is 8 MiB + 32 MiB / 2 = 24 MiB
    host.guest("bare", "--memory", "32m", "--driver", "3.1", "--kernel-floor", "auto", *LINUX_TIMERS)
    host.wait_registered("busy", "bare")
    assert host.tool("mem-set", "busy", "8m").returncode == 0
    assert host.tool("mem-set", "bare", "0").returncode == 0
    steps = wait_for(lambda: (s := failed_steps(host, "busy")) and len(s) >= 5 and s, 20, "5 failed steps")[:5]
    assert [s["retry_in"] for s in steps] == pytest.approx([1] * 5, abs=0.5)
    wait_for(lambda: failed_steps(host, "bare"), 20, "the floor to stop the bare guest")
    doms = host.domains()
    assert doms["busy"]["balloon"]["driver"] == "pre-patch" and "schedule_delay" not in doms["busy"]["balloon"]
    assert doms["busy"]["current_pages"] == 12 * 256
    assert doms["bare"]["current_pages"] == 24 * 256
