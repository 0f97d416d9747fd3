"""request_irq / free_irq / disable_irq / enable_irq and the IRQ-number table.

Sharing follows Linux: every action on a line SHARED, distinct dev_ids, one trigger type —
else EBUSY, and a refused request changes nothing. Disable nests through depth.
"""

from __future__ import annotations

import pytest

from guest.irq import (
    Chip,
    ChipOp,
    ChipOpKind,
    Flow,
    IrqError,
    IrqReturn,
    IrqSetupError,
    IrqStatus,
    IrqSubsystem,
    Trigger,
)

MASK, UNMASK, ACK = ChipOpKind.MASK, ChipOpKind.UNMASK, ChipOpKind.ACK


def handled(irq: int, dev_id: object) -> IrqReturn:
    return IrqReturn.HANDLED


def not_mine(irq: int, dev_id: object) -> IrqReturn:
    return IrqReturn.NONE


def snapshot(sub: IrqSubsystem) -> list:
    """Everything observable about every line, to prove a refused call changed nothing."""
    return [
        (d.irq, d.chip, d.hwirq, d.trigger, d.flow, d.depth, d.status, tuple(d.kstat),
         tuple((a.name, a.dev_id, a.shared, a.trigger) for a in d.actions))
        for d in sub.table
    ]


def refused(sub: IrqSubsystem, code: IrqError, call, *args, **kwargs) -> IrqSetupError:
    before = snapshot(sub)
    with pytest.raises(IrqSetupError) as info:
        call(*args, **kwargs)
    assert info.value.code is code, str(info.value)
    assert snapshot(sub) == before
    return info.value


# -- the table ----------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_fixed_lines_isa_then_ioapic():
    sub = IrqSubsystem()
    for irq in range(16):
        desc = sub.lookup(irq)
        # ISA devices are edge; on x86 the i8259's flow is handle_level_irq all the same
        assert (desc.chip, desc.hwirq, desc.trigger, desc.flow) == (Chip.XT_PIC, irq, Trigger.EDGE, Flow.LEVEL)
    for irq in range(16, 24):
        desc = sub.lookup(irq)
        assert (desc.chip, desc.hwirq, desc.trigger, desc.flow) == (Chip.IO_APIC, irq, Trigger.LEVEL, Flow.FASTEOI)
    assert 24 not in sub.table
    assert len(sub.table) == 24


@pytest.mark.timeout(5)
def test_line_without_actions_starts_disabled_and_masked():
    desc = IrqSubsystem().lookup(5)
    assert desc.depth == 1
    assert desc.status == IrqStatus.DISABLED | IrqStatus.MASKED
    assert desc.actions == []


@pytest.mark.timeout(5)
def test_bad_irq_numbers():
    sub = IrqSubsystem()
    refused(sub, IrqError.EINVAL, sub.request_irq, -1, handled, "x")
    refused(sub, IrqError.EINVAL, sub.request_irq, "3", handled, "x")
    refused(sub, IrqError.EINVAL, sub.request_irq, True, handled, "x")
    refused(sub, IrqError.ENOENT, sub.request_irq, 24, handled, "x")
    refused(sub, IrqError.ENOENT, sub.free_irq, 300)
    refused(sub, IrqError.ENOENT, sub.disable_irq, 99)
    refused(sub, IrqError.ENOENT, sub.enable_irq, 99)


# -- request_irq ----------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_first_action_enables_the_line():
    sub = IrqSubsystem()
    assert sub.request_irq(4, handled, "serial") == [ChipOp(UNMASK, 4)]
    desc = sub.lookup(4)
    assert desc.depth == 0
    assert desc.status == IrqStatus.NONE
    assert desc.action_names == ["serial"]


@pytest.mark.timeout(5)
def test_second_shared_action_sends_nothing():
    sub = IrqSubsystem()
    sub.request_irq(11, handled, "nic0", dev_id="nic0", shared=True, trigger=Trigger.LEVEL)
    assert sub.request_irq(11, handled, "disk0", dev_id="disk0", shared=True, trigger=Trigger.LEVEL) == []
    assert sub.lookup(11).action_names == ["nic0", "disk0"]


