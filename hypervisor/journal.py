"""The hypervisor's books in a SQLite journal: recovered and audited at start, one transaction
per batch of requests, and the run's record of events for anyone with `sqlite3`.

What is kept (schema version 1):

- `meta`: schema version, boot id, total pages, when the journal was created, the next domid.
- `domains`: every field of hypervisor.domains.Domain as JSON in `fields`, with domid, name and
  client as columns to query by. The dataclass is written whole, so a field added to Domain is
  kept with no change here; one the journal has and Domain no longer has is dropped on recovery.
- `extents`: each owner's holdings, as JSON [[start, count], ...], and their page count. The
  pool is rebuilt from them; free space is what is left (PagePool.from_holdings), then audited.
- `replay`: each client's latest request (wire/replay.py): seq, digest, reply. A guest's retry
  after a restart is answered from it, never executed twice.
- `events`: one row per successful state-changing request (or any other Outcome the service
  hands over, e.g. a sweep's), with the wall-clock time of its commit.

Monotonic times (a domain's `last_seen`, `balloon_at`, `created`, a record's `used`) mean nothing
in another process: recovery sets them to the recovering process's `now` (`balloon_at` to None:
no report heard by this process), so every guest gets a full liveness period to come back.

Changes are found by the cores' dirty sets (DomainTable.dirty / .destroyed, PagePool.dirty,
ReplayRecord.dirty), drained at each commit, so a change made by any code path is journalled.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import json
import os
import sqlite3
import time
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hypervisor.dispatch import Hypervisor, Outcome, new_boot_id
from hypervisor.domains import Domain, DomainTable
from hypervisor.pool import PagePool
from wire.operations import OPERATIONS
from hypervisor.tombstones import Tombstone, Tombstones
from wire.domain_end import DomainEnd
from wire.replay import Latest, ReplayRecord

SCHEMA_VERSION = 1
PAGE_BYTES = 1024


class Synchronous(enum.StrEnum):
    """SQLite's PRAGMA synchronous, in WAL mode (https://www.sqlite.org/pragma.html#pragma_synchronous)."""

    NORMAL = "normal"  # a commit is written to the WAL, not fsynced: survives a process crash
    FULL = "full"  # every commit is fsynced: survives a power loss too


SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE domains (domid INTEGER PRIMARY KEY, name TEXT NOT NULL, client TEXT NOT NULL, fields TEXT NOT NULL);
CREATE TABLE extents (domid INTEGER PRIMARY KEY, pages INTEGER NOT NULL, extents TEXT NOT NULL);
CREATE TABLE replay (client TEXT PRIMARY KEY, bound INTEGER NOT NULL, seq INTEGER, digest INTEGER, reply BLOB, written REAL NOT NULL);
CREATE TABLE tombstones (client TEXT PRIMARY KEY, buried INTEGER NOT NULL, domid INTEGER NOT NULL, name TEXT NOT NULL, end TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, domid INTEGER, name TEXT, op TEXT NOT NULL,
    granted INTEGER, released INTEGER, target_pages INTEGER, current_pages INTEGER, free_pages INTEGER, detail TEXT
);
"""

# Operations whose success changes nothing worth an event: the read-only ones (the heartbeat,
# `status`, among them: its balloon report is kept with the domain, not as events).
QUIET = frozenset(op.name for op in OPERATIONS.values() if op.read_only)
# Outcome fields that have a column of their own; the rest go to `detail` as JSON.
_COLUMNS = ("domid", "name", "granted", "released", "target_pages", "current_pages", "free_pages")
# Operations that change a domain's pages only (the pool marks those): every other event's
# domain is written again too, so a field a new code path set without DomainTable.touch is kept.
_PAGES_ONLY = frozenset({"increase_reservation", "decrease_reservation"})
_MONOTONIC = frozenset({"last_seen", "created"})  # set to the recovering process's now
_DOMAIN_FIELDS = tuple(f.name for f in dataclasses.fields(Domain))
# One encoder, made once: json.dumps with any option builds a new one per call.
_to_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def extents_json(extents: Iterable[tuple[int, int]]) -> str:
    """[[start, count], ...] as JSON, built directly: one is written per balloon step."""
    return "[" + ",".join([f"[{start},{count}]" for start, count in extents]) + "]"


class JournalError(Exception):
    """The journal cannot be used: the hypervisor refuses to start, with this message."""


@dataclass
class Recovery:
    """What recovery found, for its one log line."""

    domains: int
    pages: int
    records: int
    events: int
    boot_id: str


def _enum_fields() -> dict[str, type[enum.Enum]]:
    """Domain fields typed with an Enum (or Enum | None): their values come back as members."""
    found = {}
    try:
        hints = typing.get_type_hints(Domain)
    except (NameError, TypeError):  # an annotation that names what is not importable here: plain values
        return found
    for name, hint in hints.items():
        for candidate in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
            if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
                found[name] = candidate
    return found


def domain_fields(domain: Domain) -> str:
    return _to_json({name: getattr(domain, name) for name in _DOMAIN_FIELDS})


def domain_from_fields(text: str, now: float, enums: dict[str, type[enum.Enum]]) -> Domain:
    stored = json.loads(text)
    known = {k: v for k, v in stored.items() if k in _DOMAIN_FIELDS}
    for name, kind in enums.items():
        if known.get(name) is not None:
            known[name] = kind(known[name])
    for name in _MONOTONIC:
        known[name] = now
    known["balloon_at"] = None
    return Domain(**known)


class Journal:
    def __init__(self, path: str, synchronous: Synchronous = Synchronous.NORMAL, wall: Callable[[], float] = time.time) -> None:
        """Open (or create) the file and take it for this process alone. Raises JournalError."""
        self.path = path
        self.wall = wall
        self._burials = 0  # the `buried` order of the latest tombstone written
        self._lock_fd = _lock(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Small pages (before WAL mode, which fixes the size of a new file): a commit writes
            # and checksums every page it touched, about four for a balloon step, and 1 KiB
            # pages made that commit half as long as 4 KiB ones (bench/rpc_bench.py --state).
            self._db.execute(f"PRAGMA page_size={PAGE_BYTES}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={Synchronous(synchronous).name}")
            self._meta = self._read_meta()
        except sqlite3.DatabaseError as err:
            self.close()
            raise JournalError(f"{path} is not a journal this hypervisor can read: {err}") from None
        except JournalError:
            self.close()
            raise

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def is_new(self) -> bool:
        return not self._meta

    def _read_meta(self) -> dict[str, Any]:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise JournalError(f"{self.path} is an SQLite file but not a hypervisor journal (no meta table; tables {sorted(tables)})")
            return {}
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} has journal schema version {version!r}; this hypervisor knows version {SCHEMA_VERSION} only"
            )
        return meta

    # --- start: a new journal, or recovery ---------------------------------------------------

    def start(self, total_pages: int | None, liveness_s: float, now: float) -> tuple[Hypervisor, Recovery | None]:
        """The hypervisor to serve: a new one (its books written here first) for a new journal,
        else the one the journal kept, audited. `total_pages` None: the journal's (or the
        caller's default for a new one must be given). Raises JournalError on anything wrong."""
        if self.is_new:
            if total_pages is None:
                raise JournalError("a new journal needs the host's memory (--memory)")
            hypervisor = Hypervisor(total_pages, liveness_s, new_boot_id())
            meta = {"schema_version": SCHEMA_VERSION, "boot_id": hypervisor.boot_id, "total_pages": total_pages,
                    "created": self.wall(), "next_domid": hypervisor.table.next_domid}
            with self._transaction():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            self._meta = meta
            hypervisor.record.track_changes()
            return hypervisor, None
        return self._recover(total_pages, liveness_s, now)

    def _recover(self, total_pages: int | None, liveness_s: float, now: float) -> tuple[Hypervisor, Recovery]:
        meta = self._meta
        kept_total = meta.get("total_pages")
        if type(kept_total) is not int or kept_total < 0:
            raise JournalError(f"{self.path}: total pages {kept_total!r} is not a page count")
        if total_pages is not None and total_pages != kept_total:
            raise JournalError(
                f"--memory is {total_pages} pages ({total_pages * 4 // 1024} MiB) but the journal {self.path} "
                f"was written for a host of {kept_total} pages ({kept_total * 4 // 1024} MiB); "
                "give the journal's size, or another --state file"
            )
        boot_id = meta.get("boot_id")
        if not isinstance(boot_id, str) or not boot_id:
            raise JournalError(f"{self.path}: no boot id in its meta table")
        db = self._db
        enums = _enum_fields()
        try:
            domains = [domain_from_fields(text, now, enums) for (text,) in db.execute("SELECT fields FROM domains ORDER BY domid")]
        except (ValueError, TypeError) as err:
            raise JournalError(f"{self.path}: a domain row cannot be read: {err}") from None
        for domain, (domid, name, client) in zip(domains, db.execute("SELECT domid, name, client FROM domains ORDER BY domid")):
            if (domain.domid, domain.name, domain.client) != (domid, name, client):
                raise JournalError(f"{self.path}: domain row {domid} says domid {domain.domid}, name {domain.name!r} in its fields")
        holdings: dict[int, list[tuple[int, int]]] = {}
        for domid, pages, text in db.execute("SELECT domid, pages, extents FROM extents"):
            try:
                extents = [(int(s), int(c)) for s, c in json.loads(text)]
            except (ValueError, TypeError) as err:
                raise JournalError(f"{self.path}: the extents of domid {domid} cannot be read: {err}") from None
            if sum(c for _, c in extents) != pages:
                raise JournalError(
                    f"{self.path}: the books do not balance: domid {domid}'s extents hold {sum(c for _, c in extents)} pages, its row says {pages}"
                )
            holdings[domid] = extents
        try:
            pool = PagePool.from_holdings(kept_total, holdings)
            table = DomainTable(pool, liveness_s)
            table.restore(domains, int(meta.get("next_domid", 1)))
        except ValueError as err:
            raise JournalError(f"{self.path}: the books do not balance: {err}") from None
        problems = table.audit()
        record = ReplayRecord()
        clients = {d.client for d in domains if table.is_guests(d)}  # a crashed domain's guest is cut off: no record
        bound_records = set()
        for client, bound, seq, digest, reply, _ in db.execute("SELECT * FROM replay ORDER BY written"):
            latest = None if seq is None else Latest(seq, digest, reply, now)
            if bound:
                bound_records.add(client)
                if client not in clients:
                    problems.append(f"a record is bound to client {client!r}, which has no domain")
            record.restore(client, latest, bool(bound))
        for domain in domains:
            if domain.client in clients and domain.client not in bound_records:
                problems.append(f"{domain.name} (domid {domain.domid}) has no bound replay record for its client")
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise JournalError(f"{self.path}: the books do not balance: {shown}")
        record.track_changes()
        table.dirty.clear()
        pool.dirty.clear()
        hypervisor = Hypervisor.from_books(table, record, boot_id)
        try:
            for client, buried, domid, name, end, message in db.execute("SELECT * FROM tombstones ORDER BY buried"):
                hypervisor.tombstones.bury(client, Tombstone(domid, name, DomainEnd(end), message))
                self._burials = max(self._burials, buried)
        except (ValueError, TypeError) as err:
            raise JournalError(f"{self.path}: a tombstone cannot be read: {err}") from None
        hypervisor.tombstones.dirty.clear()
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return hypervisor, Recovery(len(domains), pool.allocated_pages, len(record), events, boot_id)

    # --- the batch's commit ------------------------------------------------------------------

    def commit(self, hypervisor: Hypervisor, outcomes: Iterable[Outcome] = ()) -> bool:
        """Write what changed since the last commit, and the outcomes' events, in one
        transaction. Returns whether anything was written. An error (disk full...) raises:
        the caller must not send the batch's replies (and should stop: its books are ahead
        of the journal)."""
        table, record = hypervisor.table, hypervisor.record
        pool = table.pool
        wall = self.wall()
        events = self._events(table, outcomes, wall)
        dirty_clients = record.dirty
        stones = hypervisor.tombstones
        if not (table.dirty or table.destroyed or pool.dirty or dirty_clients or events or stones.dirty):
            return False
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if table.destroyed:
                _write(db, "DELETE FROM domains WHERE domid = ?", [(domid,) for domid in table.destroyed])
            if table.dirty or table.destroyed:
                rows = []
                for domid in table.dirty:
                    domain = table.find_domid(domid)
                    if domain is not None:
                        rows.append((domid, domain.name, domain.client, domain_fields(domain)))
                _write(db, "INSERT OR REPLACE INTO domains (domid, name, client, fields) VALUES (?, ?, ?, ?)", rows)
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_domid'", (table.next_domid,))
            if pool.dirty:
                gone, kept = [], []
                for owner in pool.dirty:
                    pages = pool.owned_pages(owner)
                    if pages:
                        kept.append((owner, pages, extents_json(pool.extents_of(owner))))
                    else:
                        gone.append((owner,))
                _write(db, "DELETE FROM extents WHERE domid = ?", gone)
                _write(db, "INSERT OR REPLACE INTO extents (domid, pages, extents) VALUES (?, ?, ?)", kept)
            if dirty_clients:
                gone, kept = [], []
                for client in dirty_clients:
                    latest = record.latest(client)
                    bound = record.is_bound(client)
                    if latest is not None:
                        kept.append((client, bound, latest.seq, latest.digest, latest.reply, wall))
                    elif bound:
                        kept.append((client, True, None, None, None, wall))
                    else:
                        gone.append((client,))
                _write(db, "DELETE FROM replay WHERE client = ?", gone)
                _write(db, "INSERT OR REPLACE INTO replay (client, bound, seq, digest, reply, written) VALUES (?, ?, ?, ?, ?, ?)", kept)
            if stones.dirty:
                self._write_tombstones(db, stones)
            _write(
                db,
                "INSERT INTO events (time, domid, name, op, granted, released, target_pages, current_pages, free_pages, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        table.dirty.clear()
        table.destroyed.clear()
        pool.dirty.clear()
        if dirty_clients:
            dirty_clients.clear()
        stones.dirty.clear()
        return True

    def _write_tombstones(self, db: sqlite3.Connection, stones: Tombstones) -> None:
        """The ends buried or forgotten since the last commit; `buried` keeps their order (the
        oldest is forgotten first), so a recovered hypervisor forgets the same ones."""
        gone, kept = [], []
        for client in stones.dirty:
            stone = stones.find(client)
            if stone is None:
                gone.append((client,))
            else:
                self._burials += 1
                kept.append((client, self._burials, stone.domid, stone.name, str(stone.end), stone.message))
        _write(db, "DELETE FROM tombstones WHERE client = ?", gone)
        _write(db, "INSERT OR REPLACE INTO tombstones (client, buried, domid, name, end, message) VALUES (?, ?, ?, ?, ?, ?)", kept)

    def _events(self, table: DomainTable, outcomes: Iterable[Outcome], wall: float) -> list[tuple[Any, ...]]:
        """An event row for each outcome that changed something."""
        rows = []
        for outcome in outcomes:
            op = outcome.op
            if op is None or outcome.error is not None or outcome.replayed or op in QUIET:
                continue
            fields = outcome.fields
            get = fields.get
            domid = get("domid")
            domain = table.find_domid(domid) if type(domid) is int else None
            if domain is not None:
                if op not in _PAGES_ONLY:
                    table.dirty.add(domid)
                name = get("name", domain.name)
                target = get("target_pages", domain.target_pages)
                current = get("current_pages")
                if current is None:
                    current = table.current_pages(domain)
            else:
                name, target, current = get("name"), get("target_pages"), get("current_pages")
            granted = get("granted")
            if granted is None and op == "register":
                granted = get("pages")
            rest = {k: v for k, v in fields.items() if k not in _COLUMNS}
            if op == "register":
                rest.pop("pages", None)
            rows.append((wall, domid, name, op, granted, get("released"), target, current, get("free_pages"), _to_json(rest) if rest else None))
        return rows

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on an exception (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def _write(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """`rows` through `sql`: one execute for the usual one row (executemany costs more)."""
    if len(rows) == 1:
        db.execute(sql, rows[0])
    elif rows:
        db.executemany(sql, rows)


def _lock(path: str) -> int:
    """One hypervisor per journal: an exclusive flock on the file, held while it runs (flock
    locks are apart from the POSIX locks SQLite takes, so neither disturbs the other)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise JournalError(f"cannot open {path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"{path} is in use by another hypervisor") from None
    return fd
