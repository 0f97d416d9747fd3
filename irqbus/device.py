"""`irqbus device`: an emulated device that raises interrupts at a rate until stopped or done,
through irqbus restarts (irqbus.outage).

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

from irqbus.outage import DEFAULT_GUEST_GRACE_S, DeviceWhere, Located, Step, device_backoff, next_step
from wire.backoff import Backoff
from wire.client import RpcClient
from wire.epoch import read_epoch
from wire.errors import RemoteError, Unreachable
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

    def skip(self, now: float) -> int:
        """Forget what fell due before `now` (and after the first of it) without raising it:
        the pace goes on from `now`. Returns how many were skipped."""
        owed = int((now - self.start) * self.rate + 1e-9) + 1 - self.raised
        if self.count is not None:
            owed = min(owed, self.count - self.raised)
        if owed <= 1:
            return 0
        self.start = now - self.raised / self.rate
        return owed - 1


@dataclass
class DeviceTotals:
    raised: int = 0
    merged: int = 0
    delivered: int = 0
    missed: int = 0  # due while irqbus was away: not raised (no controller took them)
    reasserted: int = 0  # a level line asserted again after irqbus came back


class DeviceGone(Exception):
    """irqbus says the device's guest, or the device, is gone for good (irqbus.outage)."""


@dataclass
class Route:
    """How the device plugs itself in (`--pin`/`--msi`); None when someone else plugs it."""

    args: dict[str, Any]
    level: bool


