"""The record of answered requests: a retried request is answered, never executed twice.

Shared by every server (hypervisor, irqbus): the sequence rule is part of the wire contract
(docs/protocol.md, "Retries"). The rule does not depend on how many other clients there are:

- A client has one request in flight, so the server keeps only each client's *latest* request:
  its seq, a digest of its frame and its reply. A lower seq is stale (EPROTO); the same seq
  with the same frame is a retry, answered from the record; the same seq with another frame
  is a reuse (EPROTO); a higher seq is new.
- Replies to read-only operations are not kept (answering again is safe), only their seq and
  digest, so a `list` of a thousand domains costs the record nothing.
- A client bound to something that lives on the server (a guest's domain, an irqbus session)
  keeps its record for that thing's life: one record each, bounded by the things themselves.
- Any other client's record is created only by a request that changed something (a refusal
  changed nothing, so executing it again is safe). These records are kept at least `horizon_s`
  after their last use, which outlasts any client's retries; they are forgotten, oldest first,
  only past that age and when their bytes exceed `max_bytes`. When every record is younger and
  there is no room, a new client's change is refused (EAGAIN) *before* it is executed: the
  server never forgets a record a retry might still need.
"""

from __future__ import annotations

import collections
import enum
import hashlib
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 16 << 20
DEFAULT_HORIZON_S = 60.0  # longer than any client retries one request (docs/protocol.md)
RECORD_OVERHEAD = 240  # bytes a record costs besides its reply: the objects, the dict slot

_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def digest(frame: bytes) -> int:
    """What tells a retry (the same frame again) from a reuse of its seq for another request.

    The 64-bit BLAKE2b of the frame, the same in every process: a hypervisor that recovers its
    records from a journal (hypervisor/journal.py) must see a guest's retry, sent to the process
    before it, as the same frame. Python's hash() is keyed per process (PYTHONHASHSEED), so a
    recovered record would never match. A peer that found two of its frames with one digest
    gains nothing: its reused seq looks like a retry, answered from its own record."""
    return _from_bytes(_blake2b(frame, digest_size=8).digest(), "little", signed=True)  # signed: fits SQLite's INTEGER


class Verdict(enum.Enum):
    NEW = "new"  # execute it
    REPLAY = "replay"  # a retry: send the recorded reply
    AGAIN = "again"  # a retry of a read-only request: execute it again
    STALE = "stale"  # refuse (EPROTO): older than the client's latest request
    REUSED = "reused"  # refuse (EPROTO): the latest seq, but another request


@dataclass(slots=True)  # not frozen: one per request, and a frozen init costs 3x
class Latest:
    seq: int
    digest: int
    reply: bytes | None  # None: a read-only request, or nothing answered yet
    used: float  # when it was last written or read: the horizon counts from here

    @property
    def size(self) -> int:
        return RECORD_OVERHEAD + (len(self.reply) if self.reply is not None else 0)


