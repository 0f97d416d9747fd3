"""Spurious-interrupt detection ("nobody cared"), with Linux's figures and with small ones.

Expected values come from kernel/irq/spurious.c `note_interrupt` (mainline; the window starts
at the first unhandled interrupt since 7c07012eb1be, v5.13), `bad_action_ret` and
`report_bad_irq`, and kernel/irq/handle.c `warn_no_thread`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from guest.irq import (
    BogusReturn,
    Chip,
    ChipOp,
    ChipOpKind,
    Flow,
    HandlerFault,
    IrqDesc,
    IrqReturn,
    IrqStatus,
    IrqSubsystem,
    NobodyCared,
    SpuriousPolicy,
    Trigger,
    note_interrupt,
)

MASK, UNMASK, ACK, EOI = ChipOpKind.MASK, ChipOpKind.UNMASK, ChipOpKind.ACK, ChipOpKind.EOI
SMALL = SpuriousPolicy(window=10, threshold=8, quiet=0.1)
STEP = 0.001  # interrupts 1 ms apart: well inside the 100 ms quiet period


class Device:
    """A handler whose first `handled` calls claim the interrupt, then none do."""

    def __init__(self, handled: int = 0) -> None:
        self.handled = handled
        self.calls = 0

    def __call__(self, irq: int, dev_id: object) -> IrqReturn:
        self.calls += 1
        return IrqReturn.HANDLED if self.calls <= self.handled else IrqReturn.NONE


class Script:
    """A handler whose answer for its n-th call (from 1) is `answer(n)`."""

    def __init__(self, answer: Callable[[int], IrqReturn | int]) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, irq: int, dev_id: object) -> IrqReturn | int:
        self.calls += 1
        return self.answer(self.calls)


def storm(sub: IrqSubsystem, irq: int, n: int, start: float = 0.0) -> list[list[ChipOp]]:
    return [sub.handle(irq, start + i * STEP) for i in range(n)]


@pytest.mark.timeout(5)
def test_defaults_are_linux():
    policy = SpuriousPolicy()
    assert (policy.window, policy.threshold, policy.quiet, policy.enabled) == (100_000, 99_900, 0.1, True)


@pytest.mark.timeout(5)
def test_inconsistent_policy_rejected():
    with pytest.raises(ValueError):
        SpuriousPolicy(window=10, threshold=10)
    with pytest.raises(ValueError):
        SpuriousPolicy(window=0, threshold=0)
    with pytest.raises(ValueError):
        SpuriousPolicy(quiet=-1)


@pytest.mark.timeout(5)
def test_nobody_cared_disables_the_line():
    sub = IrqSubsystem(spurious=SMALL)
    dev_a, dev_b = Device(), Device()
    sub.request_irq(11, dev_a, "nic0", dev_id="a", shared=True, trigger=Trigger.LEVEL)
    sub.request_irq(11, dev_b, "disk0", dev_id="b", shared=True)
    results = storm(sub, 11, 10)
    assert results[:9] == [[ChipOp(MASK, 11), ChipOp(ACK, 11), ChipOp(UNMASK, 11)]] * 9
    assert results[9] == [ChipOp(MASK, 11), ChipOp(ACK, 11)]  # left masked: no UNMASK
    desc = sub.lookup(11)
    assert desc.depth == 1
    assert desc.has(IrqStatus.DISABLED | IrqStatus.SPURIOUS_DISABLED | IrqStatus.MASKED)
    (event,) = sub.events()
    assert isinstance(event, NobodyCared)
    assert event.irq == 11 and event.actions == ("nic0", "disk0") and event.irqs_unhandled == 10
    assert "nobody cared" in event.message and "nic0, disk0" in event.message
    # Further interrupts do not reach the handlers.
    storm(sub, 11, 50, start=1.0)
    assert (dev_a.calls, dev_b.calls) == (10, 10)
    assert sub.events() == []


@pytest.mark.timeout(5)
def test_nobody_cared_on_edge_and_fasteoi_lines_sends_mask():
    sub = IrqSubsystem(spurious=SMALL)
    edge = Device()
    sub.request_irq(20, edge, "sb16", trigger=Trigger.EDGE)
    assert storm(sub, 20, 10)[-1] == [ChipOp(ACK, 20), ChipOp(MASK, 20)]
    assert sub.handle(20, 1.0) == [ChipOp(ACK, 20)]  # latched, not run
    assert edge.calls == 10

    sub.request_irq(16, Device(), "ehci")
    assert storm(sub, 16, 10)[-1] == [ChipOp(MASK, 16), ChipOp(EOI, 16)]
    assert [e.irq for e in sub.events()] == [20, 16]


@pytest.mark.timeout(5)
def test_threshold_itself_is_not_enough():
    sub = IrqSubsystem(spurious=SMALL)
    # unhandled first (the window starts), then two handled: 8 of 10 unhandled
    sub.request_irq(9, Script(lambda n: IrqReturn.HANDLED if n in (2, 3) else IrqReturn.NONE), "acpi", trigger=Trigger.LEVEL)
    storm(sub, 9, 10)
    desc = sub.lookup(9)
    assert desc.depth == 0 and not desc.has(IrqStatus.DISABLED)
    assert sub.events() == []
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0)  # a new window begins


@pytest.mark.timeout(5)
def test_judged_only_at_the_end_of_a_window():
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(9, Device(), "acpi", trigger=Trigger.LEVEL)
    storm(sub, 9, 9)
    assert not sub.lookup(9).has(IrqStatus.DISABLED)
    storm(sub, 9, 1, start=0.009)
    assert sub.lookup(9).has(IrqStatus.SPURIOUS_DISABLED)


@pytest.mark.timeout(30)
def test_real_figures_more_than_99900_of_100000():
    sub = IrqSubsystem()
    dev = Script(lambda n: IrqReturn.HANDLED if 2 <= n <= 100 else IrqReturn.NONE)  # 99,901 unhandled
    sub.request_irq(9, dev, "acpi", trigger=Trigger.LEVEL)
    for i in range(99_999):
        sub.handle(9, i * 1e-6)
    assert not sub.lookup(9).has(IrqStatus.DISABLED)
    assert sub.handle(9, 0.1) == [ChipOp(MASK, 9), ChipOp(ACK, 9)]
    (event,) = sub.events()
    assert (event.irqs_unhandled, event.window) == (99_901, 100_000)
    sub.handle(9, 0.2)
    assert dev.calls == 100_000


@pytest.mark.timeout(30)
def test_real_figures_99900_is_not_enough():
    sub = IrqSubsystem()
    dev = Script(lambda n: IrqReturn.HANDLED if 2 <= n <= 101 else IrqReturn.NONE)  # exactly 99,900 unhandled
    sub.request_irq(9, dev, "acpi", trigger=Trigger.LEVEL)
    for i in range(100_000):
        sub.handle(9, i * 1e-6)
    desc = sub.lookup(9)
    assert not desc.has(IrqStatus.DISABLED)
    assert sub.events() == []
    assert sub.handle(9, 1.0) == [ChipOp(MASK, 9), ChipOp(ACK, 9), ChipOp(UNMASK, 9)]
    assert dev.calls == 100_001


@pytest.mark.timeout(5)
def test_quiet_period_resets_the_unhandled_streak():
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(9, Device(), "acpi", trigger=Trigger.LEVEL)
    storm(sub, 9, 5)  # unhandled 5, last at 0.004
    desc = sub.lookup(9)
    assert desc.irqs_unhandled == 5
    sub.handle(9, 0.004 + 0.1)  # exactly 100 ms later: not "more than", the streak goes on
    assert desc.irqs_unhandled == 6
    sub.handle(9, 0.104 + 0.1001)  # more than 100 ms of quiet: starts again at 1
    assert desc.irqs_unhandled == 1
    storm(sub, 9, 3, start=0.3)  # the window of 10 closes with only 4 unhandled
    assert not desc.has(IrqStatus.DISABLED)
    assert sub.events() == []


@pytest.mark.timeout(5)
def test_handled_interrupts_do_not_touch_the_streak():
    desc = IrqDesc(9, Chip.XT_PIC, 9, Trigger.LEVEL, Flow.LEVEL)
    note_interrupt(desc, IrqReturn.NONE, 0.0, SMALL)
    note_interrupt(desc, IrqReturn.HANDLED, 5.0, SMALL)
    note_interrupt(desc, IrqReturn.HANDLED | IrqReturn.WAKE_THREAD, 6.0, SMALL)
    assert (desc.irq_count, desc.irqs_unhandled, desc.last_unhandled) == (3, 1, 0.0)


@pytest.mark.timeout(5)
def test_note_interrupt_verdict_direct():
    desc = IrqDesc(30, Chip.PCI_MSI, 1, Trigger.EDGE, Flow.EDGE, depth=0)
    desc.status = IrqStatus.NONE
    verdicts = [note_interrupt(desc, IrqReturn.NONE, i * 0.01, SMALL) for i in range(10)]
    assert verdicts[:9] == [None] * 9
    assert isinstance(verdicts[9], NobodyCared)
    assert desc.depth == 1 and desc.status == IrqStatus.DISABLED | IrqStatus.SPURIOUS_DISABLED


@pytest.mark.timeout(5)
def test_noirqdebug_never_disables():
    sub = IrqSubsystem(spurious=SpuriousPolicy(window=10, threshold=8, enabled=False))
    sub.request_irq(9, Device(), "acpi", trigger=Trigger.LEVEL)
    storm(sub, 9, 30)
    assert not sub.lookup(9).has(IrqStatus.DISABLED)


@pytest.mark.timeout(5)
def test_enable_after_nobody_cared_gives_another_chance():
    sub = IrqSubsystem(spurious=SMALL)
    dev = Device()
    sub.request_irq(9, dev, "acpi", trigger=Trigger.LEVEL)
    storm(sub, 9, 10)
    assert sub.enable_irq(9, now=2.0) == [ChipOp(UNMASK, 9)]
    desc = sub.lookup(9)
    assert desc.depth == 0 and desc.status == IrqStatus.NONE
    sub.handle(9, 2.1)
    assert dev.calls == 11


@pytest.mark.timeout(5)
def test_new_sharer_reenables_a_spurious_line():
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(10, Device(), "nic0", dev_id="nic0", shared=True, trigger=Trigger.LEVEL)
    storm(sub, 10, 10)
    assert sub.lookup(10).has(IrqStatus.SPURIOUS_DISABLED)
    real = Device(handled=10**6)
    assert sub.request_irq(10, real, "disk0", dev_id="disk0", shared=True) == [ChipOp(UNMASK, 10)]
    desc = sub.lookup(10)
    assert desc.depth == 0 and desc.status == IrqStatus.NONE
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0)
    storm(sub, 10, 20, start=5.0)
    assert real.calls == 20 and not desc.has(IrqStatus.DISABLED)


@pytest.mark.timeout(5)
def test_new_sharer_on_a_spurious_line_also_disabled_by_driver_only_undoes_one():
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(10, Device(), "nic0", dev_id="nic0", shared=True, trigger=Trigger.LEVEL)
    storm(sub, 10, 10)
    sub.disable_irq(10)  # depth 2
    assert sub.request_irq(10, Device(), "disk0", dev_id="disk0", shared=True) == []
    desc = sub.lookup(10)
    assert desc.depth == 1 and desc.has(IrqStatus.DISABLED)
    assert not desc.has(IrqStatus.SPURIOUS_DISABLED)


# -- note_interrupt as mainline has it --------------------------------------------------------


@pytest.mark.timeout(60)
def test_note_interrupt_window_starts_at_the_first_unhandled_interrupt():
    """`if (likely(!desc->irqs_unhandled)) return;` comes before `desc->irq_count++`: a device
    that worked for 50,000 interrupts and then got stuck is judged after 100,000 unhandled
    ones, at interrupt 150,000 (before 7c07012eb1be the window ran from interrupt 1: nothing at
    100,000 with only 50,000 unhandled, then disabled at 200,000)."""
    sub = IrqSubsystem()
    dev = Script(lambda n: IrqReturn.HANDLED if n <= 50_000 else IrqReturn.NONE)
    sub.request_irq(9, dev, "acpi", trigger=Trigger.LEVEL)
    desc = sub.lookup(9)
    for i in range(50_000):
        sub.handle(9, i * 1e-6)
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0)  # handled ones are not counted
    for i in range(50_000, 149_999):
        sub.handle(9, i * 1e-6)
    assert not desc.has(IrqStatus.DISABLED) and sub.events() == []
    assert (desc.irq_count, desc.irqs_unhandled) == (99_999, 99_999)
    assert sub.handle(9, 0.15) == [ChipOp(MASK, 9), ChipOp(ACK, 9)]
    (event,) = sub.events()
    assert (event.irqs_unhandled, event.window) == (100_000, 100_000)
    assert desc.has(IrqStatus.SPURIOUS_DISABLED) and (desc.irq_count, desc.irqs_unhandled) == (0, 0)


@pytest.mark.timeout(5)
def test_note_interrupt_handled_interrupts_count_once_the_window_is_open():
    """Once an unhandled interrupt opened the window, handled ones count towards it too; a
    window that closes without enough unhandled ones closes it until the next unhandled."""
    desc = IrqDesc(9, Chip.XT_PIC, 9, Trigger.LEVEL, Flow.LEVEL)
    note_interrupt(desc, IrqReturn.HANDLED, 0.0, SMALL)
    assert desc.irq_count == 0
    note_interrupt(desc, IrqReturn.NONE, 0.001, SMALL)
    for i in range(8):
        note_interrupt(desc, IrqReturn.HANDLED, 0.002 + i * 0.001, SMALL)
    assert (desc.irq_count, desc.irqs_unhandled) == (9, 1)
    assert note_interrupt(desc, IrqReturn.HANDLED, 0.01, SMALL) is None  # the 10th: 1 of 10
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0)
    note_interrupt(desc, IrqReturn.HANDLED, 0.02, SMALL)
    assert desc.irq_count == 0  # closed again until the next unhandled one


@pytest.mark.timeout(5)
def test_note_interrupt_quiet_gap_restarts_the_streak_but_not_the_window():
    """`time_after(jiffies, desc->last_unhandled + HZ/10)` sets irqs_unhandled back to 1;
    irq_count goes on, so the window closes on schedule with too few unhandled ones."""
    desc = IrqDesc(9, Chip.XT_PIC, 9, Trigger.LEVEL, Flow.LEVEL)
    for i in range(6):
        note_interrupt(desc, IrqReturn.NONE, i * 0.001, SMALL)
    note_interrupt(desc, IrqReturn.NONE, 0.005 + 0.1001, SMALL)  # more than 100 ms later
    assert (desc.irq_count, desc.irqs_unhandled) == (7, 1)
    verdicts = [note_interrupt(desc, IrqReturn.NONE, 0.2 + i * 0.001, SMALL) for i in range(3)]
    assert verdicts == [None, None, None]  # the 10th closed the window with 4 unhandled
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0) and not desc.has(IrqStatus.SPURIOUS_DISABLED)


@pytest.mark.timeout(5)
def test_bad_action_ret_is_reported_and_not_counted():
    """bad_action_ret: above IRQ_HANDLED | IRQ_WAKE_THREAD (as unsigned) is bogus; note_interrupt
    reports it ("irq event %d: bogus return value %x") and returns before any counting, so a
    line whose answers are all bogus is never disabled. The answers are OR-ed first
    (__handle_irq_event_percpu), so HANDLED from a sharer does not rescue the run."""
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(11, Script(lambda n: IrqReturn.HANDLED), "nic0", dev_id="nic0", shared=True)
    sub.request_irq(11, Script(lambda n: 0x10), "rogue", dev_id="rogue", shared=True)
    storm(sub, 11, 30)
    desc = sub.lookup(11)
    assert (desc.irq_count, desc.irqs_unhandled) == (0, 0) and not desc.has(IrqStatus.DISABLED)
    events = sub.events()
    assert len(events) == 30 and all(type(e) is BogusReturn for e in events)
    assert events[0].message == "irq event 11: bogus return value 11"  # 0x10 | IRQ_HANDLED
    assert events[0].actions == ("nic0", "rogue")
    assert [a.handled for a in desc.actions] == [30, 0]


@pytest.mark.timeout(5)
def test_bad_action_ret_reads_the_value_as_unsigned():
    desc = IrqDesc(30, Chip.PCI_MSI, 1, Trigger.EDGE, Flow.EDGE)
    verdict = note_interrupt(desc, -1, 0.0, SMALL)
    assert isinstance(verdict, BogusReturn) and verdict.message == "irq event 30: bogus return value ffffffff"
    for ret in (0, 1, 2, 3):
        assert not isinstance(note_interrupt(desc, ret, 0.0, SMALL), BogusReturn)
    assert isinstance(note_interrupt(desc, 4, 0.0, SMALL), BogusReturn)


@pytest.mark.timeout(5)
def test_report_bad_irq_reports_only_the_first_100():
    """report_bad_irq: `static int count = 100;` for the whole kernel, all lines together."""
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(20, Script(lambda n: 7), "a", trigger=Trigger.EDGE)
    sub.request_irq(21, Script(lambda n: 7), "b", trigger=Trigger.EDGE)
    storm(sub, 20, 60)
    storm(sub, 21, 60)
    events = sub.events()
    assert [e.irq for e in events] == [20] * 60 + [21] * 40
    assert sub.lookup(21).count == 60


@pytest.mark.timeout(5)
def test_note_interrupt_wake_thread_without_a_thread_counts_as_unhandled_from_the_second():
    """IRQ_WAKE_THREAD alone: the first interrupt sets SPURIOUS_DEFERRED and is not counted;
    later ones compare threads_handled with threads_handled_last, and with no thread function
    (none in this model) nothing was handled: IRQ_NONE. HANDLED | WAKE_THREAD clears the
    deferral."""
    desc = IrqDesc(30, Chip.PCI_MSI, 1, Trigger.EDGE, Flow.EDGE)
    note_interrupt(desc, IrqReturn.WAKE_THREAD, 0.0, SMALL)
    assert (desc.irq_count, desc.irqs_unhandled, desc.spurious_deferred) == (0, 0, True)
    note_interrupt(desc, IrqReturn.WAKE_THREAD, 0.001, SMALL)
    assert (desc.irq_count, desc.irqs_unhandled) == (1, 1)
    note_interrupt(desc, IrqReturn.WAKE_THREAD | IrqReturn.HANDLED, 0.002, SMALL)
    assert (desc.irq_count, desc.irqs_unhandled, desc.spurious_deferred) == (2, 1, False)
    note_interrupt(desc, IrqReturn.WAKE_THREAD, 0.003, SMALL)  # deferred again: not counted
    assert (desc.irq_count, desc.irqs_unhandled) == (2, 1)


@pytest.mark.timeout(5)
def test_warn_no_thread_once_per_action_and_the_line_is_shut_off():
    """handle.c: an action answering IRQ_WAKE_THREAD without a thread function gets
    "IRQ %d device %s returned IRQ_WAKE_THREAD but no thread function available." once
    (IRQTF_WARNED); its interrupts then count as unhandled (previous test), so a line only it
    serves is shut off after the deferred first one plus a window."""
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(20, Script(lambda n: IrqReturn.WAKE_THREAD), "threadless", trigger=Trigger.EDGE)
    storm(sub, 20, 10)
    assert not sub.lookup(20).has(IrqStatus.DISABLED)
    storm(sub, 20, 1, start=0.01)
    assert sub.lookup(20).has(IrqStatus.SPURIOUS_DISABLED)
    fault, cared = sub.events()
    assert type(fault) is HandlerFault and fault.reason == (
        "IRQ 20 device threadless returned IRQ_WAKE_THREAD but no thread function available."
    )
    assert type(cared) is NobodyCared and cared.irqs_unhandled == 10
