"""Every operation of the protocol and the shape of its arguments, checked before any state is touched."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from wire.envelope import MAX_SEQ
from wire.errors import ErrorCode, WireError
from wire.extent import Extent
from wire.names import numeric_name
from wire.shown import shown
from wire.heartbeat import balloon_stats
from wire.control import control_keys
from wire.domain_end import OnCrash
from wire.keys import KeyFileError, check_public

MAX_BATCH_PAGES = 512  # one page of frame list, as Linux's balloon driver batches
MAX_DOMAIN_PAGES = 1 << 32  # 16 TiB: anything larger is a typo, not a domain
MAX_NAME = 64
MAX_DOMID = 0x7FEF  # Xen reserves 0x7FF0 and above (DOMID_FIRST_RESERVED)

_new_extent = tuple.__new__  # _new_extent(Extent, pair): a record without NamedTuple's Python-level __new__

Validator = Callable[[str, Any], Any]


class Endpoint(enum.StrEnum):
    GUEST = "guest"  # the hypervisor's endpoint for balloon drivers
    ADMIN = "admin"  # the hypervisor's endpoint for the toolstack
    IRQBUS = "irqbus"


def _invalid(name: str, expected: str, value: Any) -> WireError:
    return WireError(ErrorCode.EINVAL, f"'{name}': expected {expected}, got {shown(value, 60)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int, hi: int) -> Validator:
    def check(name: str, value: Any) -> int:
        if type(value) is int and lo <= value <= hi:  # what a decoder gives; bool is not int here
            return value
        if not _is_int(value) or not lo <= value <= hi:
            raise _invalid(name, f"an integer {lo}..{hi}", value)
        return value

    return check


def number(lo: float, hi: float) -> Validator:
    def check(name: str, value: Any) -> float:
        if not (_is_int(value) or isinstance(value, float)) or not lo <= value <= hi:
            raise _invalid(name, f"a number {lo}..{hi}", value)
        return float(value)

    return check


def text(max_len: int) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not 1 <= len(value) <= max_len or not value.isprintable():
            raise _invalid(name, f"a printable string of 1..{max_len} characters", value)
        return value

    return check


_domid = integer(0, MAX_DOMID)
_printable_name = text(MAX_NAME)


def domain_name(name: str, value: Any) -> str:
    """A new domain's (or guest's) name: printable, and never readable as a number, so that
    a name and a domid can never be confused (wire.names)."""
    value = _printable_name(name, value)
    if numeric_name(value):
        raise _invalid(name, "a name that is not a number (a number names a domid)", value)
    return value


def domain_ref(name: str, value: Any) -> int | str:
    """A domain named by domid or by name, as xl accepts either; a string of ASCII digits is
    resolved as a domid by the table (wire.names.domid_text)."""
    if _is_int(value):
        return _domid(name, value)
    return _printable_name(name, value)


def extents(max_pages: int) -> Validator:
    """[[start, count], ...]: a decrease_reservation's pages, at most `max_pages` of them.

    Every decrease sends one, so the well-formed list is taken in one pass of type tests
    that builds the records as it goes; anything else is walked again by `explain`, which
    says what is wrong (or accepts what the fast pass left to it, such as int subclasses)."""

    def check(name: str, value: Any) -> list[Extent]:
        if type(value) is list and 0 < len(value) <= max_pages:
            out = []
            total = 0
            for item in value:
                if type(item) is not list or len(item) != 2:
                    break
                start, count = item
                if type(start) is not int or type(count) is not int or start < 0 or count < 1:
                    break
                total += count
                out.append(_new_extent(Extent, item))
            else:
                if total <= max_pages:
                    return out
        return explain(name, value)

    def explain(name: str, value: Any) -> list[Extent]:
        if not isinstance(value, list) or not 1 <= len(value) <= max_pages:
            raise _invalid(name, f"a list of 1..{max_pages} [start, count] pairs", value)
        out = []
        for i, item in enumerate(value):
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not _is_int(item[0])
                or not _is_int(item[1])
                or item[0] < 0
                or item[1] < 1
            ):
                raise _invalid(f"{name}[{i}]", "[start >= 0, count >= 1]", item)
            out.append(Extent(item[0], item[1]))
        total = sum(e.count for e in out)
        if total > max_pages:
            raise WireError(ErrorCode.EINVAL, f"'{name}': {total} pages exceed the batch limit of {max_pages}")
        return out

    return check


# --- irqbus ---------------------------------------------------------------------------------

IRQBUS_PINS = 24  # 0-15 the two i8259s (2 is the cascade), 16-23 the remaining IOAPIC pins
CASCADE_PIN = 2
MAX_DEVICE_NAME = 32
MAX_BURST = 10_000  # interrupts one `raise` / `pulse` may fire
MAX_CHIP_OPS = 64
MAX_ANSWER_CHARS = 256 * 1024
MAX_ANSWER_ITEMS = 20_000
FIRST_DEVICE_VECTOR = 0x20  # vectors below are exceptions (0-31) on x86
CHIP_KINDS = ("mask", "unmask", "ack", "eoi")
# Virtual interrupts the hypervisor raises, as Xen's event channels: the toolstack wrote the
# target; pages were freed while the guest was short of memory.
VIRQS = ("target", "memory")
TRIGGERS = ("edge", "level")


class ChipCommand(NamedTuple):
    """One chip operation from a guest: on a pin (0-23) or on a device's MSI-X entry."""

    kind: str
    pin: int | None
    device: str | None


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(name, "true or false", value)
    return value


