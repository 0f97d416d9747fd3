"""MSI address/data encoding and validation; MSI-X per-vector mask, PBA and function mask."""

from __future__ import annotations

import random

import pytest

from irqbus.ioapic import DeliveryMode, DestinationMode, TriggerMode
from irqbus.msi import MsiMessage, MsixEntry, MsixTable, decode, encode

# -- MSI format -----------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_encode_known_values() -> None:
    assert encode(MsiMessage(vector=0x41)) == (0xFEE00000, 0x4041)
    msg = MsiMessage(
        vector=0xEF,
        dest_id=0x12,
        delivery_mode=DeliveryMode.LOWEST_PRIORITY,
        dest_mode=DestinationMode.LOGICAL,
        redirection_hint=True,
        trigger=TriggerMode.LEVEL,
        level_assert=True,
    )
    assert encode(msg) == (0xFEE1200C, 0xC1EF)
    assert (msg.address, msg.data) == encode(msg)


@pytest.mark.timeout(5)
def test_decode_known_values() -> None:
    msg = decode(0xFEE03000, 0x0031)
    assert msg == MsiMessage(vector=0x31, dest_id=3, level_assert=False)
    assert msg.delivery_mode is DeliveryMode.FIXED
    assert msg.trigger is TriggerMode.EDGE
    nmi = decode(0xFEE00000, 0x0400)
    assert nmi.delivery_mode is DeliveryMode.NMI and nmi.vector == 0  # vector ignored for NMI


