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
