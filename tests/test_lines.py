"""Shared pins: the level is the OR of every source's bit, as in KVM's irq_states bitmap."""

from __future__ import annotations

import random

import pytest

from irqbus.i8259 import CascadedPICs
from irqbus.ioapic import IOAPIC, TriggerMode
from irqbus.lines import SharedLines


@pytest.mark.timeout(5)
def test_two_sources_or_together() -> None:
    lines = SharedLines()
    assert lines.set_source(11, 0, True) is True
    assert lines.set_source(11, 1, True) is True
    assert lines.sources(11) == frozenset({0, 1})
    assert lines.set_source(11, 0, False) is True  # source 1 still holds the pin high
    assert lines.level(11)
    assert lines.set_source(11, 1, False) is False
    assert lines.sources(11) == frozenset()


@pytest.mark.timeout(5)
def test_repeated_assert_from_one_source_is_one_bit() -> None:
    lines = SharedLines()
    lines.set_source(5, 3, True)
    lines.set_source(5, 3, True)
    assert lines.set_source(5, 3, False) is False


@pytest.mark.timeout(5)
def test_pins_are_independent() -> None:
    lines = SharedLines()
    lines.set_source(1, 0, True)
    assert not lines.level(2)
    assert lines.levels == 1 << 1


@pytest.mark.timeout(5)
def test_remove_source_reports_pins_that_went_low() -> None:
    lines = SharedLines()
    lines.set_source(3, 7, True)
    lines.set_source(4, 7, True)
    lines.set_source(4, 8, True)  # shared: stays high
    lines.set_source(6, 8, True)  # not ours
    assert lines.remove_source(7) == [3]
    assert lines.levels == 1 << 4 | 1 << 6
    assert lines.sources(4) == frozenset({8})
    assert lines.remove_source(7) == []


@pytest.mark.timeout(5)
def test_matches_naive_model() -> None:
    rng = random.Random(1)
    lines = SharedLines(pins=8, max_sources=6)
    model: dict[int, set[int]] = {pin: set() for pin in range(8)}
    for _ in range(2000):
        if rng.random() < 0.05:
            source = rng.randrange(6)
            before = {pin for pin in model if model[pin]}
            for held in model.values():
                held.discard(source)
            after = {pin for pin in model if model[pin]}
            assert sorted(before - after) == lines.remove_source(source)
            continue
        pin, source, level = rng.randrange(8), rng.randrange(6), rng.random() < 0.5
        (model[pin].add if level else model[pin].discard)(source)
        assert lines.set_source(pin, source, level) == bool(model[pin])
        assert lines.sources(pin) == frozenset(model[pin])


@pytest.mark.timeout(5)
def test_shared_level_line_through_ioapic_and_pic() -> None:
    """Two devices on one level pin: the controllers see one line that stays asserted
    until both have deasserted, so the interrupt keeps coming back at EOI."""
    lines, ioapic, pics = SharedLines(), IOAPIC(), CascadedPICs()
    ioapic.write_entry(11, vector=0x3B, trigger=TriggerMode.LEVEL, masked=False)
    pics.set_trigger(11, True)

    def drive(source: int, level: bool) -> list[int]:
        pin_level = lines.set_source(11, source, level)
        pics.set_line(11, pin_level)
        return [d.vector for d in ioapic.set_line(11, pin_level)]

    assert drive(0, True) == [0x3B]
    assert drive(1, True) == []  # already asserted, awaiting EOI
    assert drive(0, False) == []  # device 0 serviced; device 1 still asserts
    assert [d.vector for d in ioapic.eoi(0x3B)] == [0x3B]
    assert pics.acknowledge() == 11
    pics.eoi()
    assert pics.acknowledge() == 11  # still asserted by device 1: again
    drive(1, False)
    pics.eoi()
    assert ioapic.eoi(0x3B) == []
    assert not pics.pending_output()


@pytest.mark.timeout(5)
def test_bad_input() -> None:
    lines = SharedLines(pins=4, max_sources=2)
    lines.set_source(0, 0, True)
    for call in (
        lambda: lines.set_source(4, 0, True),
        lambda: lines.set_source(0, 2, True),
        lambda: lines.set_source(0, -1, True),
        lambda: lines.set_source(0, 0, "no"),
        lambda: lines.set_source("0", 0, False),
        lambda: lines.remove_source(9),
        lambda: lines.sources(-1),
        lambda: SharedLines(pins=0),
    ):
        with pytest.raises(ValueError):
            call()  # type: ignore[no-untyped-call]
    assert lines.sources(0) == frozenset({0})