class DeviceRunner:
    """Raise at the pace until the count is reached or `stop` is set, riding out irqbus
    restarts: while irqbus does not answer, or answers that it does not know the guest or the
    device, ask it `locate` with a bounded backoff and do what irqbus.outage says. Logged once
    when irqbus goes away and once when it is back, not per try."""

    def __init__(
        self,
        client: RpcClient,
        guest: int | str,
        device: str,
        pacer: Pacer,
        stop: StopFlag,
        log: structlog.typing.FilteringBoundLogger,
        route: Route | None = None,
        grace_s: float = DEFAULT_GUEST_GRACE_S,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.pacer, self.stop, self.log, self.clock = client, pacer, stop, log, clock
        self.target: dict[str, Any] = {"guest": guest, "device": device}
        self.route = route
        self.grace_s = grace_s
        self.backoff = backoff or device_backoff()
        self.totals = DeviceTotals()
        self.plugged_epoch: int | None = None
        self.answered = False  # irqbus answered once: from then on, its absence is an outage
        self._away_since: float | None = None
        self._waiting = False

    def plug(self) -> dict[str, Any]:
        """Plug the device in at its route; RemoteError / Unreachable propagate."""
        assert self.route is not None
        result = self.client.call("attach_device", self.route.args)
        self.answered = True
        self.plugged_epoch = read_epoch(result.get("epoch"))
        return result

    def run(self) -> DeviceTotals:
        """DeviceGone when irqbus says so; other refusals, and no answer before the first
        one, propagate as RemoteError / Unreachable."""
        if self.route is not None and not (self._first_plug() or self._recover()):
            return self.totals
        totals, pacer, target = self.totals, self.pacer, self.target
        while not self.stop.is_set() and not pacer.done():
            n = pacer.due(self.clock())
            if n == 0:
                self.stop.wait(max(0.0, pacer.next_at() - self.clock()))
                continue
            try:
                result = self.client.call("raise", dict(target, count=n) if n > 1 else target)
            except Unreachable:
                if not self.answered:
                    raise
                if not self._recover():
                    break
                continue
            except RemoteError as err:
                if err.code != "ESRCH":
                    raise
                if not self._recover():
                    break
                continue
            self.answered = True
            pacer.raised += n
            totals.raised += n
            totals.merged += result.get("merged", 0)
            totals.delivered += result.get("delivered", 0)
            self.log.debug("raised", seq=self.client.last_seq, count=n, gen=result.get("gen"), merged=result.get("merged"))
        return totals

    def _first_plug(self) -> bool:
        try:
            attached = self.plug()
        except RemoteError as err:
            if err.code != "ESRCH":
                raise
            return False  # the guest is not attached (yet): irqbus.outage decides
        self.log.info("attached", domid=attached["domid"], kind=attached["kind"], pin=attached["pin"],
                      trigger=attached["trigger"], epoch=self.plugged_epoch)
        return True

    def _recover(self) -> bool:
        """Ask irqbus where the guest and device are until raising can go on; False when
        stopped meanwhile. DeviceGone when irqbus says they are gone for good."""
        while not self.stop.is_set():
            try:
                seen = Located.read(self.client.call("locate", self.target, retries=0))
            except ValueError as err:
                raise RemoteError("EPROTO", f"irqbus answered locate with something else ({err})") from None
            except Unreachable:
                if not self.answered:
                    raise
                self._went_away()
                self.stop.wait(self.backoff.delay())
                continue
            self.answered = True
            self._came_back(seen)
            step = next_step(seen, self.plugged_epoch, self.route is not None, self.grace_s)
            if step is Step.RAISE:
                self._resume()
                return True
            if step is Step.PLUG:
                try:
                    self._plug_again(seen)
                except RemoteError as err:
                    if err.code != "ESRCH":
                        raise
                    continue  # the guest went again meanwhile: ask again
                except Unreachable:
                    continue
                self._resume()
                return True
            if step is Step.WAIT:
                if not self._waiting:
                    self._waiting = True
                    self.log.info("waiting for the guest and device to be declared again", epoch=seen.epoch,
                                  irqbus_up_s=seen.up_s, grace_s=self.grace_s, guest_attached=seen.attached, device_is=str(seen.device))
                self.stop.wait(self.backoff.delay())
                continue
            raise DeviceGone(self._gone(step, seen))
        return False

    def _gone(self, step: Step, seen: Located) -> str:
        guest, device = self.target["guest"], self.target["device"]
        if seen.epoch == self.plugged_epoch:
            where = "the irqbus instance it was plugged into"
        else:
            where = f"irqbus (up {seen.up_s:g} s, the grace period is {self.grace_s:g} s)"
        if step is Step.GUEST_GONE:
            return f"guest {guest} is not attached to {where}: the device's guest is gone"
        if seen.device is DeviceWhere.ELSEWHERE:
            return f"device {device} is plugged into another guest than {guest} at {where}"
        return f"device {device} is not plugged into guest {guest} at {where}: it was unplugged"

    def _plug_again(self, seen: Located) -> None:
        """A new irqbus instance: plug in again; a level device asserts its line again, since
        it cannot tell whether its driver serviced the last interrupt before irqbus went away
        (its status register was there) -- one interrupt more at most, never one lost."""
        assert self.route is not None
        first = self.plugged_epoch is None  # it waited for its guest at the start
        self.plug()
        reasserted = False
        if self.route.level and self.totals.raised:
            result = self.client.call("raise", self.target)
            self.totals.reasserted += 1
            self.totals.delivered += result.get("delivered", 0)
            reasserted = True
        self.log.info("attached" if first else "plugged in again", epoch=self.plugged_epoch, irqbus_up_s=seen.up_s, reasserted=reasserted)

    def _went_away(self) -> None:
        if self._away_since is None:
            self._away_since = self.clock()
            self.log.warning("irqbus not answering; retrying", endpoint=self.client.endpoint, max_retry_delay_s=self.backoff.cap)

    def _came_back(self, seen: Located) -> None:
        if self._away_since is not None:
            self.log.info("irqbus answering again", epoch=seen.epoch, restarted=seen.epoch != self.plugged_epoch,
                          away_s=round(self.clock() - self._away_since, 3))
            self._away_since = None

    def _resume(self) -> None:
        """Raising goes on from now: what fell due meanwhile was not raised (no controller took it)."""
        self.backoff.reset()
        self._waiting = False
        missed = self.pacer.skip(self.clock())
        if missed:
            self.totals.missed += missed
            self.log.info("interrupts missed while the device could not raise", missed=missed)
