"""A running guest's control keys (wire/control.py) applied to its driver, without sockets.

The toolstack sets keys for a domain at the hypervisor (`guest_set`), which pushes the domain's
whole key map to the guest (a `control` event, and every heartbeat reply as the fallback). The
guest applies each key whose value differs from what it last saw:

    rate, stuck          the pace (guest/pace.py): Slow(rate) or Unlimited, or Stuck; an
                         intermittent pause the guest was started with (stuck-every) is kept
    floor_pages          the workload the guest cannot give back (GuestMemory.workload_pages)
    ceiling_pages        the most the guest can hold: Balloon.set_growth_cap (Linux
                         current_target(): a guest never asks past the pages it can address);
                         never above the balloon it sized at boot, and nil returns to that
    inaccuracy_pages     where the guest settles: this many pages short of the target in its
                         direction of travel (below it growing, above it shrinking), as
                         squeezed's simulator models a guest's accounting error
    max_schedule_delay,  the driver's tunables, as the xen-balloon sysfs files: Balloon.tune
    max_retry_count

A value the driver cannot take (a max_schedule_delay below the guest's retry delay) is refused
by the guest alone: it keeps the old value, logs the refusal and its heartbeat keeps reporting
what the driver uses. The toolstack's write was accepted: like xenstore, the hypervisor stores
keys for a guest, it does not vouch that the guest obeys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guest.balloon import Balloon
from guest.pace import Both, Pace, Slow, Stuck, StuckEvery, Unlimited


@dataclass
class Applied:
    """What one control map came to: keys applied (with their values) and keys refused (why)."""

    applied: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def aim(written: int, current: int, inaccuracy: int) -> int:
    """The target an inaccurate guest chases: `inaccuracy` pages short of the written one.

    squeezed's simulator (xapi-project/xen-api ocaml/squeezed/test/squeeze_test.ml at 9d3320d,
    `compute_memory_actual_delta`): the distance to travel is `max 0 (distance - inaccuracy)`
    in the direction of travel, so a guest already within `inaccuracy` of the target stays.
    """
    gap = written - current
    if abs(gap) <= inaccuracy:
        return current
    return written - inaccuracy if gap > 0 else written + inaccuracy


def _components(pace: Pace) -> list[Pace]:
    return [*_components(pace.first), *_components(pace.second)] if isinstance(pace, Both) else [pace]


class GuestControl:
    """The control keys' state in one guest, and the one way target writes reach its driver."""

    def __init__(self, balloon: Balloon, now: float, *, ceiling_pages: int | None = None, inaccuracy_pages: int = 0) -> None:
        self.balloon = balloon
        parts = _components(balloon.pace)
        slow = next((p for p in parts if isinstance(p, Slow)), None)
        self._intermittent = next((p for p in parts if isinstance(p, StuckEvery)), None)
        self.written = balloon.target_pages  # the target the toolstack wrote, before any inaccuracy
        self._boot_cap = balloon.growth_cap  # the boot balloon (None with hotplug): a ceiling only lowers it
        stats = balloon.stats()
        # what the guest runs with now, by wire key: a map from the hypervisor is compared to it
        self.seen: dict[str, Any] = {
            "rate": slow.rate if slow else 0.0,
            "stuck": any(isinstance(p, Stuck) for p in parts),
            "floor_pages": balloon.memory.workload_pages,
            "ceiling_pages": None,
            "inaccuracy_pages": 0,
            "max_schedule_delay": stats.max_schedule_delay,  # None: a generation without the file
            "max_retry_count": stats.max_retry_count,
        }
        initial = {"ceiling_pages": ceiling_pages, "inaccuracy_pages": inaccuracy_pages}
        self._refused: dict[str, Any] = {}  # key -> the value the driver refused (logged once)
        self.apply({k: v for k, v in initial.items() if v}, now)

    @property
    def inaccuracy(self) -> int:
        return self.seen["inaccuracy_pages"]

    def set_target(self, written: int, now: float) -> None:
        """The toolstack wrote the target: the driver chases it, or where an inaccurate guest stops."""
        self.written = written
        self.balloon.set_target(aim(written, self.balloon.current_pages, self.inaccuracy), now)

    def apply(self, keys: dict[str, Any], now: float) -> Applied:
        """Apply every key whose value differs from what the guest last saw."""
        out = Applied()
        changed = {
            k: v for k, v in keys.items()
            if k in self.seen and self.seen[k] != v and not (k in self._refused and self._refused[k] == v)
        }
        for key, value in changed.items():
            try:
                self._apply(key, value, now)
            except ValueError as err:
                self._refused[key] = value  # `seen` keeps what the driver runs with
                out.refused[key] = str(err)
            else:
                self.seen[key] = value
                self._refused.pop(key, None)
                out.applied[key] = value
        if "rate" in out.applied or "stuck" in out.applied:
            self.balloon.set_pace(self._pace(now), now)
        return out

    def _apply(self, key: str, value: Any, now: float) -> None:
        balloon = self.balloon
        if key == "floor_pages":
            balloon.memory.workload_pages = value
        elif key == "ceiling_pages":  # nil lifts the ceiling back to the boot balloon, not past it
            caps = [c for c in (value, self._boot_cap) if c is not None]
            balloon.set_growth_cap(min(caps) if caps else None, now)
        elif key == "inaccuracy_pages":  # aims again from where the guest is: not a target write
            balloon.retarget(aim(self.written, balloon.current_pages, value), now)
        elif key == "max_schedule_delay":
            balloon.tune(max_schedule_delay=value)
        elif key == "max_retry_count":
            balloon.tune(max_retry_count=value)

    def _pace(self, now: float) -> Pace:
        """The pace the keys describe, keeping the intermittent pause the guest started with."""
        if self.seen["stuck"]:
            return Stuck()
        rate = self.seen["rate"]
        pace: Pace = Slow(rate, created=now, capacity=self.balloon.config.batch_pages) if rate else Unlimited()
        if self._intermittent is None:
            return pace
        return self._intermittent if rate == 0 else Both(pace, self._intermittent)