@pytest.mark.timeout(5)
def test_cascade_irq2_is_refused():
    sub = IrqSubsystem()
    err = refused(sub, IrqError.EBUSY, sub.request_irq, 2, handled, "mouse")
    assert "cascade" in err.message
    refused(sub, IrqError.EBUSY, sub.request_irq, 2, handled, "mouse", dev_id="m", shared=True)
    refused(sub, IrqError.EINVAL, sub.free_irq, 2, None)
    refused(sub, IrqError.EINVAL, sub.disable_irq, 2)
    assert sub.lookup(2).action_names == ["cascade"]


@pytest.mark.timeout(5)
def test_exclusive_line_refuses_everyone():
    sub = IrqSubsystem()
    sub.request_irq(5, handled, "sb16")
    refused(sub, IrqError.EBUSY, sub.request_irq, 5, handled, "lp0")
    refused(sub, IrqError.EBUSY, sub.request_irq, 5, handled, "lp0", dev_id="lp0", shared=True)


@pytest.mark.timeout(5)
def test_shared_then_exclusive_refused():
    sub = IrqSubsystem()
    sub.request_irq(10, handled, "nic0", dev_id="nic0", shared=True)
    err = refused(sub, IrqError.EBUSY, sub.request_irq, 10, handled, "disk0", dev_id="disk0")
    assert "share" in err.message


@pytest.mark.timeout(5)
def test_shared_needs_distinct_dev_id():
    sub = IrqSubsystem()
    sub.request_irq(10, handled, "nic0", dev_id=("pci", 3), shared=True)
    refused(sub, IrqError.EBUSY, sub.request_irq, 10, handled, "nic1", dev_id=("pci", 3), shared=True)
    sub.request_irq(10, handled, "nic1", dev_id=("pci", 4), shared=True)


@pytest.mark.timeout(5)
def test_shared_needs_a_dev_id():
    sub = IrqSubsystem()
    refused(sub, IrqError.EINVAL, sub.request_irq, 10, handled, "nic0", dev_id=None, shared=True)


@pytest.mark.timeout(5)
def test_shared_must_agree_on_trigger():
    sub = IrqSubsystem()
    sub.request_irq(10, handled, "nic0", dev_id="a", shared=True, trigger="level")
    err = refused(sub, IrqError.EBUSY, sub.request_irq, 10, handled, "nic1", dev_id="b", shared=True,
                  trigger=Trigger.EDGE)
    assert "level" in err.message
    # No trigger given: the line's own is taken, so sharing works.
    sub.request_irq(10, handled, "nic1", dev_id="b", shared=True)
    assert [a.trigger for a in sub.lookup(10).actions] == [Trigger.LEVEL, Trigger.LEVEL]


@pytest.mark.timeout(5)
def test_first_action_sets_trigger_and_flow():
    sub = IrqSubsystem()
    sub.request_irq(9, handled, "acpi", trigger="LEVEL")
    desc = sub.lookup(9)
    assert (desc.trigger, desc.flow) == (Trigger.LEVEL, Flow.LEVEL)
    sub.request_irq(17, handled, "hpet", trigger="edge")
    assert (sub.lookup(17).trigger, sub.lookup(17).flow) == (Trigger.EDGE, Flow.EDGE)


@pytest.mark.timeout(5)
def test_malformed_requests():
    sub = IrqSubsystem()
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, "not callable", "x")
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, handled, "")
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, handled, 7)
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, handled, "x", trigger="rising")
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, handled, "x", dev_id=["unhashable"])
    refused(sub, IrqError.EINVAL, sub.request_irq, 5, handled, "x", shared="yes")
    msi = sub.allocate_dynamic(Chip.PCI_MSI, 1)
    refused(sub, IrqError.EINVAL, sub.request_irq, msi, handled, "x", trigger=Trigger.LEVEL)


