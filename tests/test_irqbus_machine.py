"""One guest's interrupt hardware at irqbus: pins through the i8259s and the IOAPIC, shared
lines, the device status latch and its generations, MSI-X masking, refusals that change nothing."""

from __future__ import annotations

import pytest

from irqbus.machine import DeviceKind, GuestMachine, Source
from wire.errors import ErrorCode, WireError
from wire.operations import ChipCommand

T = pytest.mark.timeout(5)


def cmd(kind: str, pin: int | None = None, device: str | None = None) -> ChipCommand:
    return ChipCommand(kind, pin, device)


def level_flow(pin: int) -> list[ChipCommand]:
    """What genirq's handle_level_irq sends for one interrupt: mask, ack, (handlers), unmask."""
    return [cmd("mask", pin), cmd("ack", pin), cmd("unmask", pin)]


@pytest.fixture
def vm() -> GuestMachine:
    return GuestMachine("vm1", 1, "client-1", now=0.0)


def up_pin(vm: GuestMachine, pin: int, trigger: str, vector: int | None = None) -> None:
    assert vm.program_pin(pin, trigger, vector) == []
    assert vm.chip([cmd("unmask", pin)], []) == []


@T
def test_reset_state_masks_every_line_but_the_cascade(vm):
    assert vm.pics.snapshot().imr == 0xFFFB
    assert all(vm.ioapic.read_entry(p).masked for p in range(16, 24))


@T
def test_edge_pulse_is_delivered_once_with_its_status_and_the_vector_of_its_pin(vm):
    up_pin(vm, 5, "edge")
    nic = vm.add_device("nic0", DeviceKind.PIN, 5, level=False)
    done = vm.raise_device(nic)
    (d,) = done.deliveries
    assert (d.vector, d.source, d.pin, d.status) == (0x25, Source.PIC, 5, {"nic0": 1})
    assert vm.pics.in_service(5) and not vm.lines.level(5)
    assert d.event_args(7) == {"vector": 0x25, "chip": "pic", "pin": 5, "status": {"nic0": 1}, "epoch": 7}


@T
def test_a_second_edge_waits_for_the_eoi_then_is_delivered(vm):
    up_pin(vm, 5, "edge")
    nic = vm.add_device("nic0", DeviceKind.PIN, 5)
    vm.raise_device(nic)
    second = vm.raise_device(nic)
    assert second.deliveries == [] and second.merged == 0  # the guest saw gen 1, not gen 2
    # the guest's handler read gen 1 and clears it; the stale clear leaves the latch set
    (d,) = vm.chip([cmd("ack", 5)], [(nic, 1)])
    assert d.status == {"nic0": 2}
    assert vm.chip([cmd("ack", 5)], [(nic, 2)]) == []
    assert not nic.status


@T
def test_raises_before_the_guest_looks_merge(vm):
    nic = vm.add_device("nic0", DeviceKind.PIN, 5)  # line still masked: nothing is delivered
    assert vm.raise_device(nic).merged == 0
    assert vm.raise_device(nic, count=3).merged == 3
    assert nic.merged == 3 and nic.gen == 4
    up_pin_ops = vm.program_pin(5, "edge", None)
    assert up_pin_ops == []
    (d,) = vm.chip([cmd("unmask", 5)], [])  # the 8259 latched the edge while masked
    assert d.status == {"nic0": 4}


@T
def test_level_line_follows_the_latch_and_is_redelivered_until_cleared(vm):
    up_pin(vm, 9, "level")
    disk = vm.add_device("disk0", DeviceKind.PIN, 9, level=True)
    (d,) = vm.raise_device(disk).deliveries
    assert d.pin == 9 and d.vector == 0x29 and vm.lines.level(9)
    # nobody cleared the device: after mask, ack, unmask the still-high line comes again
    (again,) = vm.chip(level_flow(9), [])
    assert again.status == {"disk0": 1}
    # the driver clears it: the line drops, nothing more
    assert vm.chip(level_flow(9), [(disk, 1)]) == []
    assert not vm.lines.level(9) and not disk.asserted and not disk.status


