"""IOAPIC redirection: edge/level delivery, Remote IRR and EOI, masking, polarity, bad input.

Several cases follow kvm-unit-tests x86/ioapic.c: an edge is delivered exactly once, level
interrupts coalesce until EOI and are re-delivered while still asserted, a masked edge is lost
while a masked level is delivered on unmask.
"""

from __future__ import annotations

import pytest

from irqbus.ioapic import (
    IOAPIC,
    Delivery,
    DeliveryMode,
    DeliveryStatus,
    DestinationMode,
    Polarity,
    RedirectionEntry,
    TriggerMode,
)

EDGE, LEVEL = TriggerMode.EDGE, TriggerMode.LEVEL


def routed(pin: int, vector: int, trigger: TriggerMode = EDGE, **extra: object) -> IOAPIC:
    ioapic = IOAPIC()
    assert ioapic.write_entry(pin, vector=vector, trigger=trigger, masked=False, **extra) == []
    return ioapic


def pulse(ioapic: IOAPIC, pin: int) -> list[Delivery]:
    return ioapic.set_line(pin, True) + ioapic.set_line(pin, False)


# -- edge ---------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_edge_delivered_exactly_once() -> None:
    ioapic = routed(0x0E, 0x76, destination=3)
    assert ioapic.set_line(0x0E, True) == [Delivery(pin=0x0E, vector=0x76, destination=3, level=False)]
    assert ioapic.set_line(0x0E, True) == []  # still high: no new edge
    assert ioapic.set_line(0x0E, False) == []
    assert ioapic.read_entry(0x0E).remote_irr is False  # edges never set Remote IRR
    assert ioapic.set_line(0x0E, True) == [Delivery(0x0E, 0x76, 3, False)]


@pytest.mark.timeout(5)
def test_two_edges_are_two_deliveries() -> None:
    ioapic = routed(0x0E, 0x76)
    assert len(pulse(ioapic, 0x0E) + pulse(ioapic, 0x0E)) == 2


@pytest.mark.timeout(5)
def test_edges_while_masked_are_lost() -> None:
    ioapic = routed(0x0E, 0x76)
    ioapic.mask(0x0E)
    assert pulse(ioapic, 0x0E) == []
    assert pulse(ioapic, 0x0E) == []
    assert ioapic.unmask(0x0E) == []  # nothing was latched
    assert pulse(ioapic, 0x0E) == [Delivery(0x0E, 0x76, 0, False)]


@pytest.mark.timeout(5)
def test_edge_held_high_across_unmask_is_lost() -> None:
    ioapic = routed(0x0E, 0x76)
    ioapic.mask(0x0E)
    ioapic.set_line(0x0E, True)
    assert ioapic.unmask(0x0E) == []
    assert ioapic.set_line(0x0E, True) == []


@pytest.mark.timeout(5)
def test_eoi_does_not_redeliver_edge() -> None:
    ioapic = routed(5, 0x41)
    ioapic.set_line(5, True)
    assert ioapic.eoi(0x41) == []


# -- level --------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_level_sets_remote_irr_and_coalesces() -> None:
    ioapic = routed(0x0E, 0x77, LEVEL)
    assert ioapic.set_line(0x0E, True) == [Delivery(0x0E, 0x77, 0, True)]
    assert ioapic.read_entry(0x0E).remote_irr
    # Deassert and assert again before the EOI: coalesced into the first.
    assert ioapic.set_line(0x0E, False) == []
    assert ioapic.set_line(0x0E, True) == []
    assert ioapic.read_entry(0x0E).remote_irr


@pytest.mark.timeout(5)
def test_level_redelivered_when_still_asserted_at_eoi() -> None:
    ioapic = routed(0x0E, 0x77, LEVEL)
    ioapic.set_line(0x0E, True)
    assert ioapic.eoi(0x77) == [Delivery(0x0E, 0x77, 0, True)]
    assert ioapic.read_entry(0x0E).remote_irr  # waiting for the next EOI
    ioapic.set_line(0x0E, False)
    assert ioapic.eoi(0x77) == []
    assert not ioapic.read_entry(0x0E).remote_irr
    assert ioapic.set_line(0x0E, True) == [Delivery(0x0E, 0x77, 0, True)]


