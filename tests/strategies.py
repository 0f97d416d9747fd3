"""Hypothesis strategies for the wire: a well-formed request for every operation of
wire/operations.py, aimed at a known state (the names, clients, pages and devices that exist),
and the ways a broken or hostile client mangles one.

A drawn request is a `Draft`: the envelope as a value tree, with `SEQ` where its sequence
number goes, so that one draft can be sent as a new request, a retry or a stale one. Values
msgpack's own packer refuses (a list nested 1,000 deep: it stops at 511 levels; a map with a
list for a key; a key given twice) are written by `pack`, since a hostile client is not
limited to what msgpack-python emits. The fuzz tests (tests/test_fuzz_*.py) and bench/fuzz.py
draw from the same strategies.
"""

from __future__ import annotations

import math
import os
import string
import struct
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from wire.control import KEYS as CONTROL_KEYS
from wire.envelope import MAX_CLIENT_ID, MAX_MESSAGE_BYTES, MAX_SEQ
from wire.gate import Peer
from wire.heartbeat import DRIVER_GENERATIONS, DRIVER_STATES
from wire.heartbeat import FIELDS as HEARTBEAT_FIELDS
from wire.keys import Role
from wire.operations import (
    CHIP_KINDS,
    IRQBUS_PINS,
    MAX_BATCH_PAGES,
    MAX_BURST,
    MAX_DOMAIN_PAGES,
    MAX_DOMID,
    ON_CRASH,
    OPERATIONS,
    TRIGGERS,
    VIRQS,
    Endpoint,
)

# CI runs every property on a fixed sequence of examples (derandomize) and keeps no database,
# so a run is reproducible and leaves nothing behind; BALLONET_FUZZ_EXAMPLES raises the count
# for a longer local campaign.
FUZZ_EXAMPLES = int(os.environ.get("BALLONET_FUZZ_EXAMPLES", "200"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.filter_too_much],
)
# for properties over a small space (one field of a well-formed request varied)
FUZZ_SETTINGS_SMALL = settings(FUZZ_SETTINGS, max_examples=max(1, FUZZ_EXAMPLES // 2))

MSGPACK_MAX_DEPTH = 1024  # msgpack-python's unpacker refuses deeper nesting (StackError)
MSGPACK_INT_MIN, MSGPACK_INT_MAX = -(1 << 63), (1 << 64) - 1


# --- encoding what msgpack-python will not ---------------------------------------------------


class _Seq:
    """Where a draft's sequence number goes; filled in when the draft is sent."""

    def __repr__(self) -> str:
        return "SEQ"


SEQ = _Seq()


@dataclass(frozen=True)
class Deep:
    """`leaf` inside `depth` one-element lists (or one-key maps)."""

    depth: int
    kind: str = "list"
    leaf: Any = None

    def __repr__(self) -> str:  # Hypothesis prints failing examples: keep it short
        return f"Deep({self.depth}, {self.kind!r}, {self.leaf!r})"


@dataclass(frozen=True)
class Pairs:
    """A map as a list of (key, value): keys of any type, in any number, repeated or not."""

    items: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Huge:
    """`char * count`, drawn as two numbers rather than as a megabyte of examples."""

    char: str
    count: int

    @property
    def text(self) -> str:
        return self.char * self.count

    def __repr__(self) -> str:
        return f"Huge({self.char!r} * {self.count})"


@dataclass(frozen=True)
class Raw:
    """Bytes put in the message as they are: what no packer would write (a reserved ext type)."""

    data: bytes


def _header(count: int, fix: int, short: int, long: int) -> bytes:
    if count < 16:
        return bytes([fix | count])
    if count < 1 << 16:
        return bytes([short]) + struct.pack(">H", count)
    return bytes([long]) + struct.pack(">I", count)


def pack(value: Any, seq: int = 0) -> bytes:
    """msgpack for a value tree that may hold SEQ, Deep, Pairs and Huge."""
    if value is SEQ:
        return msgpack.packb(seq)
    if isinstance(value, Deep):
        wrap = b"\x91" if value.kind == "list" else b"\x81\xa1k"
        return wrap * value.depth + pack(value.leaf, seq)
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Huge):
        return msgpack.packb(value.text)
    if isinstance(value, Pairs):
        return _header(len(value.items), 0x80, 0xDE, 0xDF) + b"".join(pack(k, seq) + pack(v, seq) for k, v in value.items)
    if isinstance(value, dict | list | tuple):
        try:  # no marker inside: msgpack's own packer, which writes the same bytes, only faster
            return msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError):
            pass
    if isinstance(value, dict):
        return _header(len(value), 0x80, 0xDE, 0xDF) + b"".join(pack(k, seq) + pack(v, seq) for k, v in value.items())
    if isinstance(value, list | tuple):
        return _header(len(value), 0x90, 0xDC, 0xDD) + b"".join(pack(v, seq) for v in value)
    return msgpack.packb(value, use_bin_type=True)


