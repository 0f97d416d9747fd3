"""The i8259 pair: IRR/ISR/IMR/ELCR behaviour, priority, cascade, EOI and spurious IRQs."""

from __future__ import annotations

import pytest

from irqbus.i8259 import PIC, CascadedPICs, PicState


def bit(n: int) -> int:
    return 1 << n


def service(pics: CascadedPICs) -> int:
    """Ack the pending IRQ, asserting that INT was actually raised."""
    assert pics.pending_output()
    return pics.acknowledge()


# -- edge-triggered inputs --------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_edge_delivered_once_per_rising_edge() -> None:
    pics = CascadedPICs()
    assert not pics.pending_output()
    pics.set_line(4, True)
    assert pics.snapshot().irr == bit(4)
    assert service(pics) == 4
    s = pics.snapshot()
    assert s.isr == bit(4) and s.irr == 0
    pics.eoi(4)
    # Line still high: no new edge, no new interrupt.
    pics.set_line(4, True)
    assert not pics.pending_output()
    pics.set_line(4, False)
    assert not pics.pending_output()
    pics.set_line(4, True)
    assert service(pics) == 4


@pytest.mark.timeout(5)
def test_edge_pulse_is_latched_until_ack() -> None:
    pics = CascadedPICs()
    pics.set_line(3, True)
    pics.set_line(3, False)
    assert pics.snapshot().irr == bit(3)
    assert service(pics) == 3


@pytest.mark.timeout(5)
def test_masked_edges_are_latched_and_coalesced() -> None:
    """Unlike the IOAPIC, the 8259A latches IRR whatever IMR says; two edges make one request."""
    pics = CascadedPICs()
    pics.mask(5)
    for _ in range(2):
        pics.set_line(5, True)
        pics.set_line(5, False)
    assert not pics.pending_output()
    assert pics.snapshot().irr == bit(5)
    pics.unmask(5)
    assert service(pics) == 5
    pics.eoi()
    assert not pics.pending_output()


@pytest.mark.timeout(5)
def test_edge_while_in_service_is_latched_for_after_eoi() -> None:
    pics = CascadedPICs()
    pics.set_line(6, True)
    assert service(pics) == 6
    pics.set_line(6, False)
    pics.set_line(6, True)  # second edge while the first is in service
    assert not pics.pending_output()  # equal priority in service blocks it
    pics.eoi()
    assert service(pics) == 6


# -- level-triggered inputs (ELCR) ------------------------------------------------------------


@pytest.mark.timeout(5)
def test_level_irr_follows_line() -> None:
    pics = CascadedPICs()
    pics.set_trigger(5, True)
    assert pics.is_level(5)
    pics.set_line(5, True)
    assert pics.snapshot().irr == bit(5)
    pics.set_line(5, False)
    assert pics.snapshot().irr == 0
    assert not pics.pending_output()


@pytest.mark.timeout(5)
def test_level_redelivered_while_asserted_at_eoi() -> None:
    pics = CascadedPICs()
    pics.set_trigger(11, True)
    pics.set_line(11, True)
    assert service(pics) == 11
    assert pics.snapshot().irr & bit(11)  # level IRR stays while the line is high
    assert not pics.pending_output()  # but in service blocks it
    pics.eoi(11)
    assert service(pics) == 11  # still asserted: again
    pics.set_line(11, False)
    pics.eoi(11)
    assert not pics.pending_output()


@pytest.mark.timeout(5)
def test_elcr_level_vs_edge_same_input() -> None:
    """The same held-high line: edge gives one interrupt, level gives one per EOI."""
    edge, level = CascadedPICs(), CascadedPICs()
    level.set_trigger(10, True)
    for pics in (edge, level):
        pics.set_line(10, True)
        assert service(pics) == 10
        pics.eoi()
    assert not edge.pending_output()
    assert level.pending_output() and level.acknowledge() == 10


