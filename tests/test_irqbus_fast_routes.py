"""The fast routes of irqbus.machine (an edge or MSI delivered in a few steps when the line's
state allows it) against the full model: the same event sequence, from the wire's operations
and the controllers' own registers, run on a machine with the fast routes and one without,
must deliver the same interrupts to the same places in the same order and leave every piece
of state -- the visible snapshot and the controllers' inner wires -- the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from irqbus.ioapic import Polarity
from irqbus.machine import DeviceKind, GuestMachine
from wire.operations import ChipCommand

NAMES = ("d0", "d1", "d2", "d3", "msi")
PINS = (2, 3, 5, 9, 10, 20, 21)  # few: devices meet on them; IRQ2 is the cascade
VECTORS = (0x31, 0x32, 0x40)

name = st.sampled_from(NAMES)
pin = st.sampled_from(PINS)
count = st.integers(1, 3)

steps = st.one_of(
    st.tuples(st.just("add_pin"), name, pin, st.booleans()),
    st.tuples(st.just("add_msi"), name),
    st.tuples(st.just("remove"), name),
    st.tuples(st.just("raise"), name, count),
    st.tuples(st.just("raise"), name, st.just(1)),  # the fast routes' own case, more often
    st.tuples(st.just("pulse"), name, count),
    st.tuples(st.just("lower"), name),
    st.tuples(st.just("program_pin"), pin, st.sampled_from(("edge", "level")), st.sampled_from((*VECTORS, None))),
    st.tuples(st.just("program_msi"), name, st.sampled_from(VECTORS)),
    st.tuples(st.just("write_msi"), st.sampled_from(VECTORS), st.sampled_from((*NAMES, None))),
    st.tuples(
        st.just("chip"),
        st.lists(st.tuples(st.sampled_from(("mask", "unmask", "ack", "eoi")), st.one_of(pin, name)), max_size=4),
        st.lists(st.tuples(name, st.integers(0, 6)), max_size=2),
    ),
    # a guest's ack of an i8259 interrupt, as Linux's flow sends it (CascadedPICs.handled), more often
    st.tuples(st.just("handled"), st.sampled_from((3, 5, 9, 10)), st.lists(st.tuples(name, st.integers(0, 6)), max_size=1)),
    st.tuples(st.just("unmask_all")),
    # what the wire cannot reach but the controllers model: priority rotation, polarity
    st.tuples(st.just("rotate"), st.booleans(), st.integers(0, 7)),
    st.tuples(st.just("polarity"), st.sampled_from((20, 21)), st.booleans()),
)
# a machine as a guest brings it up: lines programmed and unmasked, devices plugged in
setups = st.lists(st.tuples(pin, st.booleans()), min_size=1, max_size=4)


def brought_up(setup: list[tuple[int, bool]], fast: bool) -> GuestMachine:
    m = GuestMachine("vm", 1, "c", 0.0)
    m.fast_routes = fast
    for i, (line, level) in enumerate(setup):
        if line != 2:
            m.program_pin(line, "level" if level else "edge", VECTORS[i % 3] if line >= 16 else None)
            m.chip([ChipCommand("unmask", line, None)], [])
        m.add_device(NAMES[i], DeviceKind.PIN, line, level)
    m.add_device("msi", DeviceKind.MSI)
    m.program_msi(m.devices["msi"], 0xFEE00000, 0x31)
    m.chip([ChipCommand("unmask", None, "msi")], [])
    return m


def apply(m: GuestMachine, step: tuple[Any, ...]) -> Any:
    kind, *args = step
    devices = m.devices
    if kind == "add_pin":
        if args[0] not in devices:
            m.add_device(args[0], DeviceKind.PIN, args[1], args[2])
        return None
    if kind == "add_msi":
        if args[0] not in devices:
            m.add_device(args[0], DeviceKind.MSI)
        return None
    if kind == "unmask_all":
        return m.chip([ChipCommand("unmask", p, None) for p in PINS if p < 16 or m.ioapic.read_entry(p).vector >= 0x20], [])
    if kind == "rotate":
        (m.pics.master if args[0] else m.pics.slave).set_lowest_priority(args[1])
        return None
    if kind == "polarity":
        return m.ioapic.write_entry(args[0], polarity=Polarity.ACTIVE_LOW if args[1] else Polarity.ACTIVE_HIGH)
    if kind == "program_pin":
        return m.program_pin(args[0], args[1], args[2] if args[0] >= 16 else None)
    if kind == "write_msi":
        return m.write_msi(0xFEE00000, args[0], devices.get(args[1]) if args[1] else None)
    if kind == "handled":
        clears = [(devices[n], gen) for n, gen in args[1] if n in devices]
        return m.chip([ChipCommand(k, args[0], None) for k in ("mask", "ack", "unmask")], clears)
    if kind == "chip":
        commands = [ChipCommand(k, None, t) if isinstance(t, str) else ChipCommand(k, t, None) for k, t in args[0]]
        commands = [c for c in commands if c.device is None or c.device in devices]
        clears = [(devices[n], gen) for n, gen in args[1] if n in devices]
        return m.chip(commands, clears)
    device = devices.get(args[0])
    if device is None:
        return None
    if kind == "remove":
        return m.remove_device(device)
    if kind == "raise":
        done = m.raise_device(device, args[1])
        return done.deliveries, done.merged
    if kind == "pulse":
        done = m.pulse_device(device, args[1])
        return done.deliveries, done.merged
    if kind == "lower":
        return m.lower_device(device)
    assert kind == "program_msi"
    return m.program_msi(device, 0xFEE00000, args[1])


def outcome(m: GuestMachine, step: tuple[Any, ...]) -> Any:
    try:
        return "ok", apply(m, step)
    except Exception as err:  # the same refusal, in the same words, from both
        return type(err).__name__, str(err)


def observed(m: GuestMachine) -> Any:
    """Everything a later event or a `show` could tell apart, the inner wires included."""
    pics = m.pics
    return (
        m.snapshot(0.0),
        [(d.name, d.seen_gen, d.merged, d.gen, d.status, d.asserted) for d in m.devices.values()],
        [(p._output, p._lines, p._irr, p._isr, p._priority_add) for p in (pics.master, pics.slave)],
        sorted(m.ioapic._awaiting_eoi),
        list(m.ioapic._lines),
        list(m._level),
        m.lines.levels,
    )


@pytest.mark.timeout(60)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setups, st.lists(steps, min_size=1, max_size=40))
def test_fast_routes_deliver_what_the_full_model_does(setup, sequence):
    fast, full = brought_up(setup, True), brought_up(setup, False)
    for step in sequence:
        assert outcome(fast, step) == outcome(full, step), step
        assert observed(fast) == observed(full), step


# The i8259 alone, where its acks meet requests latched meanwhile (the mixed sequences above
# rarely get there): devices on master and slave pins raised, pulsed and lowered, the guest's
# acks, other chip operations and a rotated priority.
pic_pin = st.sampled_from((3, 5, 9, 10))
pic_steps = st.one_of(
    st.tuples(st.just("raise"), name, count),
    st.tuples(st.just("pulse"), name, count),
    st.tuples(st.just("lower"), name),
    st.tuples(st.just("handled"), pic_pin, st.lists(st.tuples(name, st.integers(0, 6)), max_size=1)),
    st.tuples(st.just("chip"), st.lists(st.tuples(st.sampled_from(("mask", "unmask", "ack", "eoi")), pic_pin), max_size=3), st.just([])),
    st.tuples(st.just("rotate"), st.booleans(), st.integers(0, 7)),
)


@pytest.mark.timeout(60)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(pic_pin, st.booleans()), min_size=1, max_size=4), st.lists(pic_steps, min_size=10, max_size=60))
def test_i8259_acks_do_what_the_full_model_does(setup, sequence):
    fast, full = brought_up(setup, True), brought_up(setup, False)
    for step in sequence:
        assert outcome(fast, step) == outcome(full, step), step
        assert observed(fast) == observed(full), step


@pytest.mark.timeout(5)
@pytest.mark.parametrize("irq, cascade", [(5, 0), (10, 1 << 2)])
def test_an_i8259_ack_with_nothing_latched_takes_one_step(irq, cascade):
    """The equivalence above must not hold by never taking the route either: the ack of an
    interrupt with nothing else requested clears the IRQ's ISR bit (and a slave IRQ's cascade
    bit on the master) without a controller operation; one that finds a request latched
    meanwhile goes the whole way and delivers it (8259A: the EOI lets the pending request
    through; the pin was unmasked again)."""
    m = GuestMachine("vm", 1, "c", 0.0)
    m.program_pin(irq, "edge", None)
    m.chip([ChipCommand("unmask", irq, None)], [])
    device = m.add_device("dev", DeviceKind.PIN, irq, False)
    ack = [ChipCommand(k, irq, None) for k in ("mask", "ack", "unmask")]
    assert [d.pin for d in m.raise_device(device).deliveries] == [irq]
    assert m.pics.snapshot().isr == 1 << irq | cascade

    def untouched(*args: Any) -> None:
        raise AssertionError("the full model ran a controller operation")

    m.pics.mask = m.pics.eoi = m.pics.unmask = untouched  # type: ignore[method-assign]
    try:
        assert m.chip(ack, [(device, device.gen)]) == []
    finally:
        del m.pics.mask, m.pics.eoi, m.pics.unmask
    assert (m.pics.snapshot().isr, m.pics.snapshot().imr & (1 << irq | cascade)) == (0, 0)
    m.raise_device(device)
    assert m.raise_device(device).deliveries == []  # in service: latched in IRR
    assert [d.pin for d in m.chip(ack, [])] == [irq]
    assert m.pics.snapshot().isr == 1 << irq | cascade


@pytest.mark.timeout(5)
def test_an_idle_edge_pin_takes_the_fast_route():
    """The equivalence above must not hold by never taking the route: an unmasked idle pin
    delivers without driving a line through the controllers, and leaves the ISR bits the
    INTA cycle sets (a slave IRQ: its own and the master's cascade, IRQ2)."""
    m = GuestMachine("vm", 1, "c", 0.0)

    def untouched(*args: Any) -> None:
        raise AssertionError("the full model drove a line")

    for p, vector, isr in ((5, None, 1 << 5), (10, None, 1 << 5 | 1 << 2 | 1 << 10), (20, 0x31, 1 << 5 | 1 << 2 | 1 << 10)):
        m.program_pin(p, "edge", vector)
        m.chip([ChipCommand("unmask", p, None)], [])
        device = m.add_device(f"dev{p}", DeviceKind.PIN, p, False)
        m.pics.set_line = m.ioapic.set_line = untouched  # type: ignore[method-assign]
        try:
            assert [d.pin for d in m.raise_device(device).deliveries] == [p]
        finally:
            del m.pics.set_line, m.ioapic.set_line
        assert m.pics.snapshot().isr == isr


@pytest.mark.timeout(5)
@pytest.mark.parametrize("fast", [True, False])
def test_an_eoi_clears_every_level_entry_of_its_vector(fast):
    """The local APIC broadcasts an EOI by vector, and the IOAPIC clears Remote IRR of every
    level entry with that vector (Intel 82093AA datasheet, 3.2.4, IOREDTBL bit 14, Remote IRR:
    reset "when an EOI message with a matching interrupt vector is received"; KVM's
    arch/x86/kvm/ioapic.c __kvm_ioapic_update_eoi scans every pin for the vector). Two level
    pins sharing a vector, both awaiting their EOI: one EOI frees both, so each line's next
    rise is sent. The EOI fast route (one entry awaiting) must not take this case."""
    m = GuestMachine("vm", 1, "c", 0.0)
    m.fast_routes = fast
    for p in (20, 21):
        m.program_pin(p, "level", 0x31)
        m.chip([ChipCommand("unmask", p, None)], [])
    a, b = m.add_device("a", DeviceKind.PIN, 20, True), m.add_device("b", DeviceKind.PIN, 21, True)
    assert [d.pin for d in m.raise_device(a).deliveries] == [20]
    assert [d.pin for d in m.raise_device(b).deliveries] == [21]
    assert sorted(m.ioapic._awaiting_eoi) == [20, 21]
    assert m.chip([ChipCommand("eoi", 20, None)], [(a, a.gen), (b, b.gen)]) == []  # both lines low again, both freed
    assert sorted(m.ioapic._awaiting_eoi) == []
    assert [d.pin for d in m.raise_device(a).deliveries + m.raise_device(b).deliveries] == [20, 21]


# -- the fast lane of irqbus.dispatch: the event bytes and the cached routes -----------------------

from irqbus.dispatch import EventFrames, IrqBus  # noqa: E402
from irqbus.machine import Delivery, Source  # noqa: E402
from wire import envelope  # noqa: E402

deliveries = st.builds(
    Delivery,
    st.integers(0, 255),
    st.sampled_from(list(Source)),
    st.one_of(st.none(), st.integers(0, 23)),
    st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    st.dictionaries(st.text(min_size=1, max_size=40), st.integers(0, (1 << 63) - 1), max_size=4),
)


@pytest.mark.timeout(30)
@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.lists(deliveries, min_size=1, max_size=6))
def test_event_frames_are_the_bytes_envelope_encode_makes(epoch, ds):
    frames = EventFrames(epoch)
    for d in ds + ds:  # the second time from the cached parts
        assert frames.encode(d) == envelope.encode(envelope.event("irq", d.event_args(epoch)))


