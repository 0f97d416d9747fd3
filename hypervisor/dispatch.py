"""The hypervisor's request handling without sockets: a frame and the time go in, a reply
frame, the notifications to push and the figures to log come out."""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypervisor.domains import DEFAULT_LIVENESS_S, Domain, DomainState, DomainTable
from hypervisor.pool import PagePool
from hypervisor.rights import Guests, not_guest, not_toolstack
from hypervisor.tombstones import Tombstone, Tombstones
from wire import envelope, replay
from wire.domain_end import DomainEnd, OnCrash
from wire.replay import ReplayRecord, Verdict, replay_refusal
from wire.shown import clip
from wire.errors import ErrorCode, WireError
from wire.gate import INSECURE, Peer
from wire.identity import scoped
from wire.keys import Role
from wire.operations import Endpoint, lookup

# A page of `list`: half the message limit, so the envelope and one more domain always fit.
LIST_PAGE_BYTES = 512 * 1024

# `snapshot`s too large for one reply are held for their later pages: the latest
# SNAPSHOTS_PER_CLIENT of each of at most SNAPSHOTS_HELD clients (the oldest forgotten first),
# so what they hold is bounded by a few copies of the domain table. Two per client: a retried
# first page takes a new one, and the reply the client uses may be the first attempt's.
SNAPSHOTS_HELD = 4
SNAPSHOTS_PER_CLIENT = 2

# A domain's memory map: `register` carries up to REGISTER_EXTENTS of it (a fragmented host can
# make one domain's initial pages hundreds of thousands of extents), `memory_map` the rest in
# pages of MAP_PAGE_EXTENTS (at most 11 bytes each: ~352 KiB).
REGISTER_EXTENTS = 1024
MAP_PAGE_EXTENTS = 32768

# The verdicts handle() tests on every request, as module constants: reading a member off an
# Enum class costs ~1,000 instructions in Python 3.11 (as much as decoding the request's args).
_REPLAY, _STALE, _REUSED = Verdict.REPLAY, Verdict.STALE, Verdict.REUSED
_ADMIN, _AUTHORIZED, _TOOLSTACK, _GUEST, _EACCES = Endpoint.ADMIN, Guests.AUTHORIZED, Role.TOOLSTACK, Role.GUEST, ErrorCode.EACCES

# A gap this long between two sweeps means the hypervisor itself was not running (stopped,
# swapped out, a loop that hung): its guests' silence is counted again from the sweep after it.
# The service sweeps every SWEEP_INTERVAL_S.
SWEEP_INTERVAL_S = 0.25
STALL_S = 1.0

# Routine operations are logged at debug level; a short grant is always worth a line.
QUIET_OPS = frozenset({"get_target", "memory_map", "status", "list", "snapshot", "info", "increase_reservation", "decrease_reservation"})


class Ownership(enum.Enum):
    """What irqbus is told of a domain's owner (hypervisor/virq.py, irqbus's `owners`)."""

    OWNED = "owned"  # registered: the key in its guest's scoped client owns it
    GONE = "gone"  # destroyed, reclaimed or crashed: no guest owns it any more


@dataclass
class Notification:
    """News about the guest behind `client`, sent after the commit: an `event` pushed on the
    hypervisor's own socket to that guest, a virtual interrupt `virq` raised on domain `domid`
    through irqbus, or (`ownership`) irqbus told which key owns domain `domid`."""

    client: str
    domid: int
    event: dict[str, Any] | None = None
    virq: str | None = None
    ownership: Ownership | None = None
    name: str | None = None  # the domain's, with `ownership` OWNED: irqbus checks the name a guest attaches with




@dataclass(slots=True)
class Outcome:
    """What handling one frame came to: the reply, and what the shell logs and pushes.

    One per request, so it is cheap to build: slots, the success path's fields first (built
    positionally), and no fresh list for the notifications most requests do not have."""

    reply: bytes
    op: str | None = None
    seq: int | None = None
    client: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    notifications: Sequence[Notification] = ()
    routine: bool = False  # a success of a QUIET_OPS operation that was not notable: a debug line
    error: ErrorCode | None = None
    message: str = ""
    replayed: bool = False


