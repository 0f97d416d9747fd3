"""irqbus's instance epoch: which irqbus instance a generation number belongs to.

A device's generation numbers start at 1 in every irqbus instance, so a guest driver that
remembers the latest generation it claimed (guest/drivers.py) must compare generations of one
instance only. Every `irqbus serve` draws a new epoch at start and says it in the `attach` and
`attach_device` replies, in every `irq` event and in `locate` and `show`; a guest compares
generations per epoch and takes an `irq` event of another epoch for a stale one (its irqbus
is gone). docs/protocol.md, "irqbus restarts".
"""

from __future__ import annotations

import secrets
from typing import Any

MAX_EPOCH = (1 << 63) - 1  # a msgpack int64, as `seq`


def new_epoch() -> int:
    """A random epoch, 1..MAX_EPOCH: two instances drawing the same one is a 1 in 2^63 chance."""
    return secrets.randbelow(MAX_EPOCH) + 1


def read_epoch(value: Any) -> int | None:
    """The epoch a peer sent, or None when it is not one (wrong type or out of range)."""
    return value if type(value) is int and 1 <= value <= MAX_EPOCH else None
