"""`snapshot`: the pool and every domain at one instant, so free + every domain's pages = total
on every reading, even when it takes several pages and the host changes between them."""

from __future__ import annotations

import msgpack
import pytest

from hypervisor.dispatch import LIST_PAGE_BYTES, SNAPSHOTS_HELD, Hypervisor
from tests.test_list_paging import DOMAINS, Admin, full_host, register  # noqa: F401 (full_host: a fixture)
from wire import envelope
from wire.envelope import MAX_MESSAGE_BYTES
from wire.errors import RemoteError
from wire.operations import Endpoint
from wire.pages import every_page

pytestmark = pytest.mark.timeout(60)


def read_all(admin: Admin, between=lambda: None) -> dict:
    """A whole snapshot, with `between()` changing the host after each page."""
    first = admin.call("snapshot")

    def call(op: str, args: dict) -> dict:
        between()
        return admin.call(op, args)

    return every_page(call, "snapshot", "domains", {"snapshot": first["snapshot"]}, first=first)


def balanced(snap: dict) -> bool:
    return snap["free_pages"] + sum(d["current_pages"] for d in snap["domains"]) == snap["total_pages"]


def test_a_small_host_is_one_page_with_the_pool_and_every_domain():
    hv = Hypervisor(total_pages=100)
    for i in range(3):
        register(hv, i)
    admin = Admin(hv)
    snap = admin.call("snapshot")
    assert snap["next"] is None and snap["snapshot"] == 0 and snap["total_pages"] == 100 and snap["free_pages"] == 97
    assert admin.call("snapshot") == snap  # one page: nothing held, nothing changed
    assert [d["domid"] for d in snap["domains"]] == [1, 2, 3] and balanced(snap)
    row = snap["domains"][0]
    assert {"name", "current_pages", "target_pages", "max_pages", "state", "balloon", "reported_s"} <= set(row)
    assert row["balloon"]["state"] == "hard-limited" and row["reported_s"] == 0.0


def test_pages_of_a_full_host_are_of_one_instant_while_the_host_changes():
    hv = Hypervisor(total_pages=DOMAINS + 1000)
    for i in range(DOMAINS):
        register(hv, i)
    admin = Admin(hv)
    before = admin.call("list")["domains"][:3]
    gone = iter(range(DOMAINS, 0, -1))  # from the last page backwards

    def churn() -> None:  # a domain destroyed, its pages freed, before each later page
        admin.call("destroy", {"domain": next(gone)})

    snap = read_all(admin, churn)
    assert len(admin.replies) > 3
    for frame in admin.replies:
        assert len(frame) < LIST_PAGE_BYTES + 4096 < MAX_MESSAGE_BYTES
    assert [d["domid"] for d in snap["domains"]] == list(range(1, DOMAINS + 1))  # as at the first page
    assert snap["domains"][:3] == [dict(b, reported_s=0.0) for b in before]
    assert balanced(snap) and snap["free_pages"] == 1000
    fresh = read_all(admin)
    assert balanced(fresh) and len(fresh["domains"]) < len(snap["domains"])


@pytest.mark.parametrize(
    "args, code, words",
    [
        ({"after": 5}, "EINVAL", "'snapshot' number"),
        ({"snapshot": 99, "after": 5}, "ESRCH", "no snapshot 99"),
        ({"snapshot": 0}, "EINVAL", "'snapshot'"),
        ({"snapshot": True}, "EINVAL", "'snapshot'"),
    ],
)
def test_bad_page_requests_are_refused_clearly(full_host, args, code, words):
    with pytest.raises(RemoteError) as err:
        Admin(full_host).call("snapshot", args)
    assert err.value.code == code and words in err.value.message