def _call(bus: IrqBus, client: str, seq: int, op: str, **args: Any) -> dict[str, Any]:
    out = bus.handle(envelope.encode(envelope.request(op, seq, client, args)), 1.0)
    assert out.reply is not None
    return envelope.decode_incoming(out.reply)


@pytest.mark.timeout(5)
def test_a_cached_route_goes_with_the_device():
    """A raise that found its device is served from the route after; unplugging the device
    (or anything else that is not an interrupt) forgets it, so the next raise is refused
    as it would have been without the cache, and delivers nothing."""
    bus = IrqBus(epoch=1)
    _call(bus, "g", 1, "attach", name="vm", domid=1)
    _call(bus, "g", 2, "program_pin", pin=20, trigger="edge", vector=0x31)
    _call(bus, "g", 3, "chip", ops=[{"kind": "unmask", "pin": 20}])
    _call(bus, "tool", 1, "attach_device", guest="vm", device="nic", pin=20, trigger="edge")
    assert _call(bus, "dev", 1, "raise", guest="vm", device="nic")["result"]["delivered"] == 1
    assert bus._signal_routes  # the next one takes the fast lane
    out = bus.handle(envelope.encode(envelope.request("raise", 2, "dev", {"guest": "vm", "device": "nic"})), 1.0)
    assert [envelope.decode_incoming(s.frame)["args"]["status"] for s in out.sends] == [{"nic": 2}]
    _call(bus, "tool", 2, "detach_device", guest="vm", device="nic")
    out = bus.handle(envelope.encode(envelope.request("raise", 3, "dev", {"guest": "vm", "device": "nic"})), 1.0)
    assert envelope.decode_incoming(out.reply)["error"] == "ESRCH" and out.sends == []


