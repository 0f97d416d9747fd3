"""Sans-I/O model of the Intel 8259A programmable interrupt controller and the PC's cascaded pair.

One `PIC` holds the four 8-bit registers the guest reasons about -- IRR (requests latched),
ISR (requests being serviced), IMR (masked inputs), ELCR (edge/level per input) -- plus the
last level seen on each input, which edge detection needs. `CascadedPICs` wires a slave's INT
output to the master's input 2 and numbers the 16 inputs as ISA IRQs 0-15, the way a PC (and
QEMU's hw/intc/i8259.c, KVM's arch/x86/kvm/i8259.c) does.

No I/O, no clock: callers change input levels, ask whether INT is raised, acknowledge (the INTA
cycle) and send EOIs; the model only answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PINS_PER_PIC = 8
ISA_IRQS = 16
CASCADE_PIN = 2
"""The master input the slave's INT output drives; ISA IRQ2 is never a device line."""

SPURIOUS_PIN = 7
"""The pin an 8259A reports when INTA finds nothing to deliver (IRQ7 / IRQ15)."""

MASTER_FIXED_EDGE = 0b0000_0111
"""Master inputs 0 (timer), 1 (keyboard), 2 (cascade) are edge-only on real chipsets' ELCR."""

SLAVE_FIXED_EDGE = 0b0010_0001
"""Slave inputs 0 (IRQ8, RTC) and 5 (IRQ13, FPU) are edge-only on real chipsets' ELCR."""

DEFAULT_MASTER_VECTOR_BASE = 0x20
DEFAULT_SLAVE_VECTOR_BASE = 0x28


def _check_pin(pin: object, count: int, what: str) -> int:
    """Reject anything that is not an in-range integer pin before state is touched."""
    if type(pin) is int and 0 <= pin < count:  # the common case, decided in one test
        return pin
    if isinstance(pin, bool) or not isinstance(pin, int):
        raise ValueError(f"{what} must be an integer, got {pin!r}")
    if not 0 <= pin < count:
        raise ValueError(f"{what} {pin} out of range 0..{count - 1}")
    return pin


def _check_level(level: object) -> bool:
    """A line level is a bool (0/1 accepted); anything else is a caller bug, said clearly."""
    if level is True or level is False:
        return level
    if isinstance(level, int) and level in (0, 1):
        return bool(level)
    raise ValueError(f"line level must be a bool, got {level!r}")


def _check_vector_base(base: object) -> int:
    """ICW2 only sets bits 3-7: the base must be a multiple of 8 within one byte."""
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base <= 0xF8 or base % 8:
        raise ValueError(f"vector base must be a multiple of 8 in 0x00..0xF8, got {base!r}")
    return base


def _best_rank(mask: int, priority_add: int) -> int:
    """Priority rank (0 = highest) of the best pin in `mask` when pin `priority_add` has the
    highest priority, or 8 if `mask` is empty."""
    for rank in range(PINS_PER_PIC):
        if mask & (1 << ((rank + priority_add) % PINS_PER_PIC)):
            return rank
    return PINS_PER_PIC


# Every (rotation, 8-bit mask) answered once: priority resolution runs several times per
# interrupt, and a table lookup is what a priority encoder is.
_RANKS = tuple(tuple(_best_rank(mask, add) for mask in range(256)) for add in range(PINS_PER_PIC))


@dataclass(frozen=True)
class PicState:
    """A read-only snapshot for display: bit n of each field is pin (or ISA IRQ) n."""

    irr: int
    isr: int
    imr: int
    elcr: int
    lines: int


