"""Silent guests, sans-I/O (Hypervisor.sweep with an injected clock): liveness changes told
once, reclaim at the threshold, on_crash=preserve, the memory interrupt, tombstones.

Expected values from the sources the rules cite: Xen's domain watchdog fires at exactly
NOW() + timeout after the last kick (xen/common/sched/core.c domain_watchdog), so a guest
silent for exactly --reclaim-after is reclaimed and one a sweep short of it is not; xl's
on_crash default is destroy (tools/xl/xl_parse.c parse_config_data) and preserve leaves the
domain as it is (tools/xl/xl_vmcontrol.c handle_domain_death).
"""

from __future__ import annotations

import itertools

import msgpack
import pytest

from hypervisor.dispatch import STALL_S, SWEEP_INTERVAL_S, Hypervisor, Outcome, Ownership
from hypervisor.tombstones import Tombstone, Tombstones
from wire import envelope
from wire.domain_end import DomainEnd
from wire.operations import Endpoint

pytestmark = pytest.mark.timeout(10)
G, A = Endpoint.GUEST, Endpoint.ADMIN
TOTAL = 10_000
LIVENESS_S = 2.0
RECLAIM_S = 5.0
_clients = itertools.count(1)


class Clock:
    """The hypervisor's time, moved by the test; sweeps as the service does, every 0.25 s."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv, self.now, self.outcomes = hv, 0.0, []

    def sweep_to(self, until: float) -> list[Outcome]:
        """Sweep at every SWEEP_INTERVAL_S up to `until` (inclusive); what they reported."""
        out = []
        while self.now < until:
            self.now = min(until, self.now + SWEEP_INTERVAL_S)
            out += self.hv.sweep(self.now)
        self.outcomes += out
        return out


class Peer:
    def __init__(self, hv: Hypervisor, clock: Clock, endpoint: Endpoint, client: str) -> None:
        self.hv, self.clock, self.endpoint, self.client, self.seq = hv, clock, endpoint, client, 0

    def call(self, op: str, **args) -> dict:
        self.seq += 1
        frame = envelope.encode(envelope.request(op, self.seq, self.client, args))
        self.last = self.hv.handle(self.endpoint, frame, self.clock.now)
        return msgpack.unpackb(self.last.reply)

    def ok(self, op: str, **args) -> dict:
        reply = self.call(op, **args)
        assert reply["ok"], reply
        return reply["result"]


@pytest.fixture
def hv() -> Hypervisor:
    return Hypervisor(TOTAL, liveness_s=LIVENESS_S, boot_id="b00t", reclaim_after_s=RECLAIM_S)


@pytest.fixture
def clock(hv) -> Clock:
    hv.sweep(0.0)  # the service sweeps as it starts
    return Clock(hv)


@pytest.fixture
def admin(hv, clock) -> Peer:
    return Peer(hv, clock, A, "toolstack")


def guest(hv: Hypervisor, clock: Clock, name: str, memory: int = 1000, maxmem: int = 2000, **extra) -> Peer:
    peer = Peer(hv, clock, G, f"client-{name}-{next(_clients)}")
    peer.result = peer.ok("register", name=name, memory_pages=memory, max_pages=maxmem, **extra)
    return peer


def ops(outcomes: list[Outcome]) -> list[tuple[str, str]]:
    return [(o.op, o.fields["name"]) for o in outcomes]


def test_a_silent_domain_is_reclaimed_at_exactly_the_threshold_and_its_name_and_pages_are_free_again(hv, clock, admin):
    web = guest(hv, clock, "web")
    assert ops(clock.sweep_to(RECLAIM_S - SWEEP_INTERVAL_S)) == [("liveness", "web")]  # unresponsive only
    assert [d["name"] for d in admin.ok("list")["domains"]] == ["web"]  # a sweep short: still there
    (reclaim,) = clock.sweep_to(RECLAIM_S)
    assert reclaim.op == "reclaim" and reclaim.reply == b""
    assert reclaim.fields == {"domid": 1, "name": "web", "released": 1000, "free_pages": TOTAL, "silent_s": RECLAIM_S}
    assert admin.ok("list")["domains"] == [] and hv.pool.free_pages == TOTAL
    assert admin.ok("audit")["ok"]
    again = guest(hv, clock, "web")  # a new guest of that name
    assert again.result["domid"] == 2
    assert clock.sweep_to(RECLAIM_S + 1) == []


def test_liveness_changes_are_reported_once_each(hv, clock):
    hv.reclaim_after_s = None  # hypervisor serve's default: never reclaimed
    web = guest(hv, clock, "web")
    assert clock.sweep_to(LIVENESS_S) == []  # silent for exactly the liveness period: still running
    (down,) = clock.sweep_to(30.0)
    assert (down.op, down.fields["state"], down.fields["was"]) == ("liveness", "unresponsive", "running")
    assert down.fields["silent_s"] == LIVENESS_S + SWEEP_INTERVAL_S
    web.ok("status")
    (up,) = clock.sweep_to(31.0)
    assert (up.op, up.fields["state"], up.fields["was"], up.fields["name"]) == ("liveness", "running", "unresponsive", "web")
    assert clock.sweep_to(32.0) == []


def test_preserve_keeps_the_crashed_domain_and_its_pages_until_the_toolstack_destroys_it(hv, clock, admin):
    keep = guest(hv, clock, "keep", on_crash="preserve")
    assert keep.last.fields["on_crash"] == "preserve"
    clock.sweep_to(RECLAIM_S)
    assert ops(clock.outcomes) == [("liveness", "keep"), ("preserve", "keep")]
    preserve = clock.outcomes[-1]
    assert preserve.fields == {"domid": 1, "name": "keep", "pages": 1000, "silent_s": RECLAIM_S}
    assert [n.event["event"] for n in preserve.notifications if n.event] == ["crashed"]
    assert [(n.domid, n.ownership) for n in preserve.notifications if n.ownership] == [(1, Ownership.GONE)]  # irqbus: no owner now
    (row,) = admin.ok("list")["domains"]
    assert (row["state"], row["current_pages"], row["on_crash"]) == ("crashed", 1000, "preserve")
    assert hv.pool.free_pages == TOTAL - 1000 and admin.ok("audit")["ok"]
    assert clock.sweep_to(60.0) == []  # crashed is final: no more liveness lines

    reply = keep.call("status")  # its guest comes back: cut off, and told why
    assert (reply["error"], reply["reason"], reply["boot_id"]) == ("ESRCH", "crashed", "b00t")
    assert "declared crashed" in reply["message"] and "preserve" in reply["message"]
    assert Peer(hv, clock, G, "other").call("register", name="keep", memory_pages=1, max_pages=1)["error"] == "EEXIST"
    assert admin.call("on_crash", domain="keep", on_crash="destroy")["error"] == "EINVAL"

    assert admin.ok("destroy", domain="keep") == {"domid": 1, "released": 1000}
    assert list(admin.last.notifications) == []  # its guest was told when it crashed
    assert hv.pool.free_pages == TOTAL and admin.ok("list")["domains"] == []
    assert keep.call("status")["reason"] == "crashed"  # what happened to it is still the crash


def test_a_reclaim_tells_the_domains_short_of_memory_as_a_release_does(hv, clock):
    dead = guest(hv, clock, "dead", memory=6000, maxmem=6000)
    needy = guest(hv, clock, "needy", memory=3000, maxmem=9000)
    full = guest(hv, clock, "full", memory=1000, maxmem=1000)
    assert needy.ok("increase_reservation", nr_pages=512)["granted"] == 0  # the host is full: short
    for t in range(1, int(RECLAIM_S) + 1):  # the two live guests keep talking
        clock.sweep_to(float(t))
        needy.ok("status")
        full.ok("status")
    (reclaim,) = [o for o in clock.outcomes if o.op == "reclaim"]
    assert reclaim.fields["name"] == "dead" and reclaim.fields["released"] == 6000
    assert [(n.client, n.domid, n.virq) for n in reclaim.notifications if n.virq] == [(needy.client, 2, "memory")]
    (event,) = [n for n in reclaim.notifications if n.event]
    assert event.client == dead.client and event.event["event"] == "destroyed" and event.event["args"]["reason"] == "reclaimed"
    assert event.event["args"]["message"].startswith("domain 1 (dead) was reclaimed by the host")
    assert needy.ok("increase_reservation", nr_pages=512)["granted"] == 512


def test_a_returning_guest_is_told_why_its_domain_is_gone(hv, clock, admin):
    gone = guest(hv, clock, "gone")
    lost = guest(hv, clock, "lost")
    admin.ok("destroy", domain="gone")
    (event,) = [n.event for n in admin.last.notifications if n.event]
    assert event["args"] == {"domid": 1, "reason": "destroyed", "message": "domain 1 (gone) was destroyed by the toolstack"}
    reply = gone.call("increase_reservation", nr_pages=1)
    assert (reply["error"], reply["reason"], reply["boot_id"]) == ("ESRCH", "destroyed", "b00t")
    assert reply["message"] == "domain 1 (gone) was destroyed by the toolstack"
    clock.sweep_to(RECLAIM_S)
    reply = lost.call("status")
    assert (reply["error"], reply["reason"]) == ("ESRCH", "reclaimed")
    assert "reclaimed by the host" in reply["message"] and "5.0 s" in reply["message"] and "1000 pages" in reply["message"]
    never = Peer(hv, clock, G, "never-registered").call("status")
    assert never["error"] == "ESRCH" and "reason" not in never  # no tombstone: the plain ESRCH


def test_a_hypervisor_that_was_itself_stopped_does_not_blame_its_guests(hv, clock):
    guest(hv, clock, "web")
    clock.sweep_to(1.0)
    clock.now = 1.0 + STALL_S + 30  # the hypervisor was SIGSTOPped: no sweep, no request served
    assert hv.sweep(clock.now) == []
    start = clock.now
    clock.sweep_to(start + RECLAIM_S - SWEEP_INTERVAL_S)
    assert [o.op for o in clock.outcomes] == ["liveness"]  # unresponsive, counted from the restart
    assert clock.outcomes[0].fields["silent_s"] == LIVENESS_S + SWEEP_INTERVAL_S
    clock.sweep_to(start + RECLAIM_S)
    assert [o.op for o in clock.outcomes] == ["liveness", "reclaim"]


def test_on_crash_is_set_by_the_toolstack_and_checked(hv, clock, admin):
    web = guest(hv, clock, "web")
    assert admin.ok("list")["domains"][0]["on_crash"] == "destroy"  # xl's default
    assert admin.ok("on_crash", domain="web", on_crash="preserve") == {"domid": 1, "on_crash": "preserve"}
    for bad in ({"domain": "web", "on_crash": "restart"}, {"domain": "web"}, {"domain": "nope", "on_crash": "destroy"}):
        assert admin.call("on_crash", **bad)["error"] in ("EINVAL", "ESRCH")
    assert web.call("register", name="x", memory_pages=1, max_pages=1, on_crash="coredump")["error"] == "EINVAL"
    clock.sweep_to(RECLAIM_S)
    assert [o.op for o in clock.outcomes] == ["liveness", "preserve"]


def test_tombstones_are_bounded_and_a_new_registration_forgets_the_old_one(hv, clock, admin):
    stones = Tombstones(capacity=3)
    for i in range(5):
        stones.bury(f"c{i}", Tombstone(i, f"d{i}", DomainEnd.DESTROYED, "gone"))
    assert len(stones) == 3 and stones.find("c1") is None and stones.find("c4").domid == 4
    web = guest(hv, clock, "web")
    admin.ok("destroy", domain="web")
    assert web.call("status")["reason"] == "destroyed"
    web.ok("register", name="web2", memory_pages=10, max_pages=10)  # the same client, a new domain
    assert hv.tombstones.find(web.client) is None


def test_a_stall_does_not_make_an_unresponsive_guest_look_alive(hv, clock, admin):
    quiet = guest(hv, clock, "quiet")
    clock.sweep_to(LIVENESS_S + 1)
    assert ops(clock.outcomes) == [("liveness", "quiet")]
    clock.now += STALL_S + 10  # the hypervisor itself stopped
    assert hv.sweep(clock.now) == []  # quiet stays unresponsive: only its guest's word changes that
    assert admin.ok("list")["domains"][0]["state"] == "unresponsive"
    quiet.ok("status")
    (back,) = clock.sweep_to(clock.now + SWEEP_INTERVAL_S)
    assert (back.fields["name"], back.fields["state"]) == ("quiet", "running")


@pytest.mark.parametrize("destroyed_at", [LIVENESS_S + SWEEP_INTERVAL_S * i for i in range(1, 12)])  # up to the reclaim
def test_an_unresponsive_domain_the_toolstack_destroyed_is_not_swept_again(destroyed_at):
    hv = Hypervisor(TOTAL, liveness_s=LIVENESS_S, reclaim_after_s=RECLAIM_S)
    clock = Clock(hv)
    hv.sweep(0.0)
    guest(hv, clock, "gone")
    clock.sweep_to(destroyed_at)
    assert ops(clock.outcomes) == [("liveness", "gone")]
    Peer(hv, clock, A, "toolstack").ok("destroy", domain="gone")
    assert clock.sweep_to(RECLAIM_S + 2) == []


def test_a_domain_created_between_full_sweeps_is_watched_too(hv, clock):
    guest(hv, clock, "old")
    clock.sweep_to(1.0)
    young = guest(hv, clock, "young")  # after the last full sweep
    clock.sweep_to(1.0 + RECLAIM_S)
    assert [o.fields["name"] for o in clock.outcomes if o.op == "reclaim"] == ["old", "young"]
    assert hv.tombstones.find(young.client).end is DomainEnd.RECLAIMED


def test_on_crash_and_liveness_changes_are_marked_for_the_journal(hv, clock, admin):
    """A journal writes the domains the table marked dirty: a change made outside the table's
    methods must be marked too, or a restart brings back the old value."""
    hv.reclaim_after_s = None
    guest(hv, clock, "web")
    hv.table.dirty.clear()
    admin.ok("on_crash", domain="web", on_crash="preserve")
    assert hv.table.dirty == {1}
    hv.table.dirty.clear()
    (down,) = clock.sweep_to(30.0)
    assert down.fields["state"] == "unresponsive" and hv.table.dirty == {1}


def test_a_recovered_unresponsive_domain_starts_a_fresh_liveness_period_without_news(hv, clock):
    """Recovery sets last_seen to its now (journal): the domain is running again for the table,
    so its liveness must say so too, or the first sweep reports it 'back' without a word from it."""
    hv.reclaim_after_s = None
    guest(hv, clock, "web")
    clock.sweep_to(30.0)
    (domain,) = hv.table.domains()
    assert domain.liveness == "unresponsive"
    recovered = Hypervisor(TOTAL, liveness_s=LIVENESS_S, boot_id="b00t")
    recovered.table.restore([domain], 2)
    domain.last_seen = 40.0
    assert domain.liveness == "running" and recovered.sweep(40.0) == []


def test_a_preserved_domain_still_answers_for_its_guest_once_the_tombstones_are_gone(hv, clock):
    """The tombstones live in memory; a crashed domain lives in the books (and the journal). A
    hypervisor restarted on its journal has none, but the kept domain still says what happened."""
    keep = guest(hv, clock, "keep", on_crash="preserve")
    clock.sweep_to(RECLAIM_S)
    hv.tombstones = Tombstones()  # as after a restart on a journal
    reply = keep.call("status")
    assert (reply["error"], reply["reason"]) == ("ESRCH", "crashed"), reply
    assert "domain 1 (keep) crashed" in reply["message"]
