"""The hypervisor's journal (hypervisor/journal.py) and what recovery needs from the cores."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.dispatch import Hypervisor, Outcome
from hypervisor.journal import Journal, JournalError
from hypervisor.pool import PagePool
from tests.populated import HOST_PAGES, HOST_WORLD, populated_host
from tests.processes import REPO
from tests.strategies import FUZZ_SETTINGS_SMALL, host_requests
from tests.test_dispatch import A, G, Peer
from wire import envelope, replay

pytestmark = pytest.mark.timeout(20)

FRAME = b"\x85\xa1v\x01\xa2op\xb4increase_reservation\xa3seq\x07\xa6client\xa2g1\xa4args\x81\xa8nr_pages\x40"


def test_the_replay_digest_is_the_same_in_another_process():
    """A recovered record must match a retry sent to the process before the restart: hash()
    of bytes differs per PYTHONHASHSEED, so this failed with it."""
    code = f"from wire import replay; print(replay.digest({FRAME!r}))"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=True)
    assert int(other.stdout) == replay.digest(FRAME)
    assert replay.digest(FRAME) != replay.digest(FRAME + b"\x00")


# --- the journal's round trip, sans I/O but for the file ---------------------------------------


class Wall:
    """The journal's wall clock, stepped by the test."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wall():
    return Wall()


def open_journal(path, wall, total=10_000, now=5.0):
    journal = Journal(str(path), wall=wall)
    hv, recovery = journal.start(total, 10.0, now)
    return journal, hv, recovery


class Host:
    """A journalled sans-I/O hypervisor: every handled frame is committed, as the service does."""

    def __init__(self, journal: Journal, hv: Hypervisor, wall: Wall) -> None:
        self.journal, self.hv, self.wall = journal, hv, wall
        self.outcomes: list[Outcome] = []

    def peer(self, endpoint, client):
        peer = Peer(self.hv, endpoint, client)
        host = self

        def raw(frame: bytes) -> dict:
            outcome = host.hv.handle(peer.endpoint, frame, peer.now)
            host.journal.commit(host.hv, [outcome])
            host.wall.t += 1.0
            return msgpack.unpackb(outcome.reply)

        peer.raw = raw
        return peer


def books(hv: Hypervisor) -> tuple:
    """Everything recovery must bring back (monotonic times aside)."""
    domains = tuple(
        (d.domid, d.name, d.client, d.target_pages, d.max_pages, d.balloon, d.target_writes, d.control, d.over_max_pages,
         tuple(hv.pool.extents_of(d.domid)))
        for d in hv.table.domains()
    )
    return hv.boot_id, hv.pool.total_pages, hv.pool.free_pages, domains


def records(hv: Hypervisor, clients) -> dict:
    return {c: (hv.record.is_bound(c), None if (l := hv.record.latest(c)) is None else (l.seq, l.digest, l.reply)) for c in clients}


