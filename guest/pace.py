"""How fast a guest's balloon driver may move pages: the awkward guests a toolstack must cope with.

A real guest may balloon slowly (its kernel has to find free pages), not at all (driver not
loaded, guest hung), or in fits and starts. A pace answers three questions, all with an
injected clock:

    allowance(now)     pages the driver may move now (0 = must wait)
    next_allowed(now)  when motion next becomes possible (None = never)
    consume(pages, now) record pages actually moved

Kinds (and their spec strings, for command lines and scenario files):

    Unlimited()              "normal"         no limit
    Slow(pages_per_s, ...)   "slow:RATE"      token bucket: RATE pages/s, capacity one batch
    Stuck()                  "stuck"          never moves
    StuckEvery(s, created)   "stuck-every:S"  moving for S seconds, stuck for S, and so on,
                                              starting in the moving phase at `created`
    Both(a, b)               "A+B"            both limits at once, e.g. "slow:500+stuck-every:2"
"""

from __future__ import annotations

import math
import sys
from typing import Protocol

UNLIMITED = sys.maxsize

# Float slack, so that at exactly `next_allowed(now)` a refill that rounds to 0.9999999 tokens
# still allows the page it promised (otherwise a driver would spin on a tiny wait).
_EPS = 1e-9


class Pace(Protocol):
    spec: str

    def allowance(self, now: float) -> int: ...

    def next_allowed(self, now: float) -> float | None: ...

    def consume(self, pages: int, now: float) -> None: ...


class Unlimited:
    spec = "normal"

    def allowance(self, now: float) -> int:
        return UNLIMITED

    def next_allowed(self, now: float) -> float | None:
        return now

    def consume(self, pages: int, now: float) -> None:
        pass


class Stuck:
    spec = "stuck"

    def allowance(self, now: float) -> int:
        return 0

    def next_allowed(self, now: float) -> float | None:
        return None

    def consume(self, pages: int, now: float) -> None:
        pass


class Slow:
    """A token bucket: `pages_per_s` tokens a second, at most `capacity` saved up.

    The bucket starts empty at `created` and fills at `pages_per_s` up to `capacity` (one
    batch), so even a long-idle slow guest moves at most one batch at once. A step may move
    at most the whole tokens accumulated; motion is due once `min_step` tokens are there
    (a tenth of a second's worth), so a slow guest makes about ten requests a second rather
    than one per page.
    """

    STEP_INTERVAL_S = 0.1

    def __init__(self, pages_per_s: float, created: float, capacity: int = 512) -> None:
        if not isinstance(pages_per_s, (int, float)) or isinstance(pages_per_s, bool) or not pages_per_s > 0:
            raise ValueError(f"pages_per_s must be > 0, not {pages_per_s!r}")
        if not math.isfinite(pages_per_s):
            raise ValueError("pages_per_s must be finite (use Unlimited for no limit)")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, not {capacity!r}")
        self.rate = float(pages_per_s)
        self.capacity = capacity
        self.spec = f"slow:{pages_per_s:g}"
        self.min_step = max(1, min(capacity, math.floor(pages_per_s * self.STEP_INTERVAL_S)))
        self._tokens = 0.0
        self._at = created

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.capacity), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def allowance(self, now: float) -> int:
        self._refill(now)
        if self._tokens + _EPS < self.min_step:
            return 0
        return math.floor(self._tokens + _EPS)

    def next_allowed(self, now: float) -> float | None:
        self._refill(now)
        if self._tokens + _EPS >= self.min_step:
            return now
        return now + (self.min_step - self._tokens) / self.rate

    def consume(self, pages: int, now: float) -> None:
        self._refill(now)
        self._tokens -= pages


class StuckEvery:
    """Alternately moving for `period_s` seconds and stuck for `period_s`, from `created`."""

    def __init__(self, period_s: float, created: float) -> None:
        if not isinstance(period_s, (int, float)) or isinstance(period_s, bool) or not period_s > 0:
            raise ValueError(f"period_s must be > 0, not {period_s!r}")
        if not math.isfinite(period_s):
            raise ValueError("period_s must be finite (use Stuck to never move)")
        self.period = float(period_s)
        self.created = created
        self.spec = f"stuck-every:{period_s:g}"

    def _cycle(self, now: float) -> tuple[int, bool]:
        """(index of the current move+stuck cycle, whether we are in its moving half)."""
        elapsed = max(0.0, now - self.created)
        cycle = math.floor(elapsed / (2 * self.period))
        moving = elapsed - cycle * 2 * self.period < self.period
        return cycle, moving

    def allowance(self, now: float) -> int:
        return UNLIMITED if self._cycle(now)[1] else 0

    def next_allowed(self, now: float) -> float | None:
        cycle, moving = self._cycle(now)
        return now if moving else self.created + (cycle + 1) * 2 * self.period

    def consume(self, pages: int, now: float) -> None:
        pass


class Both:
    """Two paces at once: a slow guest that is also stuck now and then."""

    def __init__(self, first: Pace, second: Pace) -> None:
        self.first, self.second = first, second
        self.spec = f"{first.spec}+{second.spec}"

    def allowance(self, now: float) -> int:
        return min(self.first.allowance(now), self.second.allowance(now))

    def next_allowed(self, now: float) -> float | None:
        """The later of the two; a wait for one may end in the other's pause, so re-ask then."""
        a, b = self.first.next_allowed(now), self.second.next_allowed(now)
        return None if a is None or b is None else max(a, b)

    def consume(self, pages: int, now: float) -> None:
        self.first.consume(pages, now)
        self.second.consume(pages, now)


def parse_pace(spec: str, now: float, batch_pages: int = 512) -> Pace:
    """Build a pace from its spec string ("normal", "slow:50", "stuck", "stuck-every:30", "A+B")."""
    if "+" in spec:
        first, _, rest = spec.partition("+")
        return Both(parse_pace(first, now, batch_pages), parse_pace(rest, now, batch_pages))
    kind, _, arg = spec.strip().partition(":")
    try:
        if kind == "normal" and not arg:
            return Unlimited()
        if kind == "stuck" and not arg:
            return Stuck()
        if kind == "slow" and arg:
            return Slow(float(arg), created=now, capacity=batch_pages)
        if kind == "stuck-every" and arg:
            return StuckEvery(float(arg), created=now)
    except ValueError as e:
        raise ValueError(f"pace {spec!r}: {e}") from None
    raise ValueError(f"pace {spec!r}: expected normal, slow:PAGES_PER_S, stuck or stuck-every:SECONDS")