# --- a request, as drawn ---------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """A request to send: `body` is the envelope with SEQ where its seq goes.

    `client` names whose sequence counter numbers it (None: the client field is not a usable
    string); `mutation` names what was done to it.
    """

    endpoint: Endpoint
    body: Any
    client: str | None
    op: str | None
    mutation: str = "well-formed"
    cut: int | None = None  # send only the first `cut` bytes
    tail: bytes = b""  # bytes after the message
    raw: bytes | None = None  # the whole frame, not built from `body`

    def frame(self, seq: int = 1) -> bytes:
        if self.raw is not None:
            return self.raw
        data = pack(self.body, seq)
        if self.cut is not None:
            data = data[: self.cut % max(1, len(data))]
        return data + self.tail

    def readable_seq(self, seq: int) -> int | None:
        """The seq a server can read in `frame(seq)`, if the frame is intact enough for that."""
        intact = self.raw is None and self.cut is None and not self.tail
        return seq if intact and isinstance(self.body, dict) and self.body.get("seq") is SEQ else None


def envelope_draft(endpoint: Endpoint, client: str, op: str, args: dict[str, Any]) -> Draft:
    return Draft(endpoint, {"v": 1, "op": op, "seq": SEQ, "client": client, "args": args}, client, op)


# --- the state the requests aim at -----------------------------------------------------------


@dataclass(frozen=True)
class HostDomain:
    name: str
    domid: int
    client: str  # the guest's client id ("" when unknown: a real guest process)
    extents: tuple[tuple[int, int], ...]  # pages it held when the world was drawn up
    max_pages: int


@dataclass(frozen=True)
class HostWorld:
    """What exists at the hypervisor: requests name these, so that many are accepted."""

    domains: tuple[HostDomain, ...]
    admin_clients: tuple[str, ...]
    fresh_clients: tuple[str, ...]  # clients with no domain
    total_pages: int


@dataclass(frozen=True)
class BusDevice:
    name: str
    kind: str  # "pin" | "msi"
    pin: int | None = None
    trigger: str = "edge"


@dataclass(frozen=True)
class BusGuest:
    name: str
    domid: int
    client: str  # its session ("" when unknown)
    devices: tuple[BusDevice, ...]


@dataclass(frozen=True)
class BusWorld:
    guests: tuple[BusGuest, ...]
    tool_clients: tuple[str, ...]
    fresh_clients: tuple[str, ...]
    open_queries: tuple[tuple[int, str, str], ...] = ()  # (query id, guest client, format)
    keys: tuple[str, ...] = ()  # Z85 public keys the world's guests and devices use


# --- values ----------------------------------------------------------------------------------

# Text a person, or int(), reads as a number although it is not ASCII digits: superscripts and
# circled digits (isdigit, int() refuses), Arabic-Indic, Devanagari, fullwidth and mathematical
# digits (int() accepts), numerals (isnumeric only), and what int() forgives around digits.
UNICODE_DIGITS = ("²", "³", "¹", "①", "②", "٣", "١", "٢", "३", "３", "１２", "𝟑", "Ⅲ", "½", "〇", " 1", "1 ", "+1", "-1", "1_0", "0x1")
EDGE_INTS = (
    0, 1, -1, 2, 0x1F, 0x20, 0xFF, 0x100, 511, 512, 513, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 1,
    MAX_DOMID, MAX_DOMID + 1, MAX_DOMAIN_PAGES, MAX_SEQ, MAX_SEQ + 1, MSGPACK_INT_MAX, MSGPACK_INT_MIN, MSGPACK_INT_MIN + 1,
)
ODD_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 0.5, 1e300, 5e-324, float(MAX_SEQ), float(1 << 64))
ODD_TEXT = ("", " ", "\0", "\x1b[2J\x1b[31mred", "a\nb", "\u202e", "\ufeff", "null", "None", "NaN", "-", "..", "a" * 65, "é" * 64, "01", "007")
HUGE_CHARS = ("x", "²", "é", "\x1b", "𝟑", "\0")

edge_ints = st.sampled_from(EDGE_INTS)
any_int = st.one_of(edge_ints, st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX), st.integers(-3, 1 << 16))
odd_floats = st.one_of(st.sampled_from(ODD_FLOATS), st.floats())
unicode_digits = st.sampled_from(UNICODE_DIGITS)
huge_text = st.builds(Huge, st.sampled_from(HUGE_CHARS), st.integers(1 << 12, MAX_MESSAGE_BYTES))
deep = st.builds(
    Deep,
    st.one_of(st.integers(MSGPACK_MAX_DEPTH - 40, MSGPACK_MAX_DEPTH + 4), st.integers(1, MSGPACK_MAX_DEPTH)),
    st.sampled_from(("list", "map")),
    st.sampled_from((None, 1, "x", b"\x00", [], {})),
)
# Extension types: application ones (0..127); the reserved -1, a timestamp (fixext 4 and 8 hold
# one; 1, 2 and 16 bytes the decoder refuses); other negative types, which it refuses too.
ext = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.tuples(st.sampled_from(((4, b"\xd6"), (8, b"\xd7"), (1, b"\xd4"), (2, b"\xd5"), (16, b"\xd8"))), st.binary(min_size=16, max_size=16)).map(
        lambda t: Raw(t[0][1] + b"\xff" + t[1][: t[0][0]])
    ),
    st.integers(-128, -2).map(lambda code: Raw(b"\xd4" + code.to_bytes(1, "big", signed=True) + b"\x00")),
)
scalars = st.one_of(st.none(), st.booleans(), any_int, odd_floats, st.text(max_size=20), st.binary(max_size=20), unicode_digits)
shallow = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
odd_keys = st.one_of(st.none(), st.booleans(), any_int, odd_floats, st.binary(max_size=8), st.lists(st.integers(0, 3), max_size=2), ext)

hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    any_int,
    odd_floats,
    unicode_digits,
    st.sampled_from(ODD_TEXT),
    st.text(max_size=80),
    st.binary(max_size=64),
    huge_text,
    deep,
    ext,
    shallow,
    st.builds(Pairs, st.lists(st.tuples(odd_keys, scalars), min_size=1, max_size=3).map(tuple)),
)


MANY_KEYS = 130_000  # about 7 bytes each in a request: 0.9 MiB of names to quote back
_KEY_NAMES = [format(i, "x") for i in range(MANY_KEYS)]


def many_keys(count: int) -> dict[str, int]:
    """`count` short unknown argument names: naming each back in an error passes 1 MiB."""
    return dict.fromkeys(_KEY_NAMES[:count], 0)


printable_names = st.text(alphabet=st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=64)
ascii_names = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=24)


# --- well-formed requests --------------------------------------------------------------------
# Plain functions of Hypothesis' `draw`, called from the few strategies built once below:
# a strategy built per draw (flatmap, a composite called with arguments) costs Hypothesis more
# to set up than the request costs the server to answer.


def _pick(draw: Any, items: Any) -> Any:
    return draw(st.sampled_from(tuple(items)))


def _chance(draw: Any, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


def _domain_ref(draw: Any, world: HostWorld) -> int | str:
    """A domain as xl names it: a name, a domid, a domid in text; or one that is not there."""
    way = draw(st.integers(0, 5))
    if world.domains and way < 3:
        domain = _pick(draw, world.domains)
        return (domain.name, domain.domid, str(domain.domid))[way]
    return draw((unicode_digits, st.integers(0, MAX_DOMID), ascii_names)[way % 3])


def _guest_caller(draw: Any, world: HostWorld) -> tuple[str, HostDomain | None]:
    """Mostly a registered domain's own client: guest requests act on the caller's domain."""
    known = [d for d in world.domains if d.client]
    if known and not _chance(draw, 4):
        domain = _pick(draw, known)
        return domain.client, domain
    return _pick(draw, world.fresh_clients), None


def _extents(draw: Any, domain: HostDomain | None, total_pages: int) -> list[list[int]]:
    """Pieces of the pages a domain holds (accepted), or anywhere (refused)."""
    out: list[list[int]] = []
    budget = MAX_BATCH_PAGES
    for _ in range(draw(st.integers(1, 3))):
        if domain is not None and domain.extents and not _chance(draw, 5):
            start, count = _pick(draw, domain.extents)
            first = draw(st.integers(start, start + count - 1))
            n = draw(st.integers(1, min(budget, start + count - first)))
        else:
            first = draw(st.integers(0, total_pages + 8))
            n = draw(st.integers(1, budget))
        out.append([first, n])
        budget -= n
        if budget < 1:
            break
    return out


def _balloon(draw: Any) -> dict[str, Any]:
    """Some of the statistics wire/heartbeat.py knows, each of its kind: KiB (nil for the hard
    limit too), seconds (int or float), counts, a driver state."""
    stats: dict[str, Any] = {}
    for key in HEARTBEAT_FIELDS:
        if not draw(st.booleans()):
            continue
        if key == "state":
            stats[key] = _pick(draw, sorted(DRIVER_STATES))
        elif key == "driver":
            stats[key] = _pick(draw, sorted(DRIVER_GENERATIONS))
        elif key.endswith("_kb"):
            stats[key] = None if key == "hard_limit_kb" and draw(st.booleans()) else draw(st.integers(0, 1 << 34))
        elif "delay" in key:
            stats[key] = draw(st.integers(0, 86_400) | st.floats(0, 86_400))
        else:
            stats[key] = draw(st.integers(0, MAX_SEQ))
    return stats


def _control_keys(draw: Any) -> dict[str, Any]:
    """1..all of wire/control.py's keys, each of its kind (a ceiling may be nil: none)."""
    keys: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(tuple(CONTROL_KEYS)), min_size=1, unique=True)):
        if key == "rate":
            keys[key] = draw(st.integers(0, 1 << 20) | st.floats(0, 1e6))
        elif key == "stuck":
            keys[key] = draw(st.booleans())
        elif key == "ceiling_pages" and draw(st.booleans()):
            keys[key] = None
        elif key.endswith("_pages"):
            keys[key] = draw(st.integers(0, MAX_DOMAIN_PAGES))
        elif key == "max_schedule_delay":
            keys[key] = draw(st.integers(1, 86_400) | st.floats(0.001, 86_400))
        else:
            keys[key] = draw(st.integers(0, MAX_SEQ))
    return keys


