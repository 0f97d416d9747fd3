"""Replies that carry what a peer sent or what the host holds stay under the frame limit by
construction: a guest's relayed answer, a domain's initial memory map."""

from __future__ import annotations

import msgpack
import pytest

from irqbus.dispatch import IrqBus
from wire.envelope import MAX_MESSAGE_BYTES, MAX_SEQ

pytestmark = pytest.mark.timeout(20)


def frame(op: str, seq: int, client: str, **args) -> bytes:
    return msgpack.packb({"v": 1, "op": op, "seq": seq, "client": client, "args": args})


def test_a_guests_answer_that_would_make_the_askers_reply_too_large_is_refused():
    """The relayed reply carries the guest's name (up to 64 characters of 4 bytes) and the
    asker's seq besides the guest's text: a 1 MiB answer made a reply over 1 MiB."""
    bus = IrqBus()
    name = "\U0001F600" * 64  # printable, 256 bytes in UTF-8
    assert msgpack.unpackb(bus.handle(frame("attach", 1, "g", name=name, domid=1), 0.0).reply)["ok"]
    asked = bus.handle(frame("interrupts", MAX_SEQ, "asker", guest=1), 0.0)
    query = msgpack.unpackb(asked.sends[0].frame)["args"]["query"]
    overhead = len(frame("answer", 2, "g", query=query, text=""))
    text = "\U0001F600" * ((MAX_MESSAGE_BYTES - overhead - 4) // 4)  # within 262,144 characters; 4 more header bytes
    request = frame("answer", 2, "g", query=query, text=text)
    assert len(request) <= MAX_MESSAGE_BYTES
    out = bus.handle(request, 0.0)
    reply = msgpack.unpackb(out.reply)
    assert reply["ok"] is False and reply["error"] == "EINVAL" and "limit" in reply["message"]
    assert all(len(s.frame) <= MAX_MESSAGE_BYTES for s in out.sends) and not out.sends
    # the query is still open: a shorter answer gets through
    out = bus.handle(frame("answer", 3, "g", query=query, text="CPU0\n"), 0.0)
    assert msgpack.unpackb(out.reply)["ok"]
    (relayed,) = out.sends
    assert msgpack.unpackb(relayed.frame)["result"]["text"] == "CPU0\n"


class GuestPeer:
    def __init__(self, hv, client: str) -> None:
        self.hv, self.client, self.seq = hv, client, 0
        self.frames: list[bytes] = []

    def call(self, op: str, **args) -> dict:
        from wire.operations import Endpoint

        self.seq += 1
        self.frames.append(self.hv.handle(Endpoint.GUEST, frame(op, self.seq, self.client, **args), 0.0).reply)
        reply = msgpack.unpackb(self.frames[-1])
        assert reply["ok"], reply
        return reply["result"]


def fragmented(total: int):
    """A host whose free memory is single pages: a guest took it all and gave back every other page."""
    from hypervisor.dispatch import Hypervisor

    hv = Hypervisor(total_pages=total)
    hog = GuestPeer(hv, "hog")
    hog.call("register", name="hog", memory_pages=total, max_pages=total)
    for start in range(0, total, 1024):
        hog.call("decrease_reservation", extents=[[p, 1] for p in range(start, min(start + 1024, total), 2)])
    assert hv.pool.free_extent_count == total // 2
    return hv


def test_a_domain_built_from_a_fragmented_host_gets_its_memory_map_in_pages():
    from hypervisor.dispatch import MAP_PAGE_EXTENTS, REGISTER_EXTENTS
    from wire.extent import Extent
    from wire.pages import every_page

    hv = fragmented(140_000)
    victim = GuestPeer(hv, "victim")
    first = victim.call("register", name="victim", memory_pages=70_000, max_pages=70_000)
    assert len(first["extents"]) == REGISTER_EXTENTS and first["next"] == first["extents"][-1][0]
    extents = every_page(lambda op, args: victim.call(op, **args), "memory_map", "extents", first=first)["extents"]
    assert len(victim.frames) == 1 + 3  # 70,000 - 1,024 extents in pages of 32,768
    assert max(len(f) for f in victim.frames) < MAP_PAGE_EXTENTS * 11 + 1024 < MAX_MESSAGE_BYTES
    assert [Extent(*e) for e in extents] == hv.pool.extents_of(1 + 1)  # every page, in order, once
    assert sum(c for _, c in extents) == 70_000


def test_a_small_domain_gets_its_whole_map_with_register():
    from hypervisor.dispatch import Hypervisor

    result = GuestPeer(Hypervisor(total_pages=4096), "g").call("register", name="g", memory_pages=100, max_pages=100)
    assert len(result["extents"]) == 1 and result["extents"][0][1] == 100 and result["next"] is None


@pytest.mark.timeout(120)
def test_a_guest_registers_on_a_fragmented_host(procs):
    """Before: 160,000 single free pages made a 1.1 MB register reply the guest dropped; it
    retried forever, holding a domain it could not use."""
    import zmq

    from tests.processes import Host, secure, wait_for

    total = 320_000  # 160,000 single free pages: a 1.1 MB register reply before paging
    host = Host(procs, memory=f"{total * 4}k", log_level="info")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, host.guest_endpoint).connect(host.guest_endpoint)

    def call(seq: int, op: str, **args) -> dict:
        sock.send(frame(op, seq, "hog", **args))
        assert sock.poll(10_000)
        reply = msgpack.unpackb(sock.recv())
        assert reply["ok"], reply
        return reply["result"]

    try:
        call(1, "register", name="hog", memory_pages=total, max_pages=total)
        for seq, start in enumerate(range(0, total, 1024), start=2):
            call(seq, "decrease_reservation", extents=[[p, 1] for p in range(start, min(start + 1024, total), 2)])
    finally:
        sock.close()
        ctx.term()
    host.guest("victim", "--memory", f"{total * 2}k", log_level="info")
    registered = wait_for(lambda: [e for e in procs.log_events("victim") if e.get("event") == "registered"], 60, "victim to register")
    assert registered[0]["pages"] == total // 2
    assert host.domains()["victim"]["current_pages"] == total // 2
    assert host.tool("audit").returncode == 0
