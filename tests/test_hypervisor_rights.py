"""Who may do what on the hypervisor's core (hypervisor/rights.py), without sockets: the caller
is the Peer the shell found for the message's key (wire.gate), and every client is scoped by it
(wire.identity) before anything is looked up."""

from __future__ import annotations

import itertools

import msgpack
import pytest
import structlog

from hypervisor.dispatch import Hypervisor, Ownership
from hypervisor.rights import Guests
from hypervisor.service import HypervisorService
from tests.populated import host_fingerprint
from wire import envelope
from wire.gate import INSECURE, RELOAD_S, Peer
from wire.keys import KeyDir, Role
from wire.security import Security
from wire.operations import OPERATIONS, Endpoint

pytestmark = pytest.mark.timeout(10)
G, A = Endpoint.GUEST, Endpoint.ADMIN

TOOLSTACK = Peer("T" * 40, frozenset({Role.TOOLSTACK}))
VICTIM = Peer("V" * 40, frozenset({Role.GUEST}))
STRANGER = Peer("S" * 40, frozenset())  # authenticated, in no line of `authorized`
NOT_TOOLSTACK = [
    pytest.param(STRANGER, id="unknown-key"),
    pytest.param(VICTIM, id="guest-key"),
    pytest.param(Peer("D" * 40, frozenset({Role.DEVICE}), frozenset()), id="device-key"),
    pytest.param(Peer("H" * 40, frozenset({Role.HYPERVISOR})), id="hypervisor-key"),
]
ADMIN_CALLS = {
    "list": {}, "info": {}, "snapshot": {}, "audit": {},
    "mem_set": {"domain": "victim", "target_pages": 1}, "mem_max": {"domain": "victim", "max_pages": 1},
    "destroy": {"domain": "victim"}, "guest_set": {"domain": "victim", "keys": {"rate": 5}},
    "on_crash": {"domain": "victim", "on_crash": "preserve"},
}
_seqs = itertools.count(1)


def call(hv: Hypervisor, endpoint: Endpoint, peer: Peer, client: str, op: str, seq: int | None = None, **args) -> tuple[dict, object]:
    out = hv.handle(endpoint, envelope.encode(envelope.request(op, next(_seqs) if seq is None else seq, client, args)), 0.0, peer)
    return msgpack.unpackb(out.reply), out


@pytest.fixture
def hv() -> Hypervisor:
    hv = Hypervisor(total_pages=10_000)
    reply, _ = call(hv, G, VICTIM, "victim-client", "register", name="victim", memory_pages=1000, max_pages=4000)
    assert reply["ok"], reply
    return hv


def test_every_admin_operation_is_in_the_table_above():
    assert set(ADMIN_CALLS) == {name for name, op in OPERATIONS.items() if op.endpoint is A}


@pytest.mark.parametrize("peer", NOT_TOOLSTACK)
@pytest.mark.parametrize("op", sorted(ADMIN_CALLS))
def test_the_admin_endpoint_refuses_every_key_but_a_toolstack_key_and_changes_nothing(hv, peer, op):
    before, recorded = host_fingerprint(hv), len(hv.record)
    reply, out = call(hv, A, peer, "toolstack", op, **ADMIN_CALLS[op])
    assert (reply["ok"], reply["error"]) == (False, "EACCES"), reply
    assert f"key {peer.key[:8]!r} is not a toolstack key" in reply["message"]
    assert "ballonet keys authorize NAME --role toolstack" in reply["message"]
    assert host_fingerprint(hv) == before and len(hv.record) == recorded  # not even a replay record
    assert not out.notifications
    assert out.fields == {"key": peer.key[:8]}  # the shell's warning line says which key, never all of it
    assert hv.table.resolve("victim").target_pages == 1000


def test_a_toolstack_key_and_an_insecure_peer_may_use_the_admin_endpoint(hv):
    for peer in (TOOLSTACK, INSECURE):
        reply, _ = call(hv, A, peer, "xl", "mem_set", domain="victim", target_pages=900)
        assert reply["ok"], reply
    assert hv.table.resolve("victim").target_pages == 900


def test_a_domain_is_bound_to_the_registering_key_and_a_stolen_client_string_is_worthless(hv):
    victim = hv.table.resolve("victim")
    assert victim.client == "V" * 40 + "|victim-client"
    before = host_fingerprint(hv)
    for op, args in [
        ("increase_reservation", {"nr_pages": 512}),
        ("decrease_reservation", {"extents": [[hv.pool.extents_of(victim.domid)[0].start, 512]]}),  # the victim's pages
        ("get_target", {}), ("memory_map", {}), ("status", {}), ("shutdown", {}),
    ]:
        reply, out = call(hv, G, STRANGER, "victim-client", op, **args)
        assert (reply["ok"], reply["error"]) == (False, "ESRCH"), (op, reply)
        assert out.client == "S" * 40 + "|victim-client"
    assert host_fingerprint(hv) == before
    # the same string under the stranger's key is a namespace of its own: it registers anew
    reply, _ = call(hv, G, STRANGER, "victim-client", "register", name="stranger", memory_pages=10, max_pages=10)
    assert reply["ok"] and reply["result"]["domid"] != victim.domid
    assert hv.table.current_pages(victim) == 1000 and not hv.table.audit()


