"""Which key owns which domain, as the hypervisor tells irqbus (`owners`, docs/protocol.md).

irqbus cannot tell a guest from a stranger by what it writes: only the key its connection
authenticated with counts, and only the hypervisor knows which key registered which domain.
So the hypervisor pushes that here, with the name it registered D under, and a guest session
for domid D is attached only by D's key and under D's name (or by the toolstack's key): else
the first key to attach as `db` with its own domid would lock the real db out. irqbus keeps no state across a restart: a new instance starts with
an empty table, and its new epoch in the `owners` reply tells the hypervisor to send it all.
"""

from __future__ import annotations


class Owners:
    def __init__(self) -> None:
        self._by_domid: dict[int, tuple[str, str | None]] = {}  # domid -> (key, name or None: not sent)
        self._by_name: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_domid)

    def items(self) -> list[tuple[int, str, str | None]]:
        return sorted((domid, key, name) for domid, (key, name) in self._by_domid.items())

    def of(self, domid: int) -> str | None:
        """D's key, or None: irqbus has not heard of D (yet), or it is gone."""
        entry = self._by_domid.get(domid)
        return None if entry is None else entry[0]

    def name_of(self, domid: int) -> str | None:
        """The name D was registered under; None when unknown (or the hypervisor sent none)."""
        entry = self._by_domid.get(domid)
        return None if entry is None else entry[1]

    def domid_named(self, name: str) -> int | None:
        """The domain the hypervisor registered under `name`, if irqbus heard of it."""
        return self._by_name.get(name)

    def update(self, domains: list[tuple[int, str, str | None]], gone: list[int], replace: bool) -> set[int]:
        """`replace`: forget every domain first (the first chunk of a full list). Then `gone`,
        then `domains` (a domain listed as owned is alive, whatever else the message says).
        Returns the domids the message named, whose sessions the caller checks again.

        A domain merely absent from a replacing list is not taken for gone: the rest of the
        list may follow in the next chunk; the hypervisor names the domains that went."""
        if replace:
            self._by_domid = {}
            self._by_name = {}
        for domid in gone:
            self._forget(domid)
        for domid, key, name in domains:
            self._forget(domid)
            self._by_domid[domid] = (key, name)
            if name is not None:
                self._by_name[name] = domid
        return {d for d, _, _ in domains} | set(gone)

    def _forget(self, domid: int) -> None:
        entry = self._by_domid.pop(domid, None)
        if entry is not None and entry[1] is not None and self._by_name.get(entry[1]) == domid:
            del self._by_name[entry[1]]
