"""Questions irqbus forwards to a guest on someone else's behalf (`guest interrupts NAME`).

The guest has no listening socket; irqbus, which every guest is connected to, relays: the
asker's request is held open, the guest gets a `query` event, its `answer` request closes the
query and irqbus sends the asker its reply. A guest that does not answer in time (it died
without detaching) gets the asker an ETIMEDOUT instead of a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.errors import ErrorCode, WireError

DEFAULT_QUERY_TIMEOUT_S = 2.0
MAX_PENDING = 1024


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    guest_client: str
    guest_name: str
    asker: str  # the client id of whoever asked
    seq: int  # the asker's request, answered when the guest answers
    op: str
    format: str
    deadline: float


class PendingQueries:
    def __init__(self, timeout_s: float = DEFAULT_QUERY_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._next_id = 1
        self._by_id: dict[int, Query] = {}
        self._by_request: dict[tuple[str, int], Query] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, guest_client: str, guest_name: str, asker: str, seq: int, op: str, fmt: str, now: float) -> Query:
        if len(self._by_id) >= MAX_PENDING:
            raise WireError(ErrorCode.EBUSY, f"{MAX_PENDING} queries are waiting for guests already")
        query = Query(self._next_id, guest_client, guest_name, asker, seq, op, fmt, now + self.timeout_s)
        self._next_id += 1
        self._by_id[query.id] = query
        self._by_request[(asker, seq)] = query
        return query

    def waiting(self, asker: str, seq: int) -> Query | None:
        """The open query behind a retried request, which must not be forwarded twice."""
        return self._by_request.get((asker, seq))

    def find(self, query_id: int, guest_client: str) -> Query:
        """The query a guest answers: only the guest that was asked may answer it."""
        query = self._by_id.get(query_id)
        if query is None:
            raise WireError(ErrorCode.ESRCH, f"no open query {query_id} (answered already, or timed out)")
        if query.guest_client != guest_client:
            raise WireError(ErrorCode.EPERM, f"query {query_id} was sent to guest {query.guest_name}, not to this client")
        return query

    def close(self, query: Query) -> Query:
        return self._drop(query)

    def _drop(self, query: Query) -> Query:
        del self._by_id[query.id]
        del self._by_request[(query.asker, query.seq)]
        return query

    def expired(self, now: float) -> list[Query]:
        return [self._drop(q) for q in list(self._by_id.values()) if q.deadline <= now]

    def of_guest(self, guest_client: str) -> list[Query]:
        """Close every query sent to a guest that went away."""
        return [self._drop(q) for q in list(self._by_id.values()) if q.guest_client == guest_client]

    def next_deadline(self) -> float | None:
        return min((q.deadline for q in self._by_id.values()), default=None)

    def is_asker(self, client: str) -> bool:
        return bool(self._by_id) and any(q.asker == client for q in self._by_id.values())