@pytest.mark.timeout(5)
def test_eoi_for_other_vector_changes_nothing() -> None:
    ioapic = routed(0x0E, 0x77, LEVEL)
    ioapic.set_line(0x0E, True)
    assert ioapic.eoi(0x78) == []
    assert ioapic.read_entry(0x0E).remote_irr


@pytest.mark.timeout(5)
def test_eoi_hits_every_level_entry_with_the_vector() -> None:
    ioapic = IOAPIC()
    for pin in (16, 17):
        ioapic.write_entry(pin, vector=0x90, trigger=LEVEL, masked=False)
        ioapic.set_line(pin, True)
    ioapic.set_line(17, False)
    assert ioapic.eoi(0x90) == [Delivery(16, 0x90, 0, True)]
    assert not ioapic.read_entry(17).remote_irr


@pytest.mark.timeout(5)
def test_masked_level_delivered_on_unmask() -> None:
    ioapic = IOAPIC()
    ioapic.write_entry(0x0E, vector=0x78, trigger=LEVEL)  # reset state is masked
    assert ioapic.set_line(0x0E, True) == []
    assert ioapic.unmask(0x0E) == [Delivery(0x0E, 0x78, 0, True)]
    assert ioapic.read_entry(0x0E).remote_irr


@pytest.mark.timeout(5)
def test_masked_level_deasserted_before_unmask_is_not_delivered() -> None:
    ioapic = IOAPIC()
    ioapic.write_entry(3, vector=0x78, trigger=LEVEL)
    ioapic.set_line(3, True)
    ioapic.set_line(3, False)
    assert ioapic.unmask(3) == []


@pytest.mark.timeout(5)
def test_level_masked_at_eoi_waits_for_unmask() -> None:
    ioapic = routed(4, 0x50, LEVEL)
    ioapic.set_line(4, True)
    ioapic.mask(4)
    assert ioapic.eoi(0x50) == []
    assert not ioapic.read_entry(4).remote_irr
    assert ioapic.unmask(4) == [Delivery(4, 0x50, 0, True)]


@pytest.mark.timeout(5)
def test_unmask_while_remote_irr_set_does_not_deliver_twice() -> None:
    ioapic = routed(4, 0x50, LEVEL)
    ioapic.set_line(4, True)
    ioapic.mask(4)
    assert ioapic.unmask(4) == []  # still waiting for EOI
    assert ioapic.eoi(0x50) == [Delivery(4, 0x50, 0, True)]


@pytest.mark.timeout(5)
def test_switch_to_edge_clears_remote_irr() -> None:
    ioapic = routed(4, 0x50, LEVEL)
    ioapic.set_line(4, True)
    ioapic.write_entry(4, trigger=EDGE)
    assert not ioapic.read_entry(4).remote_irr


# -- polarity -----------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_active_low_edge_fires_on_falling_line() -> None:
    ioapic = IOAPIC()
    ioapic.set_line(9, True)  # idle level of an active-low line
    ioapic.write_entry(9, vector=0x60, polarity=Polarity.ACTIVE_LOW, masked=False)
    assert not ioapic.asserted(9)
    assert ioapic.set_line(9, False) == [Delivery(9, 0x60, 0, False)]
    assert ioapic.set_line(9, True) == []


@pytest.mark.timeout(5)
def test_active_low_level() -> None:
    ioapic = IOAPIC()
    ioapic.set_line(9, True)
    ioapic.write_entry(9, vector=0x61, trigger=LEVEL, polarity=Polarity.ACTIVE_LOW, masked=False)
    assert ioapic.irr == 0
    assert ioapic.set_line(9, False) == [Delivery(9, 0x61, 0, True)]
    assert ioapic.irr == 1 << 9
    ioapic.set_line(9, True)
    assert ioapic.eoi(0x61) == []


