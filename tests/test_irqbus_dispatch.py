"""irqbus's frame -> reply core: the operations, every kind of bad input (answered, logged by
the shell, state unchanged), the sequence rule, forwarded queries, and guest isolation."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from irqbus.dispatch import SHOW_PAGE_BYTES, IrqBus, Outcome
from wire import envelope

T = pytest.mark.timeout(5)


class Peer:
    """One client of the bus, speaking raw frames."""

    def __init__(self, bus: IrqBus, client: str) -> None:
        self.bus = bus
        self.client = client
        self.seq = 0
        self.now = 1.0

    def frame(self, op: str, args: dict[str, Any] | None = None, seq: int | None = None) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return msgpack.packb({"v": 1, "op": op, "seq": seq, "client": self.client, "args": args or {}})

    def send(self, op: str, seq: int | None = None, **args: Any) -> Outcome:
        return self.bus.handle(self.frame(op, args, seq), self.now)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        out = self.send(op, **args)
        reply = msgpack.unpackb(out.reply)
        assert reply["ok"], reply
        return reply["result"]


EPOCH = 42


def reply_of(out: Outcome) -> dict[str, Any]:
    return msgpack.unpackb(out.reply)


def events_for(out: Outcome, client: str) -> list[dict[str, Any]]:
    return [msgpack.unpackb(s.frame) for s in out.sends if s.client == client]


@pytest.fixture
def bus() -> IrqBus:
    return IrqBus(query_timeout_s=2.0, epoch=EPOCH)


@pytest.fixture
def guest(bus) -> Peer:
    """vm1, attached, with a level driver on pin 5 and nic0 + disk0 sharing it."""
    g = Peer(bus, "guest-vm1")
    g.call("attach", name="vm1", domid=1)
    g.call("program_pin", pin=5, trigger="level")
    g.call("chip", ops=[{"kind": "unmask", "pin": 5}])
    tool = Peer(bus, "tool")
    tool.call("attach_device", guest="vm1", device="nic0", pin=5, trigger="level")
    tool.call("attach_device", guest="vm1", device="disk0", pin=5, trigger="level")
    return g


@pytest.fixture
def tool(bus) -> Peer:
    return Peer(bus, "tool-2")


def state(bus: IrqBus) -> dict[str, Any]:
    return msgpack.unpackb(Peer(bus, "observer").send("show").reply)["result"]


@T
def test_a_raise_becomes_an_irq_event_for_the_guest_and_nobody_else(bus, guest, tool):
    out = tool.send("raise", guest="vm1", device="nic0")
    assert reply_of(out)["result"] == {"gen": 1, "merged": 0, "delivered": 1}
    assert [s.client for s in out.sends] == ["guest-vm1"]
    (event,) = events_for(out, "guest-vm1")
    assert event == {"v": 1, "event": "irq", "args": {"vector": 0x25, "chip": "pic", "pin": 5, "status": {"nic0": 1}, "epoch": EPOCH}}
    # the guest's level flow, with the clear its driver wrote: the line drops
    out = guest.send("chip", ops=[{"kind": k, "pin": 5} for k in ("mask", "ack", "unmask")], clear=[["nic0", 1]])
    assert reply_of(out)["ok"] and out.sends == []
    (g,) = state(bus)["guests"]
    assert g["pic"]["lines"] == 0 and g["pic"]["isr"] == 0


@T
def test_interrupts_of_one_guest_never_reach_another(bus, guest, tool):
    other = Peer(bus, "guest-vm2")
    other.call("attach", name="vm2", domid=2)
    other.call("program_pin", pin=5, trigger="level")
    other.call("chip", ops=[{"kind": "unmask", "pin": 5}])
    tool.call("attach_device", guest="vm2", device="b0", pin=5, trigger="level")
    out = tool.send("raise", guest="vm2", device="b0")
    assert [s.client for s in out.sends] == ["guest-vm2"]
    # naming vm1's device with vm2 (or the reverse) is refused, and nothing is delivered
    before = state(bus)
    for g, d in (("vm2", "nic0"), ("vm1", "b0"), (2, "nic0")):
        out = tool.send("raise", guest=g, device=d)
        assert reply_of(out)["error"] == "EPERM" and out.sends == []
    # a guest cannot clear, mask or program another guest's device either
    other.call("program_msi", device="net2", address=0xFEE00000, data=0x61)
    tool.call("raise", guest="vm1", device="nic0")
    before = state(bus)
    for peer, op, args in [
        (other, "chip", {"clear": [["nic0", 1]]}),
        (guest, "chip", {"ops": [{"kind": "unmask", "device": "net2"}]}),
        (guest, "program_msi", {"device": "net2", "address": 0xFEE00000, "data": 0x62}),
    ]:
        assert reply_of(peer.send(op, **args))["error"] == "EPERM"
    after = state(bus)
    assert [g["pic"] for g in after["guests"]] == [g["pic"] for g in before["guests"]]
    assert after["guests"][0]["devices"] == before["guests"][0]["devices"]


# --- every bad input kind: answered with a code, state unchanged ---------------------------------

BAD_FRAMES = [
    (b"\xc1\xc1\xc1", "EPROTO"),  # not msgpack
    (msgpack.packb([1, 2, 3]), "EPROTO"),  # not a map
    (msgpack.packb({"v": 2, "op": "show", "seq": 1, "client": "x"}), "EPROTO"),  # wrong version
    (msgpack.packb({"v": 1, "op": "show", "seq": -1, "client": "x"}), "EPROTO"),  # bad seq
    (msgpack.packb({"v": 1, "op": "show", "seq": 1, "client": ""}), "EPROTO"),  # bad client
    (msgpack.packb({"v": 1, "op": 7, "seq": 1, "client": "x"}), "EPROTO"),  # op not a string
    (msgpack.packb({"v": 1, "op": "show", "seq": 1, "client": "x", "extra": 1}), "EPROTO"),
    (msgpack.packb({"v": 1, "op": "reboot", "seq": 1, "client": "x"}), "ENOSYS"),
    (msgpack.packb({"v": 1, "op": "mem_set", "seq": 1, "client": "x", "args": {}}), "EPERM"),  # the hypervisor's
]


@T
@pytest.mark.parametrize("frame, code", BAD_FRAMES)
def test_broken_frames(bus, guest, frame, code):
    before = state(bus)
    out = bus.handle(frame, 1.0)
    assert reply_of(out)["error"] == code and out.error is not None
    assert state(bus) == before


BAD_REQUESTS = [
    # (who, op, args, code)
    ("tool", "raise", {"guest": "vm1"}, "EINVAL"),  # missing device
    ("tool", "raise", {"guest": "vm1", "device": "nic0", "colour": 1}, "EINVAL"),  # unknown argument
    ("tool", "raise", {"guest": "vm1", "device": 5}, "EINVAL"),  # wrong type
    ("tool", "raise", {"guest": "vm1", "device": "bad name!"}, "EINVAL"),
    ("tool", "raise", {"guest": "vm1", "device": "nic0", "count": 0}, "EINVAL"),
    ("tool", "raise", {"guest": "vm1", "device": "nic0", "count": 10_001}, "EINVAL"),
    ("tool", "raise", {"guest": "vm1", "device": "nic0", "count": True}, "EINVAL"),
    ("tool", "raise", {"guest": "vm9", "device": "nic0"}, "ESRCH"),  # unknown guest
    ("tool", "raise", {"guest": 77, "device": "nic0"}, "ESRCH"),
    ("tool", "raise", {"guest": "vm1", "device": "ghost"}, "ESRCH"),  # unknown device
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": 24}, "EINVAL"),  # out of range
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": -1}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": 2}, "EINVAL"),  # the cascade
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": "5"}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": 5, "msi": True}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "x"}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "msi": True, "trigger": "level"}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "x", "pin": 5, "trigger": "rising"}, "EINVAL"),
    ("tool", "attach_device", {"guest": "vm1", "device": "nic0", "pin": 6}, "EBUSY"),  # nic0 is on 5
    ("tool", "msi", {"guest": "vm1"}, "EINVAL"),
    ("tool", "msi", {"guest": "vm1", "address": 0xFEE00000}, "EINVAL"),
    ("tool", "msi", {"guest": "vm1", "address": 0xFED00000, "data": 0x41}, "EINVAL"),
    ("tool", "msi", {"guest": "vm1", "address": 0xFEE00000, "data": 1 << 32}, "EINVAL"),
    ("tool", "msi", {"guest": "vm1", "device": "nic0"}, "EINVAL"),  # a pin device
    ("tool", "chip", {"ops": []}, "ESRCH"),  # not attached
    ("tool", "interrupts", {"guest": "vm9"}, "ESRCH"),
    ("tool", "interrupts", {"guest": "vm1", "format": "xml"}, "EINVAL"),
    ("tool", "answer", {"query": 1, "text": "x"}, "ESRCH"),
    ("guest", "program_pin", {"pin": 5, "trigger": "level", "vector": 0x40}, "EINVAL"),  # i8259 vector is fixed
    ("guest", "program_pin", {"pin": 1, "trigger": "level"}, "EINVAL"),  # edge-only ELCR bit
    ("guest", "program_pin", {"pin": 19, "trigger": "level"}, "EINVAL"),  # IOAPIC needs a vector
    ("guest", "program_pin", {"pin": 19, "trigger": "level", "vector": 0x10}, "EINVAL"),
    ("guest", "program_pin", {"pin": 19, "trigger": "level", "vector": 256}, "EINVAL"),
    ("guest", "program_msi", {"device": "nic0", "address": 0xFEE00000, "data": 0x41}, "EINVAL"),
    ("guest", "program_msi", {"device": "net1", "address": 0xFEE00000, "data": 0x05}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "poke", "pin": 5}]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask"}]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5, "device": "nic0"}]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 99}]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5}] * 65}, "EINVAL"),
    ("guest", "chip", {"ops": "mask 5"}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5}], "clear": [["nic0", 9]]}, "EINVAL"),  # future gen
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5}], "clear": [["nic0"]]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5}], "clear": [["ghost", 1]]}, "ESRCH"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5}, {"kind": "unmask", "pin": 20}]}, "EINVAL"),  # no vector
    ("guest", "chip", {"ops": [{"kind": ["mask"], "pin": 5}]}, "EINVAL"),  # unhashable kind
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": True}]}, "EINVAL"),
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 2}]}, "EINVAL"),  # the cascade
    ("guest", "chip", {"ops": [{"kind": "mask", "pin": 5.0}]}, "EINVAL"),
    ("guest", "chip", {"clear": [["nic0", True]]}, "EINVAL"),
    ("guest", "chip", {"clear": [["nic0", 0]]}, "EINVAL"),
    ("guest", "chip", {"clear": [[["nic0"], 1]]}, "EINVAL"),  # unhashable device name
    ("guest", "chip", {"clear": [["nic 0", 1]]}, "EINVAL"),
    ("guest", "attach", {"name": "vm-other", "domid": 5}, "EEXIST"),  # one guest per client
    ("guest", "attach", {"name": "vm1", "domid": 0x8000}, "EINVAL"),
    ("guest", "answer", {"query": 0, "text": "x"}, "EINVAL"),
    ("guest", "bind_virq", {"virq": "coffee", "vector": 0x40}, "EINVAL"),
    ("guest", "bind_virq", {"virq": "memory", "vector": 0x10}, "EINVAL"),
    ("guest", "bind_virq", {"virq": "memory"}, "EINVAL"),
    ("tool", "bind_virq", {"virq": "memory", "vector": 0x40}, "ESRCH"),  # not attached
    ("tool", "send_virq", {"guest": "vm9", "virq": "memory"}, "ESRCH"),
    ("tool", "send_virq", {"guest": "vm1", "virq": 3}, "EINVAL"),
    ("tool", "show", {"after": -2}, "EINVAL"),
    ("tool", "show", {"after": 1 << 40}, "EINVAL"),
    ("tool", "show", {"after": "vm1"}, "EINVAL"),
    ("tool", "show", {"guest": "vm9"}, "ESRCH"),
    ("tool", "show", {"guest": [1]}, "EINVAL"),
    ("tool", "show", {"page": 2}, "EINVAL"),
]


@T
@pytest.mark.parametrize("who, op, args, code", BAD_REQUESTS, ids=[f"{r[1]}-{i}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_are_refused_and_change_nothing(bus, guest, tool, who, op, args, code):
    peer = guest if who == "guest" else tool
    before = state(bus)
    out = peer.send(op, **args)
    reply = reply_of(out)
    assert not reply["ok"] and reply["error"] == code, reply
    assert reply["message"] and out.error is not None and out.sends == []
    assert state(bus) == before
    # ...and the bus keeps serving
    assert reply_of(tool.send("raise", guest="vm1", device="nic0"))["ok"]


@T
def test_every_refusal_names_the_field(bus, guest, tool):
    reply = reply_of(tool.send("attach_device", guest="vm1", device="x", pin=24))
    assert reply["message"] == "'pin': expected a pin 0..23, got 24"
    reply = reply_of(guest.send("chip", ops=[{"kind": "poke", "pin": 5}]))
    assert "ops[0].kind" in reply["message"]


# --- sequence rule -------------------------------------------------------------------------------


@T
def test_a_retried_raise_is_answered_from_the_record_not_raised_twice(bus, guest, tool):
    first = tool.send("raise", seq=10, guest="vm1", device="nic0")
    again = tool.send("raise", seq=10, guest="vm1", device="nic0")
    assert again.replayed and again.reply == first.reply and again.sends == []
    nic = bus.router.guests["vm1"].devices["nic0"]
    assert nic.gen == 1
    reused = tool.send("lower", seq=10, guest="vm1", device="nic0")
    assert reply_of(reused)["error"] == "EPROTO"
    assert nic.status  # not lowered


@T
def test_execute_hands_out_the_interrupt_before_the_reply_and_commit_records_it(bus, guest, tool):
    """The shell's two steps: the guest's event first, then the device's reply, recorded."""
    out = bus.execute(tool.frame("raise", {"guest": "vm1", "device": "nic0"}, seq=20), 1.0)
    assert out.reply is None and out.error is None
    assert [msgpack.unpackb(s.frame)["event"] for s in out.sends] == ["irq"]
    bus.commit(out, 1.0)
    assert reply_of(out)["result"]["gen"] == 1
    bus.commit(out, 1.0)  # committing twice changes nothing
    again = tool.send("raise", seq=20, guest="vm1", device="nic0")
    assert again.replayed and again.reply == out.reply and again.sends == []
    refused = bus.execute(tool.frame("raise", {"guest": "vm1", "device": "ghost"}, seq=21), 1.0)
    assert reply_of(refused)["error"] == "ESRCH"  # a refusal's reply is there at once
    bus.commit(refused, 1.0)
    assert reply_of(refused)["error"] == "ESRCH"


