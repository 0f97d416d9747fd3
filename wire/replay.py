"""The record of answered requests, so a retried request is answered, never executed twice.

Shared by every server (hypervisor, irqbus): the sequence rule is part of the wire contract."""

from __future__ import annotations

import collections
from dataclasses import dataclass

DEFAULT_PER_CLIENT = 16
DEFAULT_MAX_CLIENTS = 65536


@dataclass(slots=True)  # not frozen: one per request, and a frozen init costs 3x
class Answered:
    op: str
    reply: bytes


class ReplayRecord:
    """Keeps the last few replies of each client, and forgets the least recently heard clients.

    A client has one request in flight at a time, so a short window per client covers every
    retry; a sequence number older than the window is refused, not re-executed.
    """

    def __init__(self, per_client: int = DEFAULT_PER_CLIENT, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        self.per_client = per_client
        self.max_clients = max_clients
        self._clients: collections.OrderedDict[str, collections.OrderedDict[int, Answered]] = collections.OrderedDict()

    def verdict(self, client: str, seq: int, op: str) -> Answered | str | None:
        """Before executing a request: None, it is new; Answered, reply from the record; a
        message, refuse it (EPROTO): its seq was used for another op, or is older than the record."""
        window = self._clients.get(client)
        if window is None:
            return None
        answered = window.get(seq)
        if answered is not None:
            self._clients.move_to_end(client)
            return answered if answered.op == op else f"sequence {seq} was already used for {answered.op!r}"
        if len(window) >= self.per_client and seq < next(iter(window)):
            return f"sequence {seq} is older than this client's remembered requests"
        return None

    def remember(self, client: str, seq: int, op: str, reply: bytes) -> None:
        window = self._clients.get(client)
        if window is None:
            window = self._clients[client] = collections.OrderedDict()
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        window[seq] = Answered(op, reply)
        while len(window) > self.per_client:
            window.popitem(last=False)

    def forget(self, client: str) -> None:
        self._clients.pop(client, None)
