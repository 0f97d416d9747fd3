"""/proc/interrupts for the guest: the table as Linux prints it, and as plain dicts for --json.

Modelled on Linux kernel/irq/proc.c `show_interrupts`, combining the x86 columns (chip name,
hwirq, flow name after a dash) with the generic "Level"/"Edge" column. Lines appear once they
have an action or have ever counted an interrupt, as in Linux. Layout per row:

    "%*d: " irq, then "%10u " per CPU, " %8s" chip, " %*d" hwirq, " %-8s" Level/Edge,
    "-%-8s" flow, then "  name" and ", name" for each further action

where * is 3, or wider once IRQ numbers reach 1000. The header is that many + 8 blanks, then
"CPU%-8d" per CPU. Keeping Linux's exact layout lets existing /proc/interrupts parsers read it.
"""

from __future__ import annotations

from typing import Any

from guest.irq.desc import IrqDesc
from guest.irq.table import IrqError, IrqSetupError, IrqTable

__all__ = ["format_interrupts", "interrupts_as_dicts"]


def _check_cpus(cpus: int) -> None:
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        raise IrqSetupError(IrqError.EINVAL, f"cpus must be a positive integer, not {cpus!r}")


def _shown(desc: IrqDesc, cpus: int) -> bool:
    return bool(desc.actions) or any(desc.cpu_count(cpu) for cpu in range(cpus))


def _precision(nr_irqs: int) -> int:
    """Digits of the IRQ-number column: 3, one more for each power of ten from 1000 up."""
    prec, limit = 3, 1000
    while prec < 10 and limit <= nr_irqs:
        prec += 1
        limit *= 10
    return prec


def format_interrupts(table: IrqTable, cpus: int = 1) -> str:
    """The /proc/interrupts text, one line per requested or ever-active IRQ."""
    _check_cpus(cpus)
    prec = _precision(table.nr_irqs)
    lines = [" " * (prec + 8) + "".join(f"CPU{cpu:<8d}" for cpu in range(cpus))]
    for desc in table:
        if not _shown(desc, cpus):
            continue
        row = f"{desc.irq:>{prec}d}: "
        row += "".join(f"{desc.cpu_count(cpu):>10d} " for cpu in range(cpus))
        row += f" {desc.chip.value:>8s} {desc.hwirq:>{prec}d} {desc.trigger.label:<8s}-{desc.flow.value:<8s}"
        if desc.actions:
            row += "  " + ", ".join(desc.action_names)
        lines.append(row)
    return "\n".join(lines) + "\n"


def interrupts_as_dicts(table: IrqTable, cpus: int = 1) -> list[dict[str, Any]]:
    """The same rows as plain dicts (str / int / float / bool / list / None) for --json,
    with the state /proc/interrupts hides: depth, status flags, spurious counters."""
    _check_cpus(cpus)
    rows: list[dict[str, Any]] = []
    for desc in table:
        if not _shown(desc, cpus):
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
                "actions": [
                    {"name": a.name, "shared": a.shared, "count": a.count, "handled": a.handled}
                    for a in desc.actions
                ],
                "depth": desc.depth,
                "status": sorted(flag.name for flag in desc.status if flag.name),
                "irqs_unhandled": desc.irqs_unhandled,
                "last_unhandled": desc.last_unhandled,
            }
        )
    return rows