@T
def test_an_attached_guests_error_is_recorded_too(bus, guest, tool):
    first = guest.send("chip", seq=30, ops=[{"kind": "unmask", "device": "ghost"}])
    assert reply_of(first)["error"] == "ESRCH"
    tool.call("attach_device", guest="vm1", device="ghost", msi=True)
    again = guest.send("chip", seq=30, ops=[{"kind": "unmask", "device": "ghost"}])
    assert again.replayed and again.reply == first.reply  # not run again, though it would pass now


@T
def test_a_refusal_leaves_no_record_for_a_client_that_has_none(bus, guest, tool):
    """It changed nothing, so running it again is safe; recording it would let any stranger
    grow the record."""
    stranger = Peer(bus, "stranger")
    records = len(bus.record)
    first = stranger.send("raise", seq=3, guest="vm1", device="ghost")
    assert reply_of(first)["error"] == "ESRCH" and len(bus.record) == records
    assert stranger.send("raise", seq=3, guest="vm1", device="nic0").error is None  # and a change does
    assert len(bus.record) == records + 1


# --- guests and devices come and go --------------------------------------------------------------


@T
def test_attach_device_is_idempotent_and_a_name_is_host_wide(bus, guest, tool):
    again = tool.call("attach_device", guest="vm1", device="nic0", pin=5, trigger="level")
    assert again["created"] is False
    other = Peer(bus, "guest-vm2")
    other.call("attach", name="vm2", domid=2)
    reply = reply_of(tool.send("attach_device", guest="vm2", device="nic0", pin=5))
    assert reply["error"] == "EBUSY" and "attached to another guest" in reply["message"]