def choice(*values: str) -> Validator:
    def check(name: str, value: Any) -> str:
        if value not in values or not isinstance(value, str):
            raise _invalid(name, "one of " + ", ".join(repr(v) for v in values), value)
        return value

    return check


_DEVICE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_DEVICE_NAME - 1}}}")


_GOOD_DEVICE_NAMES: set[str] = set()  # every raise names its device: match each name once
_GOOD_DEVICE_NAMES_MAX = 8192


def device_name(name: str, value: Any) -> str:
    """Device names end up in /proc/interrupts and on command lines: letters, digits, _ . -"""
    if type(value) is str and value in _GOOD_DEVICE_NAMES:
        return value
    if not isinstance(value, str) or _DEVICE_NAME.fullmatch(value) is None:
        raise _invalid(name, f"a device name of 1..{MAX_DEVICE_NAME} letters, digits, '_', '.', '-'", value)
    if len(_GOOD_DEVICE_NAMES) >= _GOOD_DEVICE_NAMES_MAX:  # a client inventing names cannot grow it
        _GOOD_DEVICE_NAMES.clear()
    _GOOD_DEVICE_NAMES.add(value)
    return value


def _pin(name: str, value: Any) -> int:
    if not _is_int(value) or not 0 <= value < IRQBUS_PINS:
        raise _invalid(name, f"a pin 0..{IRQBUS_PINS - 1}", value)
    if value == CASCADE_PIN:
        raise WireError(ErrorCode.EINVAL, f"'{name}': pin {CASCADE_PIN} is the i8259 cascade, not a device line")
    return value


_chip_kind = choice(*CHIP_KINDS)
_CHIP_KIND_SET = frozenset(CHIP_KINDS)
_generation = integer(1, MAX_SEQ)


# Every valid pin command, made once: an interrupt's ack names two or three of them, and
# building each (a NamedTuple) cost more than finding it.
_PIN_COMMANDS = {(kind, pin): ChipCommand(kind, pin, None) for kind in CHIP_KINDS for pin in range(IRQBUS_PINS) if pin != CASCADE_PIN}


def chip_commands(name: str, value: Any) -> list[ChipCommand]:
    """[{"kind": mask|unmask|ack|eoi, "pin": 0..23} or {"kind": ..., "device": NAME}, ...]"""
    if type(value) is list and len(value) <= MAX_CHIP_OPS:  # the common case: pins only, found whole
        out = []
        known = _PIN_COMMANDS.get
        for item in value:
            if type(item) is dict and len(item) == 2:
                kind, pin = item.get("kind"), item.get("pin")
                if type(pin) is int and type(kind) is str:  # exactly: True == 1 would find pin 1's command
                    cmd = known((kind, pin))
                    if cmd is not None:
                        out.append(cmd)
                        continue
            break
        else:
            return out
    if not isinstance(value, list) or len(value) > MAX_CHIP_OPS:
        raise _invalid(name, f"a list of at most {MAX_CHIP_OPS} chip operations", value)
    out = []
    for i, item in enumerate(value):
        if type(item) is dict and len(item) == 2:  # the common case, checked without building messages
            kind, pin = item.get("kind"), item.get("pin")
            if type(kind) is str and kind in _CHIP_KIND_SET and type(pin) is int and 0 <= pin < IRQBUS_PINS and pin != CASCADE_PIN:
                out.append(ChipCommand(kind, pin, None))
                continue
        where = f"{name}[{i}]"
        if not isinstance(item, dict) or "kind" not in item or len(item) != 2 or ("pin" in item) == ("device" in item):
            raise _invalid(where, '{"kind": ..., "pin": N} or {"kind": ..., "device": NAME}', item)
        kind = _chip_kind(f"{where}.kind", item["kind"])
        if "pin" in item:
            out.append(ChipCommand(kind, _pin(f"{where}.pin", item["pin"]), None))
        else:
            out.append(ChipCommand(kind, None, device_name(f"{where}.device", item["device"])))
    return out