@pytest.mark.timeout(5)
def test_round_trips() -> None:
    rng = random.Random(8259)
    modes = list(DeliveryMode)
    for _ in range(500):
        mode = rng.choice(modes)
        lo = 16 if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY) else 0
        msg = MsiMessage(
            vector=rng.randint(lo, 255),
            dest_id=rng.randint(0, 255),
            delivery_mode=mode,
            dest_mode=rng.choice(list(DestinationMode)),
            redirection_hint=rng.random() < 0.5,
            trigger=rng.choice(list(TriggerMode)),
            level_assert=rng.random() < 0.5,
        )
        address, data = encode(msg)
        assert decode(address, data) == msg
        assert encode(decode(address, data)) == (address, data)


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("address", "data", "match"),
    [
        (0xFED00000, 0x41, "outside the interrupt window"),
        (0xFEF00000, 0x41, "outside the interrupt window"),
        (0x00000000, 0x41, "outside the interrupt window"),
        (0x1_FEE00000, 0x41, "outside the interrupt window"),
        (0xFEE00010, 0x41, "reserved bits"),
        (0xFEE00001, 0x41, "reserved bits"),
        (0xFEE00000, 0x0F, "reserved for exceptions"),
        (0xFEE00000, 0x00, "reserved for exceptions"),
        (0xFEE00000, 0x341, "delivery mode"),
        (0xFEE00000, 0x641, "delivery mode"),
        (0xFEE00000, 0x0841, "reserved bits"),
        (0xFEE00000, 0x1_0041, "reserved bits"),
        (0xFEE00000, 1 << 32, "32-bit"),
        (-1, 0x41, "64-bit"),
        ("0xFEE00000", 0x41, "64-bit"),
        (0xFEE00000, 65.0, "32-bit"),
        (True, 0x41, "64-bit"),
    ],
)
def test_decode_rejects_bad_input(address: object, data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode(address, data)  # type: ignore[arg-type]


@pytest.mark.timeout(5)
def test_message_validates_fields() -> None:
    with pytest.raises(ValueError, match="destination"):
        MsiMessage(vector=0x41, dest_id=256)
    with pytest.raises(ValueError, match="vector"):
        MsiMessage(vector=256)
    with pytest.raises(ValueError, match="reserved for exceptions"):
        MsiMessage(vector=2, delivery_mode=DeliveryMode.LOWEST_PRIORITY)
    with pytest.raises(ValueError, match="delivery mode"):
        MsiMessage(vector=0x41, delivery_mode=6)
    assert MsiMessage(vector=2, delivery_mode=DeliveryMode.NMI).vector == 2


# -- MSI-X table ----------------------------------------------------------------------------


def table(n: int = 4) -> MsixTable:
    t = MsixTable(n)
    for entry in range(n):
        t.program(entry, 0xFEE00000 | entry << 12, 0x4050 + entry)
    return t


@pytest.mark.timeout(5)
def test_msix_entries_start_masked_and_unprogrammed() -> None:
    t = MsixTable(3)
    assert t.n_vectors == 3
    assert t.read_entry(0) == MsixEntry(address=0, data=0, masked=True, pending=False)
    assert t.message(0) is None
    assert t.fire(0) is None and t.pending(0)  # masked: remembered
    with pytest.raises(ValueError, match="program"):
        t.unmask(0)
    assert t.masked(0) and t.pending(0)  # refused unmask changed nothing


@pytest.mark.timeout(5)
def test_msix_fire_unmasked_delivers_every_time() -> None:
    t = table()
    assert t.unmask(1) is None  # nothing pending
    expected = MsiMessage(vector=0x51, dest_id=1)
    assert t.fire(1) == expected
    assert t.fire(1) == expected
    assert t.pba == 0


@pytest.mark.timeout(5)
def test_msix_masked_fire_sets_pending_and_unmask_delivers_once() -> None:
    t = table()
    assert t.fire(2) is None
    assert t.fire(2) is None  # coalesced into the same pending bit
    assert t.pending(2) and t.pba == 1 << 2
    assert t.read_entry(2).pending
    assert t.unmask(2) == MsiMessage(vector=0x52, dest_id=2)
    assert not t.pending(2)
    t.mask(2)
    assert t.unmask(2) is None  # nothing left pending


@pytest.mark.timeout(5)
def test_msix_pending_uses_entry_as_programmed_at_unmask() -> None:
    t = table()
    t.fire(0)
    t.program(0, 0xFEE07000, 0x60)
    assert t.unmask(0) == MsiMessage(vector=0x60, dest_id=7, level_assert=False)


@pytest.mark.timeout(5)
def test_msix_mask_after_unmask_holds_new_fires() -> None:
    t = table()
    t.unmask(3)
    t.mask(3)
    assert t.masked(3)
    assert t.fire(3) is None and t.pending(3)


@pytest.mark.timeout(5)
def test_msix_function_mask() -> None:
    t = table()
    for entry in (0, 1, 2):
        t.unmask(entry)
    t.mask_function()
    assert t.function_masked
    assert t.fire(0) is None and t.fire(2) is None and t.fire(3) is None
    assert t.pba == 0b1101
    assert not t.masked(0)  # per-vector bits untouched
    assert t.unmask(1) is None  # function mask still holds everything
    assert t.fire(1) is None
    sent = t.unmask_function()
    assert [entry for entry, _ in sent] == [0, 1, 2]
    assert sent[0][1] == MsiMessage(vector=0x50, dest_id=0)
    assert t.pba == 1 << 3  # entry 3 is still individually masked
    assert t.unmask(3) == MsiMessage(vector=0x53, dest_id=3)
    assert t.unmask_function() == []


@pytest.mark.timeout(5)
def test_msix_program_validates_before_storing() -> None:
    t = table()
    before = t.read_entry(1)
    with pytest.raises(ValueError, match="interrupt window"):
        t.program(1, 0xFEC00000, 0x41)
    with pytest.raises(ValueError, match="exceptions"):
        t.program(1, 0xFEE00000, 0x02)
    assert t.read_entry(1) == before


@pytest.mark.timeout(5)
def test_msix_bad_entries_and_sizes() -> None:
    t = table(4)
    for call in (lambda: t.fire(4), lambda: t.fire(-1), lambda: t.mask("1"), lambda: t.pending(True)):
        with pytest.raises(ValueError, match="MSI-X entry"):
            call()  # type: ignore[no-untyped-call]
    for size in (0, 2049, -3):
        with pytest.raises(ValueError, match="table size"):
            MsixTable(size)
    assert MsixTable(2048).n_vectors == 2048


@pytest.mark.timeout(5)
def test_lowest_priority_with_valid_vector_decodes() -> None:
    assert decode(0xFEE00000, 0x141).delivery_mode is DeliveryMode.LOWEST_PRIORITY
