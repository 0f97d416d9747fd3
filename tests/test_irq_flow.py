"""Flow handlers (level, edge, fasteoi), shared-line dispatch and replay of pending edges.

Each test checks the chip operations returned for irqbus as well as which handlers ran.
"""

from __future__ import annotations

import pytest

from guest.irq import (
    Chip,
    ChipOp,
    ChipOpKind,
    Flow,
    HandlerFault,
    IrqError,
    IrqReturn,
    IrqSetupError,
    IrqStatus,
    IrqSubsystem,
    Trigger,
)

MASK, UNMASK, ACK, EOI = ChipOpKind.MASK, ChipOpKind.UNMASK, ChipOpKind.ACK, ChipOpKind.EOI


def ops(irq: int, *kinds: ChipOpKind) -> list[ChipOp]:
    return [ChipOp(kind, irq) for kind in kinds]


class Recorder:
    """A handler that records its calls and answers `ret`."""

    def __init__(self, ret: IrqReturn | int = IrqReturn.HANDLED) -> None:
        self.calls: list[tuple[int, object]] = []
        self.ret = ret

    def __call__(self, irq: int, dev_id: object) -> IrqReturn | int:
        self.calls.append((irq, dev_id))
        return self.ret


# -- dispatch ---------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_irqreturn_combines_by_or():
    assert IrqReturn.NONE | IrqReturn.HANDLED == IrqReturn.HANDLED
    assert int(IrqReturn.NONE) == 0 and int(IrqReturn.HANDLED) == 1
    assert IrqReturn.HANDLED | IrqReturn.WAKE_THREAD == 3


@pytest.mark.timeout(5)
def test_handler_gets_irq_and_dev_id():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(4, rec, "serial", dev_id="ttyS0")
    sub.handle(4, 1.0)
    assert rec.calls == [(4, "ttyS0")]


@pytest.mark.timeout(5)
def test_every_action_on_a_shared_line_is_called_and_ored():
    sub = IrqSubsystem()
    nic, disk = Recorder(IrqReturn.HANDLED), Recorder(IrqReturn.NONE)
    sub.request_irq(11, nic, "nic0", dev_id="nic0", shared=True, trigger=Trigger.LEVEL)
    sub.request_irq(11, disk, "disk0", dev_id="disk0", shared=True)
    assert sub.handle(11, 0.0) == ops(11, MASK, ACK, UNMASK)
    assert nic.calls == [(11, "nic0")] and disk.calls == [(11, "disk0")]
    desc = sub.lookup(11)
    assert desc.irqs_unhandled == 0  # HANDLED | NONE = HANDLED
    assert desc.count == 1
    assert [(a.count, a.handled) for a in desc.actions] == [(1, 1), (1, 0)]


@pytest.mark.timeout(5)
def test_all_none_counts_unhandled():
    sub = IrqSubsystem()
    sub.request_irq(11, Recorder(IrqReturn.NONE), "a", dev_id="a", shared=True)
    sub.request_irq(11, Recorder(0), "b", dev_id="b", shared=True)
    sub.handle(11, 0.0)
    sub.handle(11, 0.01)
    assert sub.lookup(11).irqs_unhandled == 2


@pytest.mark.timeout(5)
def test_int_and_bool_returns_are_accepted():
    sub = IrqSubsystem()
    sub.request_irq(11, Recorder(1), "a", dev_id="a", shared=True)
    sub.request_irq(11, Recorder(True), "b", dev_id="b", shared=True)
    sub.handle(11, 0.0)
    assert [a.handled for a in sub.lookup(11).actions] == [1, 1]
    assert sub.events() == []


