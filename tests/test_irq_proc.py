"""/proc/interrupts text (x86 Linux's exact layout) and its --json twin.

Expected texts are written from kernel/irq/proc.c `show_interrupts` (v6.13: "%*d:", " %10u" per
CPU, " ", "%8s" chip, " %*lu" hwirq or " %*s" blank without a domain, "-%-8s" desc->name,
"  %s" / ", %s" actions; no Level/Edge column without CONFIG_GENERIC_IRQ_SHOW_LEVEL) and
arch/x86/kernel/irq.c `arch_show_interrupts` ("%*s: %10u\n" for ERR and MIS).
"""

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
def test_show_interrupts_exact_text_for_a_small_table_with_a_shared_line():
    expected = (
        "           CPU0       \n"
        "  1:          3   XT-PIC      i8042\n"
        "  2:          0   XT-PIC      cascade\n"
        " 11:         12   XT-PIC      nic0, disk0\n"
        " 16:          0  IO-APIC  16-fasteoi   ehci_hcd:usb1\n"
        " 24:       1234  PCI-MSI 524288-edge      eth0\n"
        "ERR:          0\n"
        "MIS:          0\n"
    )
    sub = small_guest()
    assert sub.interrupts_text() == expected
    assert format_interrupts(sub.table) == expected


@pytest.mark.timeout(5)
def test_show_interrupts_columns_per_cpu():
    sub = IrqSubsystem(cpus=2)
    sub.request_irq(4, handled, "serial")
    sub.handle(4, 0.0, cpu=0)
    sub.handle(4, 0.0, cpu=1)
    sub.handle(4, 0.0, cpu=1)
    lines = sub.interrupts_text().splitlines()
    assert lines[0] == "           CPU0       CPU1       "
    assert "  4:          1          2   XT-PIC      serial" in lines
    assert lines[-2:] == ["ERR:          0", "MIS:          0"]  # global counters: one column


@pytest.mark.timeout(5)
def test_show_interrupts_lists_only_lines_with_an_action():
    """`if (!desc->action || irq_desc_is_chained(desc) || !desc->kstat_irqs) return 0;` (since
    "genirq/proc: Refine percpu kstat_irqs access logic"): a freed line goes, counts or not."""
    sub = IrqSubsystem()
    sub.request_irq(5, handled, "sb16")
    sub.handle(5, 0.0)
    assert "  5:          1   XT-PIC      sb16" in sub.interrupts_text().splitlines()
    sub.free_irq(5)
    assert not any(line.startswith("  5:") for line in sub.interrupts_text().splitlines())
    assert [row["irq"] for row in sub.interrupts_json()] == [2]


@pytest.mark.timeout(5)
def test_show_interrupts_irq_column_widens_past_999():
    sub = IrqSubsystem(max_irqs=1100)
    for hw in range(999 - 24 + 1):
        last = sub.allocate_dynamic(Chip.XEN_DYN, hw)
    assert last == 999
    sub.request_irq(last, handled, "evtchn")
    lines = sub.interrupts_text().splitlines()
    assert lines[0] == " " * 12 + "CPU0       "
    assert lines[1] == "   2:          0   XT-PIC       cascade"
    # Xen event channels: no irq domain (blank hwirq), bind_evtchn_to_irq names them "event"
    assert lines[2] == " 999:          0  xen-dyn     -event     evtchn"
    assert lines[3:] == [" ERR:          0", " MIS:          0"]


@pytest.mark.timeout(5)
def test_show_interrupts_names_a_virq_line_virq():
    """drivers/xen/events/events_base.c bind_virq_to_irq (not per-CPU):
    irq_set_chip_and_handler_name(irq, &xen_dynamic_chip, handle_edge_irq, "virq")."""
    sub = IrqSubsystem()
    irq = sub.allocate_dynamic(Chip.XEN_DYN, 0, Trigger.EDGE, name="virq")
    sub.request_irq(irq, handled, "balloon-target")
    assert " 24:          0  xen-dyn    -virq      balloon-target" in sub.interrupts_text().splitlines()


@pytest.mark.timeout(5)
def test_show_interrupts_ioapic_edge_line_is_named_edge():
    sub = IrqSubsystem()
    sub.request_irq(20, handled, "rogue", trigger=Trigger.EDGE)
    assert " 20:          0  IO-APIC  20-edge      rogue" in sub.interrupts_text().splitlines()


@pytest.mark.timeout(5)
def test_arch_show_interrupts_err_and_mis_rows():
    sub = IrqSubsystem()
    sub.table.irq_err_count, sub.table.irq_mis_count = 3, 1234567
    assert sub.interrupts_text().splitlines()[-2:] == ["ERR:          3", "MIS:    1234567"]


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
        "name": None,
        "actions": [
            {"name": "nic0", "shared": True, "count": 12, "handled": 12},
            {"name": "disk0", "shared": True, "count": 12, "handled": 12},
        ],
        "depth": 0,
        "status": [],
        "irq_count": 0,
        "irqs_unhandled": 0,
        "last_unhandled": None,
    }
    assert rows[0]["depth"] == 1 and rows[0]["status"] == ["DISABLED"]
    assert rows[4]["chip"] == "PCI-MSI" and rows[4]["hwirq"] == 524288