def test_a_journal_brings_back_domains_extents_records_and_keeps_events(tmp_path, wall):
    path = tmp_path / "hv.db"
    journal, hv, recovery = open_journal(path, wall)
    assert recovery is None
    host = Host(journal, hv, wall)
    admin = host.peer(A, "toolstack")
    g1, g2 = host.peer(G, "c-g1"), host.peer(G, "c-g2")
    g1.ok("register", name="g1", memory_pages=1000, max_pages=3000)
    g2.ok("register", name="g2", memory_pages=500, max_pages=900)
    grant = g1.ok("increase_reservation", nr_pages=300)
    g1.ok("decrease_reservation", extents=[[grant["extents"][0][0], 100]])
    g2.ok("increase_reservation", nr_pages=512)  # short: maxmem 900
    admin.ok("mem_set", domain="g1", target_pages=1200)
    admin.ok("mem_max", domain="g2", max_pages=600)  # below what it holds: over_max_pages
    admin.ok("guest_set", domain="g2", keys={"stuck": True})
    g1.ok("status", balloon={"current_kb": 4800})
    g3 = host.peer(G, "c-g3")
    g3.ok("register", name="g3", memory_pages=10, max_pages=10)
    admin.ok("destroy", domain="g3")
    before = books(hv)
    before_records = records(hv, ["c-g1", "c-g2", "c-g3", "toolstack"])
    journal.close()

    journal, again, recovery = open_journal(path, wall, now=1000.0)
    assert books(again) == before
    assert records(again, ["c-g1", "c-g2", "c-g3", "toolstack"]) == before_records
    assert again.table.audit() == []
    assert (recovery.domains, recovery.pages, recovery.boot_id) == (2, 1200 + 900, hv.boot_id)
    g1_after = again.table.resolve("g1")
    assert g1_after.last_seen == 1000.0 and g1_after.balloon_at is None  # a full liveness period from recovery
    assert g1_after.balloon == {"current_kb": 4800}

    rows = sqlite3.connect(path).execute(
        "SELECT time, domid, name, op, granted, released, target_pages, current_pages FROM events ORDER BY id").fetchall()
    t0 = 1_700_000_000.0
    assert rows == [
        (t0 + 0, 1, "g1", "register", 1000, None, 1000, 1000),
        (t0 + 1, 2, "g2", "register", 500, None, 500, 500),
        (t0 + 2, 1, "g1", "increase_reservation", 300, None, 1000, 1300),
        (t0 + 3, 1, "g1", "decrease_reservation", None, 100, 1000, 1200),
        (t0 + 4, 2, "g2", "increase_reservation", 400, None, 500, 900),
        (t0 + 5, 1, "g1", "mem_set", None, None, 1200, 1200),
        (t0 + 6, 2, "g2", "mem_max", None, None, 500, 900),
        (t0 + 7, 2, "g2", "guest_set", None, None, 500, 900),
        # t0 + 8: the heartbeat, read-only: no event (its report is kept with the domain)
        (t0 + 9, 3, "g3", "register", 10, None, 10, 10),
        (t0 + 10, 3, "g3", "destroy", None, 10, None, None),
    ]
    detail = sqlite3.connect(path).execute("SELECT detail FROM events WHERE op = 'guest_set'").fetchone()[0]
    assert json.loads(detail) == {"keys": ["stuck"]}
    journal.close()


def test_a_retry_after_recovery_is_answered_from_the_record_not_executed_again(tmp_path, wall):
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    host = Host(journal, hv, wall)
    g1 = host.peer(G, "c-g1")
    g1.ok("register", name="g1", memory_pages=100, max_pages=3000)
    frame = envelope.encode(envelope.request("increase_reservation", 2, "c-g1", {"nr_pages": 64}))
    first = hv.handle(G, frame, 1.0)
    journal.commit(hv, [first])
    journal.close()

    journal, again, _ = open_journal(path, wall, now=50.0)
    free = again.pool.free_pages
    retry = again.handle(G, frame, 51.0)
    assert retry.replayed and retry.reply == first.reply
    assert again.pool.free_pages == free and again.pool.owned_pages(1) == 164
    journal.close()


def test_changes_made_outside_a_request_are_journalled_with_their_events(tmp_path, wall):
    """A sweep (the reclaim helper's) destroys through DomainTable and hands the service
    Outcomes: the journal needs nothing else to keep both."""
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    Host(journal, hv, wall).peer(G, "c-g1").ok("register", name="g1", memory_pages=100, max_pages=300)
    domain = hv.table.resolve("g1")
    released = hv.table.destroy(domain)
    hv.record.release(domain.client, 9.0)
    swept = Outcome(b"", "reclaim", None, None, {"domid": domain.domid, "name": "g1", "released": released, "silent_s": 31.5})
    assert journal.commit(hv, [swept])
    journal.close()

    journal, again, recovery = open_journal(path, wall)
    assert recovery.domains == 0 and again.pool.free_pages == 10_000
    row = sqlite3.connect(path).execute("SELECT op, name, released, detail FROM events ORDER BY id DESC").fetchone()
    assert row == ("reclaim", "g1", 100, '{"silent_s":31.5}')
    journal.close()


def test_a_field_the_journal_lacks_takes_its_default_and_one_domain_lost_is_dropped(tmp_path, wall):
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    Host(journal, hv, wall).peer(G, "c-g1").ok("register", name="g1", memory_pages=100, max_pages=300)
    journal.close()
    db = sqlite3.connect(path)
    fields = json.loads(db.execute("SELECT fields FROM domains").fetchone()[0])
    del fields["target_writes"]
    fields["a_field_of_another_version"] = 1
    db.execute("UPDATE domains SET fields = ?", (json.dumps(fields),))
    db.commit()
    db.close()
    journal, again, _ = open_journal(path, wall)
    assert again.table.resolve("g1").target_writes == 0
    journal.close()