@pytest.mark.timeout(5)
def test_switching_to_level_picks_up_a_high_line() -> None:
    pics = CascadedPICs()
    pics.set_line(9, True)
    assert service(pics) == 9
    pics.eoi()
    assert not pics.pending_output()
    pics.set_trigger(9, True)
    assert service(pics) == 9


@pytest.mark.timeout(5)
def test_fixed_edge_inputs_refuse_level() -> None:
    pics = CascadedPICs()
    for irq in (0, 1, 2, 8, 13):
        with pytest.raises(ValueError, match="edge"):
            pics.set_trigger(irq, True)
    assert pics.snapshot().elcr == 0
    with pytest.raises(ValueError):
        pics.set_elcr(bit(0) | bit(5))
    assert pics.snapshot().elcr == 0  # all or nothing
    pics.set_elcr(bit(5) | bit(9) | bit(10) | bit(11))
    assert pics.snapshot().elcr == bit(5) | bit(9) | bit(10) | bit(11)
    pics.set_trigger(9, False)
    assert not pics.is_level(9)


@pytest.mark.timeout(5)
def test_fixed_edge_optional_but_cascade_stays_edge() -> None:
    pics = CascadedPICs(fixed_edge=False)
    for irq in (0, 1, 8, 13):
        pics.set_trigger(irq, True)
    with pytest.raises(ValueError):
        pics.set_trigger(2, True)


# -- priority ---------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_in_service_irq1_blocks_irq5_until_eoi_and_irq0_preempts() -> None:
    pics = CascadedPICs()
    pics.set_line(1, True)
    assert service(pics) == 1
    pics.set_line(5, True)
    assert not pics.pending_output()  # lower priority than IRQ1 in service
    pics.set_line(0, True)
    assert service(pics) == 0  # higher priority preempts (nested)
    assert pics.snapshot().isr == bit(0) | bit(1)
    assert pics.eoi() == 0  # non-specific EOI ends the highest in service
    assert not pics.pending_output()  # IRQ1 still in service, IRQ5 still blocked
    assert pics.eoi() == 1
    assert service(pics) == 5
    assert pics.eoi() == 5
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_highest_pending_wins() -> None:
    pics = CascadedPICs()
    for irq in (7, 4, 6, 3):
        pics.set_line(irq, True)
    order = []
    for _ in range(4):
        irq = service(pics)
        order.append(irq)
        pics.eoi()
    assert order == [3, 4, 6, 7]


@pytest.mark.timeout(5)
def test_slave_irqs_rank_between_irq1_and_irq3() -> None:
    pics = CascadedPICs()
    pics.set_line(3, True)
    assert service(pics) == 3
    pics.set_line(12, True)
    assert service(pics) == 12  # slave (via IRQ2) preempts IRQ3
    pics.eoi()
    pics.eoi()
    assert pics.snapshot().isr == 0

    pics.set_line(1, True)
    assert service(pics) == 1
    pics.set_line(12, False)
    pics.set_line(12, True)
    assert not pics.pending_output()  # IRQ1 in service blocks the whole slave
    pics.eoi()
    assert service(pics) == 12


@pytest.mark.timeout(5)
def test_specific_and_non_specific_eoi() -> None:
    pics = CascadedPICs()
    pics.set_line(6, True)
    assert service(pics) == 6
    pics.set_line(4, True)
    assert service(pics) == 4
    pics.set_line(3, True)
    assert service(pics) == 3
    assert pics.snapshot().isr == bit(3) | bit(4) | bit(6)
    assert pics.eoi(4) == 4  # specific: exactly that bit, not the highest
    assert pics.snapshot().isr == bit(3) | bit(6)
    assert pics.eoi(4) is None  # not in service: no-op
    assert pics.eoi() == 3  # non-specific: the highest
    assert pics.eoi() == 6
    assert pics.eoi() is None  # nothing left
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_rotation_changes_priority_order() -> None:
    pic = PIC()
    pic.set_lowest_priority(4)  # 5 is now highest: 5 6 7 0 1 2 3 4
    assert pic.highest_priority_pin == 5
    for pin in (0, 4, 6):
        pic.set_line(pin, True)
    assert pic.acknowledge() == 6
    pic.eoi(rotate=True)  # 6 becomes lowest, 7 highest
    assert pic.highest_priority_pin == 7
    assert pic.acknowledge() == 0
    pic.eoi()
    assert pic.acknowledge() == 4


