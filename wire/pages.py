"""Reading a paged reply to the end: the one paging loop of every client.

A reply that grows with the host (`list` at the hypervisor, `show` at irqbus) comes a page at
a time, each under the frame limit: the page's items in domid order and `next`, the domid to
ask `after` for the following page (nil on the last). The cursor must move forward; a server
whose cursor does not is broken, and the client says so rather than loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wire.errors import RemoteError

Call = Callable[[str, dict[str, Any]], dict[str, Any]]


def every_page(
    call: Call, op: str, key: str, args: dict[str, Any] | None = None, first: dict[str, Any] | None = None
) -> dict[str, Any]:
    """All pages of `op` as one result: the `key` lists joined, the other fields of the last page.
    `first`: the first page, when another operation's reply carried it (`register`).

    Pages are read at different moments: an item that exists throughout is listed exactly
    once; one that comes or goes meanwhile may or may not be.
    """
    args = dict(args or {})
    result = call(op, args) if first is None else first
    items = list(result[key])
    after = -1
    while result.get("next") is not None:
        cursor = result["next"]
        if type(cursor) is not int or cursor <= after:
            raise RemoteError("EPROTO", f"{op}: the server's cursor {cursor!r} does not move past {after}")
        after = cursor
        result = call(op, {**args, "after": after})
        items += result[key]
    return {**result, key: items}