# -- the fast lanes of irqbus.dispatch against the whole way: wire requests, byte for byte ---------

DEVICES = ("d0", "d1", "msi", "nope")
LANE_PINS = (1, 2, 4, 20, 21, 99)  # 2: the cascade, 99: no pin -- refused either way
chip_op = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(("mask", "unmask", "ack", "eoi", "bogus")), "pin": st.sampled_from(LANE_PINS)}),
    st.fixed_dictionaries({"kind": st.sampled_from(("mask", "unmask", "ack", "eoi")), "device": st.sampled_from(DEVICES)}),
)
chip_args = st.fixed_dictionaries(
    {},
    optional={
        "ops": st.lists(chip_op, max_size=4),
        "clear": st.lists(st.tuples(st.sampled_from(DEVICES), st.integers(0, 6)).map(list), max_size=2),
        "reply": st.sampled_from((False, True, 0)),
        "extra": st.just(1),
    },
)
lane_steps = st.one_of(
    st.tuples(st.just("chip"), chip_args),
    st.tuples(st.just("chip"), chip_args),  # the ack: the lane's own case, more often
    st.tuples(st.sampled_from(("raise", "pulse", "lower")), st.sampled_from(DEVICES)),
    st.tuples(st.just("msi"), st.sampled_from(DEVICES)),
    st.tuples(st.just("plug"), st.sampled_from(DEVICES), st.sampled_from((1, 4, 20, 21)), st.booleans()),
    st.tuples(st.just("detach_device"), st.sampled_from(DEVICES)),
    st.tuples(st.sampled_from(("attach", "detach"))),
    st.tuples(st.just("program_pin"), st.sampled_from((20, 21)), st.sampled_from(("edge", "level"))),
)


