"""irqbus SIGKILLed and started again on the same endpoint, with real processes: a guest with a
level NIC and an MSI device, each driven by an `irqbus device` process, and the hypervisor
sending virtual interrupts. After the restart every interrupt is handled again (before: the
drivers took every new generation for a stale one), the device processes ride out the outage
and plug themselves in again (before: they exited about 2 s after irqbus went away), and the
new instance shows the wiring its guests and devices declared again."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import msgpack
import pytest
import zmq

from tests.processes import secure, Host, Irqbus, Processes, wait_for
from tests.test_irqbus_e2e import wait_line_up

DEVICE_TIMERS = ("--timeout", "0.3", "--max-retry-delay", "0.2")


def rows(bus: Irqbus) -> dict[int, dict[str, Any]]:
    """The guest's lines 5 (nic0) and 24 (net1): interrupts counted, and handled by the driver."""
    table = bus.interrupts("vm1")
    return {irq: {"count": table[irq]["count"], "handled": table[irq]["actions"][0]["handled"]} for irq in (5, 24)}


def events(procs: Processes, name: str, event: str) -> int:
    return sum(1 for e in procs.log_events(name) if e.get("event") == event)


@pytest.mark.timeout(90)
def test_interrupts_are_handled_again_after_irqbus_is_killed_and_started_again(procs):
    bus = Irqbus(procs)
    host = Host(procs, memory="64m", extra=("--irqbus", bus.endpoint))
    host.guest("vm1", "--memory", "8m", "--maxmem", "16m", "--irqbus", bus.endpoint, "--device", "nic0:pin=5:level", "--device", "net1:msi")
    wait_line_up(bus, "vm1", pin=5)
    vector = next(d for d in wait_line_up(bus, "vm1", msi="net1")["devices"] if d["name"] == "net1")["msi"]["vector"]
    nic = bus.device("dev-nic0", "vm1", "nic0", "--pin", "5", "--level", "--rate", "20", *DEVICE_TIMERS)
    net = bus.device("dev-net1", "vm1", "net1", "--msi", "--rate", "40", *DEVICE_TIMERS)
    # the drivers' claimed generations well above 1, as they are on a host that has run a while
    wait_for(lambda: (r := rows(bus))[5]["handled"] >= 5 and r[24]["handled"] >= 10, 20, "both drivers to handle interrupts")
    first_epoch = json.loads(bus.cmd("show", "--json").stdout)["epoch"]

    bus.proc.send_signal(signal.SIGKILL)
    assert bus.proc.wait(5) == -signal.SIGKILL
    time.sleep(0.8)  # longer than a device's request (two tries of 0.3 s): both see irqbus gone
    bus.proc = procs.start("irqbus-again", "irqbus", "serve", "--endpoint", bus.endpoint)
    wait_line_up(bus, "vm1", pin=5)  # the guest found out, attached again and reprogrammed
    before = rows(bus)  # the new instance's first interrupts may be in: count from here

    # (1) the MSI device's interrupts and (2) the level NIC's are handled, every one: no storm
    wait_for(lambda: (r := rows(bus))[5]["handled"] >= before[5]["handled"] + 5 and r[24]["handled"] >= before[24]["handled"] + 10,
             20, "both drivers to handle interrupts of the new irqbus")
    after = rows(bus)
    for irq in (5, 24):
        assert after[irq]["count"] - before[irq]["count"] <= after[irq]["handled"] - before[irq]["handled"] + 1, (before, after)

    # (3) the device processes rode out the outage, saying so once each way
    assert nic.poll() is None and net.poll() is None
    for name in ("dev-nic0", "dev-net1"):
        assert events(procs, name, "irqbus not answering; retrying") == 1, procs.log(name)
        assert events(procs, name, "irqbus answering again") == 1, procs.log(name)
    assert events(procs, "dev-nic0", "plugged in again") == 1  # net1 was plugged back by its guest's program_msi
    assert events(procs, "vm1", "irqbus restarted: generations start again") == 1

    # (4) the new instance shows the wiring, declared again by the guest and the devices
    shown = json.loads(bus.cmd("show", "--json").stdout)
    assert shown["epoch"] != first_epoch
    (g,) = shown["guests"]
    devices = {d["name"]: d for d in g["devices"]}
    assert (devices["nic0"]["kind"], devices["nic0"]["pin"], devices["nic0"]["trigger"]) == ("pin", 5, "level")
    assert devices["net1"]["msi"]["vector"] == vector and not devices["net1"]["msi"]["masked"]
    assert [(p["pin"], p["devices"]) for p in g["pins"]] == [(5, ["nic0"])]
    assert not g["pic"]["imr"] >> 5 & 1 and g["pic"]["elcr"] >> 5 & 1  # unmasked, level
    assert set(g["virqs"]) == {"target", "memory"}

    # the hypervisor's virtual interrupts reach the guest through the new instance
    assert host.tool("mem-set", "vm1", "6m").returncode == 0
    wait_for(lambda: bus.show()["vm1"]["virqs"]["target"]["sent"] >= 1, 10, "the target interrupt through the new irqbus")

    for proc in (nic, net):
        assert procs.stop(proc) == 0
    stopped = next(e for e in procs.log_events("dev-nic0") if e.get("event") == "device stopped")
    assert stopped["reasserted"] == 1 and stopped["missed"] > 0


@pytest.mark.timeout(40)
def test_a_device_waits_for_its_guest_and_ends_when_the_guest_detaches(procs):
    """Started before its guest, a device waits (its irqbus is younger than the grace period);
    it plugs itself in when the guest comes; the guest detaching from that very instance ends
    it at once, with status 1 and a message saying so."""
    bus = Irqbus(procs)
    dev = bus.device("dev-x0", "vm9", "x0", "--pin", "5", "--rate", "20", "--guest-grace", "60", *DEVICE_TIMERS)
    wait_for(lambda: events(procs, "dev-x0", "waiting for the guest and device to be declared again") == 1, 15, "the device to wait")
    ctx = zmq.Context()
    guest = ctx.socket(zmq.DEALER)
    guest.setsockopt(zmq.LINGER, 0)
    secure(guest, bus.endpoint).connect(bus.endpoint)

    def call(seq: int, op: str, **args: Any) -> dict[str, Any]:
        guest.send(msgpack.packb({"v": 1, "op": op, "seq": seq, "client": "vm9-irq", "args": args}))
        while True:
            assert guest.poll(5000), "no reply"
            body = msgpack.unpackb(guest.recv())
            if "event" not in body:
                assert body["ok"], body
                return body["result"]

    try:
        call(1, "attach", name="vm9", domid=9)
        wait_for(lambda: bus.show()["vm9"]["devices"], 10, "the device to plug itself in")
        wait_for(lambda: bus.show()["vm9"]["devices"][0]["gen"] >= 3, 10, "the device to raise")
        call(2, "detach")
        assert dev.wait(10) == 1
    finally:
        guest.close()
        ctx.term()
    out = procs.log("dev-x0")
    assert "guest vm9 is not attached to the irqbus instance it was plugged into: the device's guest is gone" in out, out
    assert events(procs, "dev-x0", "attached") == 1 and events(procs, "dev-x0", "device gone") == 1
