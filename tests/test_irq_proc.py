"""/proc/interrupts text (Linux's exact layout) and its --json twin."""

from __future__ import annotations

import json

import pytest

from guest.irq import (
    Chip,
    IrqError,
    IrqReturn,
    IrqSetupError,
    IrqSubsystem,
    Trigger,
    format_interrupts,
    interrupts_as_dicts,
)


def handled(irq: int, dev_id: object) -> IrqReturn:
    return IrqReturn.HANDLED


def small_guest() -> IrqSubsystem:
    sub = IrqSubsystem()
    sub.request_irq(1, handled, "i8042")
    sub.request_irq(11, handled, "nic0", dev_id="nic0", shared=True, trigger=Trigger.LEVEL)
    sub.request_irq(11, handled, "disk0", dev_id="disk0", shared=True)
    sub.request_irq(16, handled, "ehci_hcd:usb1")
    msi = sub.allocate_dynamic(Chip.PCI_MSI, 524288)
    sub.request_irq(msi, handled, "eth0")
    sub.allocate_dynamic(Chip.PCI_MSIX, 7)  # allocated, never requested: not shown
    for _ in range(3):
        sub.handle(1, 0.0)
    for _ in range(12):
        sub.handle(11, 0.0)
    for _ in range(1234):
        sub.handle(msi, 0.0)
    return sub


@pytest.mark.timeout(5)
def test_exact_text_for_a_small_table_with_a_shared_line():
    expected = (
        "           CPU0       \n"
        "  1:          3    XT-PIC   1 Edge    -edge      i8042\n"
        "  2:          0    XT-PIC   2 Edge    -edge      cascade\n"
        " 11:         12    XT-PIC  11 Level   -level     nic0, disk0\n"
        " 16:          0   IO-APIC  16 Level   -fasteoi   ehci_hcd:usb1\n"
        " 24:       1234   PCI-MSI 524288 Edge    -edge      eth0\n"
    )
    sub = small_guest()
    assert sub.interrupts_text() == expected
    assert format_interrupts(sub.table) == expected


@pytest.mark.timeout(5)
def test_columns_per_cpu():
    sub = IrqSubsystem(cpus=2)
    sub.request_irq(4, handled, "serial")
    sub.handle(4, 0.0, cpu=0)
    sub.handle(4, 0.0, cpu=1)
    sub.handle(4, 0.0, cpu=1)
    text = sub.interrupts_text()
    assert text.splitlines()[0] == "           CPU0       CPU1       "
    assert "  4:          1          2    XT-PIC   4 Edge    -edge      serial" in text.splitlines()


@pytest.mark.timeout(5)
def test_freed_line_with_counts_stays_listed_without_names():
    sub = IrqSubsystem()
    sub.request_irq(5, handled, "sb16")
    sub.handle(5, 0.0)
    sub.free_irq(5)
    assert sub.interrupts_text().splitlines()[2] == "  5:          1    XT-PIC   5 Edge    -edge    "


@pytest.mark.timeout(5)
def test_irq_column_widens_past_999():
    sub = IrqSubsystem(max_irqs=1100)
    for hw in range(999 - 24 + 1):
        last = sub.allocate_dynamic(Chip.XEN_DYN, hw)
    assert last == 999
    sub.request_irq(last, handled, "evtchn")
    lines = sub.interrupts_text().splitlines()
    assert lines[0] == " " * 12 + "CPU0       "
    assert lines[1] == "   2:          0    XT-PIC    2 Edge    -edge      cascade"
    assert lines[2] == " 999:          0   xen-dyn  975 Edge    -edge      evtchn"


@pytest.mark.timeout(5)
def test_cpus_must_be_positive():
    sub = IrqSubsystem()
    for bad in (0, -1, "2", True):
        with pytest.raises(IrqSetupError) as info:
            format_interrupts(sub.table, bad)
        assert info.value.code is IrqError.EINVAL
        with pytest.raises(IrqSetupError):
            interrupts_as_dicts(sub.table, bad)


@pytest.mark.timeout(5)
def test_json_rows_are_plain_and_match_the_text():
    sub = small_guest()
    sub.disable_irq(1)
    rows = sub.interrupts_json()
    assert json.loads(json.dumps(rows)) == rows  # plain types only
    assert [row["irq"] for row in rows] == [1, 2, 11, 16, 24]
    shared = rows[2]
    assert shared == {
        "irq": 11,
        "counts": [12],
        "count": 12,
        "chip": "XT-PIC",
        "hwirq": 11,
        "trigger": "level",
        "flow": "level",
        "actions": [
            {"name": "nic0", "shared": True, "count": 12, "handled": 12},
            {"name": "disk0", "shared": True, "count": 12, "handled": 12},
        ],
        "depth": 0,
        "status": [],
        "irqs_unhandled": 0,
        "last_unhandled": None,
    }
    assert rows[0]["depth"] == 1 and rows[0]["status"] == ["DISABLED"]
    assert rows[4]["chip"] == "PCI-MSI" and rows[4]["hwirq"] == 524288