@T
def test_a_restarted_guest_replaces_its_stale_session(bus, guest, tool):
    new = Peer(bus, "guest-vm1-restarted")
    assert new.call("attach", name="vm1", domid=1)["replaced"] == 1
    assert reply_of(guest.send("chip", ops=[]))["error"] == "ESRCH"  # the old session is gone
    assert reply_of(tool.send("raise", guest="vm1", device="nic0"))["error"] == "ESRCH"  # with its devices
    assert guest.seq and new.call("chip", ops=[]) == {}


@T
def test_detach_removes_the_guest_and_its_devices(bus, guest, tool):
    result = guest.call("detach")
    assert sorted(result["devices"]) == ["disk0", "nic0"]
    assert state(bus)["guests"] == []
    assert reply_of(tool.send("raise", guest="vm1", device="nic0"))["error"] == "ESRCH"


@T
def test_program_msi_plugs_an_msi_device_the_guest_enumerates(bus, guest, tool):
    assert guest.call("program_msi", device="net1", address=0xFEE00000, data=0x61) == {"vector": 0x61}
    assert tool.call("attach_device", guest="vm1", device="net1", msi=True)["created"] is False
    out = tool.send("raise", guest="vm1", device="net1")
    assert reply_of(out)["result"]["delivered"] == 0  # masked until the driver unmasks
    out = guest.send("chip", ops=[{"kind": "unmask", "device": "net1"}])
    (event,) = events_for(out, "guest-vm1")
    assert event["args"] == {"vector": 0x61, "chip": "msi", "device": "net1", "status": {"net1": 1}, "epoch": EPOCH}
    out = tool.send("msi", guest="vm1", address=0xFEE00000, data=0x61, count=3)
    assert len(events_for(out, "guest-vm1")) == 3


