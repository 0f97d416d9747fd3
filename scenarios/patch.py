"""The scenario of the seed patch: a nearly full host where some guests balloon down slowly
while others balloon up. Shared by the demo, the end-to-end tests and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypervisor.toolstack import Toolstack
from scenarios.launch import Host
from wire.sizes import size_to_pages


@dataclass(frozen=True)
class GuestPlan:
    name: str
    memory: str
    maxmem: str
    target: str
    args: tuple[str, ...] = ()


HOST_MEMORY = "1g"
DOWN_RATE = "32768"  # pages per second: 128 MiB/s, a slow driver
PLAN = (
    GuestPlan("down1", "440m", "512m", "184m", ("--balloon-rate", DOWN_RATE)),
    GuestPlan("down2", "440m", "512m", "184m", ("--balloon-rate", DOWN_RATE)),
    GuestPlan("up1", "64m", "512m", "320m"),
    GuestPlan("up2", "64m", "512m", "320m"),
)
UP = tuple(g.name for g in PLAN if size_to_pages(g.target) > size_to_pages(g.memory))


def start_guests(host: Host, legacy: bool, timer_args: tuple[str, ...], log_level: str = "info") -> None:
    for g in PLAN:
        extra = ("--legacy-hard-limit",) if legacy and g.name in UP else ()
        host.guest(g.name, "--memory", g.memory, "--maxmem", g.maxmem, *g.args, *extra, *timer_args, log_level=log_level)
    host.wait_registered(*(g.name for g in PLAN))


def set_targets(host: Host) -> None:
    for g in PLAN:
        result = host.tool("mem-set", g.name, g.target)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)


@dataclass
class Sample:
    t: float
    free_pages: int
    domains: dict[str, dict[str, Any]]


@dataclass
class Recording:
    """What the host looked like over time, from the moment the targets were set."""

    samples: list[Sample] = field(default_factory=list)

    def converged_at(self) -> float | None:
        for s in self.samples:
            if all(d["current_pages"] == d["target_pages"] for d in s.domains.values()):
                return s.t
        return None

    def memory_free_at(self, names: tuple[str, ...] = UP) -> float | None:
        """First moment the free pool covered everything the named guests still lacked."""
        for s in self.samples:
            missing = sum(max(0, s.domains[n]["target_pages"] - s.domains[n]["current_pages"]) for n in names)
            if s.free_pages >= missing:
                return s.t
        return None


def record(
    admin_endpoint: str,
    until: float,
    interval: float = 0.05,
    stop_when_converged: bool = True,
    on_sample: Callable[[Sample], None] | None = None,
) -> Recording:
    """Sample `list` and `info` through the toolstack until converged or `until` seconds pass."""
    tool = Toolstack(admin_endpoint)
    rec = Recording()
    start = time.monotonic()
    try:
        while (t := time.monotonic() - start) < until:
            domains = {d["name"]: d for d in tool.list()}
            rec.samples.append(Sample(t, tool.info()["free_pages"], domains))
            if on_sample is not None:
                on_sample(rec.samples[-1])
            if stop_when_converged and rec.converged_at() is not None:
                break
            time.sleep(interval)
    finally:
        tool.close()
    return rec
