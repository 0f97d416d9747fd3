"""Every operation of the protocol and the shape of its arguments, checked before any state is touched."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wire.errors import ErrorCode, WireError
from wire.extent import Extent

MAX_BATCH_PAGES = 512  # one page of frame list, as Linux's balloon driver batches
MAX_DOMAIN_PAGES = 1 << 32  # 16 TiB: anything larger is a typo, not a domain
MAX_NAME = 64
MAX_DOMID = 0x7FEF  # Xen reserves 0x7FF0 and above (DOMID_FIRST_RESERVED)
MAX_STATS_KEYS = 32

Validator = Callable[[str, Any], Any]


class Endpoint(enum.StrEnum):
    GUEST = "guest"  # the hypervisor's endpoint for balloon drivers
    ADMIN = "admin"  # the hypervisor's endpoint for the toolstack
    IRQBUS = "irqbus"


def _invalid(name: str, expected: str, value: Any) -> WireError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return WireError(ErrorCode.EINVAL, f"'{name}': expected {expected}, got {shown}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int, hi: int) -> Validator:
    def check(name: str, value: Any) -> int:
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


def domain_ref(name: str, value: Any) -> int | str:
    """A domain named by domid or by name, as xl accepts either."""
    if _is_int(value):
        return integer(0, MAX_DOMID)(name, value)
    return text(MAX_NAME)(name, value)


def extents(max_pages: int) -> Validator:
    def check(name: str, value: Any) -> list[Extent]:
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


def scalar_map(name: str, value: Any) -> dict[str, Any]:
    """Balloon statistics: a flat map of short keys to numbers, strings or nil."""
    if not isinstance(value, dict) or len(value) > MAX_STATS_KEYS:
        raise _invalid(name, f"a map of at most {MAX_STATS_KEYS} entries", value)
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 32:
            raise _invalid(f"{name} key", "a string of at most 32 characters", key)
        ok = item is None or isinstance(item, (int, float, str)) and not isinstance(item, bool)
        if not ok or (isinstance(item, str) and len(item) > 64):
            raise _invalid(f"{name}.{key}", "a number, a short string or nil", item)
    return dict(value)


@dataclass(frozen=True)
class Operation:
    name: str
    endpoint: Endpoint
    required: dict[str, Validator] = field(default_factory=dict)
    optional: dict[str, Validator] = field(default_factory=dict)

    def validate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the checked arguments, or raise WireError(EINVAL) naming the first bad field."""
        unknown = set(args) - set(self.required) - set(self.optional)
        if unknown:
            raise WireError(ErrorCode.EINVAL, f"{self.name}: unknown argument(s) {sorted(map(str, unknown))}")
        checked: dict[str, Any] = {}
        for name, check in self.required.items():
            if name not in args:
                raise WireError(ErrorCode.EINVAL, f"{self.name}: missing argument '{name}'")
            checked[name] = check(name, args[name])
        for name, check in self.optional.items():
            if name in args:
                checked[name] = check(name, args[name])
        return checked


_pages = integer(1, MAX_DOMAIN_PAGES)

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        # guest endpoint: a balloon driver's view of its own domain (DOMID_SELF)
        Operation("register", Endpoint.GUEST, {"name": text(MAX_NAME), "memory_pages": _pages, "max_pages": _pages}),
        Operation("increase_reservation", Endpoint.GUEST, {"nr_pages": integer(1, MAX_BATCH_PAGES)}),
        Operation("decrease_reservation", Endpoint.GUEST, {"extents": extents(MAX_BATCH_PAGES)}),
        Operation("get_target", Endpoint.GUEST),
        Operation("status", Endpoint.GUEST, {}, {"balloon": scalar_map}),
        Operation("shutdown", Endpoint.GUEST),
        # admin endpoint: the toolstack
        Operation("list", Endpoint.ADMIN),
        Operation("info", Endpoint.ADMIN),
        Operation("mem_set", Endpoint.ADMIN, {"domain": domain_ref, "target_pages": integer(0, MAX_DOMAIN_PAGES)}),
        Operation("mem_max", Endpoint.ADMIN, {"domain": domain_ref, "max_pages": _pages}),
        Operation("destroy", Endpoint.ADMIN, {"domain": domain_ref}),
        Operation("audit", Endpoint.ADMIN),
    ]
}


def lookup(name: str, endpoint: Endpoint) -> Operation:
    """Unknown operations are ENOSYS; an operation of another endpoint is EPERM."""
    op = OPERATIONS.get(name)
    if op is None:
        raise WireError(ErrorCode.ENOSYS, f"unknown operation {name[:40]!r}")
    if op.endpoint is not endpoint:
        raise WireError(ErrorCode.EPERM, f"operation {name!r} is served on the {op.endpoint} endpoint, not the {endpoint} endpoint")
    return op
