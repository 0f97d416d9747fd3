"""The records of the guest's interrupt subsystem: one `IrqDesc` per IRQ number, its actions.

Modelled on Linux `struct irq_desc` / `struct irqaction` (include/linux/irqdesc.h,
interrupt.h). Only data and the three chip primitives live here (mask, unmask, mask+ack),
because every other module — flow handlers, request/free, spurious detection — needs them and
they must agree on one rule: a chip operation is emitted only when it changes the chip's
state, so the shell never sends irqbus a redundant MASK or UNMASK.

Sans-I/O (DESIGN.md principle 1): chip operations are returned as `ChipOp` records for the
shell to send to irqbus; nothing here talks to anything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Chip",
    "ChipOp",
    "ChipOpKind",
    "Flow",
    "IrqAction",
    "IrqDesc",
    "IrqHandler",
    "IrqReturn",
    "IrqStatus",
    "S_DISABLED",
    "S_INPROGRESS",
    "S_MASKED",
    "S_PENDING",
    "S_REPLAY",
    "S_SPURIOUS_DISABLED",
    "Trigger",
    "default_flow",
    "handler_name",
]


class IrqReturn(enum.IntFlag):
    """What a handler says about one interrupt; a shared line OR-s the answers of its actions.

    NONE means "not my device" — if every action on a line says so, the interrupt is unhandled
    and counts towards "nobody cared" (spurious.py).
    """

    NONE = 0
    HANDLED = 1
    WAKE_THREAD = 2  # "run my thread": no thread functions are modelled (spurious.py, chip.py)


class Trigger(enum.StrEnum):
    """How the source signals: a level is held until serviced, an edge is a one-shot event."""

    LEVEL = "level"
    EDGE = "edge"


class Flow(enum.StrEnum):
    """Which flow handler (chip.py) runs a line; the value is the handler's short name."""

    LEVEL = "level"  # handle_level_irq: mask+ack, run, unmask
    EDGE = "edge"  # handle_edge_irq: ack, run, replay what arrived meanwhile
    FASTEOI = "fasteoi"  # handle_fasteoi_irq: run, then one EOI (IOAPIC level lines)


class Chip(enum.StrEnum):
    """The interrupt controller behind a line; the value is the /proc/interrupts chip name."""

    XT_PIC = "XT-PIC"  # IRQ 0-15: the two cascaded i8259s
    IO_APIC = "IO-APIC"  # IRQ 16-23: the remaining IOAPIC pins
    PCI_MSI = "PCI-MSI"  # dynamic: message-signalled
    PCI_MSIX = "PCI-MSIX"  # dynamic: MSI-X table entry
    XEN_DYN = "xen-dyn"  # dynamic: virtual / event-channel interrupt

    @property
    def is_dynamic(self) -> bool:
        """Dynamic chips get numbers >= 24 from `IrqTable.allocate`; pin chips are fixed."""
        return self in (Chip.PCI_MSI, Chip.PCI_MSIX, Chip.XEN_DYN)

    @property
    def has_domain(self) -> bool:
        """Whether Linux x86 maps this chip's lines through an irq domain, which is what makes
        /proc/interrupts print the hwirq column (proc.c `show_interrupts`). The i8259 lines are
        plain legacy descriptors and Xen event channels are bound without a domain
        (drivers/xen/events/events_base.c), so both leave the column blank."""
        return self not in (Chip.XT_PIC, Chip.XEN_DYN)

    @property
    def triggers(self) -> frozenset[Trigger]:
        """Messages have no level to hold, so MSI / MSI-X are edge only."""
        if self in (Chip.PCI_MSI, Chip.PCI_MSIX):
            return frozenset({Trigger.EDGE})
        return frozenset(Trigger)