@pytest.mark.timeout(5)
def test_faulty_handlers_are_reported_not_fatal():
    sub = IrqSubsystem()

    def boom(irq: int, dev_id: object) -> IrqReturn:
        raise RuntimeError("device on fire")

    good = Recorder()
    sub.request_irq(11, boom, "broken", dev_id=1, shared=True)
    sub.request_irq(11, Recorder("yes"), "not-an-int", dev_id=2, shared=True)
    sub.request_irq(11, good, "good", dev_id=3, shared=True)
    assert sub.handle(11, 0.0) == ops(11, MASK, ACK, UNMASK)
    assert len(good.calls) == 1
    events = sub.events()
    assert [type(e) for e in events] == [HandlerFault, HandlerFault]
    assert events[0].action == "broken" and "device on fire" in events[0].message
    assert events[1].action == "not-an-int" and "'yes', not an irqreturn_t" in events[1].reason
    assert not sub.lookup(11).has(IrqStatus.INPROGRESS)
    assert sub.lookup(11).irqs_unhandled == 0  # "good" handled it
    assert sub.events() == []  # drained


@pytest.mark.timeout(5)
def test_per_cpu_counts():
    sub = IrqSubsystem()
    sub.request_irq(4, Recorder(), "serial")
    sub.handle(4, 0.0, cpu=0)
    sub.handle(4, 0.0, cpu=1)
    sub.handle(4, 0.0, cpu=1)
    desc = sub.lookup(4)
    assert desc.kstat == [1, 2] and desc.count == 3
    assert desc.cpu_count(7) == 0


@pytest.mark.timeout(5)
def test_bad_delivery_is_refused():
    sub = IrqSubsystem()
    sub.request_irq(4, Recorder(), "serial")
    for irq, now, cpu, code in [
        (99, 0.0, 0, IrqError.ENOENT),
        (-3, 0.0, 0, IrqError.EINVAL),
        (4, "soon", 0, IrqError.EINVAL),
        (4, float("nan"), 0, IrqError.EINVAL),
        (4, 0.0, -1, IrqError.EINVAL),
        (4, 0.0, 10**9, IrqError.EINVAL),
    ]:
        with pytest.raises(IrqSetupError) as info:
            sub.handle(irq, now, cpu)
        assert info.value.code is code
    assert sub.lookup(4).count == 0


# -- level flow -------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_level_flow_masks_acks_runs_unmasks():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(9, rec, "acpi", trigger=Trigger.LEVEL)
    assert sub.handle(9, 0.0) == ops(9, MASK, ACK, UNMASK)
    assert len(rec.calls) == 1
    assert not sub.lookup(9).has(IrqStatus.MASKED)


@pytest.mark.timeout(5)
def test_level_while_disabled_is_not_replayed():
    """chip.c handle_level_irq: a disabled line is mask+acked and PENDING is set
    (irq_can_handle_actions); resend.c check_irq_resend drops PENDING on a level line."""
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(9, rec, "acpi", trigger=Trigger.LEVEL)
    sub.disable_irq(9)
    assert sub.handle(9, 0.0) == ops(9, MASK, ACK)  # stays masked: no UNMASK
    assert rec.calls == []
    desc = sub.lookup(9)
    assert desc.has(IrqStatus.MASKED | IrqStatus.PENDING)
    assert desc.count == 0
    # Enabling only unmasks: a still-asserted level is delivered again by the controller.
    assert sub.enable_irq(9) == ops(9, UNMASK)
    assert rec.calls == [] and not desc.has(IrqStatus.PENDING)
    assert sub.handle(9, 0.1) == ops(9, MASK, ACK, UNMASK)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_make_8259A_irq_every_isa_line_runs_handle_level_irq():
    """arch/x86/kernel/irqinit.c init_ISA_irqs and i8259.c make_8259A_irq:
    irq_set_chip_and_handler(irq, &i8259A_chip, handle_level_irq) for all 16 legacy lines,
    whatever the ELCR says, and IRQ_LEVEL (5fa55950729d). No handler name is given."""
    sub = IrqSubsystem()
    for irq in range(16):
        desc = sub.lookup(irq)
        assert (desc.chip, desc.flow, desc.name, desc.is_level) == (Chip.XT_PIC, Flow.LEVEL, None, True)
    rec = Recorder()
    sub.request_irq(4, rec, "serial", trigger=Trigger.EDGE)  # an edge ISA device
    desc = sub.lookup(4)
    assert (desc.trigger, desc.flow) == (Trigger.EDGE, Flow.LEVEL)
    # mask_ack_irq (mask_and_ack_8259A: IMR bit, then specific EOI), handlers, cond_unmask_irq
    assert sub.handle(4, 0.0) == ops(4, MASK, ACK, UNMASK)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_check_irq_resend_does_not_replay_an_edge_on_an_i8259_line():
    """An edge that arrives while an i8259 line is disabled is mask+acked by handle_level_irq
    (PENDING set by irq_can_handle_actions); enable_irq -> irq_startup -> check_irq_resend
    finds irq_settings_is_level and only clears PENDING: the handler never sees that edge.
    The same edge on an IOAPIC edge line is replayed (test_edge_while_disabled_...)."""
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(4, rec, "serial", trigger=Trigger.EDGE)
    sub.disable_irq(4)
    assert sub.handle(4, 0.0) == ops(4, MASK, ACK)
    desc = sub.lookup(4)
    assert desc.has(IrqStatus.PENDING | IrqStatus.MASKED | IrqStatus.DISABLED)
    assert sub.enable_irq(4, now=0.1) == ops(4, UNMASK)
    assert rec.calls == [] and desc.count == 0
    assert not desc.has(IrqStatus.PENDING) and desc.status == IrqStatus.NONE
    # The next edge the PIC latches (its IRR holds it while masked) runs normally.
    assert sub.handle(4, 0.2) == ops(4, MASK, ACK, UNMASK)
    assert len(rec.calls) == 1


