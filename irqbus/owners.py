"""Which key owns which domain, as the hypervisor tells irqbus (`owners`, docs/protocol.md).

irqbus cannot tell a guest from a stranger by what it writes: only the key its connection
authenticated with counts, and only the hypervisor knows which key registered which domain.
So the hypervisor pushes that here, and a guest session for domid D is attached only by D's
key (or the toolstack's). irqbus keeps no state across a restart: a new instance starts with
an empty table, and its new epoch in the `owners` reply tells the hypervisor to send it all.
"""

from __future__ import annotations


class Owners:
    def __init__(self) -> None:
        self._by_domid: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._by_domid)

    def items(self) -> list[tuple[int, str]]:
        return sorted(self._by_domid.items())

    def of(self, domid: int) -> str | None:
        """D's key, or None: irqbus has not heard of D (yet), or it is gone."""
        return self._by_domid.get(domid)

    def update(self, domains: list[tuple[int, str]], gone: list[int], replace: bool) -> set[int]:
        """`replace`: forget every domain first (the first chunk of a full list). Then `gone`,
        then `domains` (a domain listed as owned is alive, whatever else the message says).
        Returns the domids the message named, whose sessions the caller checks again.

        A domain merely absent from a replacing list is not taken for gone: the rest of the
        list may follow in the next chunk; the hypervisor names the domains that went."""
        if replace:
            self._by_domid = {}
        table = self._by_domid
        for domid in gone:
            table.pop(domid, None)
        for domid, key in domains:
            table[domid] = key
        return {d for d, _ in domains} | set(gone)
