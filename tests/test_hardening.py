"""Hostile input against both sans-I/O servers: each kind of bad input the issue found, the
replay rule under a flood of other clients, and the bounds on what a stranger can make a server
keep. (Property-based fuzzing of every operation lives in test_fuzz_dispatch.py.)"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from hypervisor.dispatch import Hypervisor
from irqbus.backlog import Backlog
from irqbus.dispatch import IrqBus
from wire import envelope
from wire.envelope import MAX_MESSAGE_BYTES
from wire.operations import OPERATIONS, Endpoint
from wire.replay import ReplayRecord

pytestmark = pytest.mark.timeout(30)
G, A = Endpoint.GUEST, Endpoint.ADMIN
DEEP = 1020  # with the envelope and args maps, just under msgpack's own limit of 1,024 levels; past Python's repr() limit


def deep_list(levels: int = DEEP) -> bytes:
    """The msgpack of [[[...[1]...]]]: built as bytes, since packb itself recurses."""
    return b"\x91" * levels + b"\x01"


def frame_with(op: str, seq: int, client: str, args: dict[str, Any], raw: dict[str, bytes] | None = None) -> bytes:
    """A request frame; `raw` values are spliced in as ready-made msgpack (deep nesting)."""
    raw = raw or {}
    body = {"v": 1, "op": op, "seq": seq, "client": client, "args": args}
    if not raw:
        return msgpack.packb(body)
    head = msgpack.packb({k: v for k, v in body.items() if k != "args"})
    head = bytes([head[0] + 1]) + head[1:]  # one more key in the fixmap: args
    merged = dict(args)
    inner = msgpack.packb(merged)
    count = len(merged) + len(raw)
    parts = [bytes([0x80 | count]), inner[1:]] + [msgpack.packb(k) + v for k, v in raw.items()]
    return head + msgpack.packb("args") + b"".join(parts)


def reply(frame: bytes) -> dict[str, Any]:
    return msgpack.unpackb(frame)


class Peer:
    def __init__(self, send, client: str) -> None:
        self.send, self.client, self.seq = send, client, 0

    def frame(self, op: str, seq: int | None = None, **args: Any) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return msgpack.packb({"v": 1, "op": op, "seq": seq, "client": self.client, "args": args})

    def call(self, op: str, seq: int | None = None, **args: Any) -> dict[str, Any]:
        return reply(self.send(self.frame(op, seq, **args)))

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        r = self.call(op, **args)
        assert r["ok"], r
        return r["result"]


def fingerprint(hv: Hypervisor) -> tuple:
    t = hv.table
    return (
        hv.pool.free_pages,
        tuple((d.domid, d.name, d.client, d.target_pages, d.max_pages, d.target_writes, tuple(hv.pool.extents_of(d.domid)))
              for d in t.domains()),
    )


@pytest.fixture
def hv() -> Hypervisor:
    hv = Hypervisor(total_pages=100_000)
    for name in ("web", "db"):
        g = Peer(lambda f: hv.handle(G, f, 1.0).reply, f"{name}-client")
        g.ok("register", name=name, memory_pages=1000, max_pages=4000)
    return hv


def admin(hv: Hypervisor, client: str = "toolstack") -> Peer:
    return Peer(lambda f: hv.handle(A, f, 1.0).reply, client)


@pytest.fixture
def bus() -> IrqBus:
    bus = IrqBus()
    guest = Peer(lambda f: bus.handle(f, 1.0).reply, "vm1-irq")
    guest.ok("attach", name="vm1", domid=1)
    guest.ok("program_pin", pin=5, trigger="level")
    guest.ok("chip", ops=[{"kind": "unmask", "pin": 5}])
    tool = Peer(lambda f: bus.handle(f, 1.0).reply, "dev")
    tool.ok("attach_device", guest="vm1", device="nic0", pin=5, trigger="level")
    tool.ok("attach_device", guest="vm1", device="net1", msi=True)
    return bus


# --- 1. deep nesting: nothing recurses on input --------------------------------------------


def _hypervisor_fields() -> list[tuple[Endpoint, str, str]]:
    out = []
    for op in OPERATIONS.values():
        if op.endpoint in (G, A):
            for name in [*op.required, *op.optional, "unknown_arg"]:
                out.append((op.endpoint, op.name, name))
    return out


@pytest.mark.parametrize(("endpoint", "op", "field"), _hypervisor_fields())
def test_a_list_nested_1020_deep_in_any_hypervisor_field_is_refused_in_a_short_message(hv, endpoint, op, field):
    before = fingerprint(hv)
    frame = frame_with(op, 7, "attacker", {}, raw={field: deep_list()})
    out = hv.handle(endpoint, frame, 1.0)
    r = reply(out.reply)
    assert not r["ok"] and r["error"] in ("EINVAL", "EPERM") and len(r["message"]) <= 300
    assert fingerprint(hv) == before


@pytest.mark.parametrize("op", sorted(n for n, o in OPERATIONS.items() if o.endpoint is Endpoint.IRQBUS))
def test_a_list_nested_1020_deep_in_any_irqbus_field_is_refused_in_a_short_message(bus, op):
    spec = OPERATIONS[op]
    for field in [*spec.required, *spec.optional, "unknown_arg"]:
        before = msgpack.packb(bus.router.guests["vm1"].snapshot(1.0))
        out = bus.handle(frame_with(op, 7, "attacker", {}, raw={field: deep_list()}), 1.0)
        r = reply(out.reply)
        assert not r["ok"] and len(r["message"]) <= 300, (field, r)
        assert msgpack.packb(bus.router.guests["vm1"].snapshot(1.0)) == before


@pytest.mark.parametrize("key", ["v", "seq", "client", "op", "args", "extra"])
def test_deep_nesting_in_the_envelope_is_a_short_eproto(hv, key):
    body = {"v": 1, "op": "list", "seq": 1, "client": "c", "args": {}}
    body.pop(key, None)
    head = msgpack.packb(body)
    frame = bytes([head[0] + 1]) + head[1:] + msgpack.packb(key) + deep_list()
    r = reply(hv.handle(A, frame, 1.0).reply)
    assert r["error"] == "EPROTO" and len(r["message"]) <= 300


def test_nesting_beyond_msgpacks_limit_is_named(hv):
    r = reply(hv.handle(A, deep_list(5000), 1.0).reply)
    assert r["error"] == "EPROTO" and "nested deeper" in r["message"]


# --- 2. domain references: ASCII digits are a domid, numeric names do not exist --------------


@pytest.mark.parametrize("ref", ["²", "①", "٣", "３", "1²"])
@pytest.mark.parametrize("op", ["mem_set", "mem_max", "destroy"])
def test_unicode_digits_never_name_a_domid(hv, ref, op):
    before = fingerprint(hv)
    args = {"domain": ref, **({"target_pages": 10} if op == "mem_set" else {}), **({"max_pages": 4000} if op == "mem_max" else {})}
    r = admin(hv).call(op, **args)
    assert r["error"] == "ESRCH" and fingerprint(hv) == before


def test_ascii_digits_in_text_are_a_domid(hv):
    assert admin(hv).ok("mem_set", domain="2", target_pages=500)["domid"] == 2


@pytest.mark.parametrize("name", ["٣", "²", "12", "+3", " 7", "1_0", "一"])
def test_a_name_that_reads_as_a_number_is_refused_at_registration_and_attach(hv, name):
    g = Peer(lambda f: hv.handle(G, f, 1.0).reply, "newcomer")
    r = g.call("register", name=name, memory_pages=10, max_pages=10)
    assert r["error"] == "EINVAL" and "number" in r["message"]
    bus = IrqBus()
    r = Peer(lambda f: bus.handle(f, 1.0).reply, "g").call("attach", name=name, domid=9)
    assert r["error"] == "EINVAL" and len(bus.router) == 0


# --- 3. the replay rule ----------------------------------------------------------------------


def test_an_older_seq_is_refused_even_with_one_request_remembered(hv):
    g = Peer(lambda f: hv.handle(G, f, 1.0).reply, "fresh")
    g.ok("register", name="fresh", memory_pages=10, max_pages=2000)
    g.seq = 10
    g.ok("increase_reservation", nr_pages=5)
    before = fingerprint(hv)
    r = g.call("increase_reservation", seq=9, nr_pages=5)
    assert r["error"] == "EPROTO" and "older" in r["message"] and fingerprint(hv) == before


def test_a_seq_reused_with_other_args_is_refused(hv):
    g = Peer(lambda f: hv.handle(G, f, 1.0).reply, "fresh")
    g.ok("register", name="fresh", memory_pages=10, max_pages=2000)
    first = g.call("increase_reservation", seq=5, nr_pages=5)
    before = fingerprint(hv)
    r = g.call("increase_reservation", seq=5, nr_pages=6)
    assert r["error"] == "EPROTO" and "already used" in r["message"] and fingerprint(hv) == before
    assert g.call("increase_reservation", seq=5, nr_pages=5) == first  # the true retry is still answered


@pytest.mark.timeout(240)
def test_a_million_other_clients_cannot_make_a_retry_execute_twice(hv):
    """The guest's reply is lost; a million clients come and go (changing things, reading,
    failing) over 100 simulated seconds; the retry is answered from the record."""
    now = [1.0]
    guest = Peer(lambda f: hv.handle(G, f, now[0]).reply, "retrying-guest")
    guest.ok("register", name="retrier", memory_pages=100, max_pages=10_000)
    frame = guest.frame("increase_reservation", nr_pages=512)
    first = hv.handle(G, frame, now[0]).reply
    assert reply(first)["result"]["granted"] == 512
    kinds = itertools.cycle([
        (A, lambda c, i: {"op": "mem_set", "args": {"domain": "db", "target_pages": 1 + i % 900}}),
        (A, lambda c, i: {"op": "list", "args": {}}),
        (G, lambda c, i: {"op": "register", "args": {"name": "web", "memory_pages": 1, "max_pages": 1}}),  # EEXIST
        (G, lambda c, i: {"op": "increase_reservation", "args": {"nr_pages": 512}}),  # ESRCH: not registered
    ])
    most_bytes = 0
    for i in range(1_000_000):
        endpoint, make = next(kinds)
        client = f"c{i:07d}"
        body = make(client, i)
        hv.handle(endpoint, msgpack.packb({"v": 1, "seq": 1, "client": client, **body}), now[0])
        if i % 10_000 == 0:
            now[0] += 1.0
            most_bytes = max(most_bytes, hv.record.unbound_bytes)
    pages = hv.table.current_pages(hv.table.resolve("retrier"))
    free = hv.pool.free_pages
    again = hv.handle(G, frame, now[0])
    assert again.replayed and again.reply == first
    assert hv.table.current_pages(hv.table.resolve("retrier")) == pages == 612 and hv.pool.free_pages == free
    assert most_bytes <= hv.record.max_bytes
    assert hv.table.audit() == []


def test_read_only_replies_are_not_recorded(hv):
    before = len(hv.record)
    for i in range(1000):
        assert admin(hv, f"reader-{i}").call("list")["ok"]
    assert len(hv.record) == before and hv.record.unbound_bytes == 0


def test_a_full_record_refuses_a_new_clients_change_before_executing_it():
    hv = Hypervisor(total_pages=10_000)
    hv.record = ReplayRecord(max_bytes=4 * 1024, horizon_s=60.0)
    Peer(lambda f: hv.handle(G, f, 1.0).reply, "g").ok("register", name="vm", memory_pages=10, max_pages=100)
    outcomes = [reply(hv.handle(A, admin(hv, f"t{i}").frame("mem_set", domain="vm", target_pages=i + 1), 1.0).reply)
                for i in range(40)]
    refused = [r for r in outcomes if not r["ok"]]
    assert refused and all(r["error"] == "EAGAIN" for r in refused)
    assert hv.table.resolve("vm").target_writes == 40 - len(refused)  # the refused were not executed
    assert hv.record.unbound_bytes <= 4 * 1024
    # past the horizon the oldest records go and newcomers are admitted again
    r = reply(hv.handle(A, admin(hv, "late").frame("mem_set", domain="vm", target_pages=5), 62.0).reply)
    assert r["ok"]


def test_a_destroyed_guests_retry_of_register_is_answered_not_executed(hv):
    g = Peer(lambda f: hv.handle(G, f, 1.0).reply, "short-lived")
    frame = g.frame("register", name="brief", memory_pages=10, max_pages=10)
    first = hv.handle(G, frame, 1.0).reply
    admin(hv).ok("destroy", domain="brief")
    again = hv.handle(G, frame, 2.0)
    assert again.replayed and again.reply == first
    with pytest.raises(Exception):
        hv.table.resolve("brief")


# --- 4, 5. nothing unbounded is kept or quoted back ----------------------------------------


def test_a_megabyte_op_name_is_neither_kept_nor_quoted(hv):
    frame = msgpack.packb({"v": 1, "op": "x" * (MAX_MESSAGE_BYTES - 100), "seq": 1, "client": "big", "args": {}})
    out = hv.handle(A, frame, 1.0)
    assert reply(out.reply)["error"] == "ENOSYS" and len(out.reply) < 400 and len(hv.record) == 2


def test_two_hundred_thousand_unknown_arguments_get_a_short_reply(hv):
    args = {f"k{i}": 0 for i in range(200_000)}
    frame = msgpack.packb({"v": 1, "op": "list", "seq": 1, "client": "many", "args": args})
    assert len(frame) <= MAX_MESSAGE_BYTES * 2
    out = hv.handle(A, frame[:MAX_MESSAGE_BYTES] if len(frame) > MAX_MESSAGE_BYTES else frame, 1.0)
    r = reply(out.reply)
    assert not r["ok"] and len(out.reply) < 600


def test_unknown_arguments_are_counted_and_a_few_shown(hv):
    args = {f"k{i:05d}": 0 for i in range(50_000)}
    r = admin(hv).call("info", **args)
    assert r["error"] == "EINVAL" and "50000 unknown" in r["message"] and len(r["message"]) < 300


# --- 8. envelope edges -----------------------------------------------------------------------


@pytest.mark.parametrize("v", [True, 1.0, "1", 2, None])
def test_only_the_integer_1_is_version_1(hv, v):
    r = reply(hv.handle(A, msgpack.packb({"v": v, "op": "info", "seq": 1, "client": "c", "args": {}}), 1.0).reply)
    assert r["error"] == "EPROTO" and "version" in r["message"]


def test_nil_args_are_no_args(hv):
    r = reply(hv.handle(A, msgpack.packb({"v": 1, "op": "info", "seq": 1, "client": "c", "args": None}), 1.0).reply)
    assert r["ok"] and r["result"]["domains"] == 2


def test_a_non_string_map_key_is_named(hv):
    frame = msgpack.packb({"v": 1, "op": "info", "seq": 1, "client": "c", "args": {1: 2}}, strict_types=False)
    r = reply(hv.handle(A, frame, 1.0).reply)
    assert r["error"] == "EPROTO" and "map keys must be strings" in r["message"]


@pytest.mark.parametrize(("frame", "words"), [
    (b"\x81\xa1v", "truncated"),
    (msgpack.packb({"v": 1}) + b"\x01", "after the end"),
    (b"\xc1", "starts no msgpack value"),
])
def test_garbage_is_named(hv, frame, words):
    r = reply(hv.handle(A, frame, 1.0).reply)
    assert r["error"] == "EPROTO" and words in r["message"]


# --- 4. a guest that never reads cannot make irqbus queue without bound -------------------


def test_a_guest_that_never_reads_has_its_events_capped_and_counted(bus):
    bus.backlog = Backlog(per_guest=100, total=1000)
    tool = Peer(lambda f: bus.handle(f, 1.0), "dev")
    guest = Peer(lambda f: bus.handle(f, 1.0).reply, "vm1-irq")
    tool.seq = guest.seq = 100  # the fixture's requests came first
    guest.ok("program_msi", device="net1", address=0xFEE00000, data=0x41)
    guest.ok("chip", ops=[{"kind": "unmask", "device": "net1"}])
    sent = 0
    for _ in range(5):
        out = tool.send(tool.frame("msi", guest="vm1", device="net1", count=60))
        sent += len(out.sends)
    machine = bus.router.guests["vm1"]
    assert sent == 100 and machine.dropped == 200 and bus.backlog.total == 100
    assert machine.snapshot(1.0)["dropped"] == 200
    guest.ok("chip", ops=[])  # the guest talks again: it is reading
    out = tool.send(tool.frame("msi", guest="vm1", device="net1"))
    (event,) = [msgpack.unpackb(s.frame) for s in out.sends]
    assert event["args"]["dropped"] == 200 and bus.backlog.total == 1


def test_all_guests_together_share_a_bound(bus):
    bus.backlog = Backlog(per_guest=100, total=150)
    tool = Peer(lambda f: bus.handle(f, 1.0), "dev")
    tool.seq = 100
    g2 = Peer(lambda f: bus.handle(f, 1.0).reply, "vm2-irq")
    g2.ok("attach", name="vm2", domid=2)
    for client, name, dev in (("vm1-irq", "vm1", "net1"), ("vm2-irq", "vm2", "net2")):
        if dev == "net2":
            tool.send(tool.frame("attach_device", guest="vm2", device="net2", msi=True))
        g = Peer(lambda f: bus.handle(f, 1.0).reply, client)
        g.seq = 100
        g.ok("program_msi", device=dev, address=0xFEE00000, data=0x41)
        g.ok("chip", ops=[{"kind": "unmask", "device": dev}])
    sends = [len(tool.send(tool.frame("msi", guest=n, device=d, count=120)).sends) for n, d in (("vm1", "net1"), ("vm2", "net2"))]
    assert sends == [100, 50] and bus.backlog.total == 150
