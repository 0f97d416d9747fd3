"""hypervisor/pacing.py: heartbeats read in batches only on a host they keep awake."""

from __future__ import annotations

import pytest

from hypervisor.pacing import HeartbeatPacer

pytestmark = pytest.mark.timeout(10)


def beats(pacer: HeartbeatPacer, per_s: int, seconds: float, others_every: int = 0) -> list[float]:
    """Turns of one heartbeat each at `per_s`; the pause after each (0: read again at once)."""
    pauses = []
    for i in range(int(per_s * seconds)):
        now = i / per_s
        others = 1 if others_every and i % others_every == 0 else 0
        pauses.append(round(pacer.after_turn(now, 1, others) - now, 6))
    return pauses


def test_a_small_host_never_pauses():
    assert set(beats(HeartbeatPacer(), per_s=8, seconds=10)) == {0.0}


def test_a_busy_host_pauses_after_heartbeat_only_turns_once_it_has_measured_the_rate():
    pauses = beats(HeartbeatPacer(pace_s=0.05, pace_from_per_s=200), per_s=1000, seconds=3)
    assert set(pauses[:1000]) == {0.0}  # the first window: the rate is not known yet
    assert set(pauses[1001:]) == {0.05}


def test_a_turn_that_served_anything_else_is_never_followed_by_a_pause():
    pauses = beats(HeartbeatPacer(), per_s=1000, seconds=3, others_every=2)
    assert all(p == 0.0 for i, p in enumerate(pauses) if i % 2 == 0)


def test_the_pacing_stops_when_the_heartbeats_slow_down():
    pacer = HeartbeatPacer(pace_from_per_s=200)
    beats(pacer, per_s=1000, seconds=2)
    assert pacer.rate_per_s >= 200
    for i in range(30):  # 10 a second, from t = 2 s on
        now = 2 + i / 10
        pause = pacer.after_turn(now, 1, 0) - now
    assert pacer.rate_per_s < 200 and pause == 0.0
