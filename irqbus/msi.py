"""Message-signalled interrupts: the x86 MSI address/data format and an MSI-X table model.

An MSI is a memory write: the address selects the destination local APIC
(0xFEE00000 | dest_id << 12 | redirection hint << 3 | destination mode << 2), the data the
vector and how to deliver it (vector | delivery mode << 8 | level assert << 14 | trigger << 15).
`decode` is the validating edge: anything outside the interrupt window, a reserved delivery mode,
a vector in the exception range or a set reserved bit is refused with a ValueError naming it.

`MsixTable` models a device's MSI-X capability: per-vector mask bits, the Pending Bit Array and
the function mask. A message raised while masked is remembered (one pending bit, so repeats
coalesce) and sent when the mask is lifted, using the entry as programmed at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from irqbus.fields import as_enum, check_flag, check_int

from irqbus.ioapic import DeliveryMode, DestinationMode, TriggerMode

MSI_ADDRESS_BASE = 0xFEE00000
MSI_ADDRESS_WINDOW_MASK = 0xFFF00000
_ADDR_DEST_SHIFT = 12
_ADDR_RH_BIT = 1 << 3
_ADDR_DM_BIT = 1 << 2
_ADDR_VALID = MSI_ADDRESS_WINDOW_MASK | 0xFF << _ADDR_DEST_SHIFT | _ADDR_RH_BIT | _ADDR_DM_BIT

_DATA_DM_SHIFT = 8
_DATA_LEVEL_ASSERT_BIT = 1 << 14
_DATA_TRIGGER_BIT = 1 << 15
_DATA_VALID = 0xFF | 0x7 << _DATA_DM_SHIFT | _DATA_LEVEL_ASSERT_BIT | _DATA_TRIGGER_BIT

FIRST_VALID_VECTOR = 16
"""Vectors 0-15 are reserved for exceptions; the local APIC rejects them as illegal."""

MSIX_MAX_VECTORS = 2048
"""The MSI-X capability's table size field is 11 bits (N - 1)."""

_VECTORED_MODES = (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY)


@dataclass(frozen=True)
class MsiMessage:
    """A decoded MSI. Validated on construction, so every instance encodes to a legal message.

    The vector must be 16..255 for FIXED and LOWEST_PRIORITY delivery; NMI, SMI, INIT and
    ExtINT ignore the vector field, so any byte is accepted there.
    """

    vector: int
    dest_id: int = 0
    delivery_mode: DeliveryMode = DeliveryMode.FIXED
    dest_mode: DestinationMode = DestinationMode.PHYSICAL
    redirection_hint: bool = False
    trigger: TriggerMode = TriggerMode.EDGE
    level_assert: bool = True

    def __post_init__(self) -> None:
        mode = as_enum(DeliveryMode, self.delivery_mode, "MSI delivery mode")
        object.__setattr__(self, "delivery_mode", mode)
        object.__setattr__(self, "dest_mode", as_enum(DestinationMode, self.dest_mode, "MSI destination mode"))
        object.__setattr__(self, "trigger", as_enum(TriggerMode, self.trigger, "MSI trigger mode"))
        object.__setattr__(self, "dest_id", check_int(self.dest_id, 0, 0xFF, "MSI destination ID"))
        object.__setattr__(self, "redirection_hint", check_flag(self.redirection_hint, "redirection hint"))
        object.__setattr__(self, "level_assert", check_flag(self.level_assert, "level assert"))
        vector = check_int(self.vector, 0, 0xFF, "MSI vector")
        if mode in _VECTORED_MODES and vector < FIRST_VALID_VECTOR:
            raise ValueError(
                f"MSI vector {vector} is reserved for exceptions; {mode.name} delivery needs 16..255"
            )
        object.__setattr__(self, "vector", vector)

    @property
    def address(self) -> int:
        return (
            MSI_ADDRESS_BASE
            | self.dest_id << _ADDR_DEST_SHIFT
            | (_ADDR_RH_BIT if self.redirection_hint else 0)
            | (_ADDR_DM_BIT if self.dest_mode is DestinationMode.LOGICAL else 0)
        )

    @property
    def data(self) -> int:
        return (
            self.vector
            | self.delivery_mode << _DATA_DM_SHIFT
            | (_DATA_LEVEL_ASSERT_BIT if self.level_assert else 0)
            | (_DATA_TRIGGER_BIT if self.trigger is TriggerMode.LEVEL else 0)
        )


def encode(message: MsiMessage) -> tuple[int, int]:
    """The (address, data) pair a device writes to raise `message`."""
    return message.address, message.data


