"""IrqLink's fast path (guest/irqlink.py `_deliver_fast`: a line with actions and no status
bit set runs its flow without chip.py's layers around the chain) against the general flows:
the same event sequence -- vectors known and unknown, statuses right, stale, foreign and
malformed, epochs of this irqbus instance and of others, times, lines disabled and enabled,
handlers that decline, fail, answer bogus values, disable their own line or take a nested
edge, spurious storms up to "nobody cared" -- run on a link with the fast path and one
without, must return the same requests, raise the same errors, record the same events and
leave the same state: counters, every descriptor and action, the drivers, /proc/interrupts.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from guest.drivers import parse_device
from guest.irq import IrqReturn, IrqSetupError, SpuriousPolicy
from guest.irqlink import IrqLink

SPECS = ("nic0:pin=5:edge", "disk0:pin=5:edge", "kbd0:pin=1", "ser0:pin=20:edge", "hba0:pin=21:level", "hba1:pin=21:level", "net0:msi", "net1:msi")
DEVICES = ("nic0", "disk0", "kbd0", "ser0", "hba0", "hba1", "net0", "net1", "ghost")
EPOCH = 7
# small thresholds, so that a few dozen unhandled interrupts make a line "nobody cared"
POLICY = SpuriousPolicy(window=12, threshold=8, quiet=1.0)
BEHAVIOURS = ("handled", "none", "wake", "both", "bogus", "raise", "notint", "disable", "nest", "enable")


class Meddler:
    """An extra action on a line whose answer each step chooses (the drivers' answers follow
    the statuses): every way a handler can leave the chain or the line otherwise."""

    def __init__(self, link: IrqLink) -> None:
        self.link = link
        self.behaviour = "handled"
        self.nests = 0  # edges still to take while the chain runs, this step

    def handler(self, irq: int, dev_id: Any) -> Any:
        behaviour = self.behaviour
        if behaviour == "none":
            return IrqReturn.NONE
        if behaviour == "wake":
            return IrqReturn.WAKE_THREAD
        if behaviour == "both":
            return 3
        if behaviour == "bogus":
            return 9
        if behaviour == "raise":
            raise RuntimeError("broken driver")
        if behaviour == "notint":
            return "yes"
        if behaviour == "disable":  # disable_irq_nosync from the handler: its chip ops are lost
            self.link.irq.disable_irq(irq)
        elif behaviour == "enable":  # an unbalanced enable is refused: the handler survives it
            try:
                self.link.irq.enable_irq(irq)
            except IrqSetupError:
                pass
        elif behaviour == "nest" and self.nests:  # an edge arrives while the chain runs
            self.nests -= 1
            self.link.irq.handle(irq, self.link.irq.table.last_now)
        return 1


def build(fast: bool) -> tuple[IrqLink, Meddler, list[Any]]:
    link = IrqLink([parse_device(s) for s in SPECS], POLICY, ("target", "memory"), fast=fast)
    link.attached(EPOCH)
    requests: list[Any] = []
    for driver in link.drivers:
        done = link.setup(driver)
        requests += [done.program, done.chip]
    requests += link.bind_virqs()
    meddler = Meddler(link)
    for irq, trigger in ((5, "edge"), (20, "edge"), (21, "level")):  # MSI lines are not shared
        link.irq.request_irq(irq, meddler.handler, "meddler", dev_id=f"meddler{irq}", shared=True, trigger=trigger)
    return link, meddler, requests


ACTIVE = (1, 5, 20, 21, 24, 25, 26, 27)  # the lines with actions: drivers, meddlers, virqs


def vectors(link: IrqLink) -> list[int]:
    """The vectors the link knows, those of lines with actions first (the index a step draws
    is more often one of them)."""
    known = sorted(link._irq_of_vector)
    return sorted(known, key=lambda v: link._irq_of_vector[v] not in ACTIVE)


status = st.one_of(
    st.dictionaries(st.sampled_from(DEVICES), st.integers(-1, 40), max_size=3),
    st.none(),
    st.just({"nic0": "1"}),
    st.just({1: 2}),
    st.just([1, 2]),
)
irq_step = st.tuples(
    st.just("irq"),
    st.one_of(st.integers(0, len(ACTIVE) - 1), st.integers(0, 60), st.integers(61, 0x100), st.just("0x31")),  # an index into the known vectors, or a raw one (unknown)
    status,
    st.sampled_from((EPOCH, EPOCH, EPOCH, 8, None)),
    st.sampled_from((0.001, 0.01, 0.5, 2.0, 0.0)),
    st.sampled_from(BEHAVIOURS),
)
steps = st.one_of(
    irq_step,
    irq_step,
    irq_step,
    st.tuples(st.just("storm"), st.integers(0, 60), st.integers(1, 30), st.sampled_from(("none", "handled", "wake"))),
    st.tuples(st.just("args"), st.sampled_from((None, 3, "x", [], {"epoch": EPOCH}, {"epoch": EPOCH, "vector": True}))),
    st.tuples(st.just("time"), st.sampled_from((float("nan"), 5, True, -1.0))),
    st.tuples(st.just("disable"), st.sampled_from((1, 5, 20, 21, 24, 25, 26, 27))),
    st.tuples(st.just("enable"), st.sampled_from((1, 5, 20, 21, 24, 25, 26, 27))),
    st.tuples(st.just("attach"), st.sampled_from((EPOCH, 8))),
)


def state(link: IrqLink) -> dict[str, Any]:
    table = link.irq.table
    descs = [
        (d.irq, d.bits, d.depth, list(d.kstat), d.irq_count, d.irqs_unhandled, d.last_unhandled, d.spurious_deferred, d.trigger, d.flow,
         [(a.name, a.count, a.handled, a.warned) for a in d.actions])
        for d in table
    ]
    drivers = [(d.name, d.irq, d.claimed_gen, d.handled, d.calls) for d in link.drivers]
    return {
        "counters": (link.delivered, link.unknown_vectors, link.malformed, link.stale, link.epoch, table.last_now, table.bad_irq_reports,
                     table.events_dropped),
        "descs": descs,
        "drivers": drivers,
        "fired": list(link.fired),
        "text": link.irq.interrupts_text(),
    }


def apply(link: IrqLink, meddler: Meddler, step: tuple[Any, ...], now: float) -> Any:
    """One step; returns what it returned (requests as (op, args)) or the error it raised."""
    known = vectors(link)

    def deliver(args: Any, when: Any) -> Any:
        try:
            request = link.on_irq(args, when)
        except IrqSetupError as err:
            return ("error", str(err))
        return None if request is None else (request.op, request.args)

    kind = step[0]
    if kind == "irq":
        _, which, status_, epoch, _, behaviour = step
        meddler.behaviour = behaviour
        meddler.nests = 1
        vector = known[which % len(known)] if type(which) is int and which <= 60 else which
        args: dict[str, Any] = {"vector": vector, "chip": "x", "epoch": epoch}
        if status_ is not None:
            args["status"] = status_
        return deliver(args, now)
    if kind == "storm":
        _, which, count, behaviour = step
        meddler.behaviour = behaviour
        vector = known[which % len(known)]
        return [deliver({"vector": vector, "epoch": EPOCH, "status": {"ghost": 1}}, now + i * 0.001) for i in range(count)]
    if kind == "args":
        return deliver(step[1], now)
    if kind == "time":
        return deliver({"vector": known[0], "epoch": EPOCH, "status": {}}, step[1])
    if kind in ("disable", "enable"):
        try:
            if kind == "disable":
                return link.irq.disable_irq(step[1])
            return link.irq.enable_irq(step[1], now)
        except IrqSetupError as err:
            return ("error", str(err))
    assert kind == "attach"
    return link.attached(step[1])


# indices into vectors(): 0 IRQ 1 (i8259, level flow), 1 IRQ 5 (shared), 2 IRQ 20 (IOAPIC edge),
# 3 IRQ 21 (IOAPIC level, fasteoi), 4 and 5 the MSI lines, 6 and 7 the virqs
@pytest.mark.timeout(120)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=40))
@example([("irq", 2, {"ser0": 1}, EPOCH, 0.01, "nest"), ("irq", 2, {"ser0": 2}, EPOCH, 0.01, "handled")])
@example([("irq", 3, {"hba0": 1}, EPOCH, 0.01, "nest"), ("irq", 1, {"nic0": 1}, EPOCH, 0.01, "nest")])
@example([("storm", 4, 30, "none"), ("irq", 4, {"net0": 1}, EPOCH, 0.01, "handled"), ("enable", 24), ("irq", 4, {"net0": 2}, EPOCH, 2.0, "none")])
@example([("irq", 2, {}, EPOCH, 0.01, "disable"), ("irq", 2, {"ser0": 1}, EPOCH, 0.01, "handled"), ("enable", 20)])
@example([("storm", 1, 30, "wake"), ("irq", 3, {}, EPOCH, 0.01, "bogus"), ("irq", 3, {}, EPOCH, 0.01, "raise")])
def test_the_fast_path_and_the_general_flows_agree_on_every_event_sequence(sequence: list[tuple[Any, ...]]) -> None:
    fast, fast_meddler, fast_setup = build(fast=True)
    slow, slow_meddler, slow_setup = build(fast=False)
    assert fast_setup == slow_setup
    now = 1.0
    for step in sequence:
        if step[0] == "irq":
            now += step[4]
        elif step[0] == "storm":
            now += step[2] * 0.001 + 0.001
        assert apply(fast, fast_meddler, step, now) == apply(slow, slow_meddler, step, now), step
        assert fast.events() == slow.events(), step
        assert state(fast) == state(slow), step
        assert fast.take_fired() == slow.take_fired()


def test_the_fast_path_is_taken_on_an_idle_line() -> None:
    """The comparison above means something only if the fast path runs: on a line with
    actions and no status bit set, the general flows are not called."""
    link, _, _ = build(fast=True)
    msi = link.drivers[6]
    vector = next(v for v, irq in link._irq_of_vector.items() if irq == msi.irq)
    calls = []
    link._commands = lambda ops: calls.append(ops) or []  # type: ignore[method-assign]
    request = link.on_irq({"vector": vector, "epoch": EPOCH, "status": {"net0": 1}}, 2.0)
    assert request is not None and request.args == {"clear": [["net0", 1]], "reply": False}
    assert calls == []  # the general translation was not needed either
    assert msi.handled == 1
