"""The hypervisor core end to end without sockets: reservation rules, toolstack, bad input, replay."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from hypervisor.dispatch import Hypervisor
from wire import envelope
from wire.operations import Endpoint

pytestmark = pytest.mark.timeout(10)
G, A = Endpoint.GUEST, Endpoint.ADMIN


class Peer:
    """A client of the sans-I/O hypervisor: numbers its requests like RpcClient does."""

    def __init__(self, hv: Hypervisor, endpoint: Endpoint, client: str) -> None:
        self.hv, self.endpoint, self.client, self.seq = hv, endpoint, client, 0
        self.now = 0.0

    def raw(self, frame: bytes) -> dict:
        return msgpack.unpackb(self.hv.handle(self.endpoint, frame, self.now).reply)

    def call(self, op: str, seq: int | None = None, **args) -> dict:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.raw(envelope.encode(envelope.request(op, seq, self.client, args)))

    def ok(self, op: str, **args) -> dict:
        reply = self.call(op, **args)
        assert reply["ok"], reply
        return reply["result"]


def snapshot(hv: Hypervisor) -> tuple:
    t = hv.table
    return (
        hv.pool.free_pages,
        tuple((d.domid, d.name, d.target_pages, d.max_pages, tuple(hv.pool.extents_of(d.domid))) for d in t.domains()),
    )


@pytest.fixture
def hv():
    return Hypervisor(total_pages=10_000)


@pytest.fixture
def admin(hv):
    return Peer(hv, A, "toolstack")


_instances = itertools.count(1)


def guest(hv, name="g1", memory=1000, maxmem=2000) -> Peer:
    """A new guest instance: its client id is unique, as the protocol asks."""
    peer = Peer(hv, G, f"client-{name}-{next(_instances)}")
    peer.result = peer.ok("register", name=name, memory_pages=memory, max_pages=maxmem)
    return peer


def test_register_assigns_domids_and_initial_pages(hv, admin):
    a, b = guest(hv, "a"), guest(hv, "b", memory=500)
    assert (a.result["domid"], b.result["domid"]) == (1, 2)
    assert sum(c for _, c in a.result["extents"]) == 1000
    assert hv.pool.free_pages == 10_000 - 1500
    assert admin.ok("info") == {"total_pages": 10_000, "free_pages": 8500, "allocated_pages": 1500, "domains": 2}
    assert admin.ok("audit") == {"ok": True, "problems": []}


def test_duplicate_name_is_eexist_and_changes_nothing(hv):
    guest(hv, "a")
    before = snapshot(hv)
    reply = Peer(hv, G, "other").call("register", name="a", memory_pages=10, max_pages=10)
    assert reply["error"] == "EEXIST"
    assert snapshot(hv) == before


def test_a_domain_the_pool_cannot_build_is_enomem_with_the_figures(hv):
    guest(hv, "a", memory=9000, maxmem=9000)
    reply = Peer(hv, G, "big").call("register", name="big", memory_pages=2000, max_pages=2000)
    assert reply["error"] == "ENOMEM"
    assert "2000" in reply["message"] and "1000 free" in reply["message"]
    assert len(hv.table) == 1 and hv.pool.free_pages == 1000


def test_memory_above_maxmem_is_einval(hv):
    reply = Peer(hv, G, "x").call("register", name="x", memory_pages=20, max_pages=10)
    assert reply["error"] == "EINVAL"


def test_increase_grants_min_of_ask_free_and_maxmem_room(hv):
    g = guest(hv, "a", memory=1000, maxmem=1300)
    assert g.ok("increase_reservation", nr_pages=200)["granted"] == 200
    assert g.ok("increase_reservation", nr_pages=512)["granted"] == 100  # maxmem room
    assert g.ok("increase_reservation", nr_pages=10)["granted"] == 0  # at maxmem: a normal answer
    big = guest(hv, "b", memory=8600, maxmem=9000)
    assert hv.pool.free_pages == 100
    assert big.ok("increase_reservation", nr_pages=512)["granted"] == 100  # host short: partial
    assert big.ok("increase_reservation", nr_pages=512) == {"extents": [], "granted": 0}


def test_decrease_takes_back_own_pages_only(hv):
    a, b = guest(hv, "a"), guest(hv, "b")
    start, count = b.result["extents"][0]
    before = snapshot(hv)
    reply = a.call("decrease_reservation", extents=[[start, 1]])
    assert reply["error"] == "EPERM"
    assert snapshot(hv) == before
    mine = a.result["extents"][0]
    assert a.ok("decrease_reservation", extents=[[mine[0], 10]])["released"] == 10
    assert hv.pool.free_pages == before[0] + 10


@pytest.mark.parametrize("case, code", [("past-end", "EINVAL"), ("free", "EPERM"), ("twice", "EINVAL"), ("straddle", "EPERM")])
def test_bad_decreases_change_nothing(hv, case, code):
    a = guest(hv, "a")
    (start, count), = a.result["extents"]
    free_start, free_count = hv.pool.free_extents()[0]
    assert free_start + free_count == start or start + count == free_start  # the free space touches a's pages
    edge = start - 1 if free_start + free_count == start else start + count - 1
    extents = {
        "past-end": [[999_999, 1]],
        "free": [[free_start, 1]],
        "twice": [[start, 2], [start + 1, 2]],
        "straddle": [[edge, 2]],
    }[case]
    before = snapshot(hv)
    reply = a.call("decrease_reservation", extents=extents)
    assert reply["ok"] is False and reply["error"] == code, reply
    assert snapshot(hv) == before
    assert Peer(hv, A, "t").ok("audit")["ok"]


def test_guest_requests_before_register_are_esrch(hv):
    reply = Peer(hv, G, "stranger").call("increase_reservation", nr_pages=1)
    assert reply["error"] == "ESRCH"


def test_a_guest_cannot_set_targets_and_the_toolstack_cannot_balloon(hv):
    g = guest(hv)
    assert g.call("mem_set", domain=1, target_pages=5)["error"] == "EPERM"
    assert Peer(hv, A, "t").call("increase_reservation", nr_pages=5)["error"] == "EPERM"
    assert hv.table.resolve(1).target_pages == 1000


def test_mem_set_notifies_the_guest_and_get_target_reads_it(hv, admin):
    g = guest(hv, "web")
    out = hv.handle(A, envelope.encode(envelope.request("mem_set", 1, "t2", {"domain": "web", "target_pages": 1500})), 0.0)
    push, virq = out.notifications
    assert (push.client, push.domid, push.event["args"]["target_pages"]) == (g.client, 1, 1500)
    assert (virq.domid, virq.virq) == (1, "target")
    assert g.ok("get_target")["target_pages"] == 1500
    admin.ok("mem_set", domain=1, target_pages=1200)
    assert g.ok("status", balloon={"state": "done", "current_kb": 4000})["target_pages"] == 1200


def test_mem_set_above_maxmem_and_unknown_domains_are_refused(hv, admin):
    guest(hv, "web", maxmem=2000)
    assert admin.call("mem_set", domain="web", target_pages=2001)["error"] == "EINVAL"
    assert admin.call("mem_set", domain="nope", target_pages=5)["error"] == "ESRCH"
    assert admin.call("mem_set", domain=9, target_pages=5)["error"] == "ESRCH"
    assert admin.call("destroy", domain=9)["error"] == "ESRCH"
    assert hv.table.resolve("web").target_pages == 1000


def test_destroy_returns_every_page(hv, admin):
    guest(hv, "a"), guest(hv, "b")
    assert admin.ok("destroy", domain="a")["released"] == 1000
    assert [d["name"] for d in admin.ok("list")["domains"]] == ["b"]
    assert hv.pool.free_pages == 9000 and admin.ok("audit")["ok"]
    guest(hv, "a")  # the name is free again; the domid is new
    assert hv.table.resolve("a").domid == 3


def test_list_rows_carry_pages_state_and_balloon_stats(hv, admin):
    g = guest(hv, "a")
    g.ok("status", balloon={"state": "retrying", "schedule_delay": 4})
    (row,) = admin.ok("list")["domains"]
    assert row["current_pages"] == 1000 and row["target_pages"] == 1000 and row["max_pages"] == 2000
    assert row["state"] == "running" and row["balloon"]["state"] == "retrying"
    admin.now = 1000.0
    assert admin.ok("list")["domains"][0]["state"] == "unresponsive"


def test_a_retried_request_is_answered_from_the_record(hv):
    g = guest(hv, "a", memory=1000, maxmem=5000)
    first = g.call("increase_reservation", seq=50, nr_pages=100)
    free = hv.pool.free_pages
    again = g.call("increase_reservation", seq=50, nr_pages=100)
    assert again == first and hv.pool.free_pages == free
    start = first["result"]["extents"][0][0]
    done = g.call("decrease_reservation", seq=51, extents=[[start, 100]])
    assert g.call("decrease_reservation", seq=51, extents=[[start, 100]]) == done
    assert hv.pool.free_pages == free + 100


def test_a_sequence_reused_for_another_op_or_too_old_is_eproto(hv):
    g = guest(hv, "a")
    g.call("get_target", seq=7)
    assert g.call("increase_reservation", seq=7, nr_pages=1)["error"] == "EPROTO"
    for seq in range(100, 140):
        g.call("get_target", seq=seq)
    before = snapshot(hv)
    assert g.call("increase_reservation", seq=8, nr_pages=1)["error"] == "EPROTO"
    assert snapshot(hv) == before


def test_error_replies_are_recorded_too(hv):
    g = guest(hv, "a")
    first = g.call("increase_reservation", seq=9, nr_pages=0)
    assert first["error"] == "EINVAL"
    assert g.call("increase_reservation", seq=9, nr_pages=0) == first


@pytest.mark.parametrize("frame", [b"\xc1\x00", msgpack.packb({"v": 1}), b"\x92\x01", msgpack.packb({"v": 1, "op": "nuke", "seq": 1, "client": "x"})])
def test_garbage_gets_an_error_reply_and_the_host_keeps_serving(hv, admin, frame):
    guest(hv, "a")
    before = snapshot(hv)
    reply = msgpack.unpackb(hv.handle(G, frame, 0.0).reply)
    assert reply["ok"] is False and reply["error"] in {"EPROTO", "ENOSYS"} and reply["message"]
    assert snapshot(hv) == before
    assert admin.ok("info")["domains"] == 1


def test_freed_pages_raise_memory_available_once_per_shortage(hv, admin):
    hog = guest(hv, "hog", memory=9000, maxmem=9000)
    needy = guest(hv, "needy", memory=500, maxmem=2000)
    full = guest(hv, "full", memory=500, maxmem=500)
    assert needy.ok("increase_reservation", nr_pages=512)["granted"] == 0  # host short
    assert full.ok("increase_reservation", nr_pages=1)["granted"] == 0  # at maxmem: not waiting on the host
    start = hog.result["extents"][0][0]
    out = hv.handle(G, envelope.encode(envelope.request("decrease_reservation", 99, hog.client, {"extents": [[start, 100]]})), 0.0)
    assert [(n.domid, n.virq) for n in out.notifications] == [(2, "memory")]
    out = hv.handle(G, envelope.encode(envelope.request("decrease_reservation", 100, hog.client, {"extents": [[start + 100, 100]]})), 0.0)
    assert out.notifications == []  # told once; it retries, and a short grant marks it again
    assert needy.ok("increase_reservation", nr_pages=512)["granted"] == 200
    out = hv.handle(A, envelope.encode(envelope.request("destroy", 5, "t", {"domain": "hog"})), 0.0)
    assert [(n.domid, n.virq) for n in out.notifications if n.virq] == [(2, "memory")]