def test_a_replayed_frame_under_another_key_is_not_answered_from_the_victims_record(hv):
    """The replay record is scoped too: the victim's own frame, sent again with another key,
    is that key's new request, not a retry answered with the victim's reply (its pages)."""
    frame = envelope.encode(envelope.request("increase_reservation", 10**6, "victim-client", {"nr_pages": 100}))
    first = msgpack.unpackb(hv.handle(G, frame, 0.0, VICTIM).reply)
    assert first["ok"] and first["result"]["granted"] == 100
    stolen = msgpack.unpackb(hv.handle(G, frame, 0.0, STRANGER).reply)
    assert (stolen["ok"], stolen["error"]) == (False, "ESRCH")
    assert msgpack.unpackb(hv.handle(G, frame, 0.0, VICTIM).reply) == first  # the victim's retry is still answered


@pytest.mark.parametrize("op", ["register", "status", "increase_reservation"])
def test_guests_authorized_refuses_a_key_without_role_guest(hv, op):
    hv.guests = Guests.AUTHORIZED
    args = {"name": "x", "memory_pages": 1, "max_pages": 1} if op == "register" else {"nr_pages": 1} if op == "increase_reservation" else {}
    before, recorded = host_fingerprint(hv), len(hv.record)
    reply, out = call(hv, G, STRANGER, "c", op, **args)
    assert (reply["ok"], reply["error"]) == (False, "EACCES"), reply
    assert "is not a guest key" in reply["message"] and "--role guest" in reply["message"]
    assert host_fingerprint(hv) == before and len(hv.record) == recorded and not out.notifications


def test_guests_authorized_serves_a_guest_key_and_cuts_it_off_once_revoked(hv):
    hv.guests = Guests.AUTHORIZED
    reply, _ = call(hv, G, VICTIM, "victim-client", "increase_reservation", nr_pages=8)
    assert reply["ok"], reply
    revoked = Peer(VICTIM.key, frozenset())  # what the gate gives once `authorized` loses its line
    before = host_fingerprint(hv)
    reply, _ = call(hv, G, revoked, "victim-client", "increase_reservation", nr_pages=8)
    assert reply["error"] == "EACCES"
    assert host_fingerprint(hv) == before
    hv.guests = Guests.ANY  # the default: any key may act on its own domain
    assert call(hv, G, revoked, "victim-client", "get_target")[0]["ok"]


def test_irqbus_is_told_who_owns_a_domain_and_when_it_is_gone(hv):
    _, out = call(hv, G, STRANGER, "s", "register", name="s", memory_pages=10, max_pages=10)
    [owned] = [n for n in out.notifications if n.ownership]
    assert (owned.ownership, owned.domid, owned.client, owned.name) == (Ownership.OWNED, 2, "S" * 40 + "|s", "s")
    assert hv.owners() == [(1, "V" * 40 + "|victim-client", "victim"), (2, "S" * 40 + "|s", "s")]
    _, out = call(hv, G, STRANGER, "s", "shutdown")
    assert [(n.ownership, n.domid) for n in out.notifications if n.ownership] == [(Ownership.GONE, 2)]
    _, out = call(hv, A, TOOLSTACK, "xl", "destroy", domain="victim")
    assert [(n.ownership, n.domid) for n in out.notifications if n.ownership] == [(Ownership.GONE, 1)]
    assert hv.owners() == []


# --- the shell: the Peer of each message's key (wire.gate) -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path):
    kd = KeyDir(tmp_path / "keys")
    clock = Clock()
    log = structlog.wrap_logger(None, processors=[lambda *_: (_ for _ in ()).throw(structlog.DropEvent)])
    svc = HypervisorService(Hypervisor(2048), f"ipc://{tmp_path}/g", f"ipc://{tmp_path}/a", log, clock=clock,
                            security=Security(kd, kd.pair("hypervisor", role=Role.HYPERVISOR)))
    svc.keydir, svc.fake_clock = kd, clock
    yield svc
    svc.close()


def admin_reply(svc: HypervisorService, user: str, op: str = "info", seq: int = 1) -> dict:
    frame = envelope.encode(envelope.request(op, seq, "xl", {}))
    svc._serve_one(svc.admin, b"peer", [frame], False, user)
    reply = msgpack.unpackb(svc._outbox[-1][1][-1])
    svc._commit()
    svc._flush()
    return reply


def test_a_key_authorized_a_moment_ago_is_served_its_first_request(service):
    """A command creates and authorizes its key on first use and sends at once, sooner than the
    gate's next look at `authorized` (RELOAD_S): the refusal looks again before it is final."""
    ops = service.keydir.pair("ops", role=Role.TOOLSTACK).public.decode()  # the clock stands still
    assert admin_reply(service, ops)["ok"]
    stranger = service.keydir.pair("stranger").public.decode()
    assert admin_reply(service, stranger)["error"] == "EACCES"


def test_a_revocation_applies_to_the_next_request_after_the_loops_next_look(service):
    ops = service.keydir.pair("ops", role=Role.TOOLSTACK).public.decode()
    assert admin_reply(service, ops, seq=1)["ok"]
    service.keydir.revoke(ops)
    service.fake_clock.now += RELOAD_S
    service.gate.refresh()  # what serve() does at the top of each turn
    reply = admin_reply(service, ops, seq=2)
    assert (reply["error"], reply["message"].startswith(f"key {ops[:8]!r} is not a toolstack key")) == ("EACCES", True)