def _bus_brought_up(fast: bool) -> IrqBus:
    bus = IrqBus(epoch=1, started=0.0)
    bus.fast_lanes = fast
    for seq, (op, args) in enumerate([
        ("attach", {"name": "vm", "domid": 1}),
        ("program_pin", {"pin": 20, "trigger": "level", "vector": 0x31}),
        ("program_pin", {"pin": 21, "trigger": "edge", "vector": 0x32}),
        ("chip", {"ops": [{"kind": "unmask", "pin": p} for p in (1, 4, 20, 21)]}),
    ], 1):
        bus.handle(envelope.encode(envelope.request(op, seq, "g", args)), 1.0)
    for seq, (device, pin, level) in enumerate([("d0", 20, True), ("d1", 1, False)], 1):
        bus.handle(envelope.encode(envelope.request(
            "attach_device", seq, "tool", {"guest": "vm", "device": device, "pin": pin, "trigger": "level" if level else "edge"})), 1.0)
    bus.handle(envelope.encode(envelope.request("attach_device", 3, "tool", {"guest": "vm", "device": "msi", "msi": True})), 1.0)
    bus.handle(envelope.encode(envelope.request("program_msi", 5, "g", {"device": "msi", "address": 0xFEE00000, "data": 0x40})), 1.0)
    return bus