def status_clears(name: str, value: Any) -> list[tuple[str, int]]:
    """[[device, generation], ...]: write-1-to-clear of the interrupt status the guest read."""
    if not isinstance(value, list) or len(value) > MAX_CHIP_OPS:
        raise _invalid(name, f"a list of at most {MAX_CHIP_OPS} [device, generation] pairs", value)
    out = []
    for i, item in enumerate(value):
        if type(item) is list and len(item) == 2:  # the common case, checked without building messages
            device, gen = item
            if type(device) is str and device in _GOOD_DEVICE_NAMES and type(gen) is int and 1 <= gen <= MAX_SEQ:
                out.append((device, gen))
                continue
        if not isinstance(item, list) or len(item) != 2:
            raise _invalid(f"{name}[{i}]", "[device, generation]", item)
        out.append((device_name(f"{name}[{i}][0]", item[0]), _generation(f"{name}[{i}][1]", item[1])))
    return out


def z85_key(name: str, value: Any) -> str:
    """A CURVE public key as ZAP names it (wire.keys): 40 Z85 characters."""
    if not isinstance(value, str):
        raise _invalid(name, "a Z85 public key (40 characters)", value)
    try:
        return check_public(value)
    except KeyFileError:
        raise _invalid(name, "a Z85 public key (40 characters)", value) from None


MAX_OWNERS = 4096  # pairs (or gone domids) in one `owners`: a host's domains go in a few chunks


def owner_pairs(name: str, value: Any) -> list[tuple[int, str, str | None]]:
    """[[domid, key, name], ...]: which key registered each domain, and under which name, as
    the hypervisor tells irqbus. A [domid, key] pair (no name: a hypervisor from before names
    were sent) is taken too; irqbus then cannot check the name a guest attaches with."""
    if not isinstance(value, list) or len(value) > MAX_OWNERS:
        raise _invalid(name, f"a list of at most {MAX_OWNERS} [domid, key, name] entries", value)
    out: list[tuple[int, str, str | None]] = []
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise _invalid(f"{name}[{i}]", "[domid, key, name]", item)
        domain = domain_name(f"{name}[{i}][2]", item[2]) if len(item) == 3 else None
        out.append((_domid(f"{name}[{i}][0]", item[0]), z85_key(f"{name}[{i}][1]", item[1]), domain))
    return out


def domid_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_OWNERS:
        raise _invalid(name, f"a list of at most {MAX_OWNERS} domids", value)
    return [_domid(f"{name}[{i}]", item) for i, item in enumerate(value)]