@dataclass(slots=True)
class _Result:
    """A handler's answer. Extents go into `result` as the pool's records: msgpack packs a
    tuple as an array, so each is the wire's [start, count] without a copy."""

    result: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)
    notifications: Sequence[Notification] = ()
    notable: bool = False  # worth an info line even for a routine operation


def _target(domain: Domain) -> dict[str, int]:
    """What a guest is told about its target, in replies and in `target` events alike."""
    return {"target_pages": domain.target_pages, "max_pages": domain.max_pages, "target_writes": domain.target_writes}


def _target_news(domain: Domain) -> list[Notification]:
    """A target write: pushed directly, and as the "target" virtual interrupt."""
    return [
        Notification(domain.client, domain.domid, event=envelope.event("target", _target(domain))),
        Notification(domain.client, domain.domid, virq="target"),
    ]


def _end_news(domain: Domain, event: str, stone: Tombstone) -> Notification:
    """The guest's domain ended (`destroyed` or `crashed`): how, and the words its ESRCH has."""
    args = {"domid": domain.domid, "reason": str(stone.end), "message": stone.message}
    return Notification(domain.client, domain.domid, event=envelope.event(event, args))


def _owner_news(domain: Domain, ownership: Ownership) -> Notification:
    return Notification(domain.client, domain.domid, ownership=ownership, name=domain.name)


def _memory_news(waiting: list[Domain]) -> list[Notification]:
    return [Notification(d.client, d.domid, virq="memory") for d in waiting]


@dataclass
class _HeldSnapshot:
    """The later pages of a snapshot, served from here so every page is of the same instant."""

    number: int
    head: dict[str, int]  # the pool's figures, repeated on every page
    pages: list[list[dict[str, Any]]]


def _paged(rows: list[dict[str, Any]], budget: int) -> list[list[dict[str, Any]]]:
    """Rows cut into pages of at most `budget` encoded bytes (each page at least one row)."""
    pages: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        row_size = len(envelope.encode(row))
        if pages[-1] and size + row_size > budget:
            pages.append([])
            size = 0
        pages[-1].append(row)
        size += row_size
    return pages


def new_boot_id() -> str:
    """Names one set of books: a hypervisor that starts afresh (today, every start) draws a new
    one; one that recovers its domains from a journal (issue 12) keeps the one it had."""
    return secrets.token_hex(8)


