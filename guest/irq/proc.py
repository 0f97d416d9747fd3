"""/proc/interrupts for the guest: the table as x86 Linux prints it, and as plain dicts for --json.

Modelled on Linux kernel/irq/proc.c `show_interrupts` as of v6.13 (f9ed1f7c2e26 "genirq/proc:
Use seq_put_decimal_ull_width() for decimal values" with its fix 9d9f204bdf72 "genirq/proc:
Add missing space separator back"), on an x86 kernel, which does not set
CONFIG_GENERIC_IRQ_SHOW_LEVEL (so no "Level"/"Edge" column), followed by x86's
arch/x86/kernel/irq.c `arch_show_interrupts`. Per row:

    "%*d:" irq, then " %10u" per CPU, then " ", "%8s" chip name,
    " %*lu" hwirq if the line has an irq domain (else " %*s" blank), "-%-8s" desc->name if it
    has one, then "  name" and ", name" for each further action

where * is `prec`: 3, one more for each power of ten from 1000 up to the number of IRQs. The
header is prec + 8 blanks, then "CPU%-8d" per CPU. Only lines with an action are listed
(`!desc->action` skips a line since 6.11, "genirq/proc: Refine percpu kstat_irqs access
logic"). An i8259 line has no domain and no handler name (desc.py), so it reads
"  5:          3   XT-PIC      nic0"; an IOAPIC line " 16:          0  IO-APIC  16-fasteoi
ehci_hcd:usb1".

arch_show_interrupts then adds its rows. The per-CPU ones (NMI, LOC, SPU, RES, CAL, TLB, ...)
count local APIC, NMI and IPI events this model does not have, and are left out; the two
global counters every x86 kernel with an IOAPIC prints close the table: "%*s: %10u" for
"ERR" (irq_err_count) and "MIS" (irq_mis_count). Keeping Linux's layout lets existing
/proc/interrupts parsers read it.
"""

from __future__ import annotations

from typing import Any

from guest.irq.desc import IrqDesc
from guest.irq.table import IrqError, IrqSetupError, IrqTable

__all__ = ["format_interrupts", "interrupts_as_dicts"]


def _check_cpus(cpus: int) -> None:
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        raise IrqSetupError(IrqError.EINVAL, f"cpus must be a positive integer, not {cpus!r}")


def _shown(desc: IrqDesc) -> bool:
    """show_interrupts: `if (!desc->action || irq_desc_is_chained(desc) || ...) return 0;`"""
    return bool(desc.actions)


def _precision(nr_irqs: int) -> int:
    """Digits of the IRQ-number column: 3, one more for each power of ten from 1000 up."""
    prec, limit = 3, 1000
    while prec < 10 and limit <= nr_irqs:
        prec += 1
        limit *= 10
    return prec


def _row(desc: IrqDesc, cpus: int, prec: int) -> str:
    row = f"{desc.irq:>{prec}d}:" + "".join(f" {desc.cpu_count(cpu):>10d}" for cpu in range(cpus))
    row += f" {desc.chip.value:>8s}"
    row += f" {desc.hwirq:>{prec}d}" if desc.chip.has_domain else " " * (prec + 1)
    if desc.name is not None:
        row += f"-{desc.name:<8s}"
    if desc.actions:
        row += "  " + ", ".join(desc.action_names)
    return row


def format_interrupts(table: IrqTable, cpus: int = 1) -> str:
    """The /proc/interrupts text: header, one line per IRQ with an action, then ERR: and MIS:."""
    _check_cpus(cpus)
    prec = _precision(table.nr_irqs)
    lines = [" " * (prec + 8) + "".join(f"CPU{cpu:<8d}" for cpu in range(cpus))]
    lines += [_row(desc, cpus, prec) for desc in table if _shown(desc)]
    lines.append(f"{'ERR':>{prec}s}: {table.irq_err_count:>10d}")
    lines.append(f"{'MIS':>{prec}s}: {table.irq_mis_count:>10d}")
    return "\n".join(lines) + "\n"


def interrupts_as_dicts(table: IrqTable, cpus: int = 1) -> list[dict[str, Any]]:
    """The same rows as plain dicts (str / int / float / bool / list / None) for --json,
    with the state /proc/interrupts hides: trigger, flow, depth, status flags, spurious
    counters."""
    _check_cpus(cpus)
    rows: list[dict[str, Any]] = []
    for desc in table:
        if not _shown(desc):
            continue
        rows.append(
            {
                "irq": desc.irq,
                "counts": [desc.cpu_count(cpu) for cpu in range(cpus)],
                "count": desc.count,
                "chip": desc.chip.value,
                "hwirq": desc.hwirq,
                "trigger": desc.trigger.value,
                "flow": desc.flow.value,
                "name": desc.name,
                "actions": [
                    {"name": a.name, "shared": a.shared, "count": a.count, "handled": a.handled}
                    for a in desc.actions
                ],
                "depth": desc.depth,
                "status": sorted(flag.name for flag in desc.status if flag.name),
                "irq_count": desc.irq_count,
                "irqs_unhandled": desc.irqs_unhandled,
                "last_unhandled": desc.last_unhandled,
            }
        )
    return rows
