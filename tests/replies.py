"""What every frame a server sends must be, whatever it was sent (docs/protocol.md, "Reply" and
"Events"): one msgpack map of at most 1 MiB, version 1, a reply echoing the request's seq with
either a result map or a known error code and a bounded message."""

from __future__ import annotations

from typing import Any

import msgpack

from wire.domain_end import DomainEnd
from wire.envelope import MAX_MESSAGE_BYTES, MAX_SEQ
from wire.errors import ErrorCode

# Errors quote a peer's values capped (wire/shown.py: 200 characters each); a message quotes a
# few of them at most, so one of more than this many characters quotes something unbounded.
MAX_ERROR_MESSAGE = 1024
ERROR_CODES = frozenset(str(code) for code in ErrorCode)


def _map(frame: Any) -> dict[str, Any]:
    assert isinstance(frame, bytes), f"a frame must be bytes, got {type(frame).__name__}"
    assert len(frame) <= MAX_MESSAGE_BYTES, f"a frame of {len(frame):,} bytes exceeds the limit of {MAX_MESSAGE_BYTES:,}"
    body = msgpack.unpackb(frame)  # the strict defaults a client decodes with: str keys only
    assert type(body) is dict, f"a frame must hold a map, got {type(body).__name__}"
    assert type(body.get("v")) is int and body["v"] == 1, f"v must be the integer 1, got {body.get('v')!r}"
    return body


def check_reply(frame: Any, seq: int | None = None) -> dict[str, Any]:
    """The decoded reply; `seq` is the request's, when it had a readable one."""
    body = _map(frame)
    assert "seq" in body, "a reply carries seq (nil when the request's could not be read)"
    got = body["seq"]
    assert got is None or (type(got) is int and 0 <= got <= MAX_SEQ), f"bad seq {got!r}"
    assert seq is None or got in (seq, None), f"reply to seq {seq} says seq {got}"
    assert type(body.get("ok")) is bool, f"ok must be a bool, got {body.get('ok')!r}"
    if body["ok"]:
        assert set(body) == {"v", "seq", "ok", "result"}, sorted(body)
        assert type(body["result"]) is dict, f"result must be a map, got {type(body['result']).__name__}"
        assert seq is None or got == seq, f"an accepted request's reply must echo seq {seq}, got {got}"
    else:
        if "boot_id" in body:  # the hypervisor's, on an ESRCH to a guest operation
            assert body["error"] == "ESRCH", f"boot_id on a {body['error']!r} reply"
            assert type(body["boot_id"]) is str and 0 < len(body["boot_id"]) <= 64, body["boot_id"]
        if "reason" in body:  # why the guest's domain is gone, on the same ESRCH (wire/domain_end.py)
            assert "boot_id" in body and body["reason"] in {str(end) for end in DomainEnd}, body["reason"]
        assert set(body) - {"boot_id", "reason"} == {"v", "seq", "ok", "error", "message"}, sorted(body)
        assert body["error"] in ERROR_CODES, f"unknown error code {body['error']!r}"
        message = body["message"]
        assert type(message) is str, f"message must be a string, got {type(message).__name__}"
        assert len(message) <= MAX_ERROR_MESSAGE, f"an error message of {len(message):,} characters: {message[:200]!r}..."
    return body


def check_pushed(frame: Any) -> dict[str, Any]:
    """A frame sent without being asked for: an event, or a reply that was held (irqbus)."""
    body = _map(frame)
    if "event" in body:
        assert set(body) == {"v", "event", "args"}, sorted(body)
        assert type(body["event"]) is str and type(body["args"]) is dict, body
        return body
    return check_reply(frame)
