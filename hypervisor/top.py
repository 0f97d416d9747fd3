"""`hypervisor top`: a live view of the host in the spirit of xentop.

Each frame shows the pool and, per domain, memory, target, the balloon driver's state and
retry delay, and how fast its memory is moving; it refreshes in place on a terminal and prints
frame after frame otherwise (batch mode, like `xentop -b`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from hypervisor.toolstack import figure
from wire.shown import for_terminal
from wire.sizes import pages_to_mib

CLEAR = "\x1b[H\x1b[J"


@dataclass
class Frame:
    """One sample of the host: what `info` and `list` said at time `t`."""

    t: float
    info: dict[str, Any]
    domains: list[dict[str, Any]]
    interrupts: dict[str, int] | None = None  # per domain name: interrupts handled so far


def _rate(now: Frame, before: Frame | None, name: str, value: Callable[[Frame, str], int | None]) -> float | None:
    if before is None or now.t <= before.t:
        return None
    a, b = value(before, name), value(now, name)
    if a is None or b is None:
        return None
    return (b - a) / (now.t - before.t)


def _pages(frame: Frame, name: str) -> int | None:
    return next((d["current_pages"] for d in frame.domains if d["name"] == name), None)


def _irqs(frame: Frame, name: str) -> int | None:
    return None if frame.interrupts is None else frame.interrupts.get(name)


def render(now: Frame, before: Frame | None) -> str:
    """The frame as text; rates come from the difference with the previous frame."""
    info = now.info
    used = info["total_pages"] - info["free_pages"]
    lines = [
        time.strftime("%H:%M:%S") + f"  ballonet host: {info['domains']} domains, "
        f"{pages_to_mib(info['total_pages'])} MiB total, {pages_to_mib(used)} MiB used, {pages_to_mib(info['free_pages'])} MiB free",
        "",
        f"{'NAME':<16} {'ID':>4} {'STATE':<12} {'MEM(MiB)':>9} {'TARGET':>7} {'MAXMEM':>7} {'MiB/s':>7} "
        f"{'BALLOON':<12} {'DELAY':>6} {'RETRY':>5} {'IRQ/s':>7}",
    ]
    for d in now.domains:
        b = d.get("balloon") or {}
        moving = _rate(now, before, d["name"], _pages)
        irq = _rate(now, before, d["name"], _irqs)
        lines.append(
            f"{for_terminal(d['name'])[:16]:<16} {d['domid']:>4} {for_terminal(d['state']):<12} {pages_to_mib(d['current_pages']):>9} "
            f"{pages_to_mib(d['target_pages']):>7} {pages_to_mib(d['max_pages']):>7} "
            f"{'-' if moving is None else f'{moving * 4 / 1024:+.1f}':>7} {for_terminal(b.get('state', '-')):<12} "
            f"{figure(b.get('schedule_delay')):>6} {figure(b.get('retry_count')):>5} "
            f"{'-' if irq is None else f'{irq:.0f}':>7}"
        )
    return "\n".join(lines)


def run(
    sample: Callable[[], Frame],
    delay: float,
    iterations: int | None,
    out: TextIO = sys.stdout,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Sample and draw until stopped or `iterations` frames were shown."""
    before: Frame | None = None
    live = out.isatty()
    shown = 0
    while not should_stop() and (iterations is None or shown < iterations):
        frame = sample()
        text = render(frame, before)
        out.write((CLEAR + text + "\n") if live else (text + "\n\n"))
        out.flush()
        before, shown = frame, shown + 1
        if iterations is None or shown < iterations:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, delay))