def test_after_must_be_a_cursor_the_snapshot_gave(full_host):
    admin = Admin(full_host)
    first = admin.call("snapshot")
    with pytest.raises(RemoteError) as err:
        admin.call("snapshot", {"snapshot": first["snapshot"], "after": first["next"] + 1})
    assert err.value.code == "EINVAL" and "'next'" in err.value.message
    again = admin.call("snapshot", {"snapshot": first["snapshot"], "after": first["next"]})
    assert again["domains"][0]["domid"] == first["next"] + 1


def test_only_the_latest_clients_snapshots_are_held(full_host):
    admins = [Admin(full_host) for _ in range(SNAPSHOTS_HELD + 1)]
    firsts = [a.call("snapshot") for a in admins]
    with pytest.raises(RemoteError) as err:  # the oldest was forgotten
        admins[0].call("snapshot", {"snapshot": firsts[0]["snapshot"], "after": firsts[0]["next"]})
    assert err.value.code == "ESRCH" and "take a new one" in err.value.message
    for admin, first in zip(admins[1:], firsts[1:]):
        assert admin.call("snapshot", {"snapshot": first["snapshot"], "after": first["next"]})["domains"]
    newer = admins[1].call("snapshot")  # a client keeps its latest two (a retry's and the first attempt's)
    assert admins[1].call("snapshot", {"snapshot": firsts[1]["snapshot"], "after": firsts[1]["next"]})["domains"]
    newest = admins[1].call("snapshot")
    with pytest.raises(RemoteError):
        admins[1].call("snapshot", {"snapshot": firsts[1]["snapshot"], "after": firsts[1]["next"]})
    for snap in (newer, newest):
        assert admins[1].call("snapshot", {"snapshot": snap["snapshot"], "after": snap["next"]})["domains"]
    assert newest["snapshot"] > newer["snapshot"] > firsts[-1]["snapshot"]


def test_the_guest_endpoint_cannot_take_one(full_host):
    frame = envelope.encode(envelope.request("snapshot", 1, "someone", {}))
    reply = msgpack.unpackb(full_host.handle(Endpoint.GUEST, frame, 0.0).reply)
    assert not reply["ok"] and reply["error"] == "EPERM"


def test_a_heartbeat_without_statistics_keeps_the_last_ones_and_reports_them_as_of_now():
    """docs/protocol.md, `status`: a bare heartbeat says the statistics are those last sent."""
    hv = Hypervisor(total_pages=100)
    register(hv, 0)  # its status carried the statistics at time 0

    def status(seq: int, args: dict, now: float) -> dict:
        frame = envelope.encode(envelope.request("status", seq, "client-0", args))
        return msgpack.unpackb(hv.handle(Endpoint.GUEST, frame, now).reply)

    def row(now: float) -> dict:
        frame = envelope.encode(envelope.request("snapshot", int(now * 10), "toolstack", {}))
        return msgpack.unpackb(hv.handle(Endpoint.ADMIN, frame, now).reply)["result"]["domains"][0]

    sent = row(0.0)["balloon"]
    assert row(5.0)["reported_s"] == 5.0
    assert status(3, {}, 5.0)["ok"]
    assert row(7.0)["balloon"] == sent and row(7.0)["reported_s"] == 2.0


def test_a_bare_heartbeat_before_any_statistics_reports_none():
    hv = Hypervisor(total_pages=100)
    frame = envelope.encode(envelope.request("register", 1, "c", {"name": "g", "memory_pages": 1, "max_pages": 1}))
    assert msgpack.unpackb(hv.handle(Endpoint.GUEST, frame, 0.0).reply)["ok"]
    frame = envelope.encode(envelope.request("status", 2, "c", {}))
    assert msgpack.unpackb(hv.handle(Endpoint.GUEST, frame, 1.0).reply)["ok"]
    frame = envelope.encode(envelope.request("snapshot", 1, "toolstack", {}))
    (row,) = msgpack.unpackb(hv.handle(Endpoint.ADMIN, frame, 2.0).reply)["result"]["domains"]
    assert row["balloon"] == {} and row["reported_s"] is None
