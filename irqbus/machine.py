"""One guest's interrupt hardware, sans-I/O: two cascaded i8259s for pins 0-15, an IOAPIC for
pins 16-23, a shared-line bitmap (a pin's level is the OR of its devices) and the devices
themselves with their interrupt-status latch and MSI-X entry.

Why a status latch: a driver on a shared line can only tell whether its own device interrupted
by reading the device's status register. Each device keeps one latch bit and a generation
number (incremented by every raise). The guest is told, with every interrupt, which devices on
the line have the latch set and at which generation; its driver clears the generation it read
(write-1-to-clear). A raise that comes after the guest read the status bumps the generation,
so the stale clear leaves the latch set and nothing is lost; a raise before the guest read it
merges into the pending one, as on real hardware.

Every mutating method validates everything first and raises WireError before touching state,
then returns the `Delivery` records (interrupts for the guest's CPU) it caused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from irqbus.i8259 import CASCADE_PIN, ISA_IRQS, PINS_PER_PIC, SPURIOUS_PIN, CascadedPICs
from irqbus.ioapic import IOAPIC, Delivery as ApicDelivery, DeliveryMode, TriggerMode
from irqbus.lines import SharedLines
from irqbus.msi import MsiMessage, MsixTable, decode
from wire.errors import ErrorCode, WireError
from wire.operations import ChipCommand

PINS = 24
MAX_PIN_DEVICES = 64  # SharedLines source ids, one machine word as KVM
MAX_MSI_DEVICES = 256
_VECTORED = (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY)
_SPURIOUS_SLAVE = PINS_PER_PIC + SPURIOUS_PIN
# What a guest's ack of an i8259 interrupt asks (CascadedPICs.handled: Linux's flow for the
# PIC's IRQs) -> the IRQ: taken in one step when no request is latched.
_PIC_HANDLED = {
    (ChipCommand("mask", irq, None), ChipCommand("ack", irq, None), ChipCommand("unmask", irq, None)): irq
    for irq in range(ISA_IRQS) if irq != CASCADE_PIN
}


class DeviceKind(enum.StrEnum):
    PIN = "pin"
    MSI = "msi"


class Source(enum.StrEnum):
    """Which controller an interrupt came through; the guest's irq event says so."""

    PIC = "pic"
    IOAPIC = "ioapic"
    MSI = "msi"
    VIRQ = "virq"  # a virtual interrupt from the hypervisor (an event channel)


@dataclass(eq=False)
class Device:
    """A device's interrupt side: its line or MSI-X entry, and its status register."""

    name: str
    kind: DeviceKind
    pin: int | None = None
    level: bool = False  # pin devices: the line follows the latch (level) or pulses (edge)
    source: int | None = None  # SharedLines source id of a pin device
    msix: MsixTable | None = None
    status: bool = False  # the interrupt-status latch
    gen: int = 0  # raises so far
    seen_gen: int = 0  # the latest generation an irq event showed the guest
    merged: int = 0  # raises that merged into one the guest had not seen yet
    asserted: bool = False  # what this device drives on its pin right now
    key: str | None = None  # the key that may drive it (irqbus.rights); None: none yet, or insecure

    @property
    def trigger(self) -> str | None:
        if self.kind is DeviceKind.MSI:
            return None
        return "level" if self.level else "edge"

    def matches(self, kind: DeviceKind, pin: int | None, level: bool) -> bool:
        """Whether an attach request describes this device as it is (attach is idempotent)."""
        if kind is not self.kind:
            return False
        return kind is DeviceKind.MSI or (pin == self.pin and level == self.level)


@dataclass(slots=True)  # not frozen: one per interrupt, and a frozen init costs 3x
class Delivery:
    """One interrupt for the guest's CPU: the vector, where it came from, and the status
    latches of the devices behind it (name -> generation)."""

    vector: int
    source: Source
    pin: int | None
    device: str | None
    status: dict[str, int]

    def event_args(self, epoch: int) -> dict[str, Any]:
        args: dict[str, Any] = {"vector": self.vector, "chip": str(self.source), "status": self.status, "epoch": epoch}
        if self.pin is not None:
            args["pin"] = self.pin
        if self.device is not None:
            args["device"] = self.device
        return args


@dataclass(slots=True)
class RaiseResult:
    deliveries: list[Delivery]
    merged: int = 0


def _einval(message: str) -> WireError:
    return WireError(ErrorCode.EINVAL, message)


