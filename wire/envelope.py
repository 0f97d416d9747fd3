"""The envelope every message travels in: one msgpack map per ZeroMQ frame.

Request: {"v": 1, "op": str, "seq": int, "client": str, "args": map}
Reply:   {"v": 1, "seq": int|nil, "ok": true, "result": map}
         {"v": 1, "seq": int|nil, "ok": false, "error": "EINVAL", "message": str}
         ... and "boot_id": str on the hypervisor's ESRCH to a guest operation, and
         "reason": str when it knows why that guest's domain is gone
Event:   {"v": 1, "event": str, "args": map}          (unsolicited, server to client)

docs/protocol.md is the contract; this module is its Python reading.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from wire.errors import ErrorCode, WireError
from wire.shown import clip, shown

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
MAX_SEQ = (1 << 63) - 1
MAX_CLIENT_ID = 64
_REQUEST_KEYS = frozenset({"v", "op", "seq", "client", "args"})


class EnvelopeError(WireError):
    """A request the server cannot take; `seq` is echoed when it could be read."""

    def __init__(self, code: ErrorCode, message: str, seq: int | None = None) -> None:
        super().__init__(code, message)
        self.seq = seq


@dataclass(slots=True)  # not frozen: one per request, and a frozen init costs 3x
class Request:
    op: str
    seq: int
    client: str
    args: dict[str, Any]


class _Packer(threading.local):
    """One msgpack.Packer per thread, reused: `msgpack.packb` builds a new one (and its
    buffer) for every message, which costs more than packing a small message does."""

    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


_packer = _Packer()


def encode(message: dict[str, Any]) -> bytes:
    return _packer.pack(message)


# Every successful request is answered with the map {"v": 1, "seq": seq, "ok": true,
# "result": result}, so its fixed parts are packed once: a reply costs packing its seq and
# its result (the same bytes as encode(ok_reply(seq, result)), a third cheaper).
_OK_HEAD = b"\x84" + encode("v") + encode(PROTOCOL_VERSION) + encode("seq")  # 0x84: a map of 4
_OK_MIDDLE = encode("ok") + encode(True) + encode("result")


def encode_ok(seq: int | None, result: dict[str, Any]) -> bytes:
    pack = _packer.pack
    return b"".join((_OK_HEAD, pack(seq), _OK_MIDDLE, pack(result)))


# A request is packed the same way: the map {"v": 1, "op": op, "seq": seq, "client": client,
# "args": args} in that order, so a client packs its op's head once and its own name once,
# and each request costs packing its seq and its arguments (the bytes of encode(request(...))).
_REQUEST_HEAD = b"\x85" + encode("v") + encode(PROTOCOL_VERSION) + encode("op")  # 0x85: a map of 5
_SEQ_KEY = encode("seq")
MAX_CACHED_OPS = 256
_op_heads: dict[str, bytes] = {}


def client_part(client: str) -> bytes:
    """What follows a request's seq for this client, up to its arguments (`encode_request`)."""
    return encode("client") + encode(client) + encode("args")


def encode_request(op: str, seq: int, client_part_bytes: bytes, args: dict[str, Any]) -> bytes:
    """encode(request(op, seq, client, args)), byte for byte, with `client_part_bytes` from
    `client_part(client)`: the parts that do not change from one request to the next packed once."""
    head = _op_heads.get(op)
    if head is None:
        if len(_op_heads) >= MAX_CACHED_OPS:
            _op_heads.clear()
        head = _op_heads[op] = _REQUEST_HEAD + encode(op) + _SEQ_KEY
    pack = _packer.pack
    return b"".join((head, pack(seq), client_part_bytes, pack(args)))