def decode(address: int, data: int) -> MsiMessage:
    """Validate and decode an MSI write; raises ValueError saying what is wrong."""
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address < 1 << 64:
        raise ValueError(f"MSI address must be a 64-bit unsigned integer, got {address!r}")
    if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data < 1 << 32:
        raise ValueError(f"MSI data must be a 32-bit unsigned integer, got {data!r}")
    if address & MSI_ADDRESS_WINDOW_MASK != MSI_ADDRESS_BASE or address >> 32:
        raise ValueError(f"MSI address {address:#x} is outside the interrupt window 0xFEE00000-0xFEEFFFFF")
    if address & ~_ADDR_VALID:
        raise ValueError(f"MSI address {address:#x} sets reserved bits {address & ~_ADDR_VALID & 0xFFFFFFFF:#x}")
    if data & ~_DATA_VALID:
        raise ValueError(f"MSI data {data:#x} sets reserved bits {data & ~_DATA_VALID:#x}")
    return MsiMessage(
        vector=data & 0xFF,
        dest_id=(address >> _ADDR_DEST_SHIFT) & 0xFF,
        delivery_mode=as_enum(DeliveryMode, (data >> _DATA_DM_SHIFT) & 0x7, "MSI delivery mode"),
        dest_mode=DestinationMode.LOGICAL if address & _ADDR_DM_BIT else DestinationMode.PHYSICAL,
        redirection_hint=bool(address & _ADDR_RH_BIT),
        trigger=TriggerMode.LEVEL if data & _DATA_TRIGGER_BIT else TriggerMode.EDGE,
        level_assert=bool(data & _DATA_LEVEL_ASSERT_BIT),
    )


@dataclass(frozen=True)
class MsixEntry:
    """One MSI-X table entry as seen from outside, plus its PBA bit."""

    address: int
    data: int
    masked: bool
    pending: bool


class MsixTable:
    """A device's MSI-X table and Pending Bit Array.

    Entries start masked and unprogrammed (address 0, data 0), as after reset. An entry must be
    programmed with a valid message before it can be unmasked, so an unmasked entry always has
    something to send.
    """

    def __init__(self, n_vectors: int) -> None:
        self._n = check_int(n_vectors, 1, MSIX_MAX_VECTORS, "MSI-X table size")
        self._address = [0] * self._n
        self._data = [0] * self._n
        self._messages: list[MsiMessage | None] = [None] * self._n
        self._masked = [True] * self._n
        self._pba = 0
        self._function_masked = False

    @property
    def n_vectors(self) -> int:
        return self._n

    def _check_entry(self, entry: object) -> int:
        if type(entry) is int and 0 <= entry < self._n:  # the common case, decided in one test
            return entry
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise ValueError(f"MSI-X entry must be an integer, got {entry!r}")
        if not 0 <= entry < self._n:
            raise ValueError(f"MSI-X entry {entry} out of range 0..{self._n - 1}")
        return entry

    def program(self, entry: int, address: int, data: int) -> MsiMessage:
        """Write an entry's address and data; invalid messages are refused before storing."""
        entry = self._check_entry(entry)
        message = decode(address, data)
        self._address[entry] = address
        self._data[entry] = data
        self._messages[entry] = message
        return message

    def message(self, entry: int) -> MsiMessage | None:
        """The decoded message of an entry, or None if never programmed."""
        return self._messages[self._check_entry(entry)]

    def read_entry(self, entry: int) -> MsixEntry:
        entry = self._check_entry(entry)
        return MsixEntry(
            address=self._address[entry],
            data=self._data[entry],
            masked=self._masked[entry],
            pending=bool(self._pba >> entry & 1),
        )

    def _blocked(self, entry: int) -> bool:
        return self._masked[entry] or self._function_masked

    def fire(self, entry: int) -> MsiMessage | None:
        """The device raises `entry`: the message to send, or None if masked (then the
        pending bit is set; repeated fires while masked coalesce into that one bit)."""
        entry = self._check_entry(entry)
        if self._blocked(entry):
            self._pba |= 1 << entry
            return None
        message = self._messages[entry]
        assert message is not None  # unmask() refuses unprogrammed entries
        return message

    def mask(self, entry: int) -> None:
        self._masked[self._check_entry(entry)] = True

    def unmask(self, entry: int) -> MsiMessage | None:
        """Clear the vector's mask bit; a pending message is sent now (and its bit cleared)
        unless the function mask still holds it back."""
        entry = self._check_entry(entry)
        message = self._messages[entry]
        if message is None:
            raise ValueError(f"MSI-X entry {entry} has no valid message programmed; program it before unmasking")
        self._masked[entry] = False
        if self._function_masked or not self._pba >> entry & 1:
            return None
        self._pba &= ~(1 << entry)
        return message

    def masked(self, entry: int) -> bool:
        """The vector's own mask bit (the function mask is `function_masked`)."""
        return self._masked[self._check_entry(entry)]

    def pending(self, entry: int) -> bool:
        return bool(self._pba >> self._check_entry(entry) & 1)

    @property
    def pba(self) -> int:
        """The Pending Bit Array as an integer, bit n = entry n."""
        return self._pba

    @property
    def function_masked(self) -> bool:
        return self._function_masked

    def mask_function(self) -> None:
        """Set the function mask: every entry behaves as masked, its own bit untouched."""
        self._function_masked = True

    def unmask_function(self) -> list[tuple[int, MsiMessage]]:
        """Clear the function mask; pending entries whose own mask is clear are sent, in
        entry order, and their pending bits cleared."""
        self._function_masked = False
        sent: list[tuple[int, MsiMessage]] = []
        for entry in range(self._n):
            if self._pba >> entry & 1 and not self._masked[entry]:
                message = self._messages[entry]
                assert message is not None
                self._pba &= ~(1 << entry)
                sent.append((entry, message))
        return sent
