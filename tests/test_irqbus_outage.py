"""`irqbus device` across irqbus restarts, without sockets: the rules of irqbus.outage, and the
device's runner against a scripted irqbus on a fake clock (what it asks, what it logs, when it
gives up)."""

from __future__ import annotations

from typing import Any

import pytest

from irqbus.device import DeviceGone, DeviceRunner, Pacer, Route
from irqbus.outage import DeviceWhere, Located, Step, device_backoff, next_step
from wire.backoff import Backoff
from wire.errors import RemoteError, Unreachable

T = pytest.mark.timeout(5)
OLD, NEW = 7, 9


def seen(epoch: int = NEW, up_s: float = 1.0, attached: bool = True, device: str = "absent") -> Located:
    return Located(epoch, up_s, attached, DeviceWhere(device))


@T
@pytest.mark.parametrize(
    "where, plugged, can_plug, step",
    [
        # a new instance: the guest gets the grace period to come back, the device is plugged again
        (seen(attached=False), OLD, True, Step.WAIT),
        (seen(attached=False, up_s=10.0), OLD, True, Step.GUEST_GONE),
        (seen(), OLD, True, Step.PLUG),
        (seen(device="plugged"), OLD, True, Step.RAISE),  # its guest's program_msi plugged it
        (seen(), None, False, Step.WAIT),  # whoever plugged it may do it again
        (seen(up_s=10.0), None, False, Step.DEVICE_GONE),
        (seen(device="elsewhere"), OLD, True, Step.DEVICE_GONE),
        # the instance it plugged into: a guest that detached, a device unplugged, are gone for good
        (seen(epoch=OLD, attached=False), OLD, True, Step.GUEST_GONE),
        (seen(epoch=OLD), OLD, True, Step.DEVICE_GONE),
        (seen(epoch=OLD, device="plugged"), OLD, True, Step.RAISE),  # irqbus was only slow
        # a device started before its guest: a young irqbus waits for it, an old one does not
        (seen(attached=False), None, True, Step.WAIT),
        (seen(attached=False, up_s=60.0), None, True, Step.GUEST_GONE),
    ],
)
def test_what_a_device_does_after_a_refusal(where, plugged, can_plug, step):
    assert next_step(where, plugged, can_plug, grace_s=10.0) is step


@T
def test_a_locate_reply_is_checked():
    assert Located.read({"epoch": 3, "up_s": 1, "attached": True, "domid": 1, "device": "plugged"}) == seen(3, 1.0, True, "plugged")
    for bad in ({}, {"epoch": 0, "up_s": 1, "attached": True, "device": "absent"},
                {"epoch": 3, "up_s": -1, "attached": True, "device": "absent"},
                {"epoch": 3, "up_s": 1, "attached": 1, "device": "absent"},
                {"epoch": 3, "up_s": 1, "attached": True}):
        with pytest.raises(ValueError):
            Located.read(bad)