def _lane_request(step: tuple[Any, ...], seqs: dict[str, int]) -> tuple[str, bytes]:
    op = step[0]
    if op == "chip":
        client, args = "g", step[1]
    elif op in ("raise", "pulse", "lower", "msi", "detach_device"):
        client, args = ("tool" if op == "detach_device" else "dev"), {"guest": "vm", "device": step[1]}
    elif op == "plug":
        op, client = "attach_device", "tool"
        args = {"guest": "vm", "device": step[1], "pin": step[2], "trigger": "level" if step[3] else "edge"}
    elif op == "attach":
        client, args = "g", {"name": "vm", "domid": 1}
    elif op == "detach":
        client, args = "g", {}
    else:
        client, args = "g", {"pin": step[1], "trigger": step[2], "vector": 0x31 if step[1] == 20 else 0x32}
    seqs[client] = seqs.get(client, 10) + 1
    return client, envelope.encode(envelope.request(op, seqs[client], client, args))


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lane_steps, max_size=30))
def test_fast_lanes_answer_what_the_whole_way_does(sequence):
    """A bus with the fast lanes (a device's signal, a guest's chip ack) and one without run
    the same requests, each sent twice (the retry is answered from the record): the same
    reply bytes, the same events to the same clients, the same machines after."""
    fast, full = _bus_brought_up(True), _bus_brought_up(False)
    seqs: dict[str, int] = {}
    for step in sequence:
        _, frame = _lane_request(step, seqs)
        for _ in range(2):
            a, b = fast.handle(frame, 2.0), full.handle(frame, 2.0)
            assert (a.reply, a.reply_wanted, a.error) == (b.reply, b.reply_wanted, b.error), step
            assert [(s.client, s.frame) for s in a.sends] == [(s.client, s.frame) for s in b.sends], step
    assert [m.snapshot(3.0) for m in fast.router.guests.values()] == [m.snapshot(3.0) for m in full.router.guests.values()]
    assert fast.backlog.total == full.backlog.total


@pytest.mark.timeout(5)
def test_a_chip_ack_takes_the_fast_lane_until_the_session_could_change():
    """The second ack of a session goes the fast lane (no schema lookup); a detach clears it,
    and the ack after is refused as it would have been (ESRCH), with no events."""
    bus = _bus_brought_up(True)
    assert _call(bus, "g", 19, "chip", ops=[{"kind": "eoi", "pin": 20}])["ok"]  # the whole way: the session is known after
    whole_way = bus._served["chip"]
    bus._served["chip"] = (whole_way[0], None)  # the whole way would fail now: only the lane may serve
    frame = envelope.encode(envelope.request("chip", 20, "g", {"ops": [{"kind": "eoi", "pin": 20}], "reply": False}))
    out = bus.handle(frame, 2.0)
    assert out.error is None and out.reply_wanted is False
    bus._served["chip"] = whole_way
    _call(bus, "g", 21, "detach")
    out = bus.handle(envelope.encode(envelope.request("chip", 22, "g", {"ops": [{"kind": "eoi", "pin": 20}]})), 2.0)
    assert envelope.decode_incoming(out.reply)["error"] == "ESRCH" and out.sends == []