# -- free_irq -------------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_free_irq_removes_exactly_that_action():
    sub = IrqSubsystem()
    calls: list[str] = []

    def make(name: str):
        def handler(irq: int, dev_id: object) -> IrqReturn:
            calls.append(name)
            return IrqReturn.HANDLED
        return handler

    for name in ("a", "b", "c"):
        sub.request_irq(11, make(name), name, dev_id=name, shared=True, trigger=Trigger.LEVEL)
    assert sub.free_irq(11, "b") == []
    assert sub.lookup(11).action_names == ["a", "c"]
    sub.handle(11, 0.0)
    assert calls == ["a", "c"]
    assert sub.lookup(11).depth == 0


@pytest.mark.timeout(5)
def test_free_unknown_dev_id_is_refused():
    sub = IrqSubsystem()
    sub.request_irq(11, handled, "a", dev_id="a", shared=True)
    refused(sub, IrqError.ENOENT, sub.free_irq, 11, "zzz")
    refused(sub, IrqError.ENOENT, sub.free_irq, 12, "a")
    sub.free_irq(11, "a")
    refused(sub, IrqError.ENOENT, sub.free_irq, 11, "a")


@pytest.mark.timeout(5)
def test_last_free_masks_and_disables():
    sub = IrqSubsystem()
    sub.request_irq(3, handled, "serial1")
    sub.disable_irq(3)
    sub.disable_irq(3)
    assert sub.free_irq(3) == [ChipOp(MASK, 3)]
    desc = sub.lookup(3)
    assert desc.depth == 1
    assert desc.status == IrqStatus.DISABLED | IrqStatus.MASKED
    # And the line can be requested again from scratch.
    assert sub.request_irq(3, handled, "serial1") == [ChipOp(UNMASK, 3)]
    assert sub.lookup(3).depth == 0


# -- disable / enable -------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_depth_nesting():
    sub = IrqSubsystem()
    sub.request_irq(6, handled, "floppy")
    desc = sub.lookup(6)
    assert sub.disable_irq(6) == []  # lazy: masked only when an interrupt arrives
    assert sub.disable_irq(6) == []
    assert desc.depth == 2 and desc.has(IrqStatus.DISABLED)
    assert sub.enable_irq(6) == []
    assert desc.depth == 1 and desc.has(IrqStatus.DISABLED)
    assert sub.enable_irq(6) == []  # never masked, so nothing to unmask
    assert desc.depth == 0 and not desc.has(IrqStatus.DISABLED)


@pytest.mark.timeout(5)
def test_unbalanced_enable_is_an_error():
    sub = IrqSubsystem()
    sub.request_irq(6, handled, "floppy")
    err = refused(sub, IrqError.EINVAL, sub.enable_irq, 6)
    assert "unbalanced enable" in err.message.lower()
    sub.disable_irq(6)
    sub.enable_irq(6)
    refused(sub, IrqError.EINVAL, sub.enable_irq, 6)


@pytest.mark.timeout(5)
def test_enable_before_request_is_an_error():
    sub = IrqSubsystem()
    refused(sub, IrqError.EINVAL, sub.enable_irq, 7)
    sub.disable_irq(7)  # depth 1 -> 2 on an unused line is allowed
    sub.enable_irq(7)
    assert sub.lookup(7).depth == 1


@pytest.mark.timeout(5)
def test_unlazy_disable_masks_at_once():
    sub = IrqSubsystem(lazy_disable=False)
    sub.request_irq(6, handled, "floppy")
    assert sub.disable_irq(6) == [ChipOp(MASK, 6)]
    assert sub.disable_irq(6) == []
    assert sub.enable_irq(6) == []
    assert sub.enable_irq(6) == [ChipOp(UNMASK, 6)]


