"""`irqbus device`: an emulated device that raises interrupts at a rate until stopped or done.

Pacing is sans-I/O (`Pacer`): given the time, it says how many interrupts are due and when to
look again, so a fast device fires in bursts (one `raise` with a count) instead of needing a
request per interrupt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from wire.client import RpcClient
from wire.operations import MAX_BURST
from wire.signals import StopFlag


@dataclass
class Pacer:
    """`rate` interrupts per second from `start`, at most `burst` per request, `count` in all
    (None = until stopped)."""

    rate: float
    start: float
    burst: int = 1
    count: int | None = None
    raised: int = 0

    def due(self, now: float) -> int:
        """How many to raise now (0 if none yet, or all done)."""
        owed = int((now - self.start) * self.rate + 1e-9) + 1 - self.raised  # 1e-9: float rounding
        if self.count is not None:
            owed = min(owed, self.count - self.raised)
        return max(0, min(owed, self.burst, MAX_BURST))

    def done(self) -> bool:
        return self.count is not None and self.raised >= self.count

    def next_at(self) -> float:
        """When the next interrupt is due."""
        return self.start + self.raised / self.rate


@dataclass
class DeviceTotals:
    raised: int = 0
    merged: int = 0
    delivered: int = 0


def run_device(
    client: RpcClient,
    guest: int | str,
    device: str,
    pacer: Pacer,
    stop: StopFlag,
    log: structlog.typing.FilteringBoundLogger,
    clock: Callable[[], float] = time.monotonic,
) -> DeviceTotals:
    """Raise until the count is reached or `stop` is set. RemoteError / Unreachable propagate."""
    totals = DeviceTotals()
    target: dict[str, Any] = {"guest": guest, "device": device}
    while not stop.is_set() and not pacer.done():
        n = pacer.due(clock())
        if n == 0:
            stop.wait(max(0.0, pacer.next_at() - clock()))
            continue
        result = client.call("raise", dict(target, count=n) if n > 1 else target)
        pacer.raised += n
        totals.raised += n
        totals.merged += result.get("merged", 0)
        totals.delivered += result.get("delivered", 0)
        log.debug("raised", seq=client.last_seq, count=n, gen=result.get("gen"), merged=result.get("merged"))
    return totals