# --- forwarded queries ---------------------------------------------------------------------------


@T
def test_interrupts_is_forwarded_to_the_guest_and_its_answer_relayed(bus, guest, tool):
    out = tool.send("interrupts", seq=5, guest="vm1", format="json")
    assert out.reply is None
    (query,) = events_for(out, "guest-vm1")
    assert query["event"] == "query" and query["args"]["format"] == "json"
    qid = query["args"]["query"]
    assert bus.wants_route("tool-2")
    # a retry while the guest thinks is not forwarded again
    retry = tool.send("interrupts", seq=5, guest="vm1", format="json")
    assert retry.reply is None and retry.sends == [] and retry.replayed
    # the guest answers in the wrong shape, then right
    assert reply_of(guest.send("answer", query=qid, text="x"))["error"] == "EINVAL"
    out = guest.send("answer", query=qid, rows=[{"irq": 5, "count": 1}])
    (held,) = [msgpack.unpackb(s.frame) for s in out.sends if s.client == "tool-2"]
    assert held["seq"] == 5 and held["result"] == {"guest": "vm1", "domid": 1, "rows": [{"irq": 5, "count": 1}]}
    assert not bus.wants_route("tool-2")
    # `interrupts` is read-only and its answer is not recorded: a late retry asks the guest again
    late = tool.send("interrupts", seq=5, guest="vm1", format="json")
    assert late.reply is None and [e["event"] for e in events_for(late, "guest-vm1")] == ["query"]


