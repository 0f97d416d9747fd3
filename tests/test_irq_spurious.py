"""Spurious-interrupt detection ("nobody cared"), with Linux's figures and with small ones."""

from __future__ import annotations

import time

import pytest

from guest.irq import (
    Chip,
    ChipOp,
    ChipOpKind,
    Flow,
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
    sub.request_irq(5, edge, "sb16")
    assert storm(sub, 5, 10)[-1] == [ChipOp(ACK, 5), ChipOp(MASK, 5)]
    assert sub.handle(5, 1.0) == [ChipOp(ACK, 5)]  # latched, not run
    assert edge.calls == 10

    sub.request_irq(16, Device(), "ehci")
    assert storm(sub, 16, 10)[-1] == [ChipOp(MASK, 16), ChipOp(EOI, 16)]
    assert [e.irq for e in sub.events()] == [5, 16]


@pytest.mark.timeout(5)
def test_threshold_itself_is_not_enough():
    sub = IrqSubsystem(spurious=SMALL)
    sub.request_irq(9, Device(handled=2), "acpi", trigger=Trigger.LEVEL)  # 8 of 10 unhandled
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


@pytest.mark.timeout(5)
def test_real_figures_more_than_99900_of_100000():
    sub = IrqSubsystem()
    dev = Device(handled=99)  # 99,901 unhandled
    sub.request_irq(9, dev, "acpi", trigger=Trigger.LEVEL)
    began = time.perf_counter()
    for i in range(99_999):
        sub.handle(9, i * 1e-6)
    assert not sub.lookup(9).has(IrqStatus.DISABLED)
    last = sub.handle(9, 0.1)
    elapsed = time.perf_counter() - began
    assert elapsed < 2.0, f"100,000 interrupts took {elapsed:.2f} s"
    assert last == [ChipOp(MASK, 9), ChipOp(ACK, 9)]
    (event,) = sub.events()
    assert (event.irqs_unhandled, event.window) == (99_901, 100_000)
    sub.handle(9, 0.2)
    assert dev.calls == 100_000


@pytest.mark.timeout(5)
def test_real_figures_99900_is_not_enough():
    sub = IrqSubsystem()
    dev = Device(handled=100)  # exactly 99,900 unhandled
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
    note_interrupt(desc, IrqReturn.WAKE_THREAD, 6.0, SMALL)
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