class ReplayRecord:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, horizon_s: float = DEFAULT_HORIZON_S) -> None:
        self.max_bytes = max_bytes
        self.horizon_s = horizon_s
        self._bound: dict[str, Latest | None] = {}  # clients bound to a domain or a session
        self._other: collections.OrderedDict[str, Latest] = collections.OrderedDict()  # least recently used first
        self._other_bytes = 0
        # Clients whose record changed (or went) since a journal last took them (drained at
        # its commit, hypervisor/journal.py): one set.add per request. None until a journal
        # asks (`track_changes`): nothing would drain it, and clients come and go unbounded.
        self.dirty: set[str] | None = None

    def __len__(self) -> int:
        return len(self._bound) + len(self._other)

    @property
    def unbound_bytes(self) -> int:
        """What the records of unbound clients hold, the part `max_bytes` bounds."""
        return self._other_bytes

    def latest(self, client: str) -> Latest | None:
        latest = self._bound.get(client)
        return latest if latest is not None else self._other.get(client)

    def verdict(self, client: str, seq: int, frame_digest: int) -> tuple[Verdict, Latest | None]:
        """Before executing a request: what to do with it, and the record that says so."""
        latest = self._bound.get(client)
        if latest is None:
            latest = self._other.get(client)
            if latest is None:
                return Verdict.NEW, None
        if seq > latest.seq:
            return Verdict.NEW, latest
        if seq < latest.seq:
            return Verdict.STALE, latest
        if frame_digest != latest.digest:
            return Verdict.REUSED, latest
        return (Verdict.AGAIN if latest.reply is None else Verdict.REPLAY), latest

    def admit(self, client: str, now: float) -> bool:
        """Whether a change by `client` can be recorded: always for a client with a record;
        for a new one, if the unbound records have room once those past the horizon go."""
        if client in self._bound or client in self._other:
            return True
        self._expire(now, self.max_bytes - RECORD_OVERHEAD)
        return self._other_bytes + RECORD_OVERHEAD <= self.max_bytes

    def remember(self, client: str, seq: int, frame_digest: int, reply: bytes | None, now: float, changed: bool) -> None:
        """After executing: the client's latest request. `reply` None for a read-only one.
        A client without a record gets one only if the request `changed` something."""
        if self.dirty is not None:
            self.dirty.add(client)
        latest = self._bound.get(client)
        if latest is not None:  # the common case, a guest: update in place
            latest.seq, latest.digest, latest.reply, latest.used = seq, frame_digest, reply, now
            return
        if client in self._bound:  # bound, nothing answered yet
            self._bound[client] = Latest(seq, frame_digest, reply, now)
            return
        latest = self._other.get(client)
        if latest is None:
            if not changed:
                return
            latest = self._other[client] = Latest(seq, frame_digest, reply, now)
            self._other_bytes += latest.size
            return
        old_reply = latest.reply
        self._other_bytes += (len(reply) if reply is not None else 0) - (len(old_reply) if old_reply is not None else 0)
        latest.seq, latest.digest, latest.reply, latest.used = seq, frame_digest, reply, now
        self._other.move_to_end(client)

    def bind(self, client: str) -> None:
        """`client` now owns something on the server: keep its record until `release`."""
        if client in self._bound:
            return
        if self.dirty is not None:
            self.dirty.add(client)
        old = self._other.pop(client, None)
        if old is not None:
            self._other_bytes -= old.size
        self._bound[client] = old

    def release(self, client: str, now: float) -> None:
        """What `client` owned is gone: its record ages like any other from now on (a retry
        of the request that ended it is still answered from the record)."""
        if client not in self._bound:
            return
        if self.dirty is not None:
            self.dirty.add(client)
        latest = self._bound.pop(client)
        if latest is not None:
            latest.used = now
            self._other[client] = latest
            self._other_bytes += latest.size

    def is_bound(self, client: str) -> bool:
        return client in self._bound

    def _expire(self, now: float, budget: int) -> None:
        """Forget unbound records past the horizon, oldest first, until they fit `budget`."""
        cutoff = now - self.horizon_s
        other = self._other
        while other and self._other_bytes > budget:
            client, latest = next(iter(other.items()))
            if latest.used > cutoff:
                return
            del other[client]
            self._other_bytes -= latest.size
            if self.dirty is not None:
                self.dirty.add(client)

    def track_changes(self) -> None:
        """From now on, note in `dirty` every client whose record changes or goes."""
        if self.dirty is None:
            self.dirty = set()

    def restore(self, client: str, latest: Latest | None, bound: bool) -> None:
        """Recovery: a record a journal kept (unbound ones in their order of use, oldest first)."""
        if bound:
            self._bound[client] = latest
        elif latest is not None:
            self._other[client] = latest
            self._other_bytes += latest.size


def replay_refusal(verdict: Verdict, seq: int) -> str:
    """The EPROTO message for a request the record refuses."""
    if verdict is Verdict.STALE:
        return f"sequence {seq} is older than this client's latest request; it was not executed"
    return f"sequence {seq} was already used for another request; it was not executed"
