"""Where an interrupt's time goes, stage by stage, for `bench/irq_bench.py --profile`.

Off unless asked (`irqbus serve --profile FILE`): profiling wraps the functions that make up
each stage when it is switched on, so the path that is not profiled carries no timer at all.
Each message irqbus receives gets one record: the time each stage took (ns) and a few instants
on CLOCK_MONOTONIC (`time.monotonic_ns`), which is one clock for every process on the host, so
the bench can join irqbus's records with the device's and the guest's and see the hops between
them. The records are written as JSON when the process stops.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_RECORDS = 200_000  # a bench run's worth; past it, later messages are not recorded

_now = time.monotonic_ns


class StageClock:
    """Per-message stage timers: `begin` opens a record, wrapped functions add their time to
    its stages, `stamp` notes an instant, `note` a value (op, seq, gen)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.current: dict[str, Any] = {"stages": {}, "stamps": {}}
        self._inner = 0  # time spent in timed calls inside the one running: a stage's time is its own

    def timed(self, stage: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int, int]:
        """Run `call`, adding its own time (less that of the timed calls inside) to `stage`.
        What the timing itself costs is taken out of the caller's stage too, not only the
        callee's: a stage's figure is its own code's."""
        outer, self._inner = self._inner, 0
        start = _now()
        try:
            result = call(*args, **kwargs)
        finally:
            end = _now()
            inner = self._inner
            stages = self.current["stages"]
            stages[stage] = stages.get(stage, 0) + end - start - inner
            self._inner = outer + _now() - start
        return result, start, end

    def begin(self, **notes: Any) -> dict[str, Any]:
        self.current = {"stages": {}, "stamps": {}, **notes}
        if len(self.records) < MAX_RECORDS:
            self.records.append(self.current)
        return self.current

    def stamp(self, name: str, when: int | None = None) -> None:
        self.current["stamps"][name] = _now() if when is None else when

    def note(self, **values: Any) -> None:
        self.current.update(values)

    def add(self, stage: str, ns: int) -> None:
        stages = self.current["stages"]
        stages[stage] = stages.get(stage, 0) + ns

    def wrap(self, owner: Any, attr: str, stage: str, *, stamp_end: str | None = None,
             begin: bool = False, after: Callable[[Any, tuple[Any, ...]], None] | None = None) -> None:
        """Replace `owner.attr` by a timed call: its time goes to `stage` of the current record
        (a new one first if `begin`); `stamp_end` notes the instant it returned; `after(result,
        args)` may note what the call returned."""
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if begin:  # the message is only known once received
                start = _now()
                result = inner(*args, **kwargs)
                end = _now()
                self.begin()
                self.current["stamps"]["begin"] = start
                self.add(stage, end - start)
            else:
                result, start, end = self.timed(stage, inner, *args, **kwargs)
            if stamp_end is not None:
                self.current["stamps"][stamp_end] = end
            if after is not None:
                after(result, args)
            return result

        setattr(owner, attr, timed)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.records))


def install_irqbus(clock: StageClock) -> None:
    """irqbus's stages, from the message's receipt to the reply's send. The ZeroMQ shell's
    `_serve_one` ends each record; the sends inside `_push` are the guest's, the others replies."""
    from irqbus import dispatch, machine, service
    from wire import envelope, gate, multipart, operations, replay

    clock.wrap(multipart, "receive_routed", "irqbus recv", stamp_end="received", begin=True)
    clock.wrap(envelope, "decode_request", "irqbus decode")
    clock.wrap(replay, "digest", "irqbus replay verdict")
    clock.wrap(replay.ReplayRecord, "verdict", "irqbus replay verdict")
    clock.wrap(replay.ReplayRecord, "admit", "irqbus replay verdict")
    clock.wrap(operations.Operation, "validate", "irqbus validate args")
    clock.wrap(gate.Gate, "peer", "irqbus gate/rights")
    clock.wrap(dispatch.IrqBus, "_device", "irqbus gate/rights")
    clock.wrap(dispatch.IrqBus, "_session", "irqbus gate/rights")
    for name in ("raise_device", "pulse_device", "lower_device", "chip", "write_msi"):
        clock.wrap(machine.GuestMachine, name, "irqbus machine/chip model")
    clock.wrap(dispatch, "irq_events", "irqbus encode event")
    clock.wrap(dispatch.IrqBus, "commit", "irqbus encode reply + record")

    def noted(outcome: Any, args: tuple[Any, ...]) -> None:
        result = outcome.result or {}
        clock.note(op=outcome.op, seq=outcome.seq, gen=result.get("gen"))

    clock.wrap(dispatch.IrqBus, "execute", "irqbus execute (rest)", after=noted)

    pushing = [False]
    send = multipart.send_routed

    def timed_send(sock: Any, route: list[bytes], frame: bytes, flags: int = 0) -> None:
        _, start, end = clock.timed("irqbus send to guest" if pushing[0] else "irqbus send reply", send, sock, route, frame, flags)
        clock.stamp("sent to guest" if pushing[0] else "replied", end)

    multipart.send_routed = timed_send  # type: ignore[assignment]
    push = service.IrqbusService._push

    def timed_push(self: Any, outcome: Any) -> None:
        pushing[0] = True
        try:
            push(self, outcome)
        finally:
            pushing[0] = False

    service.IrqbusService._push = timed_push  # type: ignore[method-assign]
    serve_one = service.IrqbusService._serve_one

    def timed_serve_one(self: Any, *args: Any) -> None:
        serve_one(self, *args)
        clock.stamp("done")

    service.IrqbusService._serve_one = timed_serve_one  # type: ignore[method-assign]
