"""The one retry rule every client here follows while its server is away: wait twice as long
each time, up to a cap, and start again from the first delay once it answers. Bounded, so a
server that comes back is heard from within the cap; growing, so one that stays away is not
asked in a tight loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays between retries: doubling from `first` up to `cap`, back to `first` on reset."""

    cap: float
    first: float
    _next: float = 0.0

    def delay(self) -> float:
        delay = min(self.cap, self._next or self.first)
        self._next = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = 0.0
