"""irqbus, guests and devices as real processes started through their CLIs: a shared pin, an
MSI device, a device nobody handles (Linux's real 100,000 figure), isolation between guests,
bad input on the wire, and clients that fail fast when nobody answers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import msgpack
import pytest
import zmq

from tests.processes import secure, REPO, Host, Irqbus, Processes, wait_for


@pytest.fixture
def host(procs: Processes) -> Host:
    return Host(procs, memory="64m")


@pytest.fixture
def bus(procs: Processes) -> Irqbus:
    return Irqbus(procs)


# This host is not started with --irqbus, so it never tells irqbus which key owns which domain,
# and a guest's own key could not attach (irqbus.rights): the guests attach with the toolstack's,
# which may attach as any guest (tests/test_irqbus_auth_e2e.py attaches with guests' own keys).
AS_TOOLSTACK = ("--key", "toolstack")


def start_guest(host: Host, bus: Irqbus, name: str, *devices: str) -> subprocess.Popen:
    args = ["--memory", "8m", "--irqbus", bus.endpoint, *AS_TOOLSTACK]
    for spec in devices:
        args += ["--device", spec]
    return host.guest(name, *args)


def wait_line_up(bus: Irqbus, guest: str, pin: int | None = None, msi: str | None = None) -> dict[str, Any]:
    """Until the guest's driver has programmed and unmasked its line at irqbus."""

    def up() -> dict[str, Any] | None:
        g = bus.show().get(guest)
        if g is None:
            return None
        if pin is not None and pin < 16:
            ok = not g["pic"]["imr"] >> pin & 1
        elif pin is not None:
            ok = not g["ioapic"][pin - 16]["masked"]
        else:
            dev = next((d for d in g["devices"] if d["name"] == msi), None)
            ok = dev is not None and not dev["msi"]["masked"]
        return g if ok else None

    return wait_for(up, 20, f"{guest}'s line {pin if pin is not None else msi} to come up", interval=0.1)


def stopped(procs: Processes, name: str) -> dict[str, Any]:
    """The `device stopped` log line of an `irqbus device` process."""
    return next(e for e in procs.log_events(name) if e.get("event") == "device stopped")


@pytest.mark.timeout(60)
def test_two_devices_sharing_one_pin_each_driver_counts_its_own(procs, host, bus):
    start_guest(host, bus, "vm1", "nic0:pin=5:level", "disk0:pin=5:level")
    wait_line_up(bus, "vm1", pin=5)
    a = bus.device("dev-nic0", "vm1", "nic0", "--pin", "5", "--level", "--rate", "200", "--count", "40")
    b = bus.device("dev-disk0", "vm1", "disk0", "--pin", "5", "--level", "--rate", "150", "--count", "30")
    assert a.wait(30) == 0 and b.wait(30) == 0
    # a raise the guest had not looked at yet merges into the pending one, as on hardware
    expect = {"nic0": 40 - stopped(procs, "dev-nic0")["merged"], "disk0": 30 - stopped(procs, "dev-disk0")["merged"]}
    wait_for(lambda: bus.handled("vm1", 5) == expect, 15, f"handled counts {expect}")
    row = bus.interrupts("vm1")[5]
    assert row["chip"] == "XT-PIC" and row["trigger"] == "level"
    assert [a["count"] for a in row["actions"]] == [row["count"]] * 2  # both handlers ran every time
    assert max(expect.values()) <= row["count"] <= sum(expect.values()) and row["irqs_unhandled"] == 0
    text = procs.run("guest", "interrupts", "vm1", "--irqbus", bus.endpoint)
    assert text.returncode == 0, text.stderr
    # x86's /proc/interrupts: an i8259 line has no hwirq, no Level/Edge and no handler name
    assert re.search(rf"^  5: +{row['count']}   XT-PIC      nic0, disk0$", text.stdout, re.M), text.stdout
    assert re.search(r"^ERR: +0$", text.stdout, re.M), text.stdout
    g = bus.show()["vm1"]
    assert not any(d["status"] for d in g["devices"]) and g["pic"]["lines"] == 0
    shown = bus.cmd("show")
    assert re.search(r"(nic0, disk0|disk0, nic0)", shown.stdout) and "guest vm1" in shown.stdout  # attach order


