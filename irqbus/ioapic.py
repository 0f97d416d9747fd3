"""Sans-I/O model of an I/O APIC: 24 input pins, each steered by a redirection entry.

The IOAPIC turns pin level changes into interrupt messages for local APICs. Unlike the 8259A it
keeps no request latch for edge inputs: an edge that arrives while its entry is masked is
simply lost. Level inputs are guarded by the entry's Remote IRR bit, set when the message goes
out and cleared by the EOI for its vector; if the line is still asserted at EOI (or when a
masked level entry is unmasked), the message is sent again. Semantics follow QEMU's
hw/intc/ioapic.c and KVM's arch/x86/kvm/ioapic.c.

Every method that can cause an interrupt returns the list of `Delivery` values to send: the
caller (the irqbus shell) does the sending.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import IntEnum

from irqbus.fields import as_enum, check_flag, check_int

DEFAULT_PINS = 24


class TriggerMode(IntEnum):
    """Redirection entry bit 15 / MSI data bit 15."""

    EDGE = 0
    LEVEL = 1


class Polarity(IntEnum):
    """Redirection entry bit 13: which line level means 'asserted'."""

    ACTIVE_HIGH = 0
    ACTIVE_LOW = 1


class DeliveryMode(IntEnum):
    """Redirection entry bits 8-10 / MSI data bits 8-10 (3 and 6 are reserved)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    NMI = 4
    INIT = 5
    EXTINT = 7


class DestinationMode(IntEnum):
    """Redirection entry bit 11 / MSI address bit 2: APIC ID or logical destination set."""

    PHYSICAL = 0
    LOGICAL = 1


class DeliveryStatus(IntEnum):
    """Redirection entry bit 12 (read-only). This model delivers synchronously, so entries
    are always IDLE by the time anyone can read them; the field exists for display."""

    IDLE = 0
    SEND_PENDING = 1


_ENUM_FIELDS: dict[str, type[IntEnum]] = {
    "delivery_mode": DeliveryMode,
    "dest_mode": DestinationMode,
    "delivery_status": DeliveryStatus,
    "polarity": Polarity,
    "trigger": TriggerMode,
}

WRITABLE_FIELDS = frozenset({"vector", "delivery_mode", "dest_mode", "polarity", "trigger", "masked", "destination"})
"""Fields a guest may write; remote_irr and delivery_status are read-only status bits."""


@dataclass(frozen=True)
class RedirectionEntry:
    """One 64-bit IOAPIC redirection table entry, decoded. Reset state: vector 0, masked."""

    vector: int = 0
    delivery_mode: DeliveryMode = DeliveryMode.FIXED
    dest_mode: DestinationMode = DestinationMode.PHYSICAL
    delivery_status: DeliveryStatus = DeliveryStatus.IDLE
    polarity: Polarity = Polarity.ACTIVE_HIGH
    remote_irr: bool = False
    trigger: TriggerMode = TriggerMode.EDGE
    masked: bool = True
    destination: int = 0

    def __post_init__(self) -> None:
        # Validate (and normalise ints to enums) so a bad write never reaches the table.
        object.__setattr__(self, "vector", check_int(self.vector, 0, 0xFF, "vector"))
        object.__setattr__(self, "destination", check_int(self.destination, 0, 0xFF, "destination"))
        object.__setattr__(self, "remote_irr", check_flag(self.remote_irr, "remote_irr"))
        object.__setattr__(self, "masked", check_flag(self.masked, "masked"))
        for name, enum in _ENUM_FIELDS.items():
            object.__setattr__(self, name, as_enum(enum, getattr(self, name), name))

    @property
    def is_level(self) -> bool:
        return self.trigger is TriggerMode.LEVEL

    def to_raw(self) -> int:
        """The 64-bit register value (as read through IOWIN, low dword | high dword << 32)."""
        return (
            self.vector
            | self.delivery_mode << 8
            | self.dest_mode << 11
            | self.delivery_status << 12
            | self.polarity << 13
            | int(self.remote_irr) << 14
            | self.trigger << 15
            | int(self.masked) << 16
            | self.destination << 56
        )

    @classmethod
    def from_raw(cls, raw: int) -> RedirectionEntry:
        """Decode a 64-bit register value; reserved bits must be zero."""
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 1 << 64:
            raise ValueError(f"redirection entry must be a 64-bit integer, got {raw!r}")
        reserved = raw & ~(0x1FFFF | 0xFF << 56)
        if reserved:
            raise ValueError(f"redirection entry {raw:#018x} sets reserved bits {reserved:#018x}")
        return cls(
            vector=raw & 0xFF,
            delivery_mode=as_enum(DeliveryMode, (raw >> 8) & 0x7, "delivery_mode"),
            dest_mode=DestinationMode((raw >> 11) & 1),
            delivery_status=DeliveryStatus((raw >> 12) & 1),
            polarity=Polarity((raw >> 13) & 1),
            remote_irr=bool((raw >> 14) & 1),
            trigger=TriggerMode((raw >> 15) & 1),
            masked=bool((raw >> 16) & 1),
            destination=(raw >> 56) & 0xFF,
        )


