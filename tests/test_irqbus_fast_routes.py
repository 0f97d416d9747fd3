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