@pytest.mark.timeout(5)
def test_disabled_line_masked_by_flow_is_unmasked_by_enable():
    sub = IrqSubsystem()
    sub.request_irq(6, handled, "floppy")
    sub.disable_irq(6)
    assert sub.handle(6, 0.0) == [ChipOp(MASK, 6), ChipOp(ACK, 6)]
    assert sub.enable_irq(6)[0] == ChipOp(UNMASK, 6)


# -- dynamic interrupts ---------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_dynamic_allocation_from_24():
    sub = IrqSubsystem()
    a = sub.allocate_dynamic(Chip.PCI_MSI, 0x10)
    b = sub.allocate_dynamic("PCI-MSIX", 0x11)
    c = sub.allocate_dynamic("xen-dyn", 3)
    assert (a, b, c) == (24, 25, 26)
    assert sub.lookup(25).chip is Chip.PCI_MSIX
    assert sub.lookup(26).flow is Flow.EDGE
    assert sub.find("PCI-MSIX", 0x11) == 25
    assert sub.find(Chip.PCI_MSI, 0x99) is None
    assert sub.find("bogus", 1) is None
    assert sub.lookup(24).depth == 1  # no action yet: disabled
    assert sub.request_irq(a, handled, "eth0-rx") == [ChipOp(UNMASK, 24)]


@pytest.mark.timeout(5)
def test_free_dynamic_and_reuse_lowest():
    sub = IrqSubsystem()
    numbers = [sub.allocate_dynamic(Chip.PCI_MSI, hw) for hw in range(4)]
    assert numbers == [24, 25, 26, 27]
    sub.free_dynamic(25)
    assert 25 not in sub.table
    assert sub.find(Chip.PCI_MSI, 1) is None
    assert sub.allocate_dynamic(Chip.PCI_MSI, 9) == 25
    assert sub.allocate_dynamic(Chip.PCI_MSI, 10) == 28


@pytest.mark.timeout(5)
def test_free_dynamic_refusals():
    sub = IrqSubsystem()
    irq = sub.allocate_dynamic(Chip.XEN_DYN, 1)
    sub.request_irq(irq, handled, "xenbus")
    refused(sub, IrqError.EBUSY, sub.free_dynamic, irq)
    refused(sub, IrqError.EINVAL, sub.free_dynamic, 9)
    refused(sub, IrqError.ENOENT, sub.free_dynamic, 40)
    sub.free_irq(irq)
    sub.free_dynamic(irq)
    refused(sub, IrqError.ENOENT, sub.free_dynamic, irq)


@pytest.mark.timeout(5)
def test_allocation_refusals():
    sub = IrqSubsystem(max_irqs=26)
    refused(sub, IrqError.EINVAL, sub.allocate_dynamic, Chip.XT_PIC, 3)
    refused(sub, IrqError.EINVAL, sub.allocate_dynamic, "IO-APIC", 3)
    refused(sub, IrqError.EINVAL, sub.allocate_dynamic, "ISA", 3)
    refused(sub, IrqError.EINVAL, sub.allocate_dynamic, Chip.PCI_MSI, -1)
    refused(sub, IrqError.EINVAL, sub.allocate_dynamic, Chip.PCI_MSI, 1, Trigger.LEVEL)
    sub.allocate_dynamic(Chip.PCI_MSI, 1)
    refused(sub, IrqError.EBUSY, sub.allocate_dynamic, Chip.PCI_MSI, 1)
    sub.allocate_dynamic(Chip.PCI_MSI, 2)
    refused(sub, IrqError.ENOSPC, sub.allocate_dynamic, Chip.PCI_MSI, 3)


@pytest.mark.timeout(5)
def test_level_xen_dyn_uses_level_flow():
    sub = IrqSubsystem()
    irq = sub.allocate_dynamic(Chip.XEN_DYN, 7, Trigger.LEVEL)
    assert sub.lookup(irq).flow is Flow.LEVEL
    irq = sub.table.allocate(Chip.XEN_DYN, 8, Trigger.EDGE, flow="fasteoi")
    assert sub.lookup(irq).flow is Flow.FASTEOI