def long_text(max_len: int) -> Validator:
    """Multi-line text (a /proc table): any characters but NUL, at most max_len."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_len or "\0" in value:
            raise _invalid(name, f"a string of at most {max_len} characters", value)
        return value

    return check


def plain_data(max_items: int, max_depth: int = 4) -> Validator:
    """JSON-like data relayed without interpretation: bounded in size and nesting."""

    def check(name: str, value: Any) -> Any:
        budget = [max_items]

        def walk(item: Any, depth: int) -> None:
            budget[0] -= 1
            if budget[0] < 0:
                raise _invalid(name, f"at most {max_items} values in all", "(too many)")
            if item is None or isinstance(item, (bool, int, float)):
                return
            if isinstance(item, str):
                if len(item) > 256:
                    raise _invalid(name, "strings of at most 256 characters", item)
                return
            if depth >= max_depth:
                raise _invalid(name, f"nesting of at most {max_depth} levels", "(too deep)")
            if isinstance(item, list):
                for sub in item:
                    walk(sub, depth + 1)
            elif isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str) or len(key) > 32:
                        raise _invalid(f"{name} key", "a string of at most 32 characters", key)
                    walk(sub, depth + 1)
            else:
                raise _invalid(name, "nil, bool, number, string, list or map", item)

        if not isinstance(value, list):
            raise _invalid(name, "a list", value)
        walk(value, 0)
        return value

    return check


@dataclass(frozen=True)
class Operation:
    name: str
    endpoint: Endpoint
    required: dict[str, Validator] = field(default_factory=dict)
    optional: dict[str, Validator] = field(default_factory=dict)
    # Changes nothing a retry could double: its reply is not recorded, a retry runs it again.
    read_only: bool = False
    # Creates what the caller's record is then bound to (a domain, an irqbus session), so it
    # needs no room among the records of unbound clients (wire.replay).
    binds: bool = False
    known: frozenset[str] = field(init=False, repr=False, compare=False)
    # (name, check) of an operation's one argument, when it takes exactly one: the shape of
    # the hot requests (increase, decrease), checked without the general walk below.
    _only: tuple[str, Validator] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", frozenset(self.required) | frozenset(self.optional))
        only = next(iter(self.required.items())) if len(self.required) == 1 and not self.optional else None
        object.__setattr__(self, "_only", only)

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the checked arguments, or raise WireError(EINVAL) naming the first bad field."""
        only = self._only
        if only is not None and len(args) == 1:
            name, check = only
            if name in args:
                return {name: check(name, args[name])}
        if not self.known.issuperset(args):
            unknown = [key for key in args if key not in self.known]  # in message order: no sort of 100,000 keys
            raise WireError(ErrorCode.EINVAL, f"{self.name}: {len(unknown)} unknown argument(s): {shown(unknown)}")
        checked: dict[str, Any] = {}
        for name, check in self.required.items():
            if name not in args:
                raise WireError(ErrorCode.EINVAL, f"{self.name}: missing argument '{name}'")
            checked[name] = check(name, args[name])
        if len(checked) < len(args):  # some optional ones were given
            for name, check in self.optional.items():
                if name in args:
                    checked[name] = check(name, args[name])
        return checked