@pytest.mark.timeout(60)
def test_an_msi_device_reaches_its_driver(procs, host, bus):
    start_guest(host, bus, "vm1", "net1:msi")
    g = wait_line_up(bus, "vm1", msi="net1")
    vector = next(d for d in g["devices"] if d["name"] == "net1")["msi"]["vector"]
    dev = bus.device("dev-net1", "vm1", "net1", "--msi", "--rate", "300", "--count", "50")
    assert dev.wait(30) == 0
    expect = {"net1": 50 - stopped(procs, "dev-net1")["merged"]}
    wait_for(lambda: bus.handled("vm1", 24) == expect, 15, f"net1 to handle {expect}")
    row = bus.interrupts("vm1")[24]
    assert (row["chip"], row["trigger"], row["flow"]) == ("PCI-MSIX", "edge", "edge")
    # a raw message on the same vector that no device raised: delivered, but not net1's
    raw = bus.cmd("msi", "vm1", "--address", "0xfee00000", "--data", hex(vector))
    assert raw.returncode == 0, raw.stderr
    wait_for(lambda: bus.interrupts("vm1")[24]["count"] == row["count"] + 1, 10, "the raw message")
    assert bus.handled("vm1", 24) == expect


@pytest.mark.timeout(90)
def test_a_device_nobody_handles_gets_its_line_disabled(procs, host, bus):
    """Linux's real figures: more than 99,900 of 100,000 unhandled. The rogue device pulses an
    IOAPIC edge line in bursts; an edge entry needs no EOI, so the storm streams.

    The guest's quiet gap is 2 s instead of Linux's 100 ms (`--irq-quiet`): on a loaded machine
    the storm's three processes are descheduled for more than 100 ms now and then, each such gap
    restarts the unhandled streak (spurious.c, tested to the millisecond in test_irq_spurious),
    and no window of 100,000 completed (measured: load average 9 on 2 cores, streaks restarting
    every 2,000 to 34,000 interrupts; with 2 s, disabled at 100,000 of 100,000)."""
    host.guest("vm1", "--memory", "8m", "--irqbus", bus.endpoint, "--device", "nic0:pin=20:edge", "--irq-quiet", "2", *AS_TOOLSTACK)
    wait_line_up(bus, "vm1", pin=20)
    started = time.monotonic()
    rogue = bus.device("rogue", "vm1", "rogue", "--pin", "20", "--rate", "10000000", "--burst", "2000", "--count", "400000")

    def nobody_cared() -> dict[str, Any] | None:
        return next((e for e in procs.log_events("vm1") if e.get("event") == "nobody cared"), None)

    event = wait_for(nobody_cared, 75, "the guest to say nobody cared", interval=0.5)
    took = time.monotonic() - started
    procs.stop(rogue)
    domid = bus.show()["vm1"]["domid"]
    assert (event["domid"], event["irq"], event["actions"]) == (domid, 20, ["nic0"])
    assert event["window"] == 100_000 and event["irqs_unhandled"] > 99_900
    assert event["level"] == "error" and "Disabling IRQ #20" in event["message"]
    g = bus.show()["vm1"]
    assert g["ioapic"][20 - 16]["masked"]  # the guest's MASK reached the IOAPIC
    row = bus.interrupts("vm1")[20]
    assert "SPURIOUS_DISABLED" in row["status"] and row["count"] >= 100_000
    assert bus.handled("vm1", 20) == {"nic0": 0}
    print(f"100,000 unhandled interrupts end to end in {took:.1f} s")