@T
def test_shared_pin_is_the_or_of_its_devices_and_the_event_names_both(vm):
    up_pin(vm, 11, "level")
    a = vm.add_device("nic0", DeviceKind.PIN, 11, level=True)
    b = vm.add_device("disk0", DeviceKind.PIN, 11, level=True)
    (d,) = vm.raise_device(a).deliveries
    assert vm.raise_device(b).deliveries == []  # in service: the 8259 holds it
    (d,) = vm.chip(level_flow(11), [(a, 1)])  # nic0 serviced; disk0 still holds the line
    assert d.status == {"disk0": 1}
    assert vm.lines.level(11) and vm.lines.sources(11) == frozenset({b.source})
    vm.lower_device(b)
    assert not vm.lines.level(11)


@T
def test_ioapic_level_waits_for_eoi_and_is_redelivered_while_asserted(vm):
    up_pin(vm, 19, "level", 0x41)
    dev = vm.add_device("ide", DeviceKind.PIN, 19, level=True)
    (d,) = vm.raise_device(dev).deliveries
    assert (d.vector, d.source, d.pin) == (0x41, Source.IOAPIC, 19)
    assert vm.ioapic.read_entry(19).remote_irr
    other = vm.add_device("sata", DeviceKind.PIN, 19, level=True)
    assert vm.raise_device(other).deliveries == []  # coalesced behind remote IRR
    (again,) = vm.chip([cmd("eoi", 19)], [(dev, 1)])  # ide cleared; sata still asserts
    assert again.status == {"sata": 1}
    assert vm.chip([cmd("eoi", 19)], [(other, 1)]) == []
    assert not vm.ioapic.read_entry(19).remote_irr


@T
def test_ioapic_masked_edge_is_lost_but_masked_level_is_delivered_on_unmask(vm):
    vm.program_pin(20, "edge", 0x50)
    vm.program_pin(21, "level", 0x51)
    edge = vm.add_device("e", DeviceKind.PIN, 20)
    level = vm.add_device("l", DeviceKind.PIN, 21, level=True)
    assert vm.raise_device(edge).deliveries == []
    assert vm.raise_device(level).deliveries == []
    assert vm.chip([cmd("unmask", 20)], []) == []
    (d,) = vm.chip([cmd("unmask", 21)], [])
    assert d.vector == 0x51


@T
def test_ioapic_edge_delivers_every_edge_without_eoi(vm):
    up_pin(vm, 20, "edge", 0x50)
    dev = vm.add_device("rogue", DeviceKind.PIN, 20)
    done = vm.pulse_device(dev, count=50)
    assert len(done.deliveries) == 50 and done.merged == 0


@T
def test_msi_pending_while_masked_is_delivered_once_on_unmask(vm):
    net = vm.add_device("net1", DeviceKind.MSI)
    assert vm.raise_device(net, count=3).deliveries == []  # reset state: masked, pending
    assert net.msix.pending(0)
    vm.program_msi(net, 0xFEE00000, 0x61)
    (d,) = vm.chip([cmd("unmask", device="net1")], [])
    assert (d.vector, d.source, d.device, d.status) == (0x61, Source.MSI, "net1", {"net1": 3})
    assert not net.msix.pending(0)
    (d,) = vm.raise_device(net).deliveries
    assert d.event_args(7) == {"vector": 0x61, "chip": "msi", "device": "net1", "status": {"net1": 4}, "epoch": 7}
    vm.chip([cmd("mask", device="net1")], [(net, 4)])
    assert vm.raise_device(net).deliveries == []
    assert len(vm.chip([cmd("unmask", device="net1")], [])) == 1


