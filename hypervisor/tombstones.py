"""Why a guest's domain went away, remembered by its client for a while: a guest that comes
back (it was stopped, or its reply was lost) is told in words and in a `reason` what happened,
where a bare ESRCH would leave it to guess between "destroyed" and "reclaimed"."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from wire.domain_end import DomainEnd

TOMBSTONES = 1024  # the latest this many ends are remembered; an older one is a plain ESRCH


@dataclass(frozen=True, slots=True)
class Tombstone:
    domid: int
    name: str
    end: DomainEnd
    message: str  # what the guest is told, whole: "domain 3 (web) was ..."


class Tombstones:
    def __init__(self, capacity: int = TOMBSTONES) -> None:
        self.capacity = capacity
        self._by_client: OrderedDict[str, Tombstone] = OrderedDict()
        # Clients whose tombstone was buried or forgotten since a journal last wrote them
        # (hypervisor/journal.py drains it at each commit): a guest that comes back after a
        # restart on the journal is still told why its domain is gone.
        self.dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_client)

    def bury(self, client: str, tombstone: Tombstone) -> None:
        """Remember the end of `client`'s domain; the oldest is forgotten past the capacity."""
        self._by_client.pop(client, None)
        self._by_client[client] = tombstone
        self.dirty.add(client)
        while len(self._by_client) > self.capacity:
            self.dirty.add(self._by_client.popitem(last=False)[0])

    def find(self, client: str) -> Tombstone | None:
        return self._by_client.get(client)

    def forget(self, client: str) -> None:
        """The client registered a new domain: its old end no longer answers for it."""
        if self._by_client.pop(client, None) is not None:
            self.dirty.add(client)

    def in_burial_order(self) -> list[tuple[str, Tombstone]]:
        return list(self._by_client.items())