def test_nothing_changed_writes_nothing(tmp_path, wall):
    journal, hv, _ = open_journal(tmp_path / "hv.db", wall)
    Host(journal, hv, wall).peer(A, "toolstack").ok("list")
    assert not journal.commit(hv, [])
    journal.close()


def test_a_second_hypervisor_cannot_take_a_journal_in_use(tmp_path, wall):
    journal, _, _ = open_journal(tmp_path / "hv.db", wall)
    with pytest.raises(JournalError, match="in use by another hypervisor"):
        Journal(str(tmp_path / "hv.db"))
    journal.close()


def test_recovery_refuses_a_journal_whose_pages_are_claimed_twice(tmp_path, wall):
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    host = Host(journal, hv, wall)
    host.peer(G, "c-g1").ok("register", name="g1", memory_pages=100, max_pages=300)
    host.peer(G, "c-g2").ok("register", name="g2", memory_pages=100, max_pages=300)
    journal.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE extents SET extents = (SELECT extents FROM extents WHERE domid = 1) WHERE domid = 2")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="claimed twice"):
        open_journal(path, wall)


# --- the pool rebuilt from its owners' extents -----------------------------------------------


def test_a_pool_rebuilt_from_its_owners_extents_is_the_same_pool(tmp_path):
    rng = random.Random(7)
    pool = PagePool(50_000)
    for _ in range(2000):
        owner = rng.randrange(1, 20)
        if rng.random() < 0.6:
            pool.allocate(owner, rng.randrange(1, 700))
        elif pool.owned_pages(owner):
            start, count = rng.choice(pool.extents_of(owner))
            pool.release(owner, [(start + count // 2, count - count // 2)])
    held = {owner: pool.extents_of(owner) for owner in pool.owners()}
    rebuilt = PagePool.from_holdings(50_000, held)
    assert rebuilt.audit() == []
    assert rebuilt.free_extents() == pool.free_extents()
    assert {o: rebuilt.extents_of(o) for o in rebuilt.owners()} == held
    assert rebuilt.allocated_pages == pool.allocated_pages


@pytest.mark.parametrize(
    "holdings, words",
    [
        ({1: [(0, 10)], 2: [(5, 10)]}, "claimed twice"),
        ({1: [(0, 10), (5, 2)]}, "overlap"),
        ({1: [(95, 10)]}, "outside the pool"),
        ({1: [(0, 0)]}, "count must be positive"),
    ],
)
def test_a_pool_refuses_holdings_that_cannot_be(holdings, words):
    with pytest.raises(ValueError, match=words):
        PagePool.from_holdings(100, holdings)


# --- any traffic, then recovery: the same books ----------------------------------------------


def journalled_fingerprint(hv: Hypervisor) -> tuple:
    """What recovery must bring back: the books (as tests/populated.host_fingerprint has them,
    but for the in-memory hint of who came short) and every client's latest request."""
    pool, table = hv.pool, hv.table
    domains = [
        (d.domid, d.name, d.client, d.target_pages, d.max_pages, d.target_writes, d.balloon, d.control, d.over_max_pages,
         pool.extents_of(d.domid))
        for d in table.domains()
    ]
    clients = sorted(set(hv.record._bound) | set(hv.record._other))
    records = [(c, hv.record.is_bound(c), None if (l := hv.record.latest(c)) is None else (l.seq, l.digest, l.reply)) for c in clients]
    return pool.total_pages, pool.free_extents(), table.next_domid, domains, records


@FUZZ_SETTINGS_SMALL
@given(st.lists(host_requests(HOST_WORLD), max_size=25), st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_whatever_clients_send_recovery_brings_back_the_same_books_and_records(drafts, batches):
    """Every change any request makes is marked by the cores and committed: a journal written
    under any traffic, in batches of any size, recovers to the books the hypervisor had."""
    with tempfile.TemporaryDirectory(prefix="bn-journal-") as tmp:
        journal = Journal(f"{tmp}/hv.db", wall=Wall())
        hv, _ = journal.start(HOST_PAGES, 10.0, 0.0)
        hv, _, sender = populated_host(hv)
        journal.commit(hv, [])
        pending = []
        sizes = iter(batches * (len(drafts) + 1))
        batch = next(sizes)
        for draft in drafts:
            pending.append(sender.send(draft)[0])
            if len(pending) >= batch:
                journal.commit(hv, pending)
                pending, batch = [], next(sizes)
        journal.commit(hv, pending)
        before = journalled_fingerprint(hv)
        journal.close()
        journal = Journal(f"{tmp}/hv.db")
        try:
            again, recovery = journal.start(None, 10.0, 500.0)
            assert recovery is not None and again.boot_id == hv.boot_id
            assert journalled_fingerprint(again) == before
        finally:
            journal.close()


def test_a_domain_named_by_an_event_is_written_again_even_if_nobody_marked_it(tmp_path, wall):
    """A code path that sets a Domain field directly and yields an Outcome for it (another
    helper's new operation, say) has the field kept without calling DomainTable.touch."""
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    Host(journal, hv, wall).peer(G, "c-g1").ok("register", name="g1", memory_pages=100, max_pages=300)
    hv.table.resolve("g1").control = {"stuck": True}  # no mark
    assert journal.commit(hv, [Outcome(b"", "set_something", None, None, {"domid": 1})])
    journal.close()
    journal, again, _ = open_journal(path, wall)
    assert again.table.resolve("g1").control == {"stuck": True}
    journal.close()


def test_a_guest_is_told_why_its_domain_went_after_a_restart_on_the_journal(tmp_path, wall):
    """The tombstones are journalled: a guest reclaimed (or destroyed) before the restart and
    back after it is told so, with the reason, not a bare ESRCH it would read as destroyed."""
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall)
    hv.reclaim_after_s = 5.0
    host = Host(journal, hv, wall)
    lost, gone = host.peer(G, "c-lost"), host.peer(G, "c-gone")
    lost.ok("register", name="lost", memory_pages=100, max_pages=300)
    gone.ok("register", name="gone", memory_pages=100, max_pages=300)
    host.peer(A, "xl").ok("destroy", domain="gone")
    swept = [o for tick in range(0, 49) for o in hv.sweep(tick / 4)]  # as the service sweeps, to 12 s
    assert [o.op for o in swept if o.op == "reclaim"] == ["reclaim"]
    journal.commit(hv, swept)
    before = hv.tombstones.in_burial_order()
    journal.close()

    journal, again, _ = open_journal(path, wall, now=50.0)
    assert again.tombstones.in_burial_order() == before
    for client, reason in (("c-lost", "reclaimed"), ("c-gone", "destroyed")):
        reply = msgpack.unpackb(again.handle(G, envelope.encode(envelope.request("status", 9, client, {})), 51.0).reply)
        assert (reply["error"], reply["reason"], reply["boot_id"]) == ("ESRCH", reason, again.boot_id), reply
    journal.close()


def test_a_guest_granted_short_before_a_restart_is_told_when_pages_free_after_it(tmp_path, wall):
    """Who came short is not journalled; recovery takes each domain below its target to be
    waiting, so the `memory` interrupt still goes out when another domain gives pages back."""
    path = tmp_path / "hv.db"
    journal, hv, _ = open_journal(path, wall, total=1000)
    host = Host(journal, hv, wall)
    big, small = host.peer(G, "c-big"), host.peer(G, "c-small")
    big.ok("register", name="big", memory_pages=800, max_pages=800)
    small.ok("register", name="small", memory_pages=100, max_pages=400)
    host.peer(A, "xl").ok("mem_set", domain="small", target_pages=400)
    assert small.ok("increase_reservation", nr_pages=300)["granted"] == 100  # the host is full
    assert hv.table.short_of_memory(hv.table.resolve("small"))
    journal.close()

    journal, again, _ = open_journal(path, wall, total=1000, now=50.0)
    assert again.table.short_of_memory(again.table.resolve("small"))
    assert not again.table.short_of_memory(again.table.resolve("big"))
    extents = [list(e) for e in again.pool.extents_of(1)][:1]
    frame = envelope.encode(envelope.request("decrease_reservation", 2, "c-big", {"extents": [[extents[0][0], 50]]}))
    released = again.handle(G, frame, 51.0)
    assert released.error is None, released.message
    assert [(n.domid, n.virq) for n in released.notifications if n.virq] == [(2, "memory")]
    journal.close()