@T
def test_raw_msi_write_reaches_the_vector_and_names_the_devices_behind_it(vm):
    net = vm.add_device("net1", DeviceKind.MSI)
    vm.program_msi(net, 0xFEE00000, 0x61)
    vm.chip([cmd("unmask", device="net1")], [])
    (d,) = vm.write_msi(0xFEE00000, 0x61, None)
    assert d.status == {} and d.vector == 0x61 and d.device is None
    rogue = vm.add_device("rogue", DeviceKind.MSI)
    (d,) = vm.write_msi(0xFEE00000, 0x61, rogue)
    assert d.status == {"rogue": 1}


@T
@pytest.mark.parametrize(
    "address, data, why",
    [
        (0xFED00000, 0x41, "outside the interrupt window"),
        (0xFEE00000, 0x05, "reserved for exceptions"),
        (0xFEE00000, 0x0441, "NMI"),  # delivery mode 4: not routed
        (0xFEE00001, 0x41, "reserved bits"),
    ],
)
def test_bad_msi_messages_are_refused(vm, address, data, why):
    with pytest.raises(WireError) as err:
        vm.write_msi(address, data, None)
    assert err.value.code is ErrorCode.EINVAL and why in err.value.message


@T
def test_programming_refusals_change_nothing(vm):
    before = vm.snapshot(0.0)
    for pin, trigger, vector in [(1, "level", None), (5, "edge", 0x40), (19, "level", None)]:
        with pytest.raises(WireError):
            vm.program_pin(pin, trigger, vector)
    net = vm.add_device("net1", DeviceKind.MSI)
    nic = vm.add_device("nic0", DeviceKind.PIN, 5)
    after_devices = vm.snapshot(0.0)
    with pytest.raises(WireError, match="never raised generation 7"):
        vm.chip([cmd("unmask", 5)], [(nic, 7)])
    with pytest.raises(WireError, match="not programmed"):
        vm.chip([cmd("unmask", 5), cmd("unmask", device="net1")], [])
    with pytest.raises(WireError, match="no vector"):
        vm.chip([cmd("unmask", 5), cmd("unmask", 20)], [])
    with pytest.raises(WireError, match="chip operations name its pin"):
        vm.chip([cmd("mask", device="nic0")], [])
    with pytest.raises(WireError, match="not an MSI device"):
        vm.program_msi(nic, 0xFEE00000, 0x41)
    assert vm.snapshot(0.0) == after_devices
    assert before["pic"] == after_devices["pic"] and net.msix.masked(0)


@T
def test_removing_a_device_lowers_what_it_drove(vm):
    up_pin(vm, 10, "level")
    dev = vm.add_device("d", DeviceKind.PIN, 10, level=True)
    vm.raise_device(dev)
    assert vm.lines.level(10)
    vm.remove_device(dev)
    assert not vm.lines.level(10) and "d" not in vm.devices
    again = vm.add_device("d2", DeviceKind.PIN, 10, level=True)
    assert again.source == dev.source  # the source id was given back


@T
def test_pin_devices_are_limited_to_the_source_bitmap(vm):
    for i in range(64):
        vm.add_device(f"d{i}", DeviceKind.PIN, 5)
    with pytest.raises(WireError) as err:
        vm.add_device("one-too-many", DeviceKind.PIN, 5)
    assert err.value.code is ErrorCode.ENOSPC


@T
def test_snapshot_shows_registers_pins_and_devices(vm):
    up_pin(vm, 5, "level")
    nic = vm.add_device("nic0", DeviceKind.PIN, 5, level=True)
    vm.raise_device(nic)
    snap = vm.snapshot(2.5)
    assert snap["pic"]["isr"] == 1 << 5 and snap["pic"]["elcr"] == 1 << 5
    assert snap["pins"] == [
        {"pin": 5, "controller": "i8259", "level": True, "devices": ["nic0"], "asserting": ["nic0"], "masked": False}
    ]
    (row,) = snap["devices"]
    assert row["status"] and row["gen"] == 1 and row["trigger"] == "level"
    assert snap["delivered"] == 1 and snap["last_seen_s"] == 2.5