def run_with_one_nested_delivery(sub: IrqSubsystem, irq: int, **request) -> tuple[list[ChipOp], list[list[ChipOp]], list[int]]:
    """Handle `irq` once, its handler delivering it again while the chain runs; returns the
    outer run's chip ops, the nested delivery's, and the irqs the handler ran for."""
    nested: list[list[ChipOp]] = []
    calls: list[int] = []

    def handler(irq: int, dev_id: object) -> IrqReturn:
        calls.append(irq)
        if len(calls) == 1:
            nested.append(sub.handle(irq, 0.0))
        return IrqReturn.HANDLED

    sub.request_irq(irq, handler, "nested", **request)
    return sub.handle(irq, 0.0), nested, calls


@pytest.mark.timeout(5)
def test_handle_level_irq_on_an_i8259_line_does_not_loop_for_a_nested_edge():
    """handle_level_irq has no PENDING loop (that is handle_edge_irq's): a delivery while the
    chain runs (irq_can_handle_pm: INPROGRESS) is only acked, and the run ends with one
    unmask."""
    sub = IrqSubsystem()
    outer, nested, calls = run_with_one_nested_delivery(sub, 1)
    assert outer == ops(1, MASK, ACK, UNMASK)
    assert nested == [ops(1, ACK)] and calls == [1]
    assert sub.lookup(1).status == IrqStatus.NONE


@pytest.mark.timeout(5)
def test_level_nested_delivery_is_not_run():
    """Delivered while the chain runs: left masked; the outer run's unmask re-exposes it."""
    outer, nested, calls = run_with_one_nested_delivery(IrqSubsystem(), 9, trigger=Trigger.LEVEL)
    assert outer == ops(9, MASK, ACK, UNMASK)
    assert nested == [ops(9, ACK)]  # already masked by the outer run
    assert calls == [9]


# -- edge flow --------------------------------------------------------------------------------
# On x86 the i8259 lines run the level flow (test_make_8259A_irq...), so the edge flow is
# shown on an IOAPIC pin programmed edge (io_apic.c: handle_edge_irq).

EDGE_PIN = 20


