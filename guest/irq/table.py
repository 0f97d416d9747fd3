"""The irq_desc table: which IRQ numbers exist and what is behind each.

Numbering follows Documentation/IRQ.txt and x86 Linux: 0-15 are the 16 ISA pins of the two
cascaded i8259s (IRQ2 is the cascade from the slave and can never be requested), 16-23 the
remaining IOAPIC pins, and numbers from 24 up are handed out on demand for MSI / MSI-X and
virtual (event-channel) interrupts — lowest free number first, as irq_alloc_descs does.

The table also carries what every flow handler shares: the spurious policy, the lazy-disable
setting, the latest time seen and the events (nobody cared, bogus return values, faulty
handlers) waiting for the shell to log them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

from guest.irq.desc import Chip, Flow, IrqAction, IrqDesc, IrqReturn, IrqStatus, Trigger, default_flow, handler_name
from guest.irq.spurious import SpuriousPolicy

__all__ = [
    "CASCADE_IRQ",
    "FIRST_DYNAMIC_IRQ",
    "ISA_IRQS",
    "IOAPIC_PINS",
    "IrqError",
    "IrqSetupError",
    "IrqTable",
    "coerce_chip",
    "coerce_trigger",
]

ISA_IRQS = 16  # IRQ 0-15: the two i8259s
IOAPIC_PINS = 24  # IRQ 16-23: the IOAPIC pins beyond the ISA ones
CASCADE_IRQ = 2  # master pin 2 carries the slave i8259
FIRST_DYNAMIC_IRQ = IOAPIC_PINS


class IrqError(enum.StrEnum):
    """Why a request was refused, named after the errno Linux returns."""

    EBUSY = "EBUSY"  # the line is taken by an action it cannot be shared with
    EINVAL = "EINVAL"  # a malformed argument, the cascade, an unbalanced enable
    ENOENT = "ENOENT"  # no such IRQ number or no such action on it
    ENOSPC = "ENOSPC"  # no free number left for a dynamic interrupt


class IrqSetupError(Exception):
    """A refused request. Raised before any state is touched, so the table is unchanged."""

    def __init__(self, code: IrqError, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def coerce_trigger(value: Trigger | str) -> Trigger:
    """Accept a Trigger or its wire spelling ("level" / "edge"); anything else is EINVAL."""
    try:
        return Trigger(value.lower() if isinstance(value, str) else value)
    except (ValueError, TypeError):
        raise IrqSetupError(IrqError.EINVAL, f"unknown trigger type {value!r}") from None


def coerce_chip(value: Chip | str) -> Chip:
    """Accept a Chip or its name ("PCI-MSI", ...); anything else is EINVAL."""
    try:
        return Chip(value)
    except (ValueError, TypeError):
        raise IrqSetupError(IrqError.EINVAL, f"unknown interrupt chip {value!r}") from None


def _cascade(irq: int, dev_id: Any) -> IrqReturn:
    """IRQ2's placeholder action: the slave's interrupts arrive on 8-15, never on 2."""
    return IrqReturn.NONE


class IrqTable:
    """All IrqDescs of one guest, indexed by IRQ number."""

    def __init__(
        self,
        *,
        max_irqs: int = 1024,
        spurious: SpuriousPolicy | None = None,
        lazy_disable: bool = True,
        max_events: int = 1000,
    ) -> None:
        """`lazy_disable` as Linux: disable_irq only marks the line; the chip is masked when
        an interrupt actually arrives. False masks at once (IRQ_DISABLE_UNLAZY).
        `max_events` bounds the undrained events (a handler failing on every interrupt of a
        storm must not eat the guest's memory); the excess is only counted."""
        if max_irqs < FIRST_DYNAMIC_IRQ:
            raise ValueError(f"max_irqs must be at least {FIRST_DYNAMIC_IRQ}")
        self.max_irqs = max_irqs
        self.spurious = spurious if spurious is not None else SpuriousPolicy()
        self.lazy_disable = lazy_disable
        self.last_now = 0.0
        self.events: list[Any] = []  # NobodyCared | BogusReturn | HandlerFault, drained by the shell
        self.max_events = max_events
        self.events_dropped = 0
        self.bad_irq_reports = 0  # bogus return values reported so far (spurious.py's limit)
        # arch/x86/kernel/irq.c irq_err_count and io_apic.c irq_mis_count, the ERR: and MIS:
        # rows of /proc/interrupts. Nothing in this model raises them: the i8259's spurious
        # IRQ7/15 (what mask_and_ack_8259A counts) are absorbed by irqbus, which counts them
        # itself, and the 82093AA erratum that MIS: counts is not modelled.
        self.irq_err_count = 0
        self.irq_mis_count = 0
        self._descs: dict[int, IrqDesc] = {}
        self._by_hw: dict[tuple[Chip, int], int] = {}
        for irq in range(IOAPIC_PINS):
            chip = Chip.XT_PIC if irq < ISA_IRQS else Chip.IO_APIC
            # ISA devices are edge (ELCR clear; the flow is level all the same, see
            # default_flow); PCI INTx on the IOAPIC is level.
            trigger = Trigger.EDGE if irq < ISA_IRQS else Trigger.LEVEL
            self._insert(IrqDesc(irq, chip, irq, trigger, default_flow(chip, trigger)))
        cascade = self._descs[CASCADE_IRQ]
        cascade.reserved = True
        cascade.actions.append(IrqAction("cascade", None, _cascade, False, cascade.trigger))
        cascade.depth = 0
        cascade.status = IrqStatus.NONE

    def _insert(self, desc: IrqDesc, name: str | None = None) -> None:
        desc.name = name if name is not None else handler_name(desc.chip, desc.flow)
        self._descs[desc.irq] = desc
        self._by_hw[(desc.chip, desc.hwirq)] = desc.irq

    # -- lookup ---------------------------------------------------------------------------

    def lookup(self, irq: int) -> IrqDesc:
        """The descriptor of `irq`: EINVAL if not an IRQ number at all, ENOENT if unallocated."""
        desc = self._descs.get(irq) if type(irq) is int else None  # the common case: one lookup
        if desc is not None:
            return desc
        if not isinstance(irq, int) or isinstance(irq, bool) or irq < 0:
            raise IrqSetupError(IrqError.EINVAL, f"{irq!r} is not an IRQ number")
        desc = self._descs.get(irq)
        if desc is None:
            raise IrqSetupError(IrqError.ENOENT, f"IRQ {irq} is not allocated")
        return desc

    def get(self, irq: int) -> IrqDesc | None:
        return self._descs.get(irq)

    def find(self, chip: Chip | str, hwirq: int) -> int | None:
        """The IRQ number behind a controller input (how the shell maps irqbus messages)."""
        try:
            return self._by_hw.get((Chip(chip), hwirq))
        except (ValueError, TypeError):  # not a chip name, or an unhashable hwirq
            return None

    def __iter__(self) -> Iterator[IrqDesc]:
        """Descriptors in IRQ-number order."""
        return iter([self._descs[irq] for irq in sorted(self._descs)])

    def __len__(self) -> int:
        return len(self._descs)

    def __contains__(self, irq: object) -> bool:
        return irq in self._descs

    @property
    def nr_irqs(self) -> int:
        """One past the highest IRQ number in use (sizes the /proc/interrupts column)."""
        return max(self._descs) + 1

    # -- dynamic interrupts ---------------------------------------------------------------

    def allocate(
        self,
        chip: Chip | str,
        hwirq: int,
        trigger: Trigger | str = Trigger.EDGE,
        flow: Flow | str | None = None,
        name: str | None = None,
    ) -> int:
        """Give an MSI / MSI-X / virtual interrupt the lowest free IRQ number >= 24.

        `name` is what /proc/interrupts shows after the dash (desc.py `handler_name` by
        default; Xen's bind_virq_to_irq passes "virq")."""
        chip = coerce_chip(chip)
        trigger = coerce_trigger(trigger)
        if not chip.is_dynamic:
            raise IrqSetupError(IrqError.EINVAL, f"{chip} lines are fixed pins, not allocated")
        if not isinstance(hwirq, int) or isinstance(hwirq, bool) or hwirq < 0:
            raise IrqSetupError(IrqError.EINVAL, f"hwirq {hwirq!r} is not a non-negative integer")
        if trigger not in chip.triggers:
            raise IrqSetupError(IrqError.EINVAL, f"{chip} cannot be {trigger}-triggered")
        if flow is None:
            flow = default_flow(chip, trigger)
        else:
            try:
                flow = Flow(flow)
            except ValueError:
                raise IrqSetupError(IrqError.EINVAL, f"unknown flow {flow!r}") from None
        if (chip, hwirq) in self._by_hw:
            held = self._by_hw[(chip, hwirq)]
            raise IrqSetupError(IrqError.EBUSY, f"{chip} hwirq {hwirq} already has IRQ {held}")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 16):
            raise IrqSetupError(IrqError.EINVAL, f"handler name {name!r} is not a string of 1..16 characters")
        irq = next((n for n in range(FIRST_DYNAMIC_IRQ, self.max_irqs) if n not in self._descs), None)
        if irq is None:
            raise IrqSetupError(IrqError.ENOSPC, f"all {self.max_irqs} IRQ numbers are in use")
        self._insert(IrqDesc(irq, chip, hwirq, trigger, flow), name)
        return irq

    def free_dynamic(self, irq: int) -> None:
        """Give a dynamic number back; its actions must have been freed first."""
        desc = self.lookup(irq)
        if irq < FIRST_DYNAMIC_IRQ:
            raise IrqSetupError(IrqError.EINVAL, f"IRQ {irq} is a fixed pin, not dynamic")
        if desc.actions:
            names = ", ".join(desc.action_names)
            raise IrqSetupError(IrqError.EBUSY, f"IRQ {irq} still has actions: {names}")
        del self._descs[irq]
        del self._by_hw[(desc.chip, desc.hwirq)]

    def record(self, event: Any) -> None:
        """Queue an event for the shell to log, or count it as dropped if the queue is full."""
        if len(self.events) < self.max_events:
            self.events.append(event)
        else:
            self.events_dropped += 1

    # -- time -----------------------------------------------------------------------------

    def note_time(self, now: float) -> float:
        """Remember the latest time seen, for operations that arrive without one."""
        if type(now) is float and now == now:  # the common case, decided in one test
            if now > self.last_now:
                self.last_now = now
            return now
        if not isinstance(now, (int, float)) or isinstance(now, bool) or now != now:
            raise IrqSetupError(IrqError.EINVAL, f"time {now!r} is not a number of seconds")
        now = float(now)
        if now > self.last_now:
            self.last_now = now
        return now