@pytest.mark.timeout(5)
def test_auto_eoi_sets_no_isr_bit() -> None:
    pics = CascadedPICs(auto_eoi=True)
    pics.set_line(1, True)
    assert service(pics) == 1
    assert pics.snapshot().isr == 0
    pics.set_line(5, True)
    assert service(pics) == 5  # nothing in service blocks it


@pytest.mark.timeout(5)
def test_auto_eoi_rotation() -> None:
    pic = PIC(auto_eoi=True, rotate_on_auto_eoi=True)
    pic.set_line(3, True)
    assert pic.acknowledge() == 3
    assert pic.highest_priority_pin == 4


# -- cascade ----------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_cascade_ack_sets_both_isrs_and_needs_eoi_to_both() -> None:
    pics = CascadedPICs()
    pics.set_line(9, True)
    assert pics.master.snapshot().irr == bit(2)  # the slave's INT latched master IRQ2
    assert service(pics) == 9
    assert pics.vector(9) == 0x29
    assert pics.master.snapshot().isr == bit(2)
    assert pics.slave.snapshot().isr == bit(1)

    # Linux order: slave first. With only the slave EOI'd, master IRQ2 stays in service and
    # blocks lower master pins and the slave itself.
    pics.set_line(3, True)
    pics.set_line(10, True)
    assert not pics.pending_output()
    assert pics.slave.eoi() == 1
    assert pics.slave.pending_output()  # the slave wants IRQ10 delivered ...
    assert not pics.pending_output()  # ... but master IRQ2 is still in service
    assert pics.master.eoi() == 2
    assert service(pics) == 10
    assert pics.eoi() == 10  # the pair's EOI does slave then master in one go
    assert pics.snapshot().isr == 0
    assert service(pics) == 3
    pics.eoi(3)
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_specific_eoi_for_slave_irq_clears_master_cascade() -> None:
    pics = CascadedPICs()
    pics.set_line(14, True)
    assert service(pics) == 14
    assert pics.eoi(14) == 14
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_masking_irq2_silences_the_slave() -> None:
    pics = CascadedPICs()
    pics.mask(2)
    pics.set_line(12, True)
    assert pics.slave.pending_output()
    assert not pics.pending_output()
    pics.unmask(2)
    assert service(pics) == 12


@pytest.mark.timeout(5)
def test_set_imr_16_bits() -> None:
    pics = CascadedPICs()
    pics.set_imr(0xFFFB)  # everything but the cascade
    pics.set_line(4, True)
    pics.set_line(9, True)
    assert not pics.pending_output()
    assert pics.snapshot().imr == 0xFFFB
    assert pics.is_masked(9) and not pics.is_masked(2)
    pics.unmask(9)
    assert service(pics) == 9
    pics.eoi()
    pics.unmask(4)
    assert service(pics) == 4


@pytest.mark.timeout(5)
def test_special_fully_nested_lets_higher_slave_irq_through() -> None:
    for sfnm, expected in ((False, False), (True, True)):
        pics = CascadedPICs(special_fully_nested=sfnm)
        pics.set_line(12, True)
        assert service(pics) == 12
        pics.set_line(9, True)  # higher priority on the same slave
        assert pics.pending_output() is expected
        if expected:
            assert pics.acknowledge() == 9
        pics.set_line(5, True)  # a lower master pin stays blocked by IRQ2 in service
        assert not pics.pending_output()
        assert pics.master.highest_request() is None


# -- spurious interrupts ----------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_spurious_irq7_when_nothing_pending() -> None:
    pics = CascadedPICs()
    pics.set_trigger(5, True)
    pics.set_line(5, True)
    assert pics.pending_output()
    pics.set_line(5, False)  # the request vanished before INTA
    assert pics.acknowledge() == 7
    assert not pics.in_service(7)  # spurious: no ISR bit
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_genuine_irq7_sets_isr() -> None:
    pics = CascadedPICs()
    pics.set_line(7, True)
    assert service(pics) == 7
    assert pics.in_service(7)


