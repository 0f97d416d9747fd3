"""Hostile clients against the real `hypervisor serve` and `irqbus serve`: the one message that
used to kill them, REQ and DEALER peers as the protocol document describes them, and how much
memory a hundred thousand strangers and sessions that never read can make each server hold."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.processes import secure, Host, Irqbus, Processes, wait_for

MIB = 1 << 20


def deep_message(op: str, field: str, levels: int = 1020) -> bytes:
    """About 1 KB: a request whose argument is a list nested `levels` deep."""
    head = msgpack.packb({"v": 1, "op": op, "seq": 1, "client": "attacker"})
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("args") + b"\x81" + msgpack.packb(field) + b"\x91" * levels + b"\x01"


class Socket:
    """A raw pyzmq socket, as a client written from docs/protocol.md would hold one."""

    def __init__(self, ctx: zmq.Context, kind: int, endpoint: str) -> None:
        self.sock = ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure(self.sock, endpoint).connect(endpoint)
        self.kind = kind

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        return msgpack.unpackb(self.sock.recv_multipart()[-1])

    def reply(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            body = self.receive(timeout)
            if "event" not in body:
                return body

    def call(self, client: str, seq: int, op: str, **args: Any) -> dict[str, Any]:
        self.send(msgpack.packb({"v": 1, "op": op, "seq": seq, "client": client, "args": args}))
        return self.reply()


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(60)
def test_one_kilobyte_of_nesting_kills_neither_server(procs: Processes, ctx):
    host, bus = Host(procs, memory="64m"), Irqbus(procs)
    for endpoint, op, field in [
        (host.guest_endpoint, "register", "name"),
        (host.admin_endpoint, "mem_set", "domain"),
        (host.admin_endpoint, "list", "junk"),
        (bus.endpoint, "attach_device", "guest"),
        (bus.endpoint, "chip", "ops"),
    ]:
        frame = deep_message(op, field)
        assert len(frame) < 1100
        sock = Socket(ctx, zmq.DEALER, endpoint)
        sock.send(frame)
        r = sock.reply()
        assert not r["ok"] and r["error"] in ("EINVAL", "EPERM", "ENOSYS") and len(r["message"]) <= 300, r
    assert host.proc.poll() is None and bus.proc.poll() is None
    assert host.tool("info").returncode == 0 and bus.cmd("show").returncode == 0


@pytest.mark.timeout(60)
def test_a_req_client_works_and_is_never_sent_an_event(procs: Processes, ctx):
    """A REQ socket drops its connection on an unsolicited message: the servers learn the peer
    type from the connection and push nothing to it."""
    host = Host(procs, memory="64m")
    guest = Socket(ctx, zmq.REQ, host.guest_endpoint)
    assert guest.call("req-guest", 1, "register", name="reqvm", memory_pages=100, max_pages=1000)["ok"]
    assert host.tool("mem-set", "reqvm", "2m").returncode == 0  # a DEALER guest would be pushed `target`
    r = guest.call("req-guest", 2, "get_target")
    assert r["ok"] and r["result"]["target_pages"] == 512
    bus = Irqbus(procs)
    dev = Socket(ctx, zmq.REQ, bus.endpoint)
    r = dev.call("req-guest", 1, "attach", name="reqvm", domid=1)
    assert r["error"] == "EPROTO" and "DEALER" in r["message"]
    assert dev.call("req-guest", 2, "show")["ok"]  # and the socket still works


@pytest.mark.timeout(60)
def test_a_req_asker_gets_its_held_reply(procs: Processes, ctx):
    """`interrupts` is forwarded to the guest; the reply that comes later still carries REQ's
    delimiter, so the REQ socket takes it."""
    host, bus = Host(procs, memory="64m"), Irqbus(procs)
    host.guest("vm1", "--memory", "8m", "--irqbus", bus.endpoint, "--key", "toolstack")  # this host tells irqbus no owners
    wait_for(lambda: "vm1" in bus.show(), 20, "vm1 to attach")
    asker = Socket(ctx, zmq.REQ, bus.endpoint)
    r = asker.call("req-asker", 1, "interrupts", guest="vm1", format="json")
    assert r["ok"] and r["result"]["guest"] == "vm1" and isinstance(r["result"]["rows"], list)


@pytest.mark.timeout(60)
def test_a_dealer_message_of_two_frames_is_eproto_not_req(procs: Processes, ctx):
    host, bus = Host(procs, memory="64m"), Irqbus(procs)
    for endpoint in (host.admin_endpoint, bus.endpoint):
        sock = Socket(ctx, zmq.DEALER, endpoint)
        sock.send(b"", msgpack.packb({"v": 1, "op": "info" if endpoint == host.admin_endpoint else "show", "seq": 1, "client": "d", "args": {}}))
        r = sock.reply()
        assert r["error"] == "EPROTO" and "2" in r["message"]


def _flood(ctx: zmq.Context, endpoint: str, frames: list[bytes], sockets: int = 8, window: int = 500) -> int:
    """Send every frame, at most `window` unanswered per socket; returns the replies read."""
    socks = [Socket(ctx, zmq.DEALER, endpoint) for _ in range(sockets)]
    for s in socks:
        s.sock.setsockopt(zmq.SNDHWM, 0)
        s.sock.setsockopt(zmq.RCVHWM, 0)
    replies = 0
    for start in range(0, len(frames), window * sockets):
        batch = frames[start:start + window * sockets]
        for i, frame in enumerate(batch):
            socks[i % sockets].sock.send(frame)
        for i in range(len(batch)):
            socks[i % sockets].reply(timeout=30)
            replies += 1
    for s in socks:
        s.sock.close(linger=0)
    return replies


@pytest.mark.timeout(240)
def test_a_hundred_thousand_clients_and_sessions_that_never_read_keep_rss_bounded(procs: Processes, ctx):
    """Each server, after a warm-up, takes 100,000 requests from 100,000 client ids (changes,
    reads and refusals) while sessions that never read are sent events: its RSS grows by less
    than 64 MiB (the record's 16 MiB of unbound clients and irqbus's 65,536 unread events)."""
    host = Host(procs, memory="1g", log_level="warning")
    bus = Irqbus(procs, extra=("--log-level", "warning"))
    # sessions that never read: guests registered and attached on sockets nobody reads
    silent = []
    for i in range(64):
        g = Socket(ctx, zmq.DEALER, host.guest_endpoint)
        g.send(msgpack.packb({"v": 1, "op": "register", "seq": 1, "client": f"silent-{i}",
                              "args": {"name": f"silent{i}", "memory_pages": 256, "max_pages": 4096}}))
        b = Socket(ctx, zmq.DEALER, bus.endpoint)
        b.call(f"silent-irq-{i}", 1, "attach", name=f"silent{i}", domid=1000 + i)
        b.call(f"silent-irq-{i}", 2, "program_msi", device=f"n{i}", address=0xFEE00000, data=0x41)
        b.call(f"silent-irq-{i}", 3, "chip", ops=[{"kind": "unmask", "device": f"n{i}"}])
        silent.append((g, b))
    wait_for(lambda: len(host.domains()) == 64, 20, "64 silent guests registered")
    _flood(ctx, host.admin_endpoint, [msgpack.packb({"v": 1, "op": "list", "seq": 1, "client": f"w{i}", "args": {}}) for i in range(200)])
    before = {"hypervisor": rss(host.proc.pid), "irqbus": rss(bus.proc.pid)}

    def admin_frame(i: int) -> bytes:
        kind = i % 4
        if kind == 0:
            body = {"op": "mem_set", "args": {"domain": f"silent{i % 64}", "target_pages": 256 + i % 1000}}  # pushes `target` to a silent guest
        elif kind == 1:
            body = {"op": "list", "args": {}}
        elif kind == 2:
            body = {"op": "destroy", "args": {"domain": f"nobody-{i}"}}
        else:
            body = {"op": "x" * 2000, "args": {"k" * 30: "v" * 500}}
        return msgpack.packb({"v": 1, "seq": 1, "client": f"stranger-{i:06d}-{'x' * 40}", **body})

    def irqbus_frame(i: int) -> bytes:
        kind = i % 4
        if kind == 0:
            body = {"op": "msi", "args": {"guest": f"silent{i % 64}", "device": f"n{i % 64}", "count": 50}}
        elif kind == 1:
            body = {"op": "show", "args": {"guest": f"silent{i % 64}"}}
        elif kind == 2:
            body = {"op": "raise", "args": {"guest": "silent0", "device": f"ghost{i}"}}
        else:
            body = {"op": "interrupts", "args": {"guest": "nobody"}}
        return msgpack.packb({"v": 1, "seq": 1, "client": f"stranger-{i:06d}-{'x' * 40}", **body})

    n = 100_000
    assert _flood(ctx, host.admin_endpoint, [admin_frame(i) for i in range(n)]) == n
    assert _flood(ctx, bus.endpoint, [irqbus_frame(i) for i in range(n)]) == n
    after = {"hypervisor": rss(host.proc.pid), "irqbus": rss(bus.proc.pid)}
    growth = {k: (after[k] - before[k]) / MIB for k in before}
    print(f"RSS growth after {n:,} clients: " + ", ".join(f"{k} {v:+.1f} MiB" for k, v in growth.items()))
    assert host.proc.poll() is None and bus.proc.poll() is None
    assert all(v < 64 for v in growth.values()), growth
    dropped = sum(g["dropped"] for g in bus.show().values())
    assert dropped > 0  # the silent sessions' budget ran out: events were dropped, not queued
    assert host.tool("audit").returncode == 0
    for g, b in silent:
        g.sock.close(linger=0)
        b.sock.close(linger=0)


@pytest.mark.timeout(60)
def test_a_req_peer_reusing_a_guests_client_id_does_not_take_its_events(procs: Processes, ctx):
    bus = Irqbus(procs)
    guest = Socket(ctx, zmq.DEALER, bus.endpoint)
    assert guest.call("c1", 1, "attach", name="g1", domid=1)["ok"]
    assert guest.call("c1", 2, "program_pin", pin=5, trigger="edge")["ok"]
    assert guest.call("c1", 3, "chip", ops=[{"kind": "unmask", "pin": 5}])["ok"]
    imposter = Socket(ctx, zmq.REQ, bus.endpoint)
    assert imposter.call("c1", 4, "show", guest="g1")["ok"]
    dev = Socket(ctx, zmq.DEALER, bus.endpoint)
    assert dev.call("d1", 1, "attach_device", guest="g1", device="nic0", pin=5)["ok"]
    assert dev.call("d1", 2, "raise", guest="g1", device="nic0")["ok"]
    event = guest.receive()
    assert event.get("event") == "irq" and event["args"]["pin"] == 5
