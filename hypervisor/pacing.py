"""When the hypervisor reads its guest endpoint again: at once, unless heartbeats alone keep
waking it.

A thousand guests beating once a second woke the hypervisor a thousand times a second, a turn
per heartbeat, and those wakeups of a cold process were most of its idle CPU (scale_bench at
1,000 guests: main thread ~12% with a turn each, ~5.5% with the heartbeats read as a batch every
50 ms). So on a host whose heartbeats come faster than `pace_from_per_s`, a turn that served
heartbeats and nothing else is followed by a pause of `pace_s` on the guest endpoint, and the
heartbeats that came meanwhile are served in one turn. The toolstack's endpoint stays awake
during the pause. A guest's other request waits at most `pace_s`, and only on a host that busy:
a small host (a few guests, a few heartbeats a second) never pauses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HeartbeatPacer:
    pace_s: float = 0.05
    pace_from_per_s: float = 200.0
    window_s: float = 1.0  # the heartbeat rate is measured over windows this long
    rate_per_s: float = 0.0  # over the last whole window
    _window_start: float | None = None
    _window_beats: int = 0

    def after_turn(self, now: float, heartbeats: int, others: int) -> float:
        """Record a turn's requests; returns when the guest endpoint may be read again."""
        if self._window_start is None:
            self._window_start = now
        self._window_beats += heartbeats
        elapsed = now - self._window_start
        if elapsed >= self.window_s:
            self.rate_per_s = self._window_beats / elapsed
            self._window_start, self._window_beats = now, 0
        if heartbeats and not others and self.rate_per_s >= self.pace_from_per_s:
            return now + self.pace_s
        return now