class PIC:
    """One 8259A. Pins are numbered 0-7 here; `CascadedPICs` maps them to ISA IRQs.

    `fixed_edge` is a bitmask of pins whose ELCR bit cannot be set (chipset-wired edge inputs).
    `cascade_pin` only matters for special fully nested mode, where the master must let a
    higher-priority slave request through while the cascade input is already in service.
    `on_output` is the INT wire: called with the new level whenever the output changes, so a
    slave can drive its master's input however the slave is poked.
    """

    def __init__(
        self,
        *,
        vector_base: int = DEFAULT_MASTER_VECTOR_BASE,
        fixed_edge: int = 0,
        auto_eoi: bool = False,
        rotate_on_auto_eoi: bool = False,
        special_fully_nested: bool = False,
        cascade_pin: int | None = None,
        name: str = "pic",
        on_output: Callable[[bool], None] | None = None,
    ) -> None:
        if isinstance(fixed_edge, bool) or not isinstance(fixed_edge, int) or not 0 <= fixed_edge <= 0xFF:
            raise ValueError(f"fixed_edge must be an 8-bit mask, got {fixed_edge!r}")
        if cascade_pin is not None:
            _check_pin(cascade_pin, PINS_PER_PIC, "cascade pin")
        self.name = name
        self.vector_base = _check_vector_base(vector_base)
        self.fixed_edge = fixed_edge
        self.auto_eoi = bool(auto_eoi)
        self.rotate_on_auto_eoi = bool(rotate_on_auto_eoi)
        self.special_fully_nested = bool(special_fully_nested)
        self.cascade_pin = cascade_pin
        self._irr = 0
        self._isr = 0
        self._imr = 0
        self._elcr = 0
        self._lines = 0
        # Pin with the highest priority is `_priority_add`; fixed priority (pin 0 highest) is 0.
        self._priority_add = 0
        self._output = False
        self.on_output = on_output

    def _pin(self, pin: object) -> int:
        if type(pin) is int and 0 <= pin < PINS_PER_PIC:  # the common case, no message built
            return pin
        return _check_pin(pin, PINS_PER_PIC, f"{self.name} pin")

    def _update_output(self) -> None:
        """Re-evaluate INT after any state change and tell whoever the wire is connected to."""
        output = self.highest_request() is not None
        if output != self._output:
            self._output = output
            if self.on_output is not None:
                self.on_output(output)

    # -- inputs ---------------------------------------------------------------------------

    def set_line(self, pin: int, level: bool) -> None:
        """Drive input `pin`: edge inputs latch IRR only on 0->1, level inputs' IRR follows."""
        pin = self._pin(pin)
        level = _check_level(level)
        bit = 1 << pin
        irr = self._irr
        if self._elcr & bit:
            self._irr = irr | bit if level else irr & ~bit
        elif level and not self._lines & bit:
            self._irr = irr | bit
        # An edge input's falling edge leaves a latched request alone: the 8259A holds IRR
        # until INTA, which is why a short pulse is never lost (unlike on the IOAPIC).
        self._lines = self._lines | bit if level else self._lines & ~bit
        if self._irr != irr:  # INT depends on IRR, not on the line itself
            self._update_output()

    def line(self, pin: int) -> bool:
        """The level last driven on `pin`."""
        pin = self._pin(pin)
        return bool(self._lines & (1 << pin))

    # -- configuration --------------------------------------------------------------------

    def set_trigger(self, pin: int, level: bool) -> None:
        """Program the ELCR bit: level=True makes IRR follow the line from now on."""
        pin = self._pin(pin)
        level = _check_level(level)
        bit = 1 << pin
        if level and self.fixed_edge & bit:
            raise ValueError(f"{self.name} pin {pin} is edge-triggered only (ELCR bit is fixed)")
        if level:
            self._elcr |= bit
            # From now on IRR mirrors the line.
            self._irr = (self._irr & ~bit) | (self._lines & bit)
        else:
            self._elcr &= ~bit
        self._update_output()

    def is_level(self, pin: int) -> bool:
        """True if `pin` is level-triggered (its ELCR bit is set)."""
        pin = self._pin(pin)
        return bool(self._elcr & (1 << pin))

    def set_elcr(self, elcr: int) -> None:
        """Write the whole ELCR; bits of fixed-edge pins must be zero."""
        if isinstance(elcr, bool) or not isinstance(elcr, int) or not 0 <= elcr <= 0xFF:
            raise ValueError(f"ELCR must be an 8-bit mask, got {elcr!r}")
        if elcr & self.fixed_edge:
            raise ValueError(
                f"{self.name} ELCR {elcr:#04x} sets fixed edge-only pins (mask {self.fixed_edge:#04x})"
            )
        for pin in range(PINS_PER_PIC):
            self.set_trigger(pin, bool(elcr & (1 << pin)))

    def set_imr(self, imr: int) -> None:
        """Write OCW1. A masked input still latches IRR; it just cannot raise INT."""
        if isinstance(imr, bool) or not isinstance(imr, int) or not 0 <= imr <= 0xFF:
            raise ValueError(f"IMR must be an 8-bit mask, got {imr!r}")
        self._imr = imr
        self._update_output()

    def mask(self, pin: int) -> None:
        """Set one IMR bit."""
        pin = self._pin(pin)
        self._imr |= 1 << pin
        self._update_output()

    def unmask(self, pin: int) -> None:
        """Clear one IMR bit; a request latched while masked becomes deliverable."""
        pin = self._pin(pin)
        self._imr &= ~(1 << pin)
        self._update_output()

    def is_masked(self, pin: int) -> bool:
        pin = self._pin(pin)
        return bool(self._imr & (1 << pin))

    def set_lowest_priority(self, pin: int) -> None:
        """OCW2 'set priority': `pin` becomes lowest, so pin+1 becomes highest."""
        pin = self._pin(pin)
        self._priority_add = (pin + 1) % PINS_PER_PIC
        self._update_output()

    @property
    def highest_priority_pin(self) -> int:
        """The pin that currently has the highest priority (0 unless rotated)."""
        return self._priority_add

    # -- priority resolution --------------------------------------------------------------

    def _rank(self, mask: int) -> int:
        """Priority rank (0 = highest) of the best pin in `mask`, or 8 if `mask` is empty."""
        return _RANKS[self._priority_add][mask & 0xFF]

    def _pin_of_rank(self, rank: int) -> int:
        return (rank + self._priority_add) % PINS_PER_PIC

    def highest_request(self) -> int | None:
        """The pin INTA would deliver now, or None when INT is low.

        A request is deliverable only if it outranks every in-service pin: an in-service pin of
        higher or equal priority blocks it, which is what makes nested handlers safe.
        """
        ranks = _RANKS[self._priority_add]
        request_rank = ranks[self._irr & ~self._imr & 0xFF]
        if request_rank == PINS_PER_PIC:
            return None
        pin = (request_rank + self._priority_add) % PINS_PER_PIC
        in_service = self._isr
        if self.special_fully_nested and pin == self.cascade_pin:
            # Special fully nested mode: an in-service cascade does not lock out the slave
            # (the slave itself only raises INT for a request above its own in-service one),
            # but it still blocks the master's lower-priority pins.
            in_service &= ~(1 << pin)
        return pin if request_rank < ranks[in_service] else None

    def highest_in_service(self) -> int | None:
        """The pin a non-specific EOI would clear, or None if nothing is in service."""
        rank = self._rank(self._isr)
        return None if rank == PINS_PER_PIC else self._pin_of_rank(rank)

    def pending_output(self) -> bool:
        """The INT output: is there a request that outranks everything in service?"""
        return self._output

    def in_service(self, pin: int) -> bool:
        """ISR bit of `pin`; how a guest tells a genuine IRQ7/15 from a spurious one."""
        pin = self._pin(pin)
        return bool(self._isr & (1 << pin))

    # -- INTA and EOI ---------------------------------------------------------------------

    def _intack(self, pin: int) -> None:
        """Commit the INTA for `pin`: ISR set (unless auto-EOI), edge IRR cleared."""
        bit = 1 << pin
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self._priority_add = (pin + 1) % PINS_PER_PIC
        else:
            self._isr |= bit
        if self._elcr & bit:
            # Level: the request stays exactly as long as the line does.
            self._irr = (self._irr & ~bit) | (self._lines & bit)
        else:
            self._irr &= ~bit
        self._update_output()

    # -- the fast route (irqbus.machine) -------------------------------------------------------

    def _takes_edge(self, pin: int) -> bool:
        """Whether a rising edge on `pin` would be delivered by the very next INTA and leave
        nothing else pending: the input idle (edge-triggered, low, no request latched,
        unmasked), INT low (nothing else deliverable) and nothing of higher or equal priority
        in service. Then the net effect of the edge, INTA and the line falling again is the
        ISR bit alone: `_intack` clears the edge request it latched, and INT stays low, since
        no other request outranked the in-service ones before and the new ISR bit only blocks more."""
        bit = 1 << pin
        if self._output or self.auto_eoi or self.special_fully_nested or (self._elcr | self._lines | self._irr | self._imr) & bit:
            return False
        ranks = _RANKS[self._priority_add]
        return ranks[bit] < ranks[self._isr]

    def _take_edge(self, pin: int) -> None:
        self._isr |= 1 << pin

    def acknowledge(self) -> int:
        """INTA on this chip alone: the delivered pin, or 7 (spurious, no ISR bit) if none.

        On a master, a returned cascade pin means the slave must be acknowledged too; use
        `CascadedPICs.acknowledge` to get that right.
        """
        pin = self.highest_request()
        if pin is None:
            return SPURIOUS_PIN
        self._intack(pin)
        return pin

    def eoi(self, pin: int | None = None, *, rotate: bool = False) -> int | None:
        """End of interrupt: specific (`pin`) or non-specific (None = highest in service).

        Returns the pin whose ISR bit was cleared, or None if there was none to clear (a
        specific EOI for a pin not in service is a no-op on the 8259A too). `rotate` makes the
        ended pin the lowest priority (the "rotate on EOI" OCW2 commands).
        """
        if pin is None:
            target = self.highest_in_service()
            if target is None:
                return None
        else:
            target = self._pin(pin)
        bit = 1 << target
        was_set = bool(self._isr & bit)
        self._isr &= ~bit
        if rotate:
            self._priority_add = (target + 1) % PINS_PER_PIC
        self._update_output()
        return target if was_set else None

    def vector(self, pin: int) -> int:
        """The vector this chip puts on the bus for `pin` (ICW2 base + pin)."""
        pin = self._pin(pin)
        return self.vector_base + pin

    def snapshot(self) -> PicState:
        return PicState(irr=self._irr, isr=self._isr, imr=self._imr, elcr=self._elcr, lines=self._lines)