# -- entries, validation ------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_reset_state_and_read_entry() -> None:
    ioapic = IOAPIC()
    assert ioapic.pin_count == 24
    assert len(ioapic.entries()) == 24
    entry = ioapic.read_entry(23)
    assert entry == RedirectionEntry()
    assert entry.masked and entry.vector == 0 and entry.trigger is EDGE
    assert entry.delivery_status is DeliveryStatus.IDLE
    assert ioapic.set_line(23, True) == []


@pytest.mark.timeout(5)
def test_write_entry_fields_and_delivery_carries_them() -> None:
    ioapic = IOAPIC()
    ioapic.write_entry(
        20,
        vector=0xA1,
        delivery_mode=DeliveryMode.LOWEST_PRIORITY,
        dest_mode=1,  # integers are accepted and normalised to the enum
        destination=0x0F,
        masked=False,
    )
    entry = ioapic.read_entry(20)
    assert entry.dest_mode is DestinationMode.LOGICAL
    assert ioapic.set_line(20, True) == [
        Delivery(20, 0xA1, 0x0F, False, DeliveryMode.LOWEST_PRIORITY, DestinationMode.LOGICAL)
    ]


@pytest.mark.timeout(5)
def test_raw_round_trip() -> None:
    entry = RedirectionEntry(
        vector=0x31,
        delivery_mode=DeliveryMode.NMI,
        dest_mode=DestinationMode.LOGICAL,
        polarity=Polarity.ACTIVE_LOW,
        remote_irr=True,
        trigger=LEVEL,
        masked=False,
        destination=0xAB,
    )
    raw = entry.to_raw()
    assert raw == 0x31 | 4 << 8 | 1 << 11 | 1 << 13 | 1 << 14 | 1 << 15 | 0xAB << 56
    assert RedirectionEntry.from_raw(raw) == entry
    assert RedirectionEntry().to_raw() == 1 << 16
    with pytest.raises(ValueError, match="reserved"):
        RedirectionEntry.from_raw(1 << 20)
    with pytest.raises(ValueError, match="delivery_mode"):
        RedirectionEntry.from_raw(3 << 8)


@pytest.mark.timeout(5)
def test_write_raw_ignores_read_only_bits() -> None:
    ioapic = IOAPIC()
    raw = RedirectionEntry(vector=0x44, trigger=LEVEL, masked=False, remote_irr=True).to_raw()
    ioapic.write_raw(2, raw)
    assert ioapic.read_entry(2) == RedirectionEntry(vector=0x44, trigger=LEVEL, masked=False)


@pytest.mark.timeout(5)
def test_bad_input_raises_without_state_change() -> None:
    ioapic = routed(1, 0x40)
    before = ioapic.entries()
    calls = [
        lambda: ioapic.set_line(24, True),
        lambda: ioapic.set_line(-1, True),
        lambda: ioapic.set_line("1", True),
        lambda: ioapic.set_line(1, 5),
        lambda: ioapic.read_entry(24),
        lambda: ioapic.write_entry(24, vector=0x40),
        lambda: ioapic.write_entry(1, vector=256),
        lambda: ioapic.write_entry(1, vector=0x50, destination=-1),  # partially valid: nothing applies
        lambda: ioapic.write_entry(1, delivery_mode=3),
        lambda: ioapic.write_entry(1, trigger="level"),
        lambda: ioapic.write_entry(1, remote_irr=False),
        lambda: ioapic.write_entry(1, delivery_status=0),
        lambda: ioapic.write_entry(1, colour="blue"),
        lambda: ioapic.eoi(300),
        lambda: IOAPIC(0),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert ioapic.entries() == before
    assert not ioapic.line(1)


@pytest.mark.timeout(5)
def test_pin_count_is_configurable() -> None:
    ioapic = IOAPIC(pins=8)
    assert ioapic.pin_count == 8
    with pytest.raises(ValueError, match="0..7"):
        ioapic.set_line(8, True)