@T
def test_the_backoff_doubles_up_to_its_cap_and_starts_again_after_success():
    b = Backoff(cap=0.5, first=0.1)
    assert [b.delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.delay() == 0.1


@T
def test_what_fell_due_while_irqbus_was_away_is_skipped_not_burst():
    p = Pacer(rate=10, start=0.0, burst=100)
    p.raised = 5
    assert p.skip(3.0) == 25  # 31 due by 3.0, 5 raised: the first of the rest is raised now
    assert p.due(3.0) == 1 and p.next_at() == pytest.approx(3.0)  # due now, then one per 0.1 s
    assert p.skip(3.0) == 0
    capped = Pacer(rate=10, start=0.0, count=8)
    capped.raised = 5
    assert capped.skip(3.0) == 2 and capped.due(3.0) == 1


# --- the runner against a scripted irqbus ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stop:
    """StopFlag on the fake clock: waiting advances it; set after `after` seconds."""

    def __init__(self, clock: Clock, after: float) -> None:
        self.clock, self.at = clock, clock.now + after

    def is_set(self) -> bool:
        return self.clock.now >= self.at

    def wait(self, timeout: float) -> bool:
        self.clock.now += max(timeout, 0.001)
        return self.is_set()


class Bus:
    """A scripted irqbus: `state` says whether it answers, its epoch and uptime, who is there."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.endpoint = "ipc://fake"
        self.last_seq = 0
        self.up = True
        self.epoch, self.started = OLD, clock.now - 50
        self.guest = True
        self.plugged = False
        self.calls: list[str] = []
        self.raised = 0

    def restart(self, guest: bool = False, plugged: bool = False) -> None:
        self.up, self.epoch, self.started, self.guest, self.plugged = True, NEW, self.clock.now, guest, plugged

    def call(self, op: str, args: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
        self.last_seq += 1
        self.calls.append(op)
        self.clock.now += 0.01
        if not self.up:
            self.clock.now += 1.0  # the client's timeout
            raise Unreachable("no reply")
        if op == "locate":
            where = "plugged" if self.plugged and self.guest else "absent"
            return {"epoch": self.epoch, "up_s": self.clock.now - self.started, "attached": self.guest, "device": where}
        if not self.guest:
            raise RemoteError("ESRCH", "no guest")
        if op == "attach_device":
            self.plugged = True
            return {"domid": 1, "kind": "pin", "pin": 5, "trigger": "level", "created": True, "epoch": self.epoch}
        if not self.plugged:
            raise RemoteError("ESRCH", "no device")
        self.raised += args.get("count", 1)
        return {"gen": self.raised, "merged": 0, "delivered": 1}


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _note(self, event: str, **fields: Any) -> None:
        self.lines.append(event)

    info = warning = error = _note

    def debug(self, event: str, **fields: Any) -> None:
        pass


def runner(bus: Bus, clock: Clock, stop_after: float, grace: float = 5.0) -> tuple[DeviceRunner, Log]:
    log = Log()
    route = Route({"guest": "vm1", "device": "nic0", "pin": 5, "trigger": "level"}, level=True)
    pacer = Pacer(rate=10, start=clock.now)
    r = DeviceRunner(bus, "vm1", "nic0", pacer, Stop(clock, stop_after), log, route, grace, device_backoff(cap=0.5), clock)  # type: ignore[arg-type]
    return r, log


@T
def test_a_device_rides_out_an_irqbus_restart_logging_once_each_way():
    clock = Clock()
    bus = Bus(clock)
    r, log = runner(bus, clock, stop_after=20.0)
    real_call = bus.call
    def call(op: str, args: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
        if clock.now >= 103.0 and bus.epoch == OLD:
            bus.up = False  # irqbus killed at 103
        if not bus.up and clock.now >= 108.0:
            bus.restart()  # a new one at 108, which learns of the guest at 110
        if bus.epoch == NEW and clock.now >= 110.0:
            bus.guest = True
        return real_call(op, args, retries)
    bus.call = call  # type: ignore[method-assign]
    totals = r.run()
    assert log.lines.count("irqbus not answering; retrying") == 1
    assert log.lines.count("irqbus answering again") == 1
    assert log.lines.count("waiting for the guest and device to be declared again") == 1
    assert log.lines.count("plugged in again") == 1
    assert r.plugged_epoch == NEW and totals.reasserted == 1
    # 10/s for 20 s: what fell due from the kill (103) to the plug (110) is missed, not burst later
    assert 197 <= totals.raised + totals.missed <= 201 and 65 <= totals.missed <= 75
    assert bus.calls.count("attach_device") == 2
    # while away it asked `locate` (read-only) with at most 0.5 s between tries, never `raise`
    away = bus.calls[bus.calls.index("locate"):bus.calls.index("attach_device", 1)]
    assert set(away) == {"locate"} and len(away) >= 5


@T
def test_a_device_gives_up_when_a_new_irqbus_goes_without_its_guest_for_the_grace():
    clock = Clock()
    bus = Bus(clock)
    r, log = runner(bus, clock, stop_after=60.0, grace=5.0)
    r.plug()
    bus.restart(guest=False)
    started = clock.now
    with pytest.raises(DeviceGone, match=r"guest vm1 is not attached to irqbus \(up 5.* the grace period is 5 s\)"):
        r.run()
    assert 5.0 <= clock.now - started <= 6.5


@T
def test_a_guest_that_detached_from_the_same_irqbus_ends_the_device_at_once():
    clock = Clock()
    bus = Bus(clock)
    r, log = runner(bus, clock, stop_after=60.0)
    r.plug()
    bus.guest = False
    with pytest.raises(DeviceGone, match="the irqbus instance it was plugged into"):
        r.run()
    assert clock.now < 101


@T
def test_no_irqbus_at_the_start_still_fails_fast():
    clock = Clock()
    bus = Bus(clock)
    bus.up = False
    r, _ = runner(bus, clock, stop_after=60.0)
    with pytest.raises(Unreachable):
        r.run()