def _host_call(draw: Any, world: HostWorld, op: str) -> tuple[str, dict[str, Any]]:
    """(client, args) for one hypervisor operation."""
    if OPERATIONS[op].endpoint is Endpoint.GUEST:
        client, domain = _guest_caller(draw, world)
        if op == "register":
            name = draw(st.one_of(st.sampled_from(tuple(d.name for d in world.domains) or ("x",)), ascii_names, printable_names))
            memory = draw(st.integers(1, max(1, world.total_pages // 8)) | st.integers(1, MAX_DOMAIN_PAGES))
            args = {"name": name, "memory_pages": memory, "max_pages": draw(st.integers(memory, min(MAX_DOMAIN_PAGES, memory * 4)))}
            if _chance(draw, 3):
                args["on_crash"] = _pick(draw, ON_CRASH)
            return client, args
        if op == "increase_reservation":
            return client, {"nr_pages": draw(st.integers(1, MAX_BATCH_PAGES))}
        if op == "decrease_reservation":
            return client, {"extents": _extents(draw, domain, world.total_pages)}
        if op == "status":
            return client, {"balloon": _balloon(draw)} if draw(st.booleans()) else {}
        if op == "memory_map":  # the caller's pages, from the first or after one of them
            starts = [start for start, _ in domain.extents] if domain else []
            return client, {"after": draw(st.sampled_from((-1, *starts)) | st.integers(-1, world.total_pages))} if draw(st.booleans()) else {}
        if op in ("get_target", "shutdown"):
            return client, {}
        raise AssertionError(f"no strategy for guest operation {op!r}")
    client = _pick(draw, world.admin_clients)
    if op == "list":  # a page: from the first domain, or after one
        after = draw(st.sampled_from((-1, *(d.domid for d in world.domains))) | st.integers(-1, MAX_DOMID))
        return client, {"after": after} if draw(st.booleans()) else {}
    if op == "snapshot":  # a new one, or a later page of one (of this client's, or made up)
        if not draw(st.booleans()):
            return client, {}
        after = draw(st.sampled_from((-1, *(d.domid for d in world.domains))) | st.integers(-1, MAX_DOMID))
        return client, {"snapshot": draw(st.integers(1, 8) | st.integers(1, MAX_SEQ)), "after": after}
    if op in ("info", "audit"):
        return client, {}
    if op not in ("mem_set", "mem_max", "destroy", "guest_set", "on_crash"):
        raise AssertionError(f"no strategy for admin operation {op!r}")
    args: dict[str, Any] = {"domain": _domain_ref(draw, world)}
    if op == "guest_set":
        args["keys"] = _control_keys(draw)
        return client, args
    if op == "on_crash":
        args["on_crash"] = _pick(draw, ON_CRASH)
        return client, args
    top = _pick(draw, world.domains).max_pages if world.domains else 4096
    if op == "mem_set":
        args["target_pages"] = draw(st.integers(0, top) | st.integers(0, MAX_DOMAIN_PAGES))
    elif op == "mem_max":  # the domctl (any max, also below current) or libxl's (not below the target)
        args["max_pages"] = draw(st.integers(0, top * 2) | st.integers(0, MAX_DOMAIN_PAGES))
        if draw(st.booleans()):
            args["refuse_below_target"] = draw(st.booleans())
    return client, args


HOST_OPS = tuple(name for name, op in OPERATIONS.items() if op.endpoint in (Endpoint.GUEST, Endpoint.ADMIN))
BUS_OPS = tuple(name for name, op in OPERATIONS.items() if op.endpoint is Endpoint.IRQBUS)
NO_REQUIRED_ARGS = tuple(name for name, op in OPERATIONS.items() if not op.required)


def _host_draft(draw: Any, world: HostWorld, ops: tuple[str, ...] = HOST_OPS) -> Draft:
    op = _pick(draw, ops)
    client, args = _host_call(draw, world, op)
    return envelope_draft(OPERATIONS[op].endpoint, client, op, args)


_DEVICE_PINS = tuple(p for p in range(IRQBUS_PINS) if p != 2)
_fresh_devices = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8).map(lambda s: "fz" + s)


def _guest_ref(draw: Any, world: BusWorld, guest: BusGuest | None) -> int | str:
    way = draw(st.integers(0, 5))
    if guest is not None and way < 3:
        return (guest.name, guest.domid, guest.name)[way]
    return draw((unicode_digits, st.integers(0, MAX_DOMID), ascii_names)[way % 3])


def _device(draw: Any, world: BusWorld, guest: BusGuest | None) -> str:
    """Mostly a device of `guest`; else another guest's, or one nobody attached."""
    way = draw(st.integers(0, 5))
    own = [d.name for d in guest.devices] if guest else []
    every = [d.name for g in world.guests for d in g.devices]
    if own and way < 4:
        return _pick(draw, own)
    if every and way < 5:
        return _pick(draw, every)
    return draw(_fresh_devices)


def _session(draw: Any, world: BusWorld) -> tuple[str, BusGuest | None]:
    """Mostly an attached guest's own session: guest operations act on the caller's guest."""
    known = [g for g in world.guests if g.client]
    if known and not _chance(draw, 5):
        guest = _pick(draw, known)
        return guest.client, guest
    return _pick(draw, world.fresh_clients + world.tool_clients), None


def _msi_address(draw: Any) -> int:
    """The interrupt window, a destination, redirection hint and destination mode bits."""
    return 0xFEE00000 | draw(st.integers(0, 255)) << 12 | draw(st.integers(0, 1)) << 3 | draw(st.integers(0, 1)) << 2


def _msi_data(draw: Any) -> int:
    """A vector, a delivery mode (mostly fixed or lowest priority), level-assert and trigger bits."""
    mode = _pick(draw, (0, 0, 1, 2, 4, 7))
    return draw(st.integers(16, 255)) | mode << 8 | draw(st.integers(0, 1)) << 14 | draw(st.integers(0, 1)) << 15


def _chip(draw: Any, world: BusWorld, guest: BusGuest | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if draw(st.booleans()):
        args["ops"] = [
            {"kind": _pick(draw, CHIP_KINDS), "pin": _pick(draw, _DEVICE_PINS)} if not _chance(draw, 4)
            else {"kind": _pick(draw, CHIP_KINDS), "device": _device(draw, world, guest)}
            for _ in range(draw(st.integers(0, 5)))
        ]
    if draw(st.booleans()):
        args["clear"] = [[_device(draw, world, guest), draw(st.integers(1, 6))] for _ in range(draw(st.integers(0, 3)))]
    if _chance(draw, 3):
        args["reply"] = draw(st.booleans())
    return args


def _answer(draw: Any, world: BusWorld) -> tuple[str, dict[str, Any]]:
    """Mostly an answer to the open query, by the guest it was sent to."""
    if world.open_queries and not _chance(draw, 4):
        query, client, fmt = _pick(draw, world.open_queries)
    else:
        client = _session(draw, world)[0]
        query, fmt = draw(st.integers(1, 8)), _pick(draw, ("text", "json"))
    if fmt == "json":
        rows = [{"irq": draw(st.integers(0, 255)), "name": draw(st.text(max_size=20))} for _ in range(draw(st.integers(0, 4)))]
        return client, {"query": query, "rows": rows}
    return client, {"query": query, "text": draw(st.text(max_size=200))}


Z85_CHARS = string.digits + string.ascii_letters + ".-:+=^!/*?&<>()[]{}@%$#"  # ZeroMQ's Z85 alphabet (RFC 32)
z85_keys = st.text(alphabet=Z85_CHARS, min_size=40, max_size=40)


def _key(draw: Any, world: BusWorld) -> str:
    """Mostly a key the world knows; else a fresh one."""
    return _pick(draw, world.keys) if world.keys and draw(st.booleans()) else draw(z85_keys)


def _domid(draw: Any, world: BusWorld) -> int:
    return _pick(draw, [g.domid for g in world.guests]) if world.guests and draw(st.booleans()) else draw(st.integers(0, MAX_DOMID))


def _owner_name(draw: Any, world: BusWorld) -> list[str]:
    """[] (no name), a known guest's name, or any name."""
    if _chance(draw, 4):
        return []
    return [_pick(draw, world.guests).name if world.guests and draw(st.booleans()) else draw(st.one_of(ascii_names, printable_names))]


def _owners(draw: Any, world: BusWorld) -> dict[str, Any]:
    """The hypervisor's word on who owns which domain: a ping (nothing), news, or a full list;
    each entry with the domain's name (a guest's, or any) or, as an older hypervisor sent it, without."""
    args: dict[str, Any] = {}
    if draw(st.booleans()):
        args["domains"] = [[_domid(draw, world), _key(draw, world), *_owner_name(draw, world)] for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        args["gone"] = [_domid(draw, world) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        args["replace"] = draw(st.booleans())
    return args


def _bus_call(draw: Any, world: BusWorld, op: str) -> tuple[str, dict[str, Any]]:
    """(client, args) for one irqbus operation."""
    if op in ("attach", "detach", "program_pin", "program_msi", "chip", "bind_virq"):
        client, guest = _session(draw, world)
        if op == "attach":
            named = _pick(draw, world.guests) if world.guests and draw(st.booleans()) else None
            name = named.name if named else draw(st.one_of(ascii_names, printable_names))
            return client, {"name": name, "domid": named.domid if named and draw(st.booleans()) else draw(st.integers(0, MAX_DOMID))}
        if op == "detach":
            return client, {}
        if op == "program_pin":
            pin = _pick(draw, _DEVICE_PINS)
            args: dict[str, Any] = {"pin": pin, "trigger": _pick(draw, TRIGGERS)}
            if pin >= 16:
                args["vector"] = draw(st.integers(0x20, 0xFF))
            return client, args
        if op == "program_msi":
            return client, {"device": _device(draw, world, guest), "address": _msi_address(draw), "data": _msi_data(draw)}
        if op == "chip":
            return client, _chip(draw, world, guest)
        return client, {"virq": _pick(draw, VIRQS), "vector": draw(st.integers(0x20, 0xFF))}
    if op == "answer":
        return _answer(draw, world)
    client = _pick(draw, world.tool_clients + world.fresh_clients)
    guest = _pick(draw, world.guests) if world.guests else None
    target: dict[str, Any] = {"guest": _guest_ref(draw, world, guest)}
    count = {"count": draw(st.integers(1, 8) | st.integers(1, MAX_BURST))} if draw(st.booleans()) else {}
    if op == "attach_device":
        driver = {"key": _key(draw, world)} if _chance(draw, 4) else {}
        if _chance(draw, 4):
            return client, {**target, "device": _device(draw, world, guest), "msi": True, **driver}
        where = {"pin": _pick(draw, _DEVICE_PINS)}
        if draw(st.booleans()):
            where["trigger"] = _pick(draw, TRIGGERS)
        return client, {**target, "device": _device(draw, world, guest), **where, **driver}
    if op in ("detach_device", "lower"):
        return client, {**target, "device": _device(draw, world, guest)}
    if op in ("raise", "pulse"):
        return client, {**target, "device": _device(draw, world, guest), **count}
    if op == "msi":
        args = {**target, **count}
        if draw(st.booleans()):
            args["device"] = _device(draw, world, guest)
        if "device" not in args or draw(st.booleans()):
            args.update(address=_msi_address(draw), data=_msi_data(draw))
        return client, args
    if op == "send_virq":
        return client, {**target, "virq": _pick(draw, VIRQS)}
    if op == "owners":
        return client, _owners(draw, world)
    if op == "show":
        args = dict(target) if draw(st.booleans()) else {}
        if draw(st.booleans()):
            args["after"] = draw(st.integers(-1, MAX_DOMID))
        return client, args
    if op == "interrupts":
        return client, {**target, "format": _pick(draw, ("text", "json"))} if draw(st.booleans()) else target
    if op == "locate":
        return client, {**target, "device": _device(draw, world, guest)} if draw(st.booleans()) else target
    raise AssertionError(f"no strategy for irqbus operation {op!r}")


def _bus_draft(draw: Any, world: BusWorld, ops: tuple[str, ...] = BUS_OPS) -> Draft:
    op = _pick(draw, ops)
    client, args = _bus_call(draw, world, op)
    return envelope_draft(Endpoint.IRQBUS, client, op, args)


# --- mutations ---------------------------------------------------------------------------------

_DOMAIN_FIELDS = ("domain", "guest")
_OTHER_OPS = tuple(OPERATIONS) + ("", "nosuchop", "__init__", "handle", "_register")
_NOT_IRQBUS_OPS = tuple(n for n, o in OPERATIONS.items() if o.endpoint is not Endpoint.IRQBUS)
_BAD_V = st.sampled_from((True, 1.0, 0, 2, -1, "1", b"\x01", None, (1,), MSGPACK_INT_MAX)) | hostile_values
_BAD_SEQ = st.sampled_from((-1, MAX_SEQ + 1, MSGPACK_INT_MAX, MSGPACK_INT_MIN, True, 1.0, "1", None)) | hostile_values
_BAD_CLIENT = st.sampled_from(("", "c" * (MAX_CLIENT_ID + 1), b"client", 1, None)) | hostile_values
_ENVELOPE_KEYS = st.sampled_from(("x", "V", "Op", "args ", "id", "reply", "ok", "error")) | st.text(max_size=10)
_extra_args = st.dictionaries(st.text(max_size=12).map(lambda k: "x" + k), hostile_values, min_size=1, max_size=3)


def _with(body: dict[str, Any], key: Any, value: Any) -> dict[str, Any]:
    out = dict(body)
    out[key] = value
    return out


# Mutations of the arguments only: the envelope stays readable, so the server knows the
# client and seq (the replay properties need that); the others break the envelope or the frame.
ARG_MUTATIONS = ("arg-value", "arg-missing", "arg-unknown", "arg-many-unknown", "domain-digits", "bytes-for-str", "deep-arg")
ENVELOPE_MUTATIONS = (
    "arg-odd-key", "args-shape", "args-nil", "v", "seq", "client", "op", "envelope-unknown", "envelope-odd-key", "envelope-missing",
    "body", "truncate", "tail", "endpoint",
)
MUTATIONS = ARG_MUTATIONS + ENVELOPE_MUTATIONS
BROKEN_MUTATIONS = tuple(k for k in MUTATIONS if k != "args-nil")  # nearly always refused


def _mutate(draw: Any, draft: Draft, kinds: tuple[str, ...] = MUTATIONS) -> Draft:
    """One thing wrong with a well-formed request, of one of `kinds` (named in `mutation`)."""
    body: dict[str, Any] = draft.body
    args: dict[str, Any] = body["args"]
    kind = _pick(draw, kinds)

    def out(new_body: Any, **changes: Any) -> Draft:
        return replace(draft, body=new_body, mutation=kind, **changes)

    def with_arg(key: Any, value: Any) -> Draft:
        return out(_with(body, "args", _with(args, key, value)))

    def some_arg(default: str) -> str:
        return _pick(draw, sorted(args)) if args else default

    if kind == "arg-value" or (kind == "arg-missing" and not args):
        return with_arg(some_arg("x"), draw(hostile_values))
    if kind == "arg-missing":
        key = some_arg("")
        return out(_with(body, "args", {k: v for k, v in args.items() if k != key}))
    if kind == "arg-unknown":
        return out(_with(body, "args", {**args, **draw(_extra_args)}))
    if kind == "arg-many-unknown":
        return out(_with(body, "args", {**args, **many_keys(draw(st.integers(1, MANY_KEYS)))}))
    if kind == "domain-digits":
        present = [k for k in _DOMAIN_FIELDS if k in args]
        return with_arg(present[0] if present else "domain", draw(unicode_digits))
    if kind == "bytes-for-str":
        texts = sorted(k for k, v in args.items() if isinstance(v, str))
        if not texts:
            return with_arg(some_arg("name"), draw(st.binary(max_size=16)))
        return out(_with(body, "args", {k: (v.encode() if k in texts else v) for k, v in args.items()}))
    if kind == "deep-arg":  # envelope map, args map, then up to 1,022 more levels: still decodable
        depth = draw(st.integers(MSGPACK_MAX_DEPTH - 30, MSGPACK_MAX_DEPTH - 2))
        return with_arg(some_arg("x"), Deep(depth, _pick(draw, ("list", "map"))))
    if kind == "arg-odd-key":  # the server's decoder refuses non-string keys
        return out(_with(body, "args", Pairs((*args.items(), (draw(odd_keys), draw(scalars))))))
    if kind == "args-nil":  # args nil or left out: the empty map (docs/protocol.md), whatever op needs
        return out(_with(body, "args", None) if draw(st.booleans()) else {k: v for k, v in body.items() if k != "args"})
    if kind == "args-shape":
        shape = _pick(draw, ("list", "text", "int", "deep", "true"))
        value = {"list": [args], "text": "{}", "int": 0, "deep": Deep(MSGPACK_MAX_DEPTH - 2), "true": True}[shape]
        return out(_with(body, "args", value))
    if kind == "v":
        return out(_with(body, "v", draw(_BAD_V)))
    if kind == "seq":
        return out(_with(body, "seq", draw(_BAD_SEQ)))
    if kind == "client":
        value = draw(_BAD_CLIENT)
        usable = isinstance(value, str) and 1 <= len(value) <= MAX_CLIENT_ID
        return out(_with(body, "client", value), client=value if usable else None)
    if kind == "op":
        value = draw(st.sampled_from(_OTHER_OPS) | hostile_values)
        return out(_with(body, "op", value), op=value if isinstance(value, str) else None)
    if kind == "envelope-unknown":
        return out(_with(body, draw(_ENVELOPE_KEYS), draw(hostile_values)))
    if kind == "envelope-odd-key":
        return out(Pairs((*body.items(), (draw(odd_keys), draw(scalars)))))
    if kind == "envelope-missing":
        key = _pick(draw, ("v", "op", "seq", "client"))
        return out({k: v for k, v in body.items() if k != key})
    if kind == "body":
        return out(draw(hostile_values | st.lists(scalars, max_size=5)), client=None, op=None)
    if kind == "truncate":
        return out(body, cut=draw(st.integers(0, 1 << 20)), client=None)
    if kind == "tail":
        return out(body, tail=draw(st.binary(min_size=1, max_size=16)), client=None)
    assert kind == "endpoint", kind
    if draft.endpoint is Endpoint.IRQBUS:  # an operation irqbus does not serve
        return out(_with(body, "op", _pick(draw, _NOT_IRQBUS_OPS)))
    return out(body, endpoint=Endpoint.ADMIN if draft.endpoint is Endpoint.GUEST else Endpoint.GUEST)


_GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.sampled_from((b"", b"\xc1", b"\x91", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xd5\xff\x00\x00")),
    st.integers(MSGPACK_MAX_DEPTH - 2, MSGPACK_MAX_DEPTH + 8).map(lambda n: b"\x91" * n + b"\xc0"),
    st.integers(MAX_MESSAGE_BYTES - 2, MAX_MESSAGE_BYTES + 2).map(lambda n: b"\xa1" * n),
)


def _garbage(draw: Any, endpoint: Endpoint) -> Draft:
    """A frame that is not a msgpack request at all."""
    return Draft(endpoint, None, None, None, mutation="garbage", raw=draw(_GARBAGE))


# --- the strategies ------------------------------------------------------------------------------


@st.composite
def host_well_formed(draw: Any, world: HostWorld, ops: tuple[str, ...] = HOST_OPS) -> Draft:
    """A well-formed request for one of the guest and admin endpoints' operations (of `ops`)."""
    return _host_draft(draw, world, tuple(op for op in ops if op in HOST_OPS))


@st.composite
def bus_well_formed(draw: Any, world: BusWorld, ops: tuple[str, ...] = BUS_OPS) -> Draft:
    """A well-formed request for one of irqbus's operations (of `ops`)."""
    return _bus_draft(draw, world, tuple(op for op in ops if op in BUS_OPS))


@st.composite
def host_readable(draw: Any, world: HostWorld) -> Draft:
    """A request whose envelope the hypervisor can read (it learns the client and seq), with
    well-formed or mangled arguments of a reasonable size."""
    draft = _host_draft(draw, world)
    return draft if draw(st.booleans()) else _mutate(draw, draft, READABLE_MUTATIONS)


@st.composite
def bus_readable(draw: Any, world: BusWorld) -> Draft:
    """As host_readable, for irqbus."""
    draft = _bus_draft(draw, world)
    return draft if draw(st.booleans()) else _mutate(draw, draft, READABLE_MUTATIONS)


READABLE_MUTATIONS = tuple(k for k in ARG_MUTATIONS if k != "arg-many-unknown")


def _anything(draw: Any, good: Draft, endpoint: Endpoint) -> Draft:
    n = draw(st.integers(0, 19))  # about a third well-formed, one in twenty garbage, the rest mutated
    if n < 7:
        return good
    if n == 19:
        return _garbage(draw, endpoint)
    return _mutate(draw, good)


@st.composite
def host_requests(draw: Any, world: HostWorld) -> Draft:
    """Anything a client may send the hypervisor."""
    draft = _host_draft(draw, world)
    return _anything(draw, draft, draft.endpoint)


@st.composite
def bus_requests(draw: Any, world: BusWorld) -> Draft:
    """Anything a client may send irqbus."""
    return _anything(draw, _bus_draft(draw, world), Endpoint.IRQBUS)


@st.composite
def host_broken(draw: Any, world: HostWorld) -> Draft:
    """A mangled request or garbage, for the hypervisor: nearly always refused."""
    draft = _host_draft(draw, world)
    return _garbage(draw, draft.endpoint) if _chance(draw, 20) else _mutate(draw, draft, BROKEN_MUTATIONS)


@st.composite
def bus_broken(draw: Any, world: BusWorld) -> Draft:
    """A mangled request or garbage, for irqbus: nearly always refused."""
    return _garbage(draw, Endpoint.IRQBUS) if _chance(draw, 20) else _mutate(draw, _bus_draft(draw, world), BROKEN_MUTATIONS)


# --- who calls (wire.gate.Peer: the key a connection authenticated with, and its roles) ---------

Z85_DIGITS = string.digits + string.ascii_lowercase + string.ascii_uppercase + ".-:+=^!/*?&<>()[]{}@%$#"
public_keys = st.text(Z85_DIGITS, min_size=40, max_size=40)


def peers_without(role: Role) -> st.SearchStrategy[Peer]:
    """An authenticated caller with any roles but `role` (none: a key in no line of `authorized`)."""
    others = [r for r in Role if r is not role]
    scope = st.none() | st.frozensets(st.integers(0, MAX_DOMID), max_size=3)
    return st.builds(Peer, public_keys, st.frozensets(st.sampled_from(others)), scope)