_pages = integer(1, MAX_DOMAIN_PAGES)
ON_CRASH = tuple(str(a) for a in OnCrash)  # what the host does with a domain whose guest fell silent
_on_crash = choice(*ON_CRASH)

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        # guest endpoint: a balloon driver's view of its own domain (DOMID_SELF)
        Operation(
            "register", Endpoint.GUEST, {"name": domain_name, "memory_pages": _pages, "max_pages": _pages}, {"on_crash": _on_crash}, binds=True
        ),
        Operation("increase_reservation", Endpoint.GUEST, {"nr_pages": integer(1, MAX_BATCH_PAGES)}),
        Operation("decrease_reservation", Endpoint.GUEST, {"extents": extents(MAX_BATCH_PAGES)}),
        Operation("get_target", Endpoint.GUEST, read_only=True),
        Operation("memory_map", Endpoint.GUEST, {}, {"after": integer(-1, MAX_DOMAIN_PAGES)}, read_only=True),
        # the heartbeat: it stores the driver's statistics, but the same ones again change nothing
        Operation("status", Endpoint.GUEST, {}, {"balloon": balloon_stats}, read_only=True),
        Operation("shutdown", Endpoint.GUEST),
        # admin endpoint: the toolstack
        Operation("list", Endpoint.ADMIN, {}, {"after": integer(-1, MAX_DOMID)}, read_only=True),
        Operation("info", Endpoint.ADMIN, read_only=True),
        # the pool and every domain at one instant; `snapshot` + `after` read its later pages
        Operation("snapshot", Endpoint.ADMIN, {}, {"snapshot": integer(1, MAX_SEQ), "after": integer(-1, MAX_DOMID)}, read_only=True),
        Operation("mem_set", Endpoint.ADMIN, {"domain": domain_ref, "target_pages": integer(0, MAX_DOMAIN_PAGES)}),
        # XEN_DOMCTL_max_mem; `refuse_below_target`: libxl_domain_setmaxmem's check as well
        Operation("mem_max", Endpoint.ADMIN, {"domain": domain_ref, "max_pages": integer(0, MAX_DOMAIN_PAGES)}, {"refuse_below_target": boolean}),
        Operation("destroy", Endpoint.ADMIN, {"domain": domain_ref}),
        Operation("audit", Endpoint.ADMIN, read_only=True),
        # a running guest's control keys (wire/control.py), kept with the domain and pushed to it
        Operation("guest_set", Endpoint.ADMIN, {"domain": domain_ref, "keys": control_keys}),
        # xl's on_crash for one domain: destroy (the default) or preserve once its guest falls silent
        Operation("on_crash", Endpoint.ADMIN, {"domain": domain_ref, "on_crash": _on_crash}),
        # irqbus, a guest's own session (the client that attached it)
        Operation("attach", Endpoint.IRQBUS, {"name": domain_name, "domid": integer(0, MAX_DOMID)}, binds=True),
        Operation("detach", Endpoint.IRQBUS),
        Operation(
            "program_pin",
            Endpoint.IRQBUS,
            {"pin": _pin, "trigger": choice(*TRIGGERS)},
            {"vector": integer(FIRST_DEVICE_VECTOR, 0xFF)},
        ),
        Operation(
            "program_msi",
            Endpoint.IRQBUS,
            {"device": device_name, "address": integer(0, (1 << 64) - 1), "data": integer(0, (1 << 32) - 1)},
        ),
        # "reply": false -- a guest's per-interrupt ack: no reply when it succeeds (a refusal is answered)
        Operation("chip", Endpoint.IRQBUS, {}, {"ops": chip_commands, "clear": status_clears, "reply": boolean}),
        Operation("bind_virq", Endpoint.IRQBUS, {"virq": choice(*VIRQS), "vector": integer(FIRST_DEVICE_VECTOR, 0xFF)}),
        Operation(
            "answer",
            Endpoint.IRQBUS,
            {"query": integer(1, MAX_SEQ)},
            {"text": long_text(MAX_ANSWER_CHARS), "rows": plain_data(MAX_ANSWER_ITEMS)},
        ),
        # irqbus, devices (any client: device processes, the irqbus CLI)
        Operation(
            "attach_device",
            Endpoint.IRQBUS,
            {"guest": domain_ref, "device": device_name},
            # `key`: the toolstack names the key that may drive the device (default: the caller's)
            {"pin": _pin, "trigger": choice(*TRIGGERS), "msi": boolean, "key": z85_key},
        ),
        Operation("detach_device", Endpoint.IRQBUS, {"guest": domain_ref, "device": device_name}),
        Operation("raise", Endpoint.IRQBUS, {"guest": domain_ref, "device": device_name}, {"count": integer(1, MAX_BURST)}),
        Operation("lower", Endpoint.IRQBUS, {"guest": domain_ref, "device": device_name}),
        Operation("pulse", Endpoint.IRQBUS, {"guest": domain_ref, "device": device_name}, {"count": integer(1, MAX_BURST)}),
        Operation(
            "msi",
            Endpoint.IRQBUS,
            {"guest": domain_ref},
            {"device": device_name, "address": integer(0, (1 << 64) - 1), "data": integer(0, (1 << 32) - 1), "count": integer(1, MAX_BURST)},
        ),
        # irqbus, the hypervisor's virtual interrupts
        Operation("send_virq", Endpoint.IRQBUS, {"guest": domain_ref, "virq": choice(*VIRQS)}),
        # irqbus, the hypervisor: which key registered which domain (irqbus/owners.py); no
        # arguments is its ping, whose `epoch` tells it irqbus restarted and must hear them all
        Operation("owners", Endpoint.IRQBUS, {}, {"domains": owner_pairs, "replace": boolean, "gone": domid_list}),
        # irqbus, inspection
        Operation("show", Endpoint.IRQBUS, {}, {"guest": domain_ref, "after": integer(-1, MAX_DOMID)}, read_only=True),
        Operation("interrupts", Endpoint.IRQBUS, {"guest": domain_ref}, {"format": choice("text", "json")}, read_only=True),
        # irqbus, a device process after an ESRCH: which instance answers, is its guest attached
        Operation("locate", Endpoint.IRQBUS, {"guest": domain_ref}, {"device": device_name}, read_only=True),
    ]
}


def lookup(name: str, endpoint: Endpoint) -> Operation:
    """Unknown operations are ENOSYS; an operation of another endpoint is EPERM."""
    op = OPERATIONS.get(name)
    if op is None:
        raise WireError(ErrorCode.ENOSYS, f"unknown operation {shown(name, 60)}")
    if op.endpoint is not endpoint:
        raise WireError(ErrorCode.EPERM, f"operation {name!r} is served on the {op.endpoint} endpoint, not the {endpoint} endpoint")
    return op
