"""What the hypervisor tells irqbus about which key owns which domain, without sockets.

irqbus lets a guest attach for domain D only with the key that registered D here
(docs/protocol.md, "What each endpoint authorizes"); it learns those keys from irqbus's
`owners` operation, args `{"domains": [[domid, z85key, name], ...], "replace": bool, "gone": [domid, ...]}`,
reply `{"epoch": int, "owners": int}`. The name is the domain's: irqbus lets D's key attach only
under it, so that no key can squat another guest's name there:

- on each register, `domains=[[domid, key, name]]`; on each destroy, reclaim or crash, `gone=[domid]`;
- every PING_S, an `owners` with nothing in it (a ping), to hear irqbus's epoch;
- when irqbus is first heard, or its epoch changes (it restarted and knows nothing), or a
  change could not be sent (irqbus was not connected), the full list, its first chunk with
  `replace: true`, so irqbus's view is exactly this hypervisor's, whatever it heard before.

A domain of an insecure client (no key) is not sent: there is no key to check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from wire.epoch import read_epoch
from wire.identity import key_of

PING_S = 1.0
CHUNK = 4096  # pairs (or gone domids) per message: irqbus's bound on each list

Owners = Callable[[], Iterable[tuple[int, str, str]]]  # (domid, scoped client, name) of every live guest's domain


class OwnersFeed:
    def __init__(self, owners: Owners, ping_s: float = PING_S) -> None:
        self._owners = owners
        self.ping_s = ping_s
        self.epoch: int | None = None  # irqbus's, as last heard
        self._full_due = False  # irqbus needs the whole list
        self._next_ping = float("-inf")

    def owned(self, domid: int, client: str, name: str | None) -> dict[str, Any] | None:
        """A register: the args to send, or None for an insecure client."""
        key = key_of(client)
        if key is None:
            return None
        return {"domains": [[domid, key] if name is None else [domid, key, name]]}

    def gone(self, domid: int) -> dict[str, Any]:
        return {"gone": [domid]}

    def due(self, now: float) -> list[dict[str, Any]]:
        """What to send now: the full list when irqbus needs it, else a ping when one is due."""
        if self._full_due:
            self._full_due = False
            self._next_ping = now + self.ping_s  # the list's replies carry the epoch too
            return self.full_list()
        if now >= self._next_ping:
            self._next_ping = now + self.ping_s
            return [{"domains": []}]
        return []

    def full_list(self) -> list[dict[str, Any]]:
        """Every live guest's domain with its key, in chunks; the first (always sent, even
        empty: it clears what an earlier hypervisor told irqbus) replaces irqbus's list."""
        pairs = [[domid, key, name] for domid, client, name in self._owners() if (key := key_of(client)) is not None]
        chunks = [{"domains": pairs[i : i + CHUNK], "replace": i == 0} for i in range(0, len(pairs), CHUNK)]
        return chunks or [{"domains": [], "replace": True}]

    def heard(self, result: Any) -> None:
        """An `owners` reply's result: a new epoch (or the first) means irqbus needs the list."""
        epoch = read_epoch(result.get("epoch")) if isinstance(result, dict) else None
        if epoch is None:
            return
        if epoch != self.epoch:
            self.epoch = epoch
            self._full_due = True

    def lost(self) -> None:
        """A change was not sent (irqbus not connected): send the whole list once irqbus answers."""
        self.epoch = None
