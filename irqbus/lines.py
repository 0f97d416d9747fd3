"""Shared interrupt pins: a pin's level is the OR of what every device on it drives.

Several devices may share one pin (Documentation/IRQ.txt). If each device wrote the pin level
directly, one device deasserting would hide another that still needs service. So, like KVM's
per-pin `irq_states` bitmap indexed by irq_source_id, each (pin, source) pair keeps its own bit
and the pin is high while any bit is set.
"""

from __future__ import annotations

DEFAULT_PINS = 24
DEFAULT_MAX_SOURCES = 64
"""KVM sizes its source bitmap to one machine word."""


class SharedLines:
    """Per-pin source bitmaps for `pins` pins and source ids 0..max_sources-1."""

    def __init__(self, pins: int = DEFAULT_PINS, max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        for value, what in ((pins, "pin count"), (max_sources, "max_sources")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self._pins = pins
        self._max_sources = max_sources
        self._bits = [0] * pins

    @property
    def pin_count(self) -> int:
        return self._pins

    @property
    def max_sources(self) -> int:
        return self._max_sources

    def _check_pin(self, pin: object) -> int:
        if isinstance(pin, bool) or not isinstance(pin, int):
            raise ValueError(f"pin must be an integer, got {pin!r}")
        if not 0 <= pin < self._pins:
            raise ValueError(f"pin {pin} out of range 0..{self._pins - 1}")
        return pin

    def _check_source(self, source_id: object) -> int:
        if isinstance(source_id, bool) or not isinstance(source_id, int):
            raise ValueError(f"source id must be an integer, got {source_id!r}")
        if not 0 <= source_id < self._max_sources:
            raise ValueError(f"source id {source_id} out of range 0..{self._max_sources - 1}")
        return source_id

    def set_source(self, pin: int, source_id: int, level: bool) -> bool:
        """Record what `source_id` drives on `pin`; returns the pin's new (OR-ed) level."""
        if not (type(pin) is int and 0 <= pin < self._pins):  # else say what is wrong
            pin = self._check_pin(pin)
        if not (type(source_id) is int and 0 <= source_id < self._max_sources):
            source_id = self._check_source(source_id)
        if level is True or level is False:
            pass
        elif isinstance(level, int) and level in (0, 1):
            level = bool(level)
        else:
            raise ValueError(f"line level must be a bool, got {level!r}")
        bit = 1 << source_id
        self._bits[pin] = self._bits[pin] | bit if level else self._bits[pin] & ~bit
        return bool(self._bits[pin])

    def level(self, pin: int) -> bool:
        """The pin's level: high while any source asserts it."""
        return bool(self._bits[self._check_pin(pin)])

    def sources(self, pin: int) -> frozenset[int]:
        """The source ids currently asserting `pin`."""
        bits = self._bits[self._check_pin(pin)]
        return frozenset(s for s in range(bits.bit_length()) if bits >> s & 1)

    def remove_source(self, source_id: int) -> list[int]:
        """Drop everything `source_id` drives (a device went away); returns the pins whose
        level changed -- they went low -- so the caller can tell the interrupt controllers."""
        source_id = self._check_source(source_id)
        bit = 1 << source_id
        changed: list[int] = []
        for pin, bits in enumerate(self._bits):
            if bits & bit:
                self._bits[pin] = bits & ~bit
                if not self._bits[pin]:
                    changed.append(pin)
        return changed

    @property
    def levels(self) -> int:
        """Bitmap of high pins, bit n = pin n, for display."""
        return sum(1 << pin for pin, bits in enumerate(self._bits) if bits)