def msi_message(address: int, data: int) -> MsiMessage:
    """Decode an MSI write the bus can route, or refuse it (EINVAL) saying why."""
    try:
        message = decode(address, data)
    except ValueError as err:
        raise _einval(str(err)) from None
    if message.delivery_mode not in _VECTORED:
        raise _einval(f"MSI delivery mode {message.delivery_mode.name} is not routed; use FIXED or LOWEST_PRIORITY")
    return message


class GuestMachine:
    """The controllers and devices of one guest; `client` is the guest's session."""

    def __init__(self, name: str, domid: int, client: str, now: float) -> None:
        self.name = name
        self.domid = domid
        self.client = client
        self.owner_key: str | None = None  # attached as its domain's owner (irqbus.rights); None: by the toolstack
        self.attached_at = now
        self.last_seen = now
        self.pics = CascadedPICs()
        # After Linux's init_8259A: everything masked but the cascade; drivers unmask lines.
        self.pics.set_imr(0xFFFF & ~(1 << CASCADE_PIN))
        self.ioapic = IOAPIC(PINS)
        self.lines = SharedLines(PINS, MAX_PIN_DEVICES)
        self._level = [False] * PINS  # each pin's OR-ed level, as last driven into a controller
        self._pic_vector = [self.pics.vector(irq) for irq in range(ISA_IRQS)]
        self.devices: dict[str, Device] = {}
        self._on_pin: dict[int, list[Device]] = {}
        self._free_sources = list(range(MAX_PIN_DEVICES - 1, -1, -1))
        self.fast_routes = True  # False: every interrupt through the full model (tests compare the two)
        self._msi_index: dict[int, list[Device]] | None = None
        self.delivered = 0
        self.unread = 0  # events sent since the guest's session last made a request (irqbus.backlog)
        self.dropped = 0  # events irqbus did not send: the guest was not reading
        self.spurious = 0  # INTA cycles that found nothing (IRQ7 / IRQ15)
        self.virqs: dict[str, int] = {}  # virtual interrupt name -> the vector the guest bound it to
        self.virqs_sent: dict[str, int] = {}

    # -- devices -------------------------------------------------------------------------------

    def check_new_device(self, kind: DeviceKind) -> None:
        if kind is DeviceKind.PIN and not self._free_sources:
            raise WireError(ErrorCode.ENOSPC, f"guest {self.name} has {MAX_PIN_DEVICES} pin devices already")
        if kind is DeviceKind.MSI and sum(d.kind is DeviceKind.MSI for d in self.devices.values()) >= MAX_MSI_DEVICES:
            raise WireError(ErrorCode.ENOSPC, f"guest {self.name} has {MAX_MSI_DEVICES} MSI devices already")

    def add_device(self, name: str, kind: DeviceKind, pin: int | None = None, level: bool = False) -> Device:
        """Plug a device in (the caller checked the name is free and `check_new_device`)."""
        self.check_new_device(kind)
        if kind is DeviceKind.PIN:
            assert pin is not None
            device = Device(name, kind, pin=pin, level=level, source=self._free_sources.pop())
            self._on_pin.setdefault(pin, []).append(device)
        else:
            device = Device(name, kind, msix=MsixTable(1))
        self.devices[name] = device
        self._msi_index = None
        return device

    def remove_device(self, device: Device) -> list[Delivery]:
        """Unplug: whatever the device drove on its pin goes away with it."""
        del self.devices[device.name]
        self._msi_index = None
        if device.kind is not DeviceKind.PIN:
            return []
        assert device.pin is not None and device.source is not None
        self._on_pin[device.pin].remove(device)
        if not self._on_pin[device.pin]:
            del self._on_pin[device.pin]
        out = self._set_source(device, False)
        self._free_sources.append(device.source)
        return out

    @staticmethod
    def _latch(device: Device) -> int:
        """Set the status latch for one more interrupt; returns 1 if it merged into a pending
        one the guest has not been shown yet."""
        merged = 1 if device.status and device.seen_gen < device.gen else 0
        device.merged += merged
        device.gen += 1
        device.status = True
        return merged

    def raise_device(self, device: Device, count: int = 1) -> RaiseResult:
        """The device signals `count` interrupts: latch set, then its line or its MSI."""
        if device.kind is DeviceKind.MSI:
            signal = self._fire_msi
        elif device.level:
            signal = self._assert
        else:
            signal = self._pulse
        result = RaiseResult([])
        for _ in range(count):
            result.merged += self._latch(device)
            result.deliveries += signal(device)
        return result

    def pulse_device(self, device: Device, count: int = 1) -> RaiseResult:
        """An edge from any pin device (a level device's line returns to what it holds)."""
        if device.kind is DeviceKind.MSI:
            return self.raise_device(device, count)
        result = RaiseResult([])
        for _ in range(count):
            result.merged += self._latch(device)
            result.deliveries += self._pulse(device)
        return result

    def lower_device(self, device: Device) -> list[Delivery]:
        """The device deasserts: its latch and its line go low."""
        device.status = False
        return self._set_source(device, False) if device.kind is DeviceKind.PIN else []

    def write_msi(self, address: int, data: int, device: Device | None, count: int = 1) -> list[Delivery]:
        """A raw MSI write into the guest's interrupt window (from `device`, if named)."""
        message = msi_message(address, data)
        if device is not None and device.kind is not DeviceKind.MSI:
            raise _einval(f"device {device.name} is on pin {device.pin}; it cannot write MSI messages")
        out: list[Delivery] = []
        for _ in range(count):
            if device is not None:
                device.gen += 1
                device.status = True
            out.append(self._msi_delivery(message.vector, device))
        return out

    # -- the guest programming its controllers --------------------------------------------------

    def program_pin(self, pin: int, trigger: str, vector: int | None) -> list[Delivery]:
        level = trigger == "level"
        if pin < ISA_IRQS:
            if vector is not None:
                raise _einval(f"pin {pin} is an i8259 pin: its vector is fixed ({self.pics.vector(pin):#x})")
            try:
                self.pics.set_trigger(pin, level)
            except ValueError as err:
                raise _einval(str(err)) from None
            return self._service_pic()
        if vector is None:
            raise _einval(f"pin {pin} is an IOAPIC pin: 'vector' is required")
        mode = TriggerMode.LEVEL if level else TriggerMode.EDGE
        return self._apic(self.ioapic.write_entry(pin, vector=vector, trigger=mode))

    def program_msi(self, device: Device, address: int, data: int) -> list[Delivery]:
        if device.kind is not DeviceKind.MSI:
            raise _einval(f"device {device.name} is on pin {device.pin}, not an MSI device")
        message = msi_message(address, data)
        assert device.msix is not None
        device.msix.program(0, message.address, message.data)
        self._msi_index = None
        return []

    def check_chip(self, commands: list[ChipCommand], clears: list[tuple[Device, int]]) -> None:
        """Everything `chip` could refuse, refused before anything changes."""
        for device, gen in clears:
            if gen > device.gen:
                raise _einval(f"device {device.name} never raised generation {gen} (latest {device.gen})")
        for cmd in commands:
            if cmd.device is not None:
                device = self.devices[cmd.device]
                if device.kind is not DeviceKind.MSI:
                    raise _einval(f"device {device.name} is on pin {device.pin}; chip operations name its pin")
                assert device.msix is not None
                if cmd.kind == "unmask" and device.msix.message(0) is None:
                    raise _einval(f"device {device.name}'s MSI-X entry is not programmed; program_msi first")
            elif cmd.pin is not None and cmd.pin >= ISA_IRQS and cmd.kind == "unmask":
                if self.ioapic.read_entry(cmd.pin).vector < 0x20:
                    raise _einval(f"IOAPIC pin {cmd.pin} has no vector; program_pin first")

    def chip(self, commands: list[ChipCommand], clears: list[tuple[Device, int]]) -> list[Delivery]:
        """Clear the status the guest's drivers read, then mask/unmask/ack/eoi in order.

        Clears go first: a driver clears its device inside the handler, before the flow's
        unmask or EOI, so a level line it serviced is low again when the controller looks.
        """
        self.check_chip(commands, clears)
        out: list[Delivery] = []
        for device, gen in clears:
            if device.gen == gen and device.status:
                device.status = False
                if device.level and device.kind is DeviceKind.PIN:
                    out += self._set_source(device, False)
        if self.fast_routes and len(commands) == 3:
            irq = _PIC_HANDLED.get((commands[0], commands[1], commands[2]))
            if irq is not None and self.pics.handled(irq):  # nothing left for an INTA cycle to take
                return out
        pic_touched = False
        for cmd in commands:
            if cmd.device is not None:
                device = self.devices[cmd.device]
                msix = device.msix
                assert msix is not None
                if cmd.kind == "mask":
                    msix.mask(0)
                elif cmd.kind == "unmask":
                    message = msix.unmask(0)
                    if message is not None:  # what was pending while masked
                        out.append(self._msi_delivery(message.vector, device))
                # ack / eoi of an MSI is the local APIC's business: nothing at the device
            elif cmd.pin is not None and cmd.pin < ISA_IRQS:
                pic_touched = True
                if cmd.kind == "mask":
                    self.pics.mask(cmd.pin)
                elif cmd.kind == "unmask":
                    self.pics.unmask(cmd.pin)
                else:  # the 8259's "ack" is the specific EOI Linux sends in mask_and_ack
                    self.pics.eoi(cmd.pin)
            elif cmd.pin is not None:
                if cmd.kind == "mask":
                    out += self._apic(self.ioapic.mask(cmd.pin))
                elif cmd.kind == "unmask":
                    out += self._apic(self.ioapic.unmask(cmd.pin))
                else:  # the local APIC's EOI broadcast for the entry's vector
                    sent = self.ioapic.eoi_of_pin(cmd.pin) if self.fast_routes else None
                    if sent is None:
                        sent = self.ioapic.eoi(self.ioapic.read_entry(cmd.pin).vector)
                    out += self._apic(sent)
        if pic_touched:
            out += self._service_pic()
        return out

    # -- lines and controllers -------------------------------------------------------------------

    def _set_source(self, device: Device, level: bool) -> list[Delivery]:
        assert device.pin is not None and device.source is not None
        if device.asserted == level:
            return []
        device.asserted = level
        pin = device.pin
        after = self.lines.set_source(pin, device.source, level)
        if self._level[pin] == after:
            return []
        self._level[pin] = after
        if pin < ISA_IRQS:
            self.pics.set_line(pin, after)
            # a falling line never makes a request (a level IRR just follows it down)
            return self._service_pic() if after else []
        if not after and self.fast_routes and self.ioapic.fall_sends_nothing(pin):  # a serviced level line going low
            return []
        return self._apic(self.ioapic.set_line(pin, after))

    def _assert(self, device: Device) -> list[Delivery]:
        pin = device.pin
        assert pin is not None
        if self.fast_routes and pin >= ISA_IRQS and not device.asserted and not self._level[pin]:
            vector = self.ioapic.rise_sends(pin)  # an idle level entry: it sends, and waits for the EOI
            if vector is not None:
                device.asserted = True
                self.lines.set_source(pin, device.source, True)  # type: ignore[arg-type]
                self._level[pin] = True
                self.delivered += 1
                return [Delivery(vector, Source.IOAPIC, pin, None, self._pin_status(pin))]
        return self._set_source(device, True)

    def _pulse(self, device: Device) -> list[Delivery]:
        """Drive the line the other way and back: up-down normally, down-up while held.

        The fast route: a line nobody holds, into an idle input (the chips' `pulse_taken` /
        `pulse_sends` say when), is one delivery whose only trace is in the controller; the
        shared-line bits, the line levels and the device's own go up and down again."""
        held = device.asserted
        pin = device.pin
        if self.fast_routes and not held and not self._level[pin]:  # type: ignore[index]
            assert pin is not None
            if pin < ISA_IRQS:
                if self.pics.pulse_taken(pin):
                    self.delivered += 1
                    return [Delivery(self._pic_vector[pin], Source.PIC, pin, None, self._pin_status(pin))]
            else:
                vector = self.ioapic.pulse_sends(pin)
                if vector is not None:
                    self.delivered += 1
                    return [Delivery(vector, Source.IOAPIC, pin, None, self._pin_status(pin))]
        out = self._set_source(device, not held)
        return out + self._set_source(device, held)

    def _pin_status(self, pin: int) -> dict[str, int]:
        status = {}
        for device in self._on_pin.get(pin, ()):
            if device.status:
                status[device.name] = device.gen
                device.seen_gen = device.gen
        return status

    def _service_pic(self) -> list[Delivery]:
        """Run INTA cycles while the master's INT is up; each is an interrupt for the CPU."""
        out: list[Delivery] = []
        for _ in range(ISA_IRQS):
            if not self.pics.pending_output():
                break
            irq = self.pics.acknowledge()
            if irq in (SPURIOUS_PIN, _SPURIOUS_SLAVE) and not self.pics.in_service(irq):
                self.spurious += 1
                if irq == _SPURIOUS_SLAVE:  # the master's cascade is in service: EOI it, as Linux does
                    self.pics.master.eoi(CASCADE_PIN)
                continue
            self.delivered += 1
            out.append(Delivery(self._pic_vector[irq], Source.PIC, irq, None, self._pin_status(irq)))
        return out

    def _apic(self, deliveries: list[ApicDelivery]) -> list[Delivery]:
        out = []
        for d in deliveries:
            self.delivered += 1
            out.append(Delivery(d.vector, Source.IOAPIC, d.pin, None, self._pin_status(d.pin)))
        return out

    def _fire_msi(self, device: Device) -> list[Delivery]:
        assert device.msix is not None
        # Entries start masked; before the driver programs and unmasks it, a fire only sets
        # the pending bit and is delivered on unmask.
        message = device.msix.fire(0)
        if message is None:
            return []
        if not self.fast_routes:
            return [self._msi_delivery(message.vector, device)]
        # the devices behind the vector come from an index, not a walk over every device
        status = {}
        for other in self._msi_on_vector().get(message.vector, ()):
            if other.status:
                status[other.name] = other.gen
                other.seen_gen = other.gen
        self.delivered += 1
        return [Delivery(message.vector, Source.MSI, None, device.name, status)]

    def _msi_on_vector(self) -> dict[int, list[Device]]:
        """MSI devices by the vector their entry is programmed with, in plug order (the order
        `_msi_delivery` finds them in); rebuilt after a device comes, goes or is reprogrammed."""
        index = self._msi_index
        if index is None:
            index = {}
            for device in self.devices.values():
                message = device.msix.message(0) if device.msix is not None else None
                if message is not None:
                    index.setdefault(message.vector, []).append(device)
            self._msi_index = index
        return index

    def _msi_delivery(self, vector: int, writer: Device | None) -> Delivery:
        status = {}
        for device in self.devices.values():
            if device.kind is not DeviceKind.MSI or not device.status:
                continue
            assert device.msix is not None
            message = device.msix.message(0)
            if device is writer or (message is not None and message.vector == vector):
                status[device.name] = device.gen
                device.seen_gen = device.gen
        self.delivered += 1
        return Delivery(vector, Source.MSI, None, writer.name if writer else None, status)

    # -- virtual interrupts ------------------------------------------------------------------------

    def bind_virq(self, name: str, vector: int) -> None:
        """The guest's event-channel binding: this virtual interrupt arrives on `vector`."""
        self.virqs[name] = vector

    def send_virq(self, name: str) -> list[Delivery]:
        """An event channel has no line and no status register: one delivery, if bound."""
        vector = self.virqs.get(name)
        if vector is None:
            return []
        self.virqs_sent[name] = self.virqs_sent.get(name, 0) + 1
        self.delivered += 1
        return [Delivery(vector, Source.VIRQ, None, None, {})]

    # -- display -----------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        pic = self.pics.snapshot()
        ioapic = []
        for pin in range(ISA_IRQS, PINS):
            e = self.ioapic.read_entry(pin)
            ioapic.append(
                {
                    "pin": pin,
                    "vector": e.vector,
                    "trigger": "level" if e.is_level else "edge",
                    "masked": e.masked,
                    "remote_irr": e.remote_irr,
                    "asserted": self.ioapic.asserted(pin),
                }
            )
        pins = []
        for pin in sorted(set(self._on_pin) | {p for p in range(PINS) if self.lines.level(p)}):
            on = self._on_pin.get(pin, [])
            pins.append(
                {
                    "pin": pin,
                    "controller": "i8259" if pin < ISA_IRQS else "ioapic",
                    "level": self.lines.level(pin),
                    "devices": [d.name for d in on],
                    "asserting": [d.name for d in on if d.asserted],
                    "masked": self.pics.is_masked(pin) if pin < ISA_IRQS else self.ioapic.read_entry(pin).masked,
                }
            )
        devices = []
        for d in self.devices.values():
            row: dict[str, Any] = {
                "name": d.name,
                "kind": str(d.kind),
                "pin": d.pin,
                "trigger": d.trigger,
                "status": d.status,
                "gen": d.gen,
                "merged": d.merged,
                "asserted": d.asserted,
            }
            if d.msix is not None:
                entry = d.msix.read_entry(0)
                message = d.msix.message(0)
                row["msi"] = {
                    "address": entry.address,
                    "data": entry.data,
                    "vector": message.vector if message else None,
                    "masked": entry.masked,
                    "pending": entry.pending,
                }
            devices.append(row)
        return {
            "name": self.name,
            "domid": self.domid,
            "last_seen_s": round(now - self.last_seen, 3),
            "delivered": self.delivered,
            "dropped": self.dropped,
            "spurious": self.spurious,
            "pic": {"irr": pic.irr, "isr": pic.isr, "imr": pic.imr, "elcr": pic.elcr, "lines": pic.lines},
            "ioapic": ioapic,
            "pins": pins,
            "devices": devices,
            "virqs": {name: {"vector": v, "sent": self.virqs_sent.get(name, 0)} for name, v in self.virqs.items()},
        }
