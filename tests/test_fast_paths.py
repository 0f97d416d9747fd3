"""The per-request fast paths answer exactly as the general code they skip.

Each fast path is a shortcut for the common well-formed input; these tests hold it to a
reference: the general code as it was before the shortcut (kept here), on inputs that are
mostly well-formed and often just not.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

import random

from hypervisor.dispatch import Hypervisor
from hypervisor.pool import PagePool
from hypervisor.service import HypervisorService
from wire import envelope
from wire.errors import ErrorCode, WireError
from wire.extent import Extent
from wire.operations import MAX_BATCH_PAGES, OPERATIONS, Operation, extents, integer
from wire.shown import shown


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def reference_extents(name: str, value: Any, max_pages: int) -> list[Extent]:
    """wire.operations.extents before its fast pass."""
    if not isinstance(value, list) or not 1 <= len(value) <= max_pages:
        raise WireError(ErrorCode.EINVAL, "list")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not _is_int(item[0]) or not _is_int(item[1]) or item[0] < 0 or item[1] < 1:
            raise WireError(ErrorCode.EINVAL, "item")
        out.append(Extent(item[0], item[1]))
    if sum(e.count for e in out) > max_pages:
        raise WireError(ErrorCode.EINVAL, "total")
    return out


def outcome(check: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", check(*args)
    except WireError as err:
        return "refused", err.code


class Flag(int):
    """An int subclass: no decoder makes one, so the fast paths leave it to the general code."""


odd = st.one_of(
    st.integers(-5, 0),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.integers(0, 600).map(Flag),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(0, 9), max_size=3),
)
well_formed = st.lists(st.lists(st.integers(0, 2**40), min_size=2, max_size=2).map(lambda p: [p[0], p[1] % 64 + 1]), min_size=1, max_size=10)


@st.composite
def extent_lists(draw: st.DrawFn) -> Any:
    """A well-formed list, or one with one thing wrong in it: a pair, a start, a count."""
    value = draw(st.one_of(well_formed, st.integers(500, 520).map(lambda n: [[0, 1]] * n)))
    where = draw(st.sampled_from(["nowhere", "pair", "start", "count", "list", "tuple"]))
    i = draw(st.integers(0, len(value) - 1))
    if where == "pair":
        value[i] = draw(odd)
    elif where in ("start", "count"):
        value[i] = list(value[i])
        value[i][where == "count"] = draw(odd)
    elif where == "list":
        value = draw(st.one_of(odd, st.just([])))
    elif where == "tuple":
        value[i] = tuple(value[i])  # a tuple is not what a decoder gives
    return value


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(extent_lists(), st.sampled_from([8, 64, MAX_BATCH_PAGES]))
def test_extents_validator_answers_as_the_general_checks(value: Any, max_pages: int) -> None:
    got = outcome(extents(max_pages), "extents", value)
    assert got == outcome(reference_extents, "extents", value, max_pages)
    if got[0] == "ok":
        assert all(type(e) is Extent for e in got[1])  # records, as the handlers expect


@pytest.mark.timeout(30)
def test_extents_validator_says_what_is_wrong() -> None:
    check = extents(MAX_BATCH_PAGES)
    for value, words in [
        ([[0, 400], [1000, 200]], "600 pages exceed the batch limit of 512"),
        ([[0, 4], [5, True]], "'extents[1]': expected [start >= 0, count >= 1]"),
        ([[0, 4], (5, 1)], "'extents[1]'"),
        ([], "a list of 1..512"),
    ]:
        with pytest.raises(WireError) as err:
            check("extents", value)
        assert err.value.code is ErrorCode.EINVAL and words in err.value.message


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.one_of(odd, st.integers(1, 512)))
def test_integer_validator_answers_as_before(value: Any) -> None:
    def reference(name: str, v: Any) -> int:
        if not _is_int(v) or not 1 <= v <= 512:
            raise WireError(ErrorCode.EINVAL, "int")
        return v

    got = outcome(integer(1, 512), "n", value)
    assert got == outcome(reference, "n", value)
    if got[0] == "ok":
        assert got[1] is value


def reference_validate(op: Operation, args: dict[str, Any]) -> dict[str, Any]:
    """Operation.validate before its one-argument shortcut."""
    if not op.known.issuperset(args):
        unknown = [key for key in args if key not in op.known]
        raise WireError(ErrorCode.EINVAL, f"{op.name}: {len(unknown)} unknown argument(s): {shown(unknown)}")
    checked: dict[str, Any] = {}
    for name, check in op.required.items():
        if name not in args:
            raise WireError(ErrorCode.EINVAL, f"{op.name}: missing argument '{name}'")
        checked[name] = check(name, args[name])
    if len(checked) < len(args):
        for name, check in op.optional.items():
            if name in args:
                checked[name] = check(name, args[name])
    return checked


def refusal_or_result(validate: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", validate(*args)
    except WireError as err:
        return "refused", (err.code, err.message)


@st.composite
def operation_args(draw: st.DrawFn) -> tuple[Operation, dict[str, Any]]:
    op = draw(st.sampled_from(sorted(OPERATIONS.values(), key=lambda o: o.name)))
    names = sorted(op.known) + ["nr_pages", "extents", "bogus"]
    values = st.one_of(odd, st.integers(1, 600), well_formed, st.text(min_size=1, max_size=12))
    return op, draw(st.dictionaries(st.sampled_from(names), values, max_size=3))


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(operation_args())
def test_validate_answers_as_the_general_walk(case: tuple[Operation, dict[str, Any]]) -> None:
    op, args = case
    assert refusal_or_result(op.validate, args) == refusal_or_result(reference_validate, op, args)


results = st.dictionaries(
    st.text(max_size=8),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12),
    max_size=6,
)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(0, envelope.MAX_SEQ)), results)
def test_ok_reply_packed_from_its_fixed_parts_is_the_same_bytes(seq: int | None, result: dict[str, Any]) -> None:
    assert envelope.encode_ok(seq, result) == envelope.encode(envelope.ok_reply(seq, result))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_routine_successes_are_debug_lines_and_notable_ones_info(tmp_path, level: int) -> None:
    """The shell skips building a routine success's log line when debug lines are filtered
    out; what is logged, and at which level, must not change."""
    lines: list[tuple[str, str]] = []

    def collect(logger: Any, method: str, event: dict[str, Any]) -> Any:
        lines.append((method, event["event"]))
        raise structlog.DropEvent

    log = structlog.wrap_logger(None, processors=[collect], wrapper_class=structlog.make_filtering_bound_logger(level))
    service = HypervisorService(Hypervisor(2048), f"ipc://{tmp_path}/g", f"ipc://{tmp_path}/a", log)
    try:
        def send(seq: int, op: str, args: dict[str, Any]) -> None:
            frame = envelope.encode(envelope.request(op, seq, "guest-1", args))
            service._serve_one(service.guests, b"peer", [frame], False)
            service._commit()
            service._flush()  # the turn's end: the reply goes nowhere, the line is logged

        send(1, "register", {"name": "g1", "memory_pages": 1024, "max_pages": 4096})
        send(2, "increase_reservation", {"nr_pages": 512})  # granted in full: routine
        send(3, "increase_reservation", {"nr_pages": 512})  # 512 left, asked 512: routine
        send(4, "increase_reservation", {"nr_pages": 8})  # the host is out: notable
        send(4, "increase_reservation", {"nr_pages": 8})  # a retry, from the record
        send(5, "decrease_reservation", {"extents": [[0, 1 << 40]]})  # refused
    finally:
        service.close()
    expected = [
        ("info", "register"),
        ("debug", "increase_reservation"),
        ("debug", "increase_reservation"),
        ("info", "increase_reservation"),
        ("info", "request answered from record"),
        ("warning", "request refused"),
    ]
    assert lines == [line for line in expected if level == logging.DEBUG or line[0] != "debug"]


def general_allocate(pool: PagePool, owner: int, count: int) -> list[Extent]:
    """PagePool.allocate without its inline balloon steps: an empty holes list (which _place
    treats as none) turns them off."""
    held = pool._owned.get(owner) or pool._parked.get(owner)
    if held is not None and held.holes is None:
        held.holes = []
    return pool.allocate(owner, count)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_pool_grants_as_the_general_placement(seed: int) -> None:
    """Balloon traffic -- mostly newest pages back, sometimes a whole grant, sometimes pages
    from anywhere -- on two pools: every grant lands where the general placement puts it."""
    rng = random.Random(seed)
    pools = [PagePool(40_000), PagePool(40_000)]
    grants: dict[int, list[Extent]] = {owner: [] for owner in range(6)}
    for owner in grants:
        first = [pools[0].allocate(owner, 1024), general_allocate(pools[1], owner, 1024)]
        assert first[0] == first[1]
        grants[owner] += first[0]
    for _ in range(3000):
        owner = rng.randrange(6)
        held = grants[owner]
        if held and rng.random() < 0.5:
            start, count = held.pop() if rng.random() < 0.7 else held.pop(rng.randrange(len(held)))
            n = rng.randint(1, count) if rng.random() < 0.5 else count
            back = [(start + count - n, n)]
            if n < count:
                held.append(Extent(start, count - n))
            assert pools[0].release(owner, back) == pools[1].release(owner, list(back)) == n
        else:
            n = rng.choice([64, 64, 512, rng.randint(1, 512)])
            got = pools[0].allocate(owner, n)
            assert got == general_allocate(pools[1], owner, n)
            held += got
    assert pools[0].audit() == pools[1].audit() == []
    assert pools[0].free_extents() == pools[1].free_extents()


@pytest.mark.timeout(30)
def test_guests_bouncing_above_their_boot_size_keep_the_books() -> None:
    """rpc_bench's traffic: each guest grows by 64 pages (a new region: its boot extent is
    blocked above) and gives them back whole; the others do the same in between."""
    pool = PagePool(1 << 20)
    boot = {owner: pool.allocate(owner, 1024) for owner in (1, 2, 3, 4)}
    steady = None
    for round_ in range(50):
        grants = {owner: pool.allocate(owner, 64) for owner in boot}
        for owner, (region,) in grants.items():
            assert region.count == 64 and all(abs(region.start - b.start) > 2048 for b in boot[owner])
        for owner, granted in grants.items():
            assert pool.release(owner, granted) == 64
        assert all(pool.extents_of(owner) == boot[owner] for owner in boot)
        assert pool.free_extent_count == 1 and pool.audit() == []
        if round_ == 1:
            steady = grants
        elif round_ > 1:
            assert grants == steady  # the same regions every round: nothing drifts or fragments
