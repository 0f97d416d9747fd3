"""The guest's emulated device drivers, declared on the command line (`--device nic0:pin=5`).

A driver's interrupt handler does what a real one on a shared line must: read its own
device's interrupt-status register and claim the interrupt (HANDLED) only if its device
raised it, then clear that status (write-1-to-clear). Otherwise it says NONE, and if nobody on
the line ever says HANDLED, genirq's spurious detection eventually shuts the line off.

The status registers are what irqbus's `irq` event reports for the devices behind the line;
`StatusRegisters` holds them for the duration of one interrupt and collects the clears.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from guest.irq import IrqReturn, Trigger
from wire.errors import WireError
from wire.operations import CASCADE_PIN, IRQBUS_PINS, MAX_DEVICE_NAME, device_name


_HANDLED = IrqReturn.HANDLED  # a global lookup; IrqReturn.HANDLED is a Python-level one
_NONE = IrqReturn.NONE


class DriverKind(enum.StrEnum):
    PIN = "pin"
    MSI = "msi"


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """What `--device` declares: a driver for device `name` on a pin or on MSI."""

    name: str
    kind: DriverKind
    pin: int | None = None
    trigger: Trigger | None = None  # None: the line's default (ISA edge, IOAPIC level)

    def __str__(self) -> str:
        if self.kind is DriverKind.MSI:
            return f"{self.name}:msi"
        return f"{self.name}:pin={self.pin}" + (f":{self.trigger}" if self.trigger else "")


_PIN = re.compile(r"[0-9]{1,2}")  # ASCII: "²".isdigit() is true, and int() fails on it


def parse_device(text: str) -> DriverSpec:
    """NAME:pin=N[:level|:edge] or NAME:msi; ValueError says what is wrong."""
    parts = text.split(":")
    try:
        name = device_name("device name", parts[0])
    except WireError:
        raise ValueError(
            f"invalid device {text!r}: the name must be 1..{MAX_DEVICE_NAME} letters, digits, '_', '.', '-'"
        ) from None
    rest = parts[1:]
    if rest == ["msi"]:
        return DriverSpec(name, DriverKind.MSI)
    if not rest or not rest[0].startswith("pin=") or len(rest) > 2:
        raise ValueError(f"invalid device {text!r}: expected NAME:pin=N[:level|:edge] or NAME:msi")
    pin_text = rest[0][4:]
    if _PIN.fullmatch(pin_text) is None or not 0 <= int(pin_text) < IRQBUS_PINS or int(pin_text) == CASCADE_PIN:
        raise ValueError(f"invalid device {text!r}: pin must be 0..{IRQBUS_PINS - 1} and not {CASCADE_PIN} (the cascade)")
    trigger = None
    if len(rest) == 2:
        if rest[1] not in ("level", "edge"):
            raise ValueError(f"invalid device {text!r}: the trigger is 'level' or 'edge', not {rest[1]!r}")
        trigger = Trigger(rest[1])
    return DriverSpec(name, DriverKind.PIN, int(pin_text), trigger)


def check_specs(specs: list[DriverSpec]) -> None:
    """One driver per device name: the name is the dev_id on a shared line."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"device {spec.name!r} is declared twice")
        seen.add(spec.name)


class StatusRegisters:
    """The devices' interrupt-status registers as the interrupt being handled shows them."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}  # device -> generation of the raise it reports
        self.cleared: list[list[Any]] = []  # [device, generation] written back to clear

    def load(self, status: dict[str, int]) -> None:
        self.status = status
        if self.cleared:  # take_cleared left a fresh one: no list per interrupt
            self.cleared = []

    def take_cleared(self) -> list[list[Any]]:
        cleared, self.cleared = self.cleared, []
        return cleared


@dataclass(eq=False)
class Driver:
    """One device's driver; `handler` is what request_irq registers."""

    spec: DriverSpec
    registers: StatusRegisters
    irq: int | None = None  # the IRQ number it holds, once set up
    claimed_gen: int = 0  # the latest status it cleared: a clear in flight is not claimed twice
    handled: int = 0
    calls: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def handler(self, irq: int, dev_id: Any) -> IrqReturn:
        self.calls += 1
        name = self.spec.name
        registers = self.registers
        gen = registers.status.get(name)
        if gen is None or gen <= self.claimed_gen:
            return _NONE
        self.claimed_gen = gen
        self.handled += 1
        registers.cleared.append([name, gen])
        return _HANDLED