@pytest.mark.timeout(5)
def test_edge_flow_acks_and_runs():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(EDGE_PIN, rec, "i8042", trigger=Trigger.EDGE)
    assert sub.handle(EDGE_PIN, 0.0) == ops(EDGE_PIN, ACK)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_edge_while_disabled_is_pending_and_replayed_once():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(EDGE_PIN, rec, "i8042", trigger=Trigger.EDGE)
    sub.disable_irq(EDGE_PIN)
    assert sub.handle(EDGE_PIN, 0.0) == ops(EDGE_PIN, MASK, ACK)
    assert sub.handle(EDGE_PIN, 0.01) == ops(EDGE_PIN, ACK)  # already masked
    assert sub.handle(EDGE_PIN, 0.02) == ops(EDGE_PIN, ACK)
    desc = sub.lookup(EDGE_PIN)
    assert desc.has(IrqStatus.PENDING) and rec.calls == []
    assert sub.enable_irq(EDGE_PIN, now=0.05) == ops(EDGE_PIN, UNMASK)  # replay: no second ACK
    assert len(rec.calls) == 1
    assert not desc.has(IrqStatus.PENDING) and not desc.has(IrqStatus.REPLAY)
    assert desc.count == 1
    # Nothing more is owed.
    sub.disable_irq(EDGE_PIN)
    assert sub.enable_irq(EDGE_PIN) == []
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_nested_enable_replays_only_on_the_last():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(EDGE_PIN, rec, "i8042", trigger=Trigger.EDGE)
    sub.disable_irq(EDGE_PIN)
    sub.disable_irq(EDGE_PIN)
    sub.handle(EDGE_PIN, 0.0)
    assert sub.enable_irq(EDGE_PIN) == []
    assert rec.calls == []
    sub.enable_irq(EDGE_PIN)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_edge_during_inprogress_is_replayed_by_the_loop():
    sub = IrqSubsystem()
    nested: list[list[ChipOp]] = []
    calls = []

    def handler(irq: int, dev_id: object) -> IrqReturn:
        calls.append(irq)
        if len(calls) == 1:
            nested.append(sub.handle(irq, 0.0))  # the same edge fires again meanwhile
        return IrqReturn.HANDLED

    sub.request_irq(EDGE_PIN, handler, "i8042", trigger=Trigger.EDGE)
    outer = sub.handle(EDGE_PIN, 0.0)
    assert nested == [ops(EDGE_PIN, MASK, ACK)]
    assert outer == ops(EDGE_PIN, ACK, UNMASK)  # unmasked again before the loop re-runs
    assert calls == [EDGE_PIN, EDGE_PIN]
    desc = sub.lookup(EDGE_PIN)
    assert desc.status == IrqStatus.NONE
    assert desc.count == 2


@pytest.mark.timeout(5)
def test_enable_inside_handler_leaves_replay_to_the_loop():
    """disable, edge arrives (pending), enable — all from the handler: replayed exactly once."""
    sub = IrqSubsystem()
    calls = []
    inner: list[list[ChipOp]] = []

    def handler(irq: int, dev_id: object) -> IrqReturn:
        calls.append(irq)
        if len(calls) == 1:
            sub.disable_irq(irq)
            inner.append(sub.handle(irq, 0.0))
            inner.append(sub.enable_irq(irq))
        return IrqReturn.HANDLED

    sub.request_irq(EDGE_PIN, handler, "i8042", trigger=Trigger.EDGE)
    outer = sub.handle(EDGE_PIN, 0.0)
    assert inner == [ops(EDGE_PIN, MASK, ACK), ops(EDGE_PIN, UNMASK)]
    assert outer == ops(EDGE_PIN, ACK)
    assert calls == [EDGE_PIN, EDGE_PIN]
    assert sub.lookup(EDGE_PIN).status == IrqStatus.NONE


@pytest.mark.timeout(5)
def test_edge_disabled_inside_handler_stops_the_loop():
    sub = IrqSubsystem()
    calls = []

    def handler(irq: int, dev_id: object) -> IrqReturn:
        calls.append(irq)
        sub.handle(irq, 0.0)  # nested: pending
        sub.disable_irq(irq)
        return IrqReturn.HANDLED

    sub.request_irq(EDGE_PIN, handler, "i8042", trigger=Trigger.EDGE)
    assert sub.handle(EDGE_PIN, 0.0) == ops(EDGE_PIN, ACK)
    assert calls == [EDGE_PIN]
    desc = sub.lookup(EDGE_PIN)
    assert desc.has(IrqStatus.PENDING) and desc.has(IrqStatus.MASKED)
    sub.enable_irq(EDGE_PIN)  # handler runs once more and disables again
    assert calls == [EDGE_PIN, EDGE_PIN]


