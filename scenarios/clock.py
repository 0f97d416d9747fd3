"""Scenario time: what the file and the report count in, `speed` times the real time elapsed.

A scenario with `speed = 20` plays its timeline, samples and judges 20 times faster than its
file reads, while every time it shows stays in the file's seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ScenarioClock:
    def __init__(self, speed: float = 1.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be above 0, got {speed!r}")
        self.speed = speed
        self._monotonic = monotonic
        self._start = monotonic()

    def restart(self) -> None:
        """Time 0 of the scenario is now (the timeline starts)."""
        self._start = self._monotonic()

    def now(self) -> float:
        """Scenario seconds since the timeline started."""
        return (self._monotonic() - self._start) * self.speed

    def real(self, scenario_seconds: float) -> float:
        """How long `scenario_seconds` of the scenario take for real."""
        return scenario_seconds / self.speed

    def scenario(self, real_seconds: float) -> float:
        """What `real_seconds` (an age the hypervisor measured) are in scenario seconds."""
        return real_seconds * self.speed