@pytest.mark.timeout(5)
def test_spurious_irq15_leaves_master_irq2_in_service() -> None:
    pics = CascadedPICs()
    pics.set_trigger(10, True)
    pics.set_line(10, True)
    assert pics.pending_output()
    pics.set_line(10, False)  # slave output drops; master IRQ2 (edge) stays latched
    assert pics.acknowledge() == 15
    assert not pics.in_service(15)
    assert pics.slave.snapshot().isr == 0
    assert pics.master.snapshot().isr == bit(2)  # the guest must EOI the master
    assert pics.eoi(15) is None
    assert pics.snapshot().isr == 0


@pytest.mark.timeout(5)
def test_spurious_ack_on_idle_controller_changes_nothing() -> None:
    pics = CascadedPICs()
    before = pics.snapshot()
    assert pics.acknowledge() == 7
    assert pics.snapshot() == before


# -- vectors, snapshot, bad input -------------------------------------------------------------


@pytest.mark.timeout(5)
def test_vectors_follow_bases() -> None:
    pics = CascadedPICs()
    assert [pics.vector(i) for i in (0, 7, 8, 15)] == [0x20, 0x27, 0x28, 0x2F]
    other = CascadedPICs(master_vector_base=0x08, slave_vector_base=0x70)
    assert other.vector(1) == 0x09 and other.vector(8) == 0x70
    with pytest.raises(ValueError):
        CascadedPICs(master_vector_base=0x21)
    with pytest.raises(ValueError):
        PIC(vector_base=0x100)


@pytest.mark.timeout(5)
def test_snapshot_is_16_bit_and_read_only() -> None:
    pics = CascadedPICs()
    pics.set_trigger(11, True)
    pics.set_line(11, True)
    pics.set_line(4, True)
    s = pics.snapshot()
    assert isinstance(s, PicState)
    assert s.irr == bit(2) | bit(4) | bit(11)
    assert s.lines == bit(2) | bit(4) | bit(11)
    assert s.elcr == bit(11)
    with pytest.raises(AttributeError):
        s.irr = 0  # type: ignore[misc]


@pytest.mark.timeout(5)
def test_bad_input_is_refused_without_state_change() -> None:
    pics = CascadedPICs()
    pics.set_line(4, True)
    before = pics.snapshot()
    for call in (
        lambda: pics.set_line(16, True),
        lambda: pics.set_line(-1, True),
        lambda: pics.set_line("3", True),  # type: ignore[arg-type]
        lambda: pics.set_line(True, True),  # type: ignore[arg-type]
        lambda: pics.set_line(3, 2),  # type: ignore[arg-type]
        lambda: pics.set_line(2, True),  # the cascade input
        lambda: pics.mask(99),
        lambda: pics.set_imr(0x10000),
        lambda: pics.eoi(16),
        lambda: pics.vector(16),
        lambda: pics.master.set_line(8, True),
    ):
        with pytest.raises(ValueError):
            call()
    assert pics.snapshot() == before


@pytest.mark.timeout(5)
def test_single_pic_pins_are_local() -> None:
    pic = PIC(vector_base=0x28)
    pic.set_line(0, True)
    assert pic.pending_output()
    assert pic.acknowledge() == 0
    assert pic.vector(0) == 0x28
    assert pic.acknowledge() == 7  # spurious: the only request is in service
    assert pic.snapshot().isr == bit(0)


@pytest.mark.timeout(5)
def test_int_output_wire_reports_each_change_once() -> None:
    seen: list[bool] = []
    pic = PIC(on_output=seen.append)
    pic.set_line(3, True)
    pic.set_line(4, True)  # already high: no new report
    assert pic.acknowledge() == 3  # 4 is blocked by 3 in service: INT drops
    pic.eoi()  # 4 deliverable again
    assert seen == [True, False, True]