def _unpack(frame: bytes) -> Any:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(ErrorCode.EMSGSIZE, f"message of {len(frame)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        # msgpack's defaults are what the protocol wants (str keys only, str for text, lists
        # for arrays, nesting at most 1,024 deep); naming them costs a keyword parse per message.
        return msgpack.unpackb(frame)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise EnvelopeError(ErrorCode.EPROTO, f"not a msgpack message: {_unpack_failure(exc)}") from None


def _unpack_failure(exc: Exception) -> str:
    """What was wrong with a frame msgpack refused, in the protocol's words."""
    if isinstance(exc, msgpack.StackError):
        return "nested deeper than 1,024 levels"
    if isinstance(exc, msgpack.ExtraData):
        return "bytes after the end of the message"
    if isinstance(exc, msgpack.FormatError):
        return "a byte that starts no msgpack value"
    text = str(exc)
    if "map key" in text:
        return "map keys must be strings"
    if "incomplete" in text:
        return "the message is truncated"
    return clip(f"{type(exc).__name__}: {text}", 120)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_request(frame: bytes) -> Request:
    """Check the envelope only; the operation's arguments are checked by wire.operations."""
    body = _unpack(frame)
    if type(body) is dict and len(body) == 5:  # every key present: the one test per key below
        seq, client, op, args, v = body.get("seq"), body.get("client"), body.get("op"), body.get("args"), body.get("v")
        if (
            type(v) is int
            and v == PROTOCOL_VERSION
            and type(seq) is int
            and 0 <= seq <= MAX_SEQ
            and type(client) is str
            and 1 <= len(client) <= MAX_CLIENT_ID
            and type(op) is str
            and type(args) is dict
        ):
            return Request(op, seq, client, args)
    return _refuse_request(body)


def _refuse_request(body: Any) -> Request:
    """The slow path: say what is wrong, or accept what the fast path's shape test skipped
    (an absent or nil 'args' is an empty map: JavaScript encoders write nil for undefined).
    Every value quoted back is bounded (wire.shown): the request may be a megabyte."""
    if not isinstance(body, dict):
        raise EnvelopeError(ErrorCode.EPROTO, f"a request must be a map, got {type(body).__name__}")
    seq = body.get("seq")
    seq = seq if _is_int(seq) and 0 <= seq <= MAX_SEQ else None
    v = body.get("v")
    if not _is_int(v) or v != PROTOCOL_VERSION:  # true and 1.0 equal 1 in Python, not on the wire
        raise EnvelopeError(ErrorCode.EPROTO, f"unsupported protocol version {shown(v)}; this server speaks {PROTOCOL_VERSION}", seq)
    if not _REQUEST_KEYS.issuperset(body):
        unknown = [key for key in body if key not in _REQUEST_KEYS]  # in message order: no sort of 100,000 keys
        raise EnvelopeError(ErrorCode.EPROTO, f"{len(unknown)} unknown envelope key(s): {shown(unknown)}", seq)
    if seq is None:
        raise EnvelopeError(ErrorCode.EPROTO, f"'seq' must be an integer 0..{MAX_SEQ}, got {shown(body.get('seq'))}")
    client = body.get("client")
    if not isinstance(client, str) or not 1 <= len(client) <= MAX_CLIENT_ID:
        raise EnvelopeError(ErrorCode.EPROTO, f"'client' must be a string of 1..{MAX_CLIENT_ID} characters", seq)
    op = body.get("op")
    if not isinstance(op, str):
        raise EnvelopeError(ErrorCode.EPROTO, "'op' must be a string", seq)
    args = body.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise EnvelopeError(ErrorCode.EPROTO, "'args' must be a map", seq)
    return Request(op=op, seq=seq, client=client, args=args)


def request(op: str, seq: int, client: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op, "seq": seq, "client": client, "args": args}


def ok_reply(seq: int | None, result: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "seq": seq, "ok": True, "result": result}


def error_reply(seq: int | None, code: ErrorCode, message: str, boot_id: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """`boot_id`: on a guest's ESRCH, the hypervisor's (docs/protocol.md, "Hypervisor restarts");
    `reason`: why that guest's domain is gone, when the hypervisor remembers (wire/domain_end.py)."""
    reply = {"v": PROTOCOL_VERSION, "seq": seq, "ok": False, "error": str(code), "message": message}
    if boot_id is not None:
        reply["boot_id"] = boot_id
    if reason is not None:
        reply["reason"] = reason
    return reply


def event(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "event": name, "args": args}


def decode_incoming(frame: bytes) -> dict[str, Any]:
    """Client side: a reply or an event. Raises EnvelopeError when it is neither."""
    body = _unpack(frame)
    if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
        raise EnvelopeError(ErrorCode.EPROTO, "not a protocol message")
    if "event" in body:
        if not isinstance(body["event"], str) or not isinstance(body.get("args", {}), dict):
            raise EnvelopeError(ErrorCode.EPROTO, "malformed event")
        return body
    if not isinstance(body.get("ok"), bool):
        raise EnvelopeError(ErrorCode.EPROTO, "malformed reply")
    return body