@pytest.mark.timeout(60)
def test_interrupts_to_one_guest_never_reach_another(procs, host, bus):
    start_guest(host, bus, "vm1", "a0:pin=5", "n1:msi")
    start_guest(host, bus, "vm2", "b0:pin=5", "n2:msi")
    for guest, msi in (("vm1", "n1"), ("vm2", "n2")):
        wait_line_up(bus, guest, pin=5)
        wait_line_up(bus, guest, msi=msi)
    assert bus.cmd("attach", "vm1", "a0", "--pin", "5").returncode == 0
    assert bus.cmd("attach", "vm2", "b0", "--pin", "5").returncode == 0
    for _ in range(3):
        assert bus.cmd("raise", "vm1", "a0").returncode == 0
    assert bus.cmd("msi", "vm1", "n1", "--count", "2").returncode == 0
    # naming the other guest's device is refused, never delivered
    for guest, device in (("vm2", "a0"), ("vm1", "b0"), ("vm2", "n1")):
        refused = bus.cmd("raise", guest, device)
        assert refused.returncode == 1 and "EPERM" in refused.stderr, refused.stderr
    wait_for(lambda: bus.handled("vm1", 5) == {"a0": 3}, 10, "vm1's three interrupts")
    wait_for(lambda: bus.handled("vm1", 24).get("n1", 0) >= 1, 10, "vm1's MSI")
    vm2 = bus.interrupts("vm2")
    assert vm2[5]["count"] == 0 and vm2[24]["count"] == 0  # same pin, same vector: untouched
    assert bus.show()["vm2"]["delivered"] == 0


@pytest.mark.timeout(60)
def test_bad_input_is_answered_and_irqbus_keeps_serving(procs, bus):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, bus.endpoint).connect(bus.endpoint)

    def ask(frame: bytes | list[bytes]) -> dict[str, Any]:
        sock.send_multipart(frame if isinstance(frame, list) else [frame])
        assert sock.poll(5000), "no reply"
        return msgpack.unpackb(sock.recv())

    def req(op: str, seq: int, **args: Any) -> bytes:
        return msgpack.packb({"v": 1, "op": op, "seq": seq, "client": "raw-client", "args": args})

    try:
        assert ask(b"\x93garbage")["error"] == "EPROTO"
        assert ask([b"one", b"two"])["error"] == "EPROTO"
        assert ask(req("reboot", 1))["error"] == "ENOSYS"
        assert ask(req("attach_device", 2, guest="vm1", device="x", pin=24))["error"] == "EINVAL"
        assert ask(req("raise", 3, guest="nobody", device="x"))["error"] == "ESRCH"
        assert ask(req("chip", 4, ops=[{"kind": "mask", "pin": 5}]))["error"] == "ESRCH"
        shown = ask(req("show", 5))
        epoch, up_s = shown["result"].pop("epoch"), shown["result"].pop("up_s")
        assert shown == {"v": 1, "seq": 5, "ok": True, "result": {"guests": [], "open_queries": 0, "next": None}}
        assert type(epoch) is int and 1 <= epoch < 1 << 63 and 0 <= up_s < 60
    finally:
        sock.close()
        ctx.term()
    assert bus.cmd("show").stdout.strip() == "no guests attached"
    refusals = [e for e in procs.log_events("irqbus") if e.get("event") == "request refused"]
    assert len(refusals) >= 6 and all(e["level"] == "warning" and e["error"] for e in refusals)
    assert procs.stop(bus.proc) == 0  # SIGTERM: a clean stop
    assert any(e.get("event") == "stopped" for e in procs.log_events("irqbus"))


