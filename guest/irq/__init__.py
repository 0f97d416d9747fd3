"""The guest's interrupt subsystem: a sans-I/O model of Linux genirq.

One concern per module, as kernel/irq: `desc` (records), `table` (IRQ numbers), `manage`
(request / free / disable / enable), `chip` (flow handlers and resend), `spurious` ("nobody
cared"), `proc` (/proc/interrupts). `IrqSubsystem` ties them together for the guest shell:
the shell feeds it interrupts and time, and sends the returned `ChipOp`s to irqbus.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from guest.irq.chip import HandlerFault, check_irq_resend, handle_interrupt
from guest.irq.desc import (
    Chip,
    ChipOp,
    ChipOpKind,
    Flow,
    IrqAction,
    IrqDesc,
    IrqHandler,
    IrqReturn,
    IrqStatus,
    Trigger,
    default_flow,
    handler_name,
)
from guest.irq.manage import disable_irq, enable_irq, free_irq, request_irq
from guest.irq.proc import format_interrupts, interrupts_as_dicts
from guest.irq.spurious import BogusReturn, NobodyCared, SpuriousPolicy, note_interrupt
from guest.irq.table import (
    CASCADE_IRQ,
    FIRST_DYNAMIC_IRQ,
    IOAPIC_PINS,
    ISA_IRQS,
    IrqError,
    IrqSetupError,
    IrqTable,
)

__all__ = [
    "BogusReturn",
    "CASCADE_IRQ",
    "FIRST_DYNAMIC_IRQ",
    "IOAPIC_PINS",
    "ISA_IRQS",
    "Chip",
    "ChipOp",
    "ChipOpKind",
    "Flow",
    "HandlerFault",
    "IrqAction",
    "IrqDesc",
    "IrqError",
    "IrqEvent",
    "IrqHandler",
    "IrqReturn",
    "IrqSetupError",
    "IrqStatus",
    "IrqSubsystem",
    "IrqTable",
    "NobodyCared",
    "SpuriousPolicy",
    "Trigger",
    "check_irq_resend",
    "default_flow",
    "disable_irq",
    "enable_irq",
    "format_interrupts",
    "free_irq",
    "handle_interrupt",
    "handler_name",
    "interrupts_as_dicts",
    "note_interrupt",
    "request_irq",
]

IrqEvent = NobodyCared | BogusReturn | HandlerFault


class IrqSubsystem:
    """One guest's interrupt subsystem behind a single object, for the shell.

    Every method that changes a line returns the chip operations to send to irqbus, in
    order; refused calls raise `IrqSetupError` and change nothing. Events (nobody cared, bogus
    return values, faulty handlers) accumulate until `events()` drains them for logging.
    """

    def __init__(
        self,
        *,
        spurious: SpuriousPolicy | None = None,
        max_irqs: int = 1024,
        lazy_disable: bool = True,
        cpus: int = 1,
        max_events: int = 1000,
    ) -> None:
        self.table = IrqTable(
            max_irqs=max_irqs, spurious=spurious, lazy_disable=lazy_disable, max_events=max_events
        )
        self.cpus = cpus

    def request_irq(
        self,
        irq: int,
        handler: IrqHandler,
        name: str,
        dev_id: Hashable | None = None,
        shared: bool = False,
        trigger: Trigger | str | None = None,
    ) -> list[ChipOp]:
        return request_irq(self.table, irq, handler, name, dev_id, shared, trigger)

    def free_irq(self, irq: int, dev_id: Hashable | None = None) -> list[ChipOp]:
        return free_irq(self.table, irq, dev_id)

    def disable_irq(self, irq: int) -> list[ChipOp]:
        return disable_irq(self.table, irq)

    def enable_irq(self, irq: int, now: float | None = None) -> list[ChipOp]:
        return enable_irq(self.table, irq, now)

    def handle(self, irq: int, now: float, cpu: int = 0) -> list[ChipOp]:
        """Deliver one interrupt from irqbus."""
        return handle_interrupt(self.table, irq, now, cpu)

    def allocate_dynamic(
        self, chip: Chip | str, hwirq: int, trigger: Trigger | str = Trigger.EDGE, name: str | None = None
    ) -> int:
        """A number >= 24 for an MSI / MSI-X / event-channel interrupt (`name`: IrqTable.allocate)."""
        return self.table.allocate(chip, hwirq, trigger, name=name)

    def free_dynamic(self, irq: int) -> None:
        self.table.free_dynamic(irq)

    def lookup(self, irq: int) -> IrqDesc:
        return self.table.lookup(irq)

    def find(self, chip: Chip | str, hwirq: int) -> int | None:
        """The IRQ number behind (chip, hwirq), e.g. for an MSI irqbus delivers."""
        return self.table.find(chip, hwirq)

    def events(self) -> list[IrqEvent]:
        """The events recorded since the last call (the list is drained)."""
        drained, self.table.events = self.table.events, []
        return drained

    def interrupts_text(self) -> str:
        return format_interrupts(self.table, self.cpus)

    def interrupts_json(self) -> list[dict[str, Any]]:
        return interrupts_as_dicts(self.table, self.cpus)
