"""Who a request's `client` really is: on a CURVE socket, the client string a peer writes is
only a name within its key's own namespace.

The servers key everything a client owns (its domain, its irqbus session, its replay record)
by the scoped name, so a `client` string read from a log or the wire is worthless with any
other key: the same string under another key names another, empty, namespace.
"""

from __future__ import annotations

SEPARATOR = "|"  # in no Z85 key (wire.keys), so a scoped name splits one way only


def scoped(key: str | None, client: str) -> str:
    """`client` as the server keys it: unchanged on an insecure socket (no key)."""
    return client if key is None else key + SEPARATOR + client


def key_of(client: str) -> str | None:
    """The public key a scoped name belongs to (None: an insecure client)."""
    key, sep, _ = client.partition(SEPARATOR)
    return key if sep else None


def shown_client(client: str | None) -> str | None:
    """For info-level log lines: the key's first 8 characters and the client's first 4, enough
    to follow one client through a log and too little to act as it (without CURVE, its
    `client` string is its only credential)."""
    if client is None:
        return None
    key, sep, name = client.partition(SEPARATOR)
    if not sep:
        return client[:4] + "…" if len(client) > 4 else client
    return f"{key[:8]}|{name[:4]}…"
