"""Paces: how fast a guest's driver may move pages, with an injected clock."""

from __future__ import annotations

import pytest

from guest.pace import UNLIMITED, Slow, Stuck, StuckEvery, Unlimited, parse_pace


@pytest.mark.timeout(5)
def test_unlimited_always_allows():
    p = Unlimited()
    for t in (0.0, 1.0, 1e9):
        assert p.allowance(t) == UNLIMITED
        assert p.next_allowed(t) == t
        p.consume(10**6, t)
    assert p.allowance(5.0) == UNLIMITED


@pytest.mark.timeout(5)
def test_stuck_never_allows():
    p = Stuck()
    for t in (0.0, 1.0, 1e9):
        assert p.allowance(t) == 0
        assert p.next_allowed(t) is None


@pytest.mark.timeout(5)
def test_slow_starts_empty_and_fills_at_its_rate():
    p = Slow(10, created=100.0)
    assert p.allowance(100.0) == 0
    assert p.next_allowed(100.0) == pytest.approx(100.1)
    assert p.allowance(100.05) == 0
    assert p.allowance(100.1) == 1  # due exactly when promised, despite float rounding
    assert p.allowance(100.35) == 3
    assert p.allowance(101.0) == 10


@pytest.mark.timeout(5)
def test_slow_is_due_exactly_at_next_allowed_for_awkward_rates():
    for rate in (3, 7, 0.3, 33.3, 1000):
        p = Slow(rate, created=0.0)
        t = 0.0
        for _ in range(50):
            t = p.next_allowed(t)
            assert p.allowance(t) >= 1
            p.consume(1, t)


@pytest.mark.timeout(5)
def test_slow_capacity_is_one_batch():
    p = Slow(100, created=0.0, capacity=512)
    assert p.allowance(3600.0) == 512
    p.consume(512, 3600.0)
    assert p.allowance(3600.0) == 0
    assert p.next_allowed(3600.0) == pytest.approx(3600.1)  # a tenth of a second's worth: 10 pages


@pytest.mark.timeout(5)
def test_a_fast_slow_guest_moves_in_tenth_of_a_second_steps_not_page_by_page():
    p = Slow(200, created=0.0)
    assert p.min_step == 20
    assert p.allowance(0.05) == 0
    assert p.next_allowed(0.05) == pytest.approx(0.1)
    assert p.allowance(0.1) == 20


@pytest.mark.timeout(5)
def test_slow_consume_spends_tokens():
    p = Slow(10, created=0.0)
    assert p.allowance(2.0) == 20
    p.consume(15, 2.0)
    assert p.allowance(2.0) == 5
    p.consume(5, 2.0)
    assert p.allowance(2.0) == 0
    assert p.next_allowed(2.0) == pytest.approx(2.1)


@pytest.mark.timeout(5)
def test_slow_bounds_pages_per_second():
    p = Slow(50, created=0.0)
    moved, t = 0, 0.0
    while t < 10.0:
        n = p.allowance(t)
        p.consume(n, t)
        moved += n
        t += 0.013
    assert 490 <= moved <= 500


@pytest.mark.timeout(5)
def test_slow_rate_below_one_page_per_second():
    p = Slow(0.5, created=0.0)
    assert p.next_allowed(1.0) == pytest.approx(2.0)
    assert p.allowance(1.9) == 0
    assert p.allowance(2.0) == 1


@pytest.mark.timeout(5)
def test_slow_ignores_a_clock_going_backwards():
    p = Slow(10, created=5.0)
    assert p.allowance(4.0) == 0
    assert p.allowance(6.0) == 10


@pytest.mark.timeout(5)
def test_stuck_every_alternates_starting_with_motion():
    p = StuckEvery(10, created=100.0)
    assert p.allowance(100.0) == UNLIMITED
    assert p.next_allowed(105.0) == 105.0
    assert p.allowance(109.999) == UNLIMITED
    assert p.allowance(110.0) == 0
    assert p.next_allowed(110.0) == 120.0
    assert p.next_allowed(119.0) == 120.0
    assert p.allowance(120.0) == UNLIMITED
    assert p.allowance(135.0) == 0
    assert p.next_allowed(135.0) == 140.0
    assert p.allowance(1000.0 + 100.0) == UNLIMITED  # 1000 s = 50 whole cycles
    assert p.allowance(100.0 - 50.0) == UNLIMITED  # before creation: as at creation


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "spec, kind",
    [("normal", Unlimited), ("stuck", Stuck), ("slow:25", Slow), ("slow:0.5", Slow), ("stuck-every:30", StuckEvery)],
)
def test_parse_pace(spec, kind):
    p = parse_pace(spec, now=3.0)
    assert isinstance(p, kind)
    assert parse_pace(p.spec, now=3.0).spec == p.spec


@pytest.mark.timeout(5)
def test_parse_pace_sets_creation_time_and_capacity():
    p = parse_pace("stuck-every:5", now=100.0)
    assert p.allowance(106.0) == 0
    s = parse_pace("slow:1000", now=0.0, batch_pages=64)
    assert s.allowance(10.0) == 64


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "spec", ["", "fast", "slow", "slow:", "slow:0", "slow:-3", "slow:x", "slow:inf", "slow:nan", "stuck:3",
             "normal:1", "stuck-every", "stuck-every:0", "stuck-every:-1"],
)
def test_parse_pace_refuses_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_pace(spec, now=0.0)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [0, -1, True, float("inf"), float("nan"), "3"])
def test_bad_pace_parameters(bad):
    with pytest.raises(ValueError):
        Slow(bad, created=0.0)
    with pytest.raises(ValueError):
        StuckEvery(bad, created=0.0)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_slow_capacity(bad):
    with pytest.raises(ValueError):
        Slow(10, created=0.0, capacity=bad)


@pytest.mark.timeout(5)
def test_both_limits_apply_at_once():
    from guest.pace import Both, parse_pace

    p = parse_pace("slow:100+stuck-every:1", now=0.0)
    assert isinstance(p, Both) and p.spec == "slow:100+stuck-every:1"
    assert p.allowance(0.5) == 50  # moving phase: the bucket limits
    assert p.allowance(1.5) == 0  # stuck phase, though tokens are saved
    assert p.next_allowed(1.5) == pytest.approx(2.0)
    p.consume(50, 2.0)
    assert p.allowance(2.0) == 150  # 200 tokens saved, 50 spent
    assert parse_pace("stuck+slow:5", now=0.0).next_allowed(0.0) is None
