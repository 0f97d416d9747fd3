"""What an `irqbus device` process does when irqbus stops answering or no longer knows its
guest or device, sans-I/O: the answer of `locate` goes in, the next step comes out.

irqbus keeps no state across a restart: guests and devices declare their wiring again
(docs/protocol.md, "irqbus restarts"). A guest re-attaches and reprograms its lines within
its ping period; so a device process must neither give up on a new instance that does not
know its guest yet, nor plug itself back into an instance that unplugged it on purpose. The
epoch tells the two apart: the instance the device plugged into (`plugged_epoch`) unplugging
it, or losing its guest, is for good; a new instance gets `grace_s` seconds from its own start
for the guest to come back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from wire.backoff import Backoff
from wire.epoch import read_epoch

DEFAULT_GUEST_GRACE_S = 10.0  # well above a guest's re-attach (guest/interrupts.py: ping 2 s, retry 2 s)
DEFAULT_MAX_RETRY_DELAY_S = 1.0
FIRST_RETRY_DELAY_S = 0.05


class Step(enum.Enum):
    RAISE = "raise"  # everything is in place: carry on raising
    PLUG = "plug"  # a new instance knows the guest but not the device: plug it in again
    WAIT = "wait"  # a new instance, the guest not (yet) back: ask again after a delay
    GUEST_GONE = "guest gone"
    DEVICE_GONE = "device gone"


class DeviceWhere(enum.StrEnum):
    PLUGGED = "plugged"  # into the guest named
    ABSENT = "absent"
    ELSEWHERE = "elsewhere"  # into another guest


@dataclass(frozen=True, slots=True)
class Located:
    """A `locate` reply, checked."""

    epoch: int
    up_s: float
    attached: bool
    device: DeviceWhere

    @classmethod
    def read(cls, result: dict[str, Any]) -> Located:
        """ValueError when the reply is not a `locate` answer naming the device."""
        epoch, up_s = read_epoch(result.get("epoch")), result.get("up_s")
        if epoch is None or type(up_s) not in (int, float) or not 0 <= up_s < float("inf") or type(result.get("attached")) is not bool:
            raise ValueError(f"not a locate reply: {sorted(result)}")
        return cls(epoch, float(up_s), result["attached"], DeviceWhere(result.get("device")))


def next_step(seen: Located, plugged_epoch: int | None, can_plug: bool, grace_s: float) -> Step:
    """What to do, given where irqbus says the guest and device are.

    `plugged_epoch`: the instance this process plugged the device into (None: it never did,
    e.g. the guest's `program_msi` or a one-shot `irqbus attach` plugged it); `can_plug`:
    the process knows the device's route (`--pin` or `--msi`).
    """
    same = plugged_epoch is not None and seen.epoch == plugged_epoch
    young = seen.up_s < grace_s
    if not seen.attached:
        # the guest detached from the very instance the device is in, or a new instance has
        # been up for the grace period without it coming back
        return Step.WAIT if young and not same else Step.GUEST_GONE
    if seen.device is DeviceWhere.PLUGGED:
        return Step.RAISE
    if seen.device is DeviceWhere.ELSEWHERE or same:
        return Step.DEVICE_GONE  # another guest has it, or this instance unplugged it
    if can_plug:
        return Step.PLUG
    return Step.WAIT if young else Step.DEVICE_GONE  # whoever plugged it may still do so


def device_backoff(cap: float = DEFAULT_MAX_RETRY_DELAY_S) -> Backoff:
    """An `irqbus device`'s asking of `locate` while irqbus is away: from 50 ms up to `cap`."""
    return Backoff(cap, FIRST_RETRY_DELAY_S)