@pytest.mark.timeout(60)
def test_show_reports_every_guest_when_they_do_not_fit_in_one_message(procs, bus):
    """400 guest sessions with 8 devices each: more than one page of `show`; the CLI pages."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, bus.endpoint).connect(bus.endpoint)
    seqs: dict[str, int] = {}

    def call(client: str, op: str, **args: Any) -> dict[str, Any]:
        seqs[client] = seqs.get(client, 0) + 1
        sock.send(msgpack.packb({"v": 1, "op": op, "seq": seqs[client], "client": client, "args": args}))
        assert sock.poll(5000), "no reply"
        reply = msgpack.unpackb(sock.recv())
        assert reply["ok"], reply
        return reply["result"]

    try:
        for domid in range(1, 401):
            call(f"session-{domid}", "attach", name=f"vm{domid}", domid=domid)
            for n in range(8):
                route = {"msi": True} if n % 2 else {"pin": 5 + n}
                call("tool", "attach_device", guest=domid, device=f"d{domid}-{n}", **route)
        assert call("observer", "show")["next"] is not None  # one message does not hold them all
        shown = bus.show()
        assert sorted(g["domid"] for g in shown.values()) == list(range(1, 401))
        assert all(len(g["devices"]) == 8 for g in shown.values())
        one = bus.cmd("show", "vm7", "--json")
        assert [g["name"] for g in json.loads(one.stdout)["guests"]] == ["vm7"]
        text = bus.cmd("show").stdout
        assert "guest vm1 (domid 1)" in text and "guest vm400 (domid 400)" in text
    finally:
        sock.close()
        ctx.term()


@pytest.mark.timeout(60)
def test_clients_fail_fast_and_clearly_when_nobody_answers(procs):
    nowhere = procs.ipc("nobody-here")
    commands = {
        "raise": ("irqbus", "raise", "vm1", "nic0", "--endpoint", nowhere),
        "show": ("irqbus", "show", "--endpoint", nowhere),
        "device": ("irqbus", "device", "vm1", "nic0", "--pin", "5", "--rate", "10", "--endpoint", nowhere),
        "interrupts": ("guest", "interrupts", "vm1", "--irqbus", nowhere),
    }
    running = {name: procs.start(f"client-{name}", *cmd) for name, cmd in commands.items()}
    for name, proc in running.items():
        assert proc.wait(20) == 1, procs.log(f"client-{name}")  # gives up (a hang times out here), never waits forever
        out = procs.log(f"client-{name}")
        assert "no irqbus answered at" in out and nowhere in out, out


@pytest.mark.timeout(60)
def test_guest_interrupts_fails_clearly_for_a_missing_or_dead_guest(procs, host, bus):
    result = procs.run("guest", "interrupts", "ghost", "--irqbus", bus.endpoint)
    assert result.returncode == 1 and "ESRCH" in result.stderr and "ghost" in result.stderr
    victim = start_guest(host, bus, "victim", "nic0:pin=5")
    wait_line_up(bus, "victim", pin=5)
    victim.send_signal(signal.SIGKILL)  # no detach: irqbus still lists it
    victim.wait(5)
    result = procs.run("guest", "interrupts", "victim", "--irqbus", bus.endpoint)  # within run()'s 20 s, or it fails
    assert result.returncode == 1 and "ETIMEDOUT" in result.stderr, result.stderr


@pytest.mark.timeout(30)
def test_devices_need_an_irqbus(procs):
    result = subprocess.run(
        [sys.executable, "-m", "guest", "run", "--name", "x", "--memory", "4m", "--device", "nic0:pin=5",
         "--hypervisor", procs.ipc("none")],
        capture_output=True, text=True, timeout=20, cwd=REPO, env={k: v for k, v in procs.env.items() if k != "BALLONET_IRQBUS"},
    )
    assert result.returncode == 2 and "--device needs an irqbus" in result.stderr
    bad = procs.run("guest", "run", "--name", "x", "--memory", "4m", "--device", "nic0:pin=2")
    assert bad.returncode == 2 and "cascade" in bad.stderr


@pytest.mark.timeout(60)
def test_a_guest_attaches_again_when_irqbus_restarts(procs, host, bus):
    start_guest(host, bus, "vm1", "nic0:pin=5:level", "net1:msi")
    wait_line_up(bus, "vm1", pin=5)
    assert procs.stop(bus.proc) == 0
    bus.proc = procs.start("irqbus-again", "irqbus", "serve", "--endpoint", bus.endpoint)
    wait_line_up(bus, "vm1", pin=5)  # found out, attached again, reprogrammed
    wait_line_up(bus, "vm1", msi="net1")
    assert bus.cmd("attach", "vm1", "nic0", "--pin", "5", "--level").returncode == 0
    assert bus.cmd("raise", "vm1", "nic0").returncode == 0
    assert bus.cmd("msi", "vm1", "net1").returncode == 0
    wait_for(lambda: bus.handled("vm1", 5) == {"nic0": 1} and bus.handled("vm1", 24) == {"net1": 1}, 10, "both drivers")
    assert any(e.get("event") == "irqbus forgot this guest; attaching again" for e in procs.log_events("vm1"))
