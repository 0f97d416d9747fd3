"""The guest's side of the irqbus protocol, sans-I/O: drivers in, requests out.

It owns the guest's interrupt subsystem (guest.irq) and its drivers, and translates both ways:
an `irq` event's vector becomes an IRQ number (the vector indexes the guest's IDT: i8259
vectors 0x20-0x2F are ISA IRQ 0-15, vectors from 0x31 are handed out to IOAPIC pins and MSI
devices), and the chip operations genirq returns become one `chip` request naming pins and
MSI devices, carrying the status clears the handlers wrote. The shell (guest/interrupts.py)
only moves these requests over the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from guest.drivers import Driver, DriverKind, DriverSpec, StatusRegisters
from guest.irq import Chip, ChipOp, ChipOpKind, IrqError, IrqEvent, IrqReturn, IrqSetupError, IrqSubsystem, SpuriousPolicy, Trigger
from guest.irq.chip import handle_interrupt, handle_irq_event, run_edges
from guest.irq.desc import S_DISABLED, S_MASKED, S_PENDING, Flow, IrqDesc
from guest.irq.table import IOAPIC_PINS, ISA_IRQS

PIC_VECTOR_BASE = 0x20  # irqbus's i8259 pair: master 0x20-0x27, slave 0x28-0x2F
FIRST_DYNAMIC_VECTOR = 0x31
LAST_DYNAMIC_VECTOR = 0xEF  # 0xF0 and up are the local APIC's own vectors in Linux
MSI_ADDRESS = 0xFEE00000  # destination APIC ID 0 (the guest's one CPU), physical mode
# the members as module constants, compared by identity: an Enum class attribute lookup and an
# Enum's hash are each a Python-level call, and chip_request runs for every interrupt
_MASK, _UNMASK, _ACK, _EOI = ChipOpKind.MASK, ChipOpKind.UNMASK, ChipOpKind.ACK, ChipOpKind.EOI
_LEVEL = Trigger.LEVEL
_EDGE_FLOW, _LEVEL_FLOW = Flow.EDGE, Flow.LEVEL


@dataclass(slots=True)
class _LineCommands:
    """What irqbus is sent for each chip operation on one IRQ, built once per line (None: the
    operation is not irqbus's). The dicts are shared by every request that carries them: they
    are packed as they are sent and nobody changes them."""

    mask: dict[str, Any] | None
    unmask: dict[str, Any] | None
    ack: dict[str, Any] | None
    eoi: dict[str, Any] | None
    level_only: bool = False  # ack / EOI only while the line is level-triggered (an IOAPIC pin)
    # what each flow's operations translate to in IrqLink._deliver_fast's common case, on a
    # line that is not level_only: [ACK], [MASK, ACK, UNMASK], [EOI]
    on_edge: list[dict[str, Any]] = field(init=False)
    on_level: list[dict[str, Any]] = field(init=False)
    on_fasteoi: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.on_edge = [c for c in (self.ack,) if c is not None]
        self.on_level = [c for c in (self.mask, self.ack, self.unmask) if c is not None]
        self.on_fasteoi = [c for c in (self.eoi,) if c is not None]


@dataclass(slots=True)  # not frozen: one per interrupt, and a frozen init costs 3x
class Request:
    op: str
    args: dict[str, Any]


@dataclass
class DriverSetup:
    """What bringing one driver up takes at irqbus: program the line, then the chip operations
    (the UNMASK) — in that order, so no interrupt arrives through an unprogrammed entry."""

    driver: Driver
    program: list[Request] = field(default_factory=list)
    chip: Request | None = None


VIRQ_ACTION = {"target": "balloon-target", "memory": "balloon-memory"}  # names in /proc/interrupts


class IrqLink:
    def __init__(
        self, specs: list[DriverSpec], spurious: SpuriousPolicy | None = None, virqs: tuple[str, ...] = (), fast: bool = True
    ) -> None:
        """`fast` False: every interrupt through chip.py's general flows (the fast path's test)."""
        self.fast = fast
        self.irq = IrqSubsystem(spurious=spurious)
        self._table = self.irq.table
        self.virqs = virqs  # the hypervisor's virtual interrupts this guest binds
        self._vector_of_virq: dict[str, int] = {}
        self.fired: list[str] = []  # virtual interrupts handled since the shell last looked
        self.registers = StatusRegisters()
        self.drivers = [Driver(spec, self.registers) for spec in specs]
        self._irq_of_vector: dict[int, int] = {PIC_VECTOR_BASE + i: i for i in range(ISA_IRQS)}
        self._vector_of_pin: dict[int, int] = {}
        self._vector_of_msi: dict[int, int] = {}  # dynamic IRQ -> vector
        self._msi_device: dict[int, str] = {}  # dynamic IRQ -> device name
        self._next_vector = FIRST_DYNAMIC_VECTOR
        self._msi_index = 0
        self._lines: dict[int, _LineCommands] = {}  # IRQ -> its chip commands (chip_request)
        self.delivered = 0
        self.unknown_vectors = 0
        self.malformed = 0
        self.epoch: int | None = None  # the irqbus instance this guest is attached to (wire.epoch)
        self.stale = 0  # irq events of another instance, not handled

    # -- the irqbus instance ------------------------------------------------------------------------

    def attached(self, epoch: int | None) -> bool:
        """The guest attached to the irqbus instance `epoch`; True if that is another instance
        than before (it restarted).

        Generation numbers start again at 1 in every instance, so each driver's claimed
        generation, which belongs to the old one, is forgotten: otherwise every new
        interrupt would look like one it claimed already. From now on an `irq` event of
        another epoch is stale (its irqbus is gone) and is not handled (`on_irq`).
        """
        if epoch == self.epoch:
            return False
        self.epoch = epoch
        for driver in self.drivers:
            driver.claimed_gen = 0
        return True

    # -- bringing drivers up -----------------------------------------------------------------------

    def _allocate_vector(self) -> int:
        if self._next_vector > LAST_DYNAMIC_VECTOR:
            raise IrqSetupError(IrqError.ENOSPC, "no free interrupt vector")
        vector = self._next_vector
        self._next_vector += 1
        return vector

    def setup(self, driver: Driver) -> DriverSetup:
        """Register the driver's handler; raises IrqSetupError (nothing changed) if refused."""
        if driver.spec.kind is DriverKind.MSI:
            return self._setup_msi(driver)
        spec = driver.spec
        assert spec.pin is not None
        pin = spec.pin
        trigger = spec.trigger or self.irq.lookup(pin).trigger
        ops = self.irq.request_irq(pin, driver.handler, spec.name, dev_id=spec.name, shared=True, trigger=trigger)
        driver.irq = pin
        done = DriverSetup(driver, chip=self.chip_request(ops, []))
        if ops:  # the first action on the line: program the controller behind it
            done.program.append(self._program_pin(pin))
        return done

    def _program_pin(self, pin: int) -> Request:
        desc = self.irq.lookup(pin)
        args: dict[str, Any] = {"pin": pin, "trigger": str(desc.trigger)}
        if pin >= ISA_IRQS:
            if pin not in self._vector_of_pin:
                vector = self._allocate_vector()
                self._vector_of_pin[pin] = vector
                self._irq_of_vector[vector] = pin
            args["vector"] = self._vector_of_pin[pin]
        return Request("program_pin", args)

    def _setup_msi(self, driver: Driver) -> DriverSetup:
        name = driver.spec.name
        vector = self._allocate_vector()
        irq = self.irq.allocate_dynamic(Chip.PCI_MSIX, self._msi_index, Trigger.EDGE)
        try:
            ops = self.irq.request_irq(irq, driver.handler, name, dev_id=name)
        except IrqSetupError:
            self.irq.free_dynamic(irq)
            raise
        self._msi_index += 1
        self._irq_of_vector[vector] = irq
        self._vector_of_msi[irq] = vector
        self._msi_device[irq] = name
        self._lines.pop(irq, None)
        driver.irq = irq
        program = Request("program_msi", {"device": name, "address": MSI_ADDRESS, "data": vector})
        return DriverSetup(driver, [program], self.chip_request(ops, []))

    def bind_virqs(self) -> list[Request]:
        """Event channels for the hypervisor's notifications: a xen-dyn IRQ each, on a vector
        irqbus is told about; the handler only notes the event for the shell to act on."""
        requests = []
        for name in self.virqs:
            if name not in self._vector_of_virq:
                vector = self._allocate_vector()
                # drivers/xen/events/events_base.c bind_virq_to_irq names the handler "virq"
                irq = self.irq.allocate_dynamic(Chip.XEN_DYN, len(self._vector_of_virq), Trigger.EDGE, name="virq")
                self.irq.request_irq(irq, self._virq_handler(name), VIRQ_ACTION[name], dev_id=name)
                self._vector_of_virq[name] = vector
                self._irq_of_vector[vector] = irq
            requests.append(Request("bind_virq", {"virq": name, "vector": self._vector_of_virq[name]}))
        return requests

    def _virq_handler(self, name: str) -> Callable[[int, Any], IrqReturn]:
        def handler(irq: int, dev_id: Any) -> IrqReturn:
            self.fired.append(name)
            return IrqReturn.HANDLED

        return handler

    def take_fired(self) -> list[str]:
        """The virtual interrupts handled since the last call, each once."""
        fired, self.fired = list(dict.fromkeys(self.fired)), []
        return fired

    def abandon(self, driver: Driver) -> None:
        """irqbus refused to program the driver's line: unregister it here too."""
        irq = driver.irq
        if irq is None:
            return
        driver.irq = None
        self.irq.free_irq(irq, driver.spec.name)  # its UNMASK was never sent: nothing to send
        if driver.spec.kind is DriverKind.MSI:
            self.irq.free_dynamic(irq)
            self._irq_of_vector.pop(self._vector_of_msi.pop(irq), None)
            self._msi_device.pop(irq, None)
            self._lines.pop(irq, None)

    def reprogram(self) -> list[Request]:
        """Everything a freshly started irqbus must be told to match this guest's lines."""
        requests: list[Request] = []
        pins: set[int] = set()
        unmasked: list[ChipOp] = []
        for driver in self.drivers:
            irq = driver.irq
            if irq is None:
                continue
            if driver.spec.kind is DriverKind.MSI:
                requests.append(Request("program_msi", {"device": driver.name, "address": MSI_ADDRESS, "data": self._vector_of_msi[irq]}))
            elif irq not in pins:
                pins.add(irq)
                requests.append(self._program_pin(irq))
            else:
                continue
            if not self.irq.lookup(irq).bits & S_MASKED:
                unmasked.append(ChipOp(ChipOpKind.UNMASK, irq))
        chip = self.chip_request(unmasked, [])
        virqs = [Request("bind_virq", {"virq": n, "vector": v}) for n, v in self._vector_of_virq.items()]
        return requests + virqs + ([chip] if chip else [])

    # -- traffic -----------------------------------------------------------------------------------

    def chip_request(self, ops: list[ChipOp], cleared: list[list[Any]], reply: bool = True) -> Request | None:
        """genirq's chip operations as irqbus names them: pins 0-23 and MSI devices. The ack /
        EOI of an MSI or of an IOAPIC edge line is the local APIC's alone, so it is not sent.
        `reply` False: irqbus answers only a refusal (an interrupt's ack: one message fewer
        each time, and the guest's shell reads no reply it would only drop)."""
        return self._chip_request(self._commands(ops), cleared, reply)

    @staticmethod
    def _chip_request(commands: list[dict[str, Any]], cleared: list[list[Any]], reply: bool) -> Request | None:
        if not commands and not cleared:
            return None
        args: dict[str, Any] = {}
        if commands:
            args["ops"] = commands
        if cleared:
            args["clear"] = cleared
        if not reply:
            args["reply"] = False
        return Request("chip", args)

    def _commands(self, ops: list[ChipOp]) -> list[dict[str, Any]]:
        commands = []
        lines = self._lines
        for op in ops:
            irq = op.irq
            line = lines.get(irq)
            if line is None:
                line = lines[irq] = self._line_commands(irq)
            kind = op.kind
            if kind is _MASK:
                command = line.mask
            elif kind is _UNMASK:
                command = line.unmask
            else:
                command = line.ack if kind is _ACK else line.eoi
                # An edge entry has no remote IRR: its ack is the local APIC's EOI alone
                # (Linux ioapic_ack_edge), nothing for irqbus. A level entry needs the EOI.
                if line.level_only and command is not None and self.irq.lookup(irq).trigger is not _LEVEL:
                    command = None
            if command is not None:
                commands.append(command)
        return commands

    def _line_commands(self, irq: int) -> _LineCommands:
        if irq < ISA_IRQS:  # the 8259's ack is its EOI command
            return _LineCommands(*({"kind": kind.value, "pin": irq} for kind in (_MASK, _UNMASK, _ACK, _EOI)))
        if irq < IOAPIC_PINS:
            return _LineCommands(*({"kind": kind.value, "pin": irq} for kind in (_MASK, _UNMASK, _ACK, _EOI)), level_only=True)
        device = self._msi_device.get(irq)
        if device is None:  # an event channel: nothing of it is irqbus's to mask
            return _LineCommands(None, None, None, None)
        return _LineCommands({"kind": _MASK.value, "device": device}, {"kind": _UNMASK.value, "device": device}, None, None)

    def on_irq(self, args: Any, now: float) -> Request | None:
        """An interrupt arrived: run the line's flow handler and its drivers; return what to
        tell irqbus (chip operations and status clears), if anything."""
        if not isinstance(args, dict):
            self.unknown_vectors += 1
            return None
        if args.get("epoch") != self.epoch:
            # sent by an irqbus instance that is gone (events it queued before it died, read
            # after this guest attached to the next one): its generations and its controllers
            # are not this instance's, so nothing is handled nor acknowledged
            self.stale += 1
            return None
        vector = args.get("vector")
        irq = self._irq_of_vector.get(vector) if type(vector) is int else None
        if irq is None:
            self.unknown_vectors += 1
            return None
        status = args.get("status")
        if type(status) is not dict:
            status = {} if status is None else self._malformed({})
        else:
            for key, gen in status.items():
                if type(key) is not str or type(gen) is not int:
                    status = self._malformed({})
                    break
        registers = self.registers
        registers.load(status)
        desc = self._table.get(irq)
        if self.fast and desc is not None and not desc.bits and desc.actions and type(now) is float and now == now:
            commands = self._deliver_fast(desc, now)
        else:
            commands = self._commands(handle_interrupt(self._table, irq, now))
        self.delivered += 1
        return self._chip_request(commands, registers.take_cleared(), reply=False)

    def _deliver_fast(self, desc: IrqDesc, now: float) -> list[dict[str, Any]]:
        """chip.py's flow for a line in the state almost every interrupt finds it in: actions
        on it, and no status bit set (enabled, unmasked, no chain running, nothing pending
        nor replaying), with a valid time on CPU 0. Then each flow's checks are decided
        before they are made, so this runs the chain (chip.py handle_irq_event, the same
        function) without the layers around it, and returns the chip commands the flow's
        operations translate to, most often a list made once per line. Any other state, or
        anything the chain changes (an edge latched meanwhile, the line disabled or masked
        by "nobody cared"), goes through the general functions from that point on, so the
        result is the general path's: tests/test_guest_irq_fast_path.py compares both.
        """
        table = self._table
        if now > table.last_now:  # IrqTable.note_time
            table.last_now = now
        irq = desc.irq
        line = self._lines.get(irq)
        if line is None:
            line = self._lines[irq] = self._line_commands(irq)
        flow = desc.flow
        if flow is _EDGE_FLOW:
            # handle_edge_irq: neither INPROGRESS nor DISABLED, actions: ACK, then run_edges,
            # whose first pass has nothing to unmask (not PENDING)
            more = handle_irq_event(table, desc, now, 0)
            if desc.bits & (S_PENDING | S_DISABLED) == S_PENDING:  # run_edges goes round again
                more += run_edges(table, desc, now, 0)
            if more or line.level_only:
                return self._commands([desc.op_ack, *more])
            return list(line.on_edge)
        if flow is _LEVEL_FLOW:
            # handle_level_irq: mask_ack (not masked: MASK, ACK), not INPROGRESS, not
            # DISABLED, actions; REPLAY is clear already
            desc.bits = S_MASKED
            more = handle_irq_event(table, desc, now, 0)
            unmask = desc.unmask() if not desc.bits & S_DISABLED else []
            if more or not unmask or line.level_only:
                return self._commands([desc.op_mask, desc.op_ack, *more, *unmask])
            return list(line.on_level)
        # handle_fasteoi_irq: not INPROGRESS, runnable: run_edges, then EOI
        ops = run_edges(table, desc, now, 0)
        if ops or line.level_only:
            ops.append(desc.op_eoi)
            return self._commands(ops)
        return list(line.on_fasteoi)

    def _malformed(self, fallback: dict[str, int]) -> dict[str, int]:
        self.malformed += 1
        return fallback

    def on_query(self, args: Any) -> Request | None:
        """irqbus relays someone's question (`guest interrupts`); answer from the table."""
        if not isinstance(args, dict) or args.get("what") != "interrupts" or type(args.get("query")) is not int:
            self.malformed += 1
            return None
        if args.get("format") == "json":
            return Request("answer", {"query": args["query"], "rows": self.irq.interrupts_json()})
        return Request("answer", {"query": args["query"], "text": self.irq.interrupts_text()})

    def events(self) -> list[IrqEvent]:
        return self.irq.events()