class CascadedPICs:
    """The PC pair: master pins 0-7 are ISA IRQ 0-7, slave pins 0-7 are ISA IRQ 8-15, and the
    slave's INT output drives master pin 2 (so IRQ2 itself is not available to devices).

    The slave's `on_output` wire drives master pin 2, which is edge-triggered: a slave request
    latches master IRR2 when the slave output rises, whether the slave was poked through this
    class or directly (`pics.slave.eoi()`).
    """

    def __init__(
        self,
        *,
        master_vector_base: int = DEFAULT_MASTER_VECTOR_BASE,
        slave_vector_base: int = DEFAULT_SLAVE_VECTOR_BASE,
        fixed_edge: bool = True,
        auto_eoi: bool = False,
        special_fully_nested: bool = False,
    ) -> None:
        self.master = PIC(
            vector_base=master_vector_base,
            # The cascade input must stay edge-triggered whatever the chipset rules are.
            fixed_edge=MASTER_FIXED_EDGE if fixed_edge else 1 << CASCADE_PIN,
            auto_eoi=auto_eoi,
            special_fully_nested=special_fully_nested,
            cascade_pin=CASCADE_PIN,
            name="master",
        )
        self.slave = PIC(
            vector_base=slave_vector_base,
            fixed_edge=SLAVE_FIXED_EDGE if fixed_edge else 0,
            auto_eoi=auto_eoi,
            name="slave",
            on_output=self._slave_output,
        )

    def _chip(self, irq: int) -> tuple[PIC, int]:
        irq = _check_pin(irq, ISA_IRQS, "ISA IRQ")
        return (self.master, irq) if irq < PINS_PER_PIC else (self.slave, irq - PINS_PER_PIC)

    def _slave_output(self, level: bool) -> None:
        self.master.set_line(CASCADE_PIN, level)

    # -- inputs and configuration -----------------------------------------------------------

    def set_line(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ `irq` (0-15 except 2, which only the slave drives)."""
        chip, pin = self._chip(irq)
        if irq == CASCADE_PIN:
            raise ValueError("ISA IRQ2 is the cascade input; it is driven by the slave PIC")
        chip.set_line(pin, level)

    def line(self, irq: int) -> bool:
        chip, pin = self._chip(irq)
        return chip.line(pin)

    def set_trigger(self, irq: int, level: bool) -> None:
        """Program the ELCR bit of `irq`; IRQ 0, 1, 2, 8, 13 are edge-only by default."""
        chip, pin = self._chip(irq)
        chip.set_trigger(pin, level)

    def is_level(self, irq: int) -> bool:
        chip, pin = self._chip(irq)
        return chip.is_level(pin)

    def set_elcr(self, elcr: int) -> None:
        """Write both ELCRs as one 16-bit mask (bit n = ISA IRQ n); all-or-nothing."""
        if isinstance(elcr, bool) or not isinstance(elcr, int) or not 0 <= elcr <= 0xFFFF:
            raise ValueError(f"ELCR must be a 16-bit mask, got {elcr!r}")
        bad_master = elcr & 0xFF & self.master.fixed_edge
        bad_slave = (elcr >> 8) & self.slave.fixed_edge
        if bad_master or bad_slave:
            raise ValueError(f"ELCR {elcr:#06x} sets edge-only IRQs (mask {bad_master | bad_slave << 8:#06x})")
        self.master.set_elcr(elcr & 0xFF)
        self.slave.set_elcr(elcr >> 8)

    def set_imr(self, imr: int) -> None:
        """Write both IMRs as one 16-bit mask (bit n = ISA IRQ n)."""
        if isinstance(imr, bool) or not isinstance(imr, int) or not 0 <= imr <= 0xFFFF:
            raise ValueError(f"IMR must be a 16-bit mask, got {imr!r}")
        self.master.set_imr(imr & 0xFF)
        self.slave.set_imr(imr >> 8)

    def mask(self, irq: int) -> None:
        """Mask one ISA IRQ; masking IRQ2 silences the whole slave."""
        chip, pin = self._chip(irq)
        chip.mask(pin)

    def unmask(self, irq: int) -> None:
        chip, pin = self._chip(irq)
        chip.unmask(pin)

    def is_masked(self, irq: int) -> bool:
        chip, pin = self._chip(irq)
        return chip.is_masked(pin)

    # -- output, INTA, EOI ----------------------------------------------------------------

    def pulse_taken(self, irq: int) -> bool:
        """A pulse on ISA IRQ `irq` delivered in one step when both chips' state allows it
        (PIC._takes_edge; a slave IRQ's request reaches the master as a rising edge on the
        cascade input, so the master must take that one too): the ISR bits set, as the edge,
        the INTA cycle and the falling line would leave them, and True. False, nothing
        changed, otherwise: the caller then drives the line through `set_line` and INTA."""
        if irq < PINS_PER_PIC:
            if irq == CASCADE_PIN or not self.master._takes_edge(irq):
                return False
            self.master._take_edge(irq)
            return True
        pin = irq - PINS_PER_PIC
        if not (self.slave._takes_edge(pin) and self.master._takes_edge(CASCADE_PIN)):
            return False
        self.slave._take_edge(pin)
        self.master._take_edge(CASCADE_PIN)
        return True

    def handled(self, irq: int) -> bool:
        """Mask, specific EOI and unmask of ISA IRQ `irq` in one step, when no request is
        latched on either chip, and True; False, nothing changed, otherwise.

        Linux's i8259 flow ends every interrupt with these three (arch/x86/kernel/i8259.c:
        make_8259A_irq gives each IRQ handle_level_irq, which calls mask_and_ack_8259A -- the
        mask, and the specific EOI, for a slave IRQ to the slave and then to the master's
        cascade -- and after the handler the chip's unmask, enable_8259A_irq); the guest's ack
        carries them together. With IRR empty on both
        chips no request can outrank anything before, between or after them, so INT stays
        low throughout and the slave's output never moves the cascade input: their net effect
        is the IRQ's IMR and ISR bits cleared, and for a slave IRQ the master's cascade ISR bit."""
        master, slave = self.master, self.slave
        if master._irr or slave._irr or irq == CASCADE_PIN or not 0 <= irq < ISA_IRQS:
            return False
        if irq < PINS_PER_PIC:
            keep = ~(1 << irq)
            master._imr &= keep
            master._isr &= keep
        else:
            keep = ~(1 << (irq - PINS_PER_PIC))
            slave._imr &= keep
            slave._isr &= keep
            master._isr &= ~(1 << CASCADE_PIN)
        return True

    def pending_output(self) -> bool:
        """The master's INT output: whether the CPU should run an INTA cycle."""
        return self.master._output

    def in_service(self, irq: int) -> bool:
        chip, pin = self._chip(irq)
        return chip.in_service(pin)

    def acknowledge(self) -> int:
        """The INTA cycle: returns the ISA IRQ delivered (0-15).

        Nothing pending on the master gives spurious IRQ7; the master choosing the cascade
        while the slave has nothing (its request went away) gives spurious IRQ15. Neither sets
        an ISR bit for the spurious pin, but the spurious IRQ15 leaves master IRQ2 in service,
        so the guest must still EOI the master -- as Linux's spurious handler does.
        """
        pin = self.master.highest_request()
        if pin is None:
            return SPURIOUS_PIN
        self.master._intack(pin)
        if pin != CASCADE_PIN:
            return pin
        slave_pin = self.slave.highest_request()
        if slave_pin is None:
            irq = PINS_PER_PIC + SPURIOUS_PIN
        else:
            self.slave._intack(slave_pin)
            irq = PINS_PER_PIC + slave_pin
        return irq

    def eoi(self, irq: int | None = None, *, rotate: bool = False) -> int | None:
        """End of interrupt, sent the way Linux does: for a slave IRQ, slave first, then master.

        Specific (`irq` given): IRQ 8-15 gets a specific EOI on the slave and a specific EOI for
        pin 2 on the master. Non-specific (None): if the master's highest in-service pin is the
        cascade, the slave gets a non-specific EOI first, then the master.
        Returns the ISA IRQ whose own ISR bit was cleared, or None if there was none (for a
        spurious IRQ15 the master's IRQ2 is still cleared). To model a guest that EOIs only one
        chip, call `master.eoi` / `slave.eoi` directly.
        """
        if irq is None:
            master_pin = self.master.highest_in_service()
            if master_pin is None:
                return None
            if master_pin != CASCADE_PIN:
                return self.master.eoi(None, rotate=rotate)
            slave_pin = self.slave.eoi(None, rotate=rotate)
            self.master.eoi(None, rotate=rotate)
            return CASCADE_PIN if slave_pin is None else PINS_PER_PIC + slave_pin
        chip, pin = self._chip(irq)
        if chip is self.master:
            return None if self.master.eoi(pin, rotate=rotate) is None else irq
        cleared = self.slave.eoi(pin, rotate=rotate)
        self.master.eoi(CASCADE_PIN, rotate=rotate)
        return None if cleared is None else irq

    def vector(self, irq: int) -> int:
        """The vector the pair reports for ISA `irq` (0x20 + irq / 0x28 + irq - 8 by default)."""
        chip, pin = self._chip(irq)
        return chip.vector(pin)

    def snapshot(self) -> PicState:
        """Both chips as 16-bit fields, bit n = ISA IRQ n (bit 2 is the cascade input)."""
        m, s = self.master.snapshot(), self.slave.snapshot()
        return PicState(
            irr=m.irr | s.irr << 8,
            isr=m.isr | s.isr << 8,
            imr=m.imr | s.imr << 8,
            elcr=m.elcr | s.elcr << 8,
            lines=m.lines | s.lines << 8,
        )