def default_flow(chip: Chip, trigger: Trigger) -> Flow:
    """The flow handler Linux x86 installs for this chip and trigger.

    Every i8259 line gets handle_level_irq whatever its ELCR bit says: arch/x86/kernel/irqinit.c
    `init_ISA_irqs` and arch/x86/kernel/i8259.c `make_8259A_irq` both call
    irq_set_chip_and_handler(irq, &i8259A_chip, handle_level_irq). An IOAPIC pin gets
    handle_fasteoi_irq when level (its remote IRR holds the line until EOI) and handle_edge_irq
    when edge (io_apic.c); MSI and event channels are edge.
    """
    if chip is Chip.XT_PIC:
        return Flow.LEVEL
    if trigger is Trigger.EDGE:
        return Flow.EDGE
    if chip is Chip.IO_APIC:
        return Flow.FASTEOI
    return Flow.LEVEL


def handler_name(chip: Chip, flow: Flow) -> str | None:
    """The name genirq keeps beside the flow handler (desc->name), printed after a dash in
    /proc/interrupts. Only the callers that pass one have one: io_apic.c ("edge" / "fasteoi"),
    the MSI domains ("edge"), Xen's bind_evtchn_to_irq ("event"); the i8259 lines are set up
    with irq_set_chip_and_handler, which passes none."""
    if chip is Chip.XT_PIC:
        return None
    if chip is Chip.XEN_DYN:
        return "event"
    return flow.value


class IrqStatus(enum.Flag):
    """Per-line state (Linux splits it between irqd_* and IRQS_* bits; one Flag is enough)."""

    NONE = 0
    DISABLED = enum.auto()  # depth > 0: handlers must not run
    MASKED = enum.auto()  # the chip has been told to mask the line
    INPROGRESS = enum.auto()  # the handler chain is running right now
    PENDING = enum.auto()  # arrived while it could not be handled: an edge is owed a replay
    REPLAY = enum.auto()  # a replay (resend) is running; stops a second one being started
    SPURIOUS_DISABLED = enum.auto()  # disabled by "nobody cared"


# The same bits as plain ints for the per-interrupt path: enum.Flag arithmetic costs about a
# microsecond per operation, and a stuck line delivers 100,000 interrupts in a burst.
S_DISABLED = IrqStatus.DISABLED.value
S_MASKED = IrqStatus.MASKED.value
S_INPROGRESS = IrqStatus.INPROGRESS.value
S_PENDING = IrqStatus.PENDING.value
S_REPLAY = IrqStatus.REPLAY.value
S_SPURIOUS_DISABLED = IrqStatus.SPURIOUS_DISABLED.value


class ChipOpKind(enum.StrEnum):
    """What the shell must ask irqbus to do to the controller behind the line."""

    MASK = "mask"
    UNMASK = "unmask"
    ACK = "ack"
    EOI = "eoi"


@dataclass(frozen=True, slots=True)
class ChipOp:
    """One chip operation for the shell to send, in order, to irqbus.

    Frozen: each IrqDesc makes its four once (`op_mask` ...) and every interrupt returns those,
    so a flow builds no record per interrupt (a dataclass init is ~0.4 us, three per i8259
    interrupt)."""

    kind: ChipOpKind
    irq: int


IrqHandler = Callable[[int, Any], "IrqReturn | int"]


@dataclass(eq=False, slots=True)
class IrqAction:
    """One driver's registration on a line (Linux `struct irqaction`).

    `count` is how often the handler was called, `handled` how often it answered HANDLED:
    on a shared line the difference shows which device is not the one interrupting.
    """

    name: str
    dev_id: Hashable | None
    handler: IrqHandler
    shared: bool
    trigger: Trigger
    count: int = 0
    handled: int = 0
    warned: bool = False  # IRQTF_WARNED: warn_no_thread has spoken for this action