@T
def test_only_the_asked_guest_may_answer(bus, guest, tool):
    other = Peer(bus, "guest-vm2")
    other.call("attach", name="vm2", domid=2)
    out = tool.send("interrupts", guest="vm1")
    qid = events_for(out, "guest-vm1")[0]["args"]["query"]
    assert reply_of(other.send("answer", query=qid, text="lies"))["error"] == "EPERM"
    assert len(bus.queries) == 1


@T
def test_a_guest_that_does_not_answer_times_out(bus, guest, tool):
    tool.send("interrupts", seq=8, guest="vm1")
    assert bus.next_deadline() == pytest.approx(3.0)
    assert bus.tick(2.5) == []
    (out,) = bus.tick(3.0)
    (send,) = out.sends
    reply = msgpack.unpackb(send.frame)
    assert send.client == "tool-2" and reply["seq"] == 8 and reply["error"] == "ETIMEDOUT"
    assert len(bus.queries) == 0


@T
def test_a_guest_that_detaches_fails_its_open_queries(bus, guest, tool):
    tool.send("interrupts", seq=8, guest="vm1")
    out = guest.send("detach")
    (send,) = [s for s in out.sends if s.client == "tool-2"]
    assert msgpack.unpackb(send.frame)["error"] == "ESRCH"


@T
def test_show_lists_guests_by_domid(bus, guest):
    other = Peer(bus, "guest-vm0")
    other.call("attach", name="vm0", domid=0)
    assert [g["name"] for g in state(bus)["guests"]] == ["vm0", "vm1"]
    assert state(bus)["next"] is None
    assert [g["name"] for g in Peer(bus, "observer-2").call("show", guest=0)["guests"]] == ["vm0"]