_FIELD_NAMES = frozenset(f.name for f in fields(RedirectionEntry))


def _with_remote_irr(entry: RedirectionEntry, value: bool) -> RedirectionEntry:
    """The entry with its Remote IRR bit changed. The IOAPIC itself sets and clears that bit on
    every level interrupt and EOI, always to a bool, so the copy skips the checks a guest's
    write needs (dataclasses.replace runs them all: 13x the cost)."""
    new = object.__new__(RedirectionEntry)
    new.__dict__.update(entry.__dict__)
    new.__dict__["remote_irr"] = value
    return new


@dataclass(slots=True)  # not frozen: one per interrupt, and a frozen init costs 3x
class Delivery:
    """One interrupt message the IOAPIC sends; `level` tells the LAPIC to broadcast the EOI."""

    pin: int
    vector: int
    destination: int
    level: bool
    delivery_mode: DeliveryMode = DeliveryMode.FIXED
    dest_mode: DestinationMode = DestinationMode.PHYSICAL


class IOAPIC:
    """The redirection table plus the raw level of every input line."""

    def __init__(self, pins: int = DEFAULT_PINS) -> None:
        if isinstance(pins, bool) or not isinstance(pins, int) or not 1 <= pins <= 240:
            raise ValueError(f"pin count must be an integer in 1..240, got {pins!r}")
        self._pins = pins
        self._entries = [RedirectionEntry() for _ in range(pins)]
        self._lines = [False] * pins
        self._awaiting_eoi: set[int] = set()  # pins whose Remote IRR is set: what an EOI looks at

    @property
    def pin_count(self) -> int:
        return self._pins

    def _check_pin(self, pin: object) -> int:
        if type(pin) is int and 0 <= pin < self._pins:  # the common case, decided in one test
            return pin
        if isinstance(pin, bool) or not isinstance(pin, int):
            raise ValueError(f"IOAPIC pin must be an integer, got {pin!r}")
        if not 0 <= pin < self._pins:
            raise ValueError(f"IOAPIC pin {pin} out of range 0..{self._pins - 1}")
        return pin

    def _asserted(self, pin: int) -> bool:
        return self._lines[pin] != (self._entries[pin].polarity is Polarity.ACTIVE_LOW)

    def _set_remote_irr(self, pin: int, value: bool) -> None:
        """The one place Remote IRR changes (a guest cannot write it)."""
        self._entries[pin] = _with_remote_irr(self._entries[pin], value)
        if value:
            self._awaiting_eoi.add(pin)
        else:
            self._awaiting_eoi.discard(pin)

    def _send(self, pin: int) -> Delivery:
        """Emit the message for `pin`; a level entry now waits for its EOI (Remote IRR)."""
        entry = self._entries[pin]
        if entry.is_level:
            self._set_remote_irr(pin, True)
        return Delivery(
            pin=pin,
            vector=entry.vector,
            destination=entry.destination,
            level=entry.is_level,
            delivery_mode=entry.delivery_mode,
            dest_mode=entry.dest_mode,
        )

    def _service_level(self, pin: int) -> list[Delivery]:
        """Send a level entry if its line is asserted, it is unmasked and no EOI is awaited."""
        entry = self._entries[pin]
        if entry.is_level and not entry.masked and not entry.remote_irr and self._asserted(pin):
            return [self._send(pin)]
        return []

    # -- the fast routes (irqbus.machine): one test of the entry, then the net effect -----------

    def pulse_sends(self, pin: int) -> int | None:
        """A low-high-low pulse on an idle edge pin, in one step: the vector an unmasked,
        active-high edge entry sends for it, the table and line unchanged afterwards (what
        `set_line` up then down does). None, nothing changed, for any other state: the caller
        drives `set_line` itself."""
        entry = self._entries[pin]
        if entry.trigger is TriggerMode.EDGE and not entry.masked and entry.polarity is Polarity.ACTIVE_HIGH and not self._lines[pin]:
            return entry.vector
        return None

    def rise_sends(self, pin: int) -> int | None:
        """A low line going high on an idle level pin, in one step: an unmasked, active-high
        level entry with Remote IRR clear sends and waits for its EOI (what `set_line(pin, True)`
        does then). None, nothing changed, for any other state."""
        entry = self._entries[pin]
        if (entry.trigger is TriggerMode.LEVEL and not entry.masked and not entry.remote_irr
                and entry.polarity is Polarity.ACTIVE_HIGH and not self._lines[pin]):
            self._lines[pin] = True
            self._set_remote_irr(pin, True)
            return entry.vector
        return None

    def fall_sends_nothing(self, pin: int) -> bool:
        """The line of an active-high entry going low, in one step: it deactivates the input,
        which sends nothing, edge or level (what `set_line(pin, False)` does then). False,
        nothing changed, for an active-low entry (low is its active level)."""
        if self._entries[pin].polarity is Polarity.ACTIVE_HIGH:
            self._lines[pin] = False
            return True
        return False

    def eoi_of_pin(self, pin: int) -> list[Delivery] | None:
        """`eoi` of `pin`'s vector when `pin` is the one entry awaiting an EOI: only its Remote
        IRR can clear, and it is sent again if its line is still asserted. None, nothing
        changed, when other entries await one (the EOI broadcast may match them too)."""
        awaiting = self._awaiting_eoi
        if len(awaiting) == 1 and pin in awaiting:
            self._set_remote_irr(pin, False)
            return self._service_level(pin)
        return None

    def set_line(self, pin: int, level: bool) -> list[Delivery]:
        """Drive input `pin` to the raw electrical `level` (polarity applied here).

        Edge: a message on each inactive->active transition of an unmasked entry; a transition
        while masked is lost. Level: a message while active, unmasked and Remote IRR clear;
        further assertions before the EOI coalesce into that one.
        """
        pin = self._check_pin(pin)
        level = check_flag(level, "line level")
        was_asserted = self._asserted(pin)
        self._lines[pin] = level
        entry = self._entries[pin]
        if entry.is_level:
            return self._service_level(pin)
        if self._asserted(pin) and not was_asserted and not entry.masked:
            return [self._send(pin)]
        return []

    def line(self, pin: int) -> bool:
        """The raw level last driven on `pin`."""
        return self._lines[self._check_pin(pin)]

    def asserted(self, pin: int) -> bool:
        """Whether `pin` is active once polarity is applied."""
        return self._asserted(self._check_pin(pin))

    @property
    def irr(self) -> int:
        """Bitmap of pins currently active (polarity applied), like the IOAPIC's IRR."""
        return sum(1 << pin for pin in range(self._pins) if self._asserted(pin))

    def eoi(self, vector: int) -> list[Delivery]:
        """The local APIC's EOI broadcast for `vector`: clear Remote IRR of matching level
        entries and re-deliver those whose line is still asserted (and that are unmasked)."""
        vector = check_int(vector, 0, 0xFF, "EOI vector")
        deliveries: list[Delivery] = []
        for pin in sorted(self._awaiting_eoi):  # in pin order, as the table is scanned
            entry = self._entries[pin]
            if entry.vector == vector and entry.is_level:
                self._set_remote_irr(pin, False)
                deliveries.extend(self._service_level(pin))
        return deliveries

    def read_entry(self, pin: int) -> RedirectionEntry:
        return self._entries[self._check_pin(pin)]

    def entries(self) -> tuple[RedirectionEntry, ...]:
        """The whole table, for display."""
        return tuple(self._entries)

    def write_entry(self, pin: int, **changes: object) -> list[Delivery]:
        """Change writable fields of one entry (all validated before anything changes).

        Unmasking (or otherwise enabling) a level entry whose line is asserted delivers it:
        a masked level interrupt is not lost, unlike a masked edge. Switching an entry to edge
        clears Remote IRR, as KVM does, because Linux relies on that to emulate an EOI on
        IOAPICs without an EOI register.
        """
        pin = self._check_pin(pin)
        for name in changes:
            if name not in _FIELD_NAMES:
                raise ValueError(f"unknown redirection entry field {name!r}")
            if name not in WRITABLE_FIELDS:
                raise ValueError(f"redirection entry field {name!r} is read-only")
        entry = replace(self._entries[pin], **changes)  # type: ignore[arg-type]
        self._entries[pin] = entry
        if not entry.is_level and entry.remote_irr:
            self._set_remote_irr(pin, False)
        return self._service_level(pin)

    def write_raw(self, pin: int, raw: int) -> list[Delivery]:
        """Write a whole 64-bit entry; its read-only bits (Remote IRR, status) are ignored."""
        decoded = RedirectionEntry.from_raw(raw)
        return self.write_entry(pin, **{name: getattr(decoded, name) for name in sorted(WRITABLE_FIELDS)})

    def mask(self, pin: int) -> list[Delivery]:
        return self.write_entry(pin, masked=True)

    def unmask(self, pin: int) -> list[Delivery]:
        """Unmask `pin`; returns the delivery of a level interrupt that was waiting."""
        return self.write_entry(pin, masked=False)