@dataclass(eq=False, slots=True)
class IrqDesc:
    """Everything known about one IRQ number (Linux `struct irq_desc`).

    `kstat` holds the per-CPU counts /proc/interrupts shows: one per run of the handler chain.
    `irq_count` / `irqs_unhandled` / `last_unhandled` belong to spurious detection: irq_count
    is the position in the current window of 100,000, which starts with the first unhandled
    interrupt and restarts with every window (spurious.py).
    A line with no actions starts disabled and masked with depth 1, as in Linux.
    The status flags are stored as the int `bits` (fast on the per-interrupt path);
    `status` reads and writes them as an IrqStatus.
    """

    irq: int
    chip: Chip
    hwirq: int
    trigger: Trigger
    flow: Flow
    actions: list[IrqAction] = field(default_factory=list)
    depth: int = 1
    bits: int = S_DISABLED | S_MASKED  # IrqStatus as an int; `status` is the typed view
    kstat: list[int] = field(default_factory=lambda: [0])
    irq_count: int = 0
    irqs_unhandled: int = 0
    last_unhandled: float | None = None
    spurious_deferred: bool = False  # SPURIOUS_DEFERRED in threads_handled_last (spurious.py)
    reserved: bool = False  # IRQ2, the i8259 cascade: never requested nor freed
    name: str | None = None  # desc->name, see handler_name(); the table sets it
    # this line's chip operations, made once (ChipOp is frozen): what mask() & co. return
    op_mask: ChipOp = field(init=False, repr=False)
    op_unmask: ChipOp = field(init=False, repr=False)
    op_ack: ChipOp = field(init=False, repr=False)
    op_eoi: ChipOp = field(init=False, repr=False)

    def __post_init__(self) -> None:
        irq = self.irq
        self.op_mask = ChipOp(ChipOpKind.MASK, irq)
        self.op_unmask = ChipOp(ChipOpKind.UNMASK, irq)
        self.op_ack = ChipOp(ChipOpKind.ACK, irq)
        self.op_eoi = ChipOp(ChipOpKind.EOI, irq)

    @property
    def is_level(self) -> bool:
        """irq_settings_is_level: what check_irq_resend asks. The i8259 lines carry IRQ_LEVEL
        whatever their trigger (commit 5fa55950729d, "x86/i8259: Mark legacy PIC interrupts
        with IRQ_LEVEL", v6.2: init_ISA_irqs and make_8259A_irq set it)."""
        return self.trigger is Trigger.LEVEL or self.chip is Chip.XT_PIC

    @property
    def status(self) -> IrqStatus:
        return IrqStatus(self.bits)

    @status.setter
    def status(self, value: IrqStatus) -> None:
        self.bits = IrqStatus(value).value

    @property
    def count(self) -> int:
        """Total handler-chain runs over all CPUs."""
        return sum(self.kstat)

    def cpu_count(self, cpu: int) -> int:
        """Count on one CPU (0 for a CPU that never took this interrupt)."""
        return self.kstat[cpu] if 0 <= cpu < len(self.kstat) else 0

    def count_on(self, cpu: int) -> None:
        """Record one run of the chain on `cpu`; the list grows on first use of a CPU."""
        if cpu >= len(self.kstat):
            self.kstat.extend([0] * (cpu + 1 - len(self.kstat)))
        self.kstat[cpu] += 1

    @property
    def action_names(self) -> list[str]:
        return [action.name for action in self.actions]

    def has(self, flag: IrqStatus) -> bool:
        """True if every bit of `flag` is set."""
        return self.bits & flag.value == flag.value

    def mask(self) -> list[ChipOp]:
        """Mask the line; nothing to send if it already is."""
        if self.bits & S_MASKED:
            return []
        self.bits |= S_MASKED
        return [self.op_mask]

    def unmask(self) -> list[ChipOp]:
        """Unmask the line; nothing to send if it is not masked."""
        if not self.bits & S_MASKED:
            return []
        self.bits &= ~S_MASKED
        return [self.op_unmask]

    def mask_ack(self) -> list[ChipOp]:
        """Mask, then acknowledge the interrupt being delivered (Linux mask_ack_irq)."""
        if self.bits & S_MASKED:
            return [self.op_ack]
        self.bits |= S_MASKED
        return [self.op_mask, self.op_ack]
