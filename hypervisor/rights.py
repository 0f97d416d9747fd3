"""Who may call the hypervisor (docs/protocol.md, "What each endpoint authorizes").

The caller is the key its connection authenticated with (wire.gate.Peer), never a field it
writes. The admin endpoint serves toolstack keys only, every operation, read-only ones too: a
domain list is a map of the host. The guest endpoint serves any key (`hypervisor serve
--guests any`, the default: a guest acts only on the domain its own key registered), or only
keys with role guest (`--guests authorized`). Under `authorized` every guest operation needs
the role, not only `register`: revoking a guest key cuts its guest off at its next request,
as revoking a toolstack key does (its domain stays, like any silent guest's, until the
toolstack destroys it or `--reclaim-after` reclaims it).

A refusal (EACCES) is decided before anything else is looked at: it changes nothing, not even
the replay record, so a stranger's flood costs the host no memory.
"""

from __future__ import annotations

import enum

from wire.gate import Peer
from wire.keys import Role


class Guests(enum.StrEnum):
    """`hypervisor serve --guests`: which keys may use the guest endpoint."""

    ANY = "any"  # any authenticated key may register a domain, bound to that key
    AUTHORIZED = "authorized"  # only keys `authorized` gives role guest


def not_toolstack(peer: Peer) -> str:
    """The EACCES message for a key without role toolstack on the admin endpoint."""
    return (
        f"key {peer.short()!r} is not a toolstack key: the admin endpoint serves toolstack keys only "
        "(ballonet keys authorize NAME --role toolstack)"
    )


def not_guest(peer: Peer) -> str:
    """The EACCES message for a key without role guest on a `--guests authorized` hypervisor."""
    return (
        f"key {peer.short()!r} is not a guest key: this hypervisor serves authorized guests only "
        "(hypervisor serve --guests authorized; ballonet keys authorize NAME --role guest)"
    )