@pytest.mark.timeout(5)
def test_edge_without_action_then_request_drops_stale_pending():
    sub = IrqSubsystem()
    assert sub.handle(3, 0.0) == ops(3, ACK)  # no action: line still masked from boot
    assert sub.lookup(3).has(IrqStatus.PENDING)
    rec = Recorder()
    assert sub.request_irq(3, rec, "serial1") == ops(3, UNMASK)
    assert rec.calls == []
    assert not sub.lookup(3).has(IrqStatus.PENDING)


@pytest.mark.timeout(5)
def test_msi_uses_edge_flow():
    sub = IrqSubsystem()
    irq = sub.allocate_dynamic(Chip.PCI_MSIX, 0x2001)
    rec = Recorder()
    sub.request_irq(irq, rec, "nvme0q1")
    assert sub.handle(irq, 0.0) == ops(irq, ACK)
    sub.disable_irq(irq)
    sub.handle(irq, 0.1)
    assert sub.enable_irq(irq) == ops(irq, UNMASK)
    assert len(rec.calls) == 2


# -- fasteoi ----------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_fasteoi_runs_then_eoi():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(16, rec, "ehci")
    assert sub.handle(16, 0.0) == ops(16, EOI)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_fasteoi_level_while_disabled_masks_eois_and_forgets():
    sub = IrqSubsystem()
    rec = Recorder()
    sub.request_irq(16, rec, "ehci")
    sub.disable_irq(16)
    assert sub.handle(16, 0.0) == ops(16, MASK, EOI)
    assert not sub.lookup(16).has(IrqStatus.PENDING)
    assert sub.enable_irq(16) == ops(16, UNMASK)
    assert rec.calls == []


@pytest.mark.timeout(5)
def test_fasteoi_edge_while_disabled_is_replayed():
    sub = IrqSubsystem()
    irq = sub.table.allocate(Chip.XEN_DYN, 5, Trigger.EDGE, flow="fasteoi")
    rec = Recorder()
    sub.request_irq(irq, rec, "xen-pirq")
    sub.disable_irq(irq)
    assert sub.handle(irq, 0.0) == ops(irq, MASK, EOI)
    assert sub.lookup(irq).has(IrqStatus.PENDING)
    assert sub.enable_irq(irq) == ops(irq, UNMASK)
    assert len(rec.calls) == 1


@pytest.mark.timeout(5)
def test_fasteoi_edge_during_inprogress_is_rerun():
    sub = IrqSubsystem()
    irq = sub.table.allocate(Chip.XEN_DYN, 5, Trigger.EDGE, flow="fasteoi")
    nested: list[list[ChipOp]] = []
    calls = []

    def handler(irq: int, dev_id: object) -> IrqReturn:
        calls.append(irq)
        if len(calls) == 1:
            nested.append(sub.handle(irq, 0.0))
        return IrqReturn.HANDLED

    sub.request_irq(irq, handler, "evtchn")
    assert sub.handle(irq, 0.0) == ops(irq, EOI)
    assert nested == [ops(irq, EOI)]
    assert calls == [irq, irq]


@pytest.mark.timeout(5)
def test_undrained_events_are_bounded():
    sub = IrqSubsystem(max_events=3)
    sub.request_irq(4, lambda irq, dev_id: None, "forgot-to-return")  # type: ignore[arg-type, return-value]
    for i in range(10):
        sub.handle(4, i * 0.001)
    assert len(sub.events()) == 3
    assert sub.table.events_dropped == 7
    sub.handle(4, 1.0)
    assert len(sub.events()) == 1