@T
def test_show_pages_past_the_message_limit_without_skipping_a_guest(bus, tool):
    """1,024 guests with a few devices each do not fit in one 1 MiB message: pages by domid."""
    for domid in range(2, 402):
        Peer(bus, f"guest-{domid}").call("attach", name=f"vm{domid}", domid=domid)
        for n in range(8):
            tool.call("attach_device", guest=domid, device=f"d{domid}-{n}", **({"msi": True} if n % 2 else {"pin": 5 + n}))
    observer = Peer(bus, "pager")
    pages = [observer.call("show")]
    while pages[-1]["next"] is not None:
        pages.append(observer.call("show", after=pages[-1]["next"]))
    assert len(pages) > 1
    assert all(len(envelope.encode(p)) <= SHOW_PAGE_BYTES + 64 * 1024 for p in pages)
    assert [g["domid"] for p in pages for g in p["guests"]] == list(range(2, 402))


@T
def test_virtual_interrupts_reach_only_the_guest_that_bound_them(bus, guest, tool):
    other = Peer(bus, "guest-vm2")
    other.call("attach", name="vm2", domid=2)
    assert tool.call("send_virq", guest="vm1", virq="memory") == {"delivered": 0}  # not bound: opted out
    guest.call("bind_virq", virq="memory", vector=0x41)
    out = tool.send("send_virq", guest=1, virq="memory")
    assert reply_of(out)["result"] == {"delivered": 1}
    assert [s.client for s in out.sends] == ["guest-vm1"]
    assert events_for(out, "guest-vm1") == [{"v": 1, "event": "irq", "args": {"vector": 0x41, "chip": "virq", "status": {}, "epoch": EPOCH}}]
    (g1, g2) = state(bus)["guests"]
    assert g1["virqs"] == {"memory": {"vector": 0x41, "sent": 1}} and g2["virqs"] == {}


# --- restarts: the instance epoch and `locate` ------------------------------------------------------


@T
def test_every_instance_says_its_epoch_where_generations_are_read():
    a, b = IrqBus(), IrqBus()
    assert a.epoch != b.epoch and 1 <= a.epoch < 1 << 63  # drawn at start: a new instance, a new epoch
    bus = IrqBus(epoch=EPOCH)
    assert Peer(bus, "g").call("attach", name="vm1", domid=1)["epoch"] == EPOCH
    assert Peer(bus, "t").call("attach_device", guest="vm1", device="nic0", pin=5)["epoch"] == EPOCH
    shown = Peer(bus, "o").call("show")
    assert shown["epoch"] == EPOCH and shown["up_s"] == 0


@T
def test_locate_says_which_instance_answers_and_where_the_guest_and_device_are(bus, guest, tool):
    tool.now = 4.5  # the fixture's first request came at 1.0: the instance's start
    assert tool.call("locate", guest="vm1", device="nic0") == {
        "epoch": EPOCH, "up_s": 3.5, "attached": True, "domid": 1, "device": "plugged"}
    assert tool.call("locate", guest=1, device="net9")["device"] == "absent"
    assert tool.call("locate", guest="vm9") == {"epoch": EPOCH, "up_s": 3.5, "attached": False, "domid": None}
    Peer(bus, "guest-vm2").call("attach", name="vm2", domid=2)
    assert tool.call("locate", guest="vm2", device="nic0")["device"] == "elsewhere"
    out = tool.send("locate", guest="vm1", device="bad name")
    assert reply_of(out)["error"] == "EINVAL"


@T
def test_a_chip_request_that_wants_no_reply_is_recorded_and_answered_only_if_refused(bus, guest):
    """An interrupt's ack ("reply": false) is executed and its reply recorded as any other --
    a retry of the same frame is answered from the record -- but the shell is told not to
    send it; a refused one is answered, so the guest learns of it."""
    frame = guest.frame("chip", {"ops": [{"kind": "mask", "pin": 5}], "reply": False})
    out = bus.handle(frame, guest.now)
    assert out.error is None and out.reply_wanted is False and reply_of(out)["ok"]
    retry = bus.handle(frame, guest.now)
    assert retry.replayed and retry.reply_wanted and retry.reply == out.reply
    refused = guest.send("chip", clear=[["nosuch", 1]], reply=False)
    assert refused.error is not None and refused.reply_wanted and not reply_of(refused)["ok"]
    assert guest.send("chip", ops=[{"kind": "unmask", "pin": 5}]).reply_wanted  # the default: answered
    assert reply_of(guest.send("chip", reply=0))["error"] == "EINVAL"  # a bool, nothing else