class Hypervisor:
    def __init__(
        self, total_pages: int, liveness_s: float = DEFAULT_LIVENESS_S, boot_id: str | None = None, reclaim_after_s: float | None = None
    ) -> None:
        self.boot_id = boot_id or new_boot_id()
        self.table = DomainTable(PagePool(total_pages), liveness_s)
        self.record = ReplayRecord()
        # None: a silent guest's domain is only ever shown unresponsive (hypervisor serve's default)
        self.reclaim_after_s = reclaim_after_s
        self.guests = Guests.ANY  # which keys the guest endpoint serves (hypervisor/rights.py)
        self.tombstones = Tombstones()
        self._last_sweep: float | None = None
        self._next_full_sweep = -math.inf  # when sweep next looks at every domain
        self._quiet: dict[int, Domain] = {}  # the unresponsive domains, by domid: looked at every sweep
        self._snapshots: dict[str, list[_HeldSnapshot]] = {}  # by client, oldest client first
        self._snapshot_number = 0
        self._handlers: dict[str, Callable[[str, dict[str, Any], float], _Result]] = {
            "register": self._register,
            "increase_reservation": self._increase,
            "decrease_reservation": self._decrease,
            "get_target": self._get_target,
            "memory_map": self._memory_map,
            "shutdown": self._shutdown,
            "status": self._status,
            "list": self._list,
            "info": self._info,
            "snapshot": self._snapshot,
            "mem_set": self._mem_set,
            "mem_max": self._mem_max,
            "destroy": self._destroy,
            "audit": self._audit,
            "guest_set": self._guest_set,
            "on_crash": self._on_crash,
        }

    @classmethod
    def from_books(cls, table: DomainTable, record: ReplayRecord, boot_id: str) -> Hypervisor:
        """A hypervisor over books recovered from a journal (hypervisor/journal.py): the same boot
        id, so its guests, which key on it, carry on."""
        hypervisor = cls(table.pool.total_pages, table.liveness_s, boot_id)
        hypervisor.table, hypervisor.record = table, record
        return hypervisor

    @property
    def pool(self) -> PagePool:
        return self.table.pool

    def owners(self) -> list[tuple[int, str, str]]:
        """Every domain that still has its guest, with the guest's scoped client and the
        domain's name: who irqbus lets attach for it, and as what (hypervisor/owners.py)."""
        table = self.table
        return [(d.domid, d.client, d.name) for d in table.in_creation_order() if table.is_guests(d)]

    def handle(self, endpoint: Endpoint, frame: bytes, now: float, peer: Peer = INSECURE) -> Outcome:
        """One request from `peer` (the key its connection authenticated with; INSECURE on an
        --insecure server). Its `client` is scoped by that key before anything is looked up:
        the record, the domain, the snapshots all key on the scoped name (wire.identity), so a
        client string taken from a log names nothing under another key."""
        try:
            req = envelope.decode_request(frame)
        except envelope.EnvelopeError as err:
            reply = envelope.encode(envelope.error_reply(err.seq, err.code, err.message))
            return Outcome(reply, seq=err.seq, error=err.code, message=err.message)

        client = scoped(peer.key, req.client)
        if endpoint is _ADMIN:
            if _TOOLSTACK not in peer.roles:
                return self._denied(req, client, peer, not_toolstack(peer))
        elif self.guests is _AUTHORIZED and _GUEST not in peer.roles:
            return self._denied(req, client, peer, not_guest(peer))

        frame_digest = replay.digest(frame)
        verdict, latest = self.record.verdict(client, req.seq, frame_digest)
        if verdict is _REPLAY:
            assert latest is not None and latest.reply is not None
            return Outcome(latest.reply, req.op, req.seq, client, replayed=True)
        if verdict is _STALE or verdict is _REUSED:
            return self._error(req, client, endpoint, ErrorCode.EPROTO, replay_refusal(verdict, req.seq))

        try:
            op = lookup(req.op, endpoint)
            args = op.validate(req.args)
            if latest is None and not (op.read_only or op.binds) and not self.record.admit(client, now):
                raise WireError(ErrorCode.EAGAIN, "the server is recording as many recent requests as it can hold; retry later")
            done = self._handlers[op.name](client, args, now)
        except WireError as err:
            outcome = self._error(req, client, endpoint, err.code, err.message)
            self.record.remember(client, req.seq, frame_digest, outcome.reply, now, changed=False)
            return outcome
        reply = envelope.encode_ok(req.seq, done.result)
        self.record.remember(client, req.seq, frame_digest, None if op.read_only else reply, now, changed=not op.read_only)
        routine = op.name in QUIET_OPS and not done.notable
        return Outcome(reply, req.op, req.seq, client, done.fields, done.notifications, routine)

    def _denied(self, req: envelope.Request, client: str, peer: Peer, message: str) -> Outcome:
        """EACCES: the key may not use this endpoint. Nothing is looked up or recorded."""
        reply = envelope.encode(envelope.error_reply(req.seq, _EACCES, message))
        return Outcome(reply, clip(req.op, 40), req.seq, client, {"key": peer.short()}, error=_EACCES, message=message)

    def _error(self, req: envelope.Request, client: str, endpoint: Endpoint, code: ErrorCode, message: str) -> Outcome:
        # A guest told "no domain for you" learns which books said so: the ones it registered
        # with (its domain was destroyed) or others (this hypervisor restarted without it).
        boot_id = reason = None
        if code is ErrorCode.ESRCH and endpoint is Endpoint.GUEST:
            boot_id = self.boot_id
            # ... and, while the hypervisor remembers, why: destroyed, reclaimed or crashed
            tombstone = self.tombstones.find(client)
            if tombstone is not None:
                reason, message = str(tombstone.end), tombstone.message
            elif (crashed := self.table.crashed_of(client)) is not None:  # e.g. after a restart on a journal
                reason = str(DomainEnd.CRASHED)
                message = f"domain {crashed.domid} ({crashed.name}) crashed: it is kept (on_crash=preserve) until the toolstack destroys it"
        reply = envelope.encode(envelope.error_reply(req.seq, code, message, boot_id, reason))
        domain = self.table.find_client(client)
        fields: dict[str, Any] = {"domid": domain.domid} if domain else {}
        return Outcome(reply, clip(req.op, 40), req.seq, client, fields, error=code, message=message)

    # --- guest endpoint --------------------------------------------------------------------

    def _register(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain, extents = self.table.create(
            args["name"], args["memory_pages"], args["max_pages"], client, now, args.get("on_crash", OnCrash.DESTROY)
        )
        self.record.bind(client)  # its record now lives as long as the domain
        self.tombstones.forget(client)
        more = len(extents) > REGISTER_EXTENTS
        if more:  # the first page of its memory map; memory_map has the rest
            extents = self.pool.extents_after(domain.domid, -1, REGISTER_EXTENTS)
        result = {
            "domid": domain.domid,
            "extents": extents,  # Extent records pack as [start, count]
            "next": extents[-1].start if more else None,
            "boot_id": self.boot_id,
            **_target(domain),
        }
        fields = {"domid": domain.domid, "name": domain.name, "pages": args["memory_pages"], "free_pages": self.pool.free_pages, "on_crash": str(domain.on_crash)}
        return _Result(result, fields, [_owner_news(domain, Ownership.OWNED)])

    def _increase(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain = self.table.guest(client, now)
        extents, granted = self.table.increase_reservation(domain, args["nr_pages"])
        fields = {"domid": domain.domid, "asked": args["nr_pages"], "granted": granted, "free_pages": self.table.pool.free_pages}
        return _Result({"extents": extents, "granted": granted}, fields, notable=granted < args["nr_pages"])

    def _decrease(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain = self.table.guest(client, now)
        released = self.table.decrease_reservation(domain, args["extents"])
        fields = {"domid": domain.domid, "released": released, "free_pages": self.table.pool.free_pages}
        waiting = self.table.waiting_for_memory(domain)
        return _Result({"released": released}, fields, _memory_news(waiting) if waiting else [])

    def _memory_map(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """A page of the caller's holdings after page `after`, as `register` pages them."""
        domain = self.table.guest(client, now)
        extents = self.pool.extents_after(domain.domid, args.get("after", -1), MAP_PAGE_EXTENTS + 1)
        more = len(extents) > MAP_PAGE_EXTENTS
        page = extents[:MAP_PAGE_EXTENTS]
        result = {"extents": page, "next": page[-1].start if more else None}
        return _Result(result, {"domid": domain.domid, "extents": len(page), "more": more})

    def _get_target(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain = self.table.guest(client, now)
        return _Result(_target(domain), {"domid": domain.domid})

    def _status(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """The heartbeat; its reply carries the target and the control keys, the fallback when a
        push was lost. One without `balloon` says the statistics are still those last sent:
        kept, and reported as of now."""
        domain = self.table.by_client(client)
        balloon = args.get("balloon")
        self.table.heard_from(domain, now, balloon)
        if balloon is None and domain.balloon:
            domain.balloon_at = now
        return _Result({**_target(domain), "control": domain.control}, {"domid": domain.domid})

    def _shutdown(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """The guest is going away cleanly: its domain is destroyed and its pages return."""
        domain = self.table.by_client(client)
        released = self.table.destroy(domain)
        self.record.release(client, now)
        fields = {"domid": domain.domid, "name": domain.name, "released": released, "free_pages": self.pool.free_pages}
        notes = [_owner_news(domain, Ownership.GONE), *_memory_news(self.table.waiting_for_memory(domain))]
        return _Result({"domid": domain.domid, "released": released}, fields, notes)

    # --- admin endpoint --------------------------------------------------------------------

    def _row(self, d: Domain, now: float) -> dict[str, Any]:
        return {
            "domid": d.domid,
            "name": d.name,
            "current_pages": self.table.current_pages(d),
            "target_pages": d.target_pages,
            "max_pages": d.max_pages,
            "state": str(self.table.state(d, now)),
            "last_seen_s": round(now - d.last_seen, 3),
            "balloon": d.balloon,
            "control": d.control,
            "on_crash": str(d.on_crash),
        }

    def _list(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """A page of domains after the cursor, as many as fit in LIST_PAGE_BYTES (at least one)."""
        after = args.get("after", -1)
        rows: list[dict[str, Any]] = []
        size = 0
        more = False
        for d in self.table.domains():
            if d.domid <= after:
                continue
            row = self._row(d, now)
            size += len(envelope.encode(row))
            if rows and size > LIST_PAGE_BYTES:
                more = True
                break
            rows.append(row)
        result = {"domains": rows, "next": rows[-1]["domid"] if more else None}
        return _Result(result, {"domains": len(rows), "more": more})

    def _snapshot(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """The pool and every domain at this instant: free + every domain's pages = total.

        Without `snapshot`, a new one is taken and its first page answered; one that needs more
        pages is held, and `snapshot` + `after` (the `next` of the page before) read the rest
        of that same instant."""
        number, after = args.get("snapshot"), args.get("after")
        if number is None:
            if after is not None:
                raise WireError(ErrorCode.EINVAL, "snapshot: 'after' reads a later page of a snapshot: give its 'snapshot' number too")
            held = self._take_snapshot(client, now)
            page = 0
        else:
            held = next((h for h in self._snapshots.get(client, ()) if h.number == number), None)
            if held is None:
                raise WireError(
                    ErrorCode.ESRCH,
                    f"no snapshot {number} held for this client (each client's latest {SNAPSHOTS_PER_CLIENT} multi-page "
                    f"ones are kept, for the latest {SNAPSHOTS_HELD} clients); take a new one",
                )
            starts = [-1] + [rows[-1]["domid"] for rows in held.pages[:-1]]
            if after is None or after not in starts:
                raise WireError(ErrorCode.EINVAL, f"snapshot {number}: 'after' must be a 'next' this snapshot gave, got {after!r}")
            page = starts.index(after)
        rows = held.pages[page]
        more = page + 1 < len(held.pages)
        result = {**held.head, "domains": rows, "next": rows[-1]["domid"] if more else None}
        return _Result(result, {"snapshot": held.number, "page": page, "domains": len(rows), "more": more})

    def _take_snapshot(self, client: str, now: float) -> _HeldSnapshot:
        """A snapshot that fits one reply is numbered 0 and not held: taking one changes nothing."""
        rows = []
        for d in self.table.domains():
            row = self._row(d, now)
            row["reported_s"] = None if d.balloon_at is None else round(now - d.balloon_at, 3)
            rows.append(row)
        pages = _paged(rows, LIST_PAGE_BYTES)
        number = 0
        if len(pages) > 1:
            self._snapshot_number += 1
            number = self._snapshot_number
        pool = self.pool
        held = _HeldSnapshot(number, {"snapshot": number, "total_pages": pool.total_pages, "free_pages": pool.free_pages}, pages)
        if number:
            mine = (self._snapshots.pop(client, []) + [held])[-SNAPSHOTS_PER_CLIENT:]
            self._snapshots[client] = mine  # now the newest client
            while len(self._snapshots) > SNAPSHOTS_HELD:
                del self._snapshots[next(iter(self._snapshots))]
        return held

    def _info(self, client: str, args: dict[str, Any], now: float) -> _Result:
        pool = self.pool
        result = {
            "total_pages": pool.total_pages,
            "free_pages": pool.free_pages,
            "allocated_pages": pool.allocated_pages,
            "domains": len(self.table),
        }
        return _Result(result)

    def _mem_set(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain = self.table.resolve(args["domain"])
        self.table.set_target(domain, args["target_pages"])
        fields = {"domid": domain.domid, "target_pages": domain.target_pages, "current_pages": self.table.current_pages(domain)}
        return _Result({"domid": domain.domid, "target_pages": domain.target_pages}, fields, _target_news(domain))

    def _mem_max(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """XEN_DOMCTL_max_mem, or libxl's setmaxmem with `refuse_below_target` (DomainTable.set_max).

        Neither writes memory/target, so the guest is told nothing: its xenstore watch is on the
        target only (Linux drivers/xen/xen-balloon.c, watch_target), and a later grant past the
        max is simply refused."""
        domain = self.table.resolve(args["domain"])
        self.table.set_max(domain, args["max_pages"], args.get("refuse_below_target", False))
        current = self.table.current_pages(domain)
        result = {"domid": domain.domid, "max_pages": domain.max_pages, "target_pages": domain.target_pages, "current_pages": current}
        return _Result(result, dict(result))

    def _destroy(self, client: str, args: dict[str, Any], now: float) -> _Result:
        domain = self.table.resolve(args["domain"])
        guests = self.table.is_guests(domain)  # a crashed domain's guest was told already
        released = self.table.destroy(domain)
        notes: list[Notification] = []
        if guests:
            self.record.release(domain.client, now)
            stone = self._bury(domain, DomainEnd.DESTROYED, f"domain {domain.domid} ({domain.name}) was destroyed by the toolstack")
            notes += [_end_news(domain, "destroyed", stone), _owner_news(domain, Ownership.GONE)]
        notes += _memory_news(self.table.waiting_for_memory(domain))
        fields = {"domid": domain.domid, "name": domain.name, "released": released, "free_pages": self.pool.free_pages}
        return _Result({"domid": domain.domid, "released": released}, fields, notes)

    def _on_crash(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """xl's on_crash for one domain, changed on a live domain (libxl keeps it in the domain's
        config; here it is a field of the domain, journalled with it)."""
        domain = self.table.resolve(args["domain"])
        if domain.liveness == DomainState.CRASHED:
            raise WireError(ErrorCode.EINVAL, f"{domain.name} (domid {domain.domid}) has crashed and is preserved; only `destroy` frees it")
        domain.on_crash = OnCrash(args["on_crash"])
        self.table.touch(domain)
        return _Result({"domid": domain.domid, "on_crash": str(domain.on_crash)}, {"domid": domain.domid, "name": domain.name, "on_crash": str(domain.on_crash)})

    # --- silent guests (no request: the service calls sweep on a timer) --------------------

    def sweep(self, now: float) -> list[Outcome]:
        """Act on silence: each domain whose guest has been silent for `reclaim_after_s` is
        destroyed (its pages return, the domains short of memory are told) or, with
        on_crash=preserve, kept as crashed; and each change of liveness (running, unresponsive,
        running again) is reported once. Outcomes carry no reply (b"").

        The silence is Xen's domain watchdog (xen/common/sched/core.c domain_watchdog: the timer
        is set to NOW() + timeout at each kick and domain_watchdog_timeout fires when it
        expires, so at exactly the timeout) with every request or heartbeat as the kick; what
        follows is xl's on_watchdog / on_crash (tools/xl/xl_vmcontrol.c handle_domain_death).
        The first sweep, and the first after a gap of STALL_S, restarts the count: time the
        hypervisor itself was not listening is not the guests' silence.

        Cheap on a large host: every domain is looked at only when the earliest a running one
        could change has come (its last word + the liveness period or --reclaim-after); in
        between, only the unresponsive ones are (to see them back, or reclaim them)."""
        table = self.table
        if self._last_sweep is None or now - self._last_sweep > STALL_S:
            table.listening_since = now
        self._last_sweep = now
        reclaim_after = self.reclaim_after_s
        soonest = table.liveness_s if reclaim_after is None else min(table.liveness_s, reclaim_after)
        every = now >= self._next_full_sweep
        if every:
            self._quiet.clear()
            self._next_full_sweep = now + soonest  # also when a domain is created after this sweep
        outcomes: list[Outcome] = []
        for domain in table.in_creation_order() if every else list(self._quiet.values()):
            if not table.exists(domain) or domain.liveness == DomainState.CRASHED:
                self._quiet.pop(domain.domid, None)
                continue
            silent = table.silence(domain, now)
            if reclaim_after is not None and silent >= reclaim_after:
                self._quiet.pop(domain.domid, None)
                outcomes.append(self._preserve(domain, silent, now) if domain.on_crash == OnCrash.PRESERVE else self._reclaim(domain, silent, now))
                continue
            state = table.state(domain, now)
            if state != domain.liveness:
                fields = {"domid": domain.domid, "name": domain.name, "state": str(state), "was": str(domain.liveness), "silent_s": round(silent, 3)}
                domain.liveness = state
                table.touch(domain)
                outcomes.append(Outcome(b"", "liveness", client=domain.client, fields=fields))
            if state == DomainState.UNRESPONSIVE:
                self._quiet[domain.domid] = domain
            else:
                self._quiet.pop(domain.domid, None)
                if every:
                    self._next_full_sweep = min(self._next_full_sweep, now - silent + soonest)
        return outcomes

    def _reclaim(self, domain: Domain, silent: float, now: float) -> Outcome:
        released = self.table.destroy(domain)
        self.record.release(domain.client, now)
        stone = self._bury(
            domain, DomainEnd.RECLAIMED,
            f"domain {domain.domid} ({domain.name}) was reclaimed by the host: no request or heartbeat from its guest for "
            f"{silent:.1f} s (hypervisor serve --reclaim-after {self.reclaim_after_s:g}); its {released} pages returned to the pool",
        )
        notes = [_end_news(domain, "destroyed", stone), _owner_news(domain, Ownership.GONE)]
        notes += _memory_news(self.table.waiting_for_memory(domain))
        fields = {"domid": domain.domid, "name": domain.name, "released": released, "free_pages": self.pool.free_pages, "silent_s": round(silent, 3)}
        return Outcome(b"", "reclaim", client=domain.client, fields=fields, notifications=notes)

    def _preserve(self, domain: Domain, silent: float, now: float) -> Outcome:
        self.table.crash(domain)
        self.record.release(domain.client, now)
        pages = self.table.current_pages(domain)
        stone = self._bury(
            domain, DomainEnd.CRASHED,
            f"domain {domain.domid} ({domain.name}) was declared crashed: no request or heartbeat from its guest for "
            f"{silent:.1f} s (hypervisor serve --reclaim-after {self.reclaim_after_s:g}); on_crash=preserve keeps it and its "
            f"{pages} pages for inspection until the toolstack destroys it",
        )
        notes = [_end_news(domain, "crashed", stone), _owner_news(domain, Ownership.GONE)]
        fields = {"domid": domain.domid, "name": domain.name, "pages": pages, "silent_s": round(silent, 3)}
        return Outcome(b"", "preserve", client=domain.client, fields=fields, notifications=notes)

    def _bury(self, domain: Domain, end: DomainEnd, message: str) -> Tombstone:
        stone = Tombstone(domain.domid, domain.name, end, message)
        self.tombstones.bury(domain.client, stone)
        return stone

    def _guest_set(self, client: str, args: dict[str, Any], now: float) -> _Result:
        """Control keys for a running guest, as a toolstack writes xenstore keys under a domain's
        path: kept with the domain (a later write of a key replaces it) and pushed to its guest."""
        domain = self.table.resolve(args["domain"])
        self.table.set_control(domain, args["keys"])
        event = envelope.event("control", {"control": domain.control})
        fields = {"domid": domain.domid, "keys": sorted(args["keys"])}
        return _Result({"domid": domain.domid, "control": domain.control}, fields, [Notification(domain.client, domain.domid, event=event)])

    def _audit(self, client: str, args: dict[str, Any], now: float) -> _Result:
        problems = self.table.audit()
        return _Result({"ok": not problems, "problems": problems[:100]}, {"problems": len(problems)})
