"""The chaos benchmark's choices, without processes: which fault next, and which targets to set.

Every choice comes from one seeded `random.Random`, so a run is replayed by its seed (as far as
the processes' own timing lets it: the faults and targets are the same, what they meet is not).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    KILL = "kill"  # SIGKILL, then start it again (a guest: after its domain is gone)
    STOP = "stop"  # SIGSTOP for a pause, then SIGCONT
    RESTART = "restart"  # SIGTERM (a clean stop), then start it again


class Role(StrEnum):
    HYPERVISOR = "hypervisor"
    IRQBUS = "irqbus"
    GUEST = "guest"
    DEVICE = "device"


@dataclass(frozen=True)
class Kind:
    action: Action
    role: Role

    def __str__(self) -> str:
        return f"{self.action} {self.role}"


@dataclass(frozen=True)
class Fault:
    kind: Kind
    target: str  # the process's name in the run (hypervisor, irqbus, a guest's or a device's name)
    pause_s: float = 0.0  # STOP: how long it stays stopped

    def __str__(self) -> str:
        pause = f" for {self.pause_s:.2f} s" if self.kind.action is Action.STOP else ""
        return f"{self.kind.action} {self.target}{pause}"


@dataclass(frozen=True)
class Support:
    """What the host under test survives, by design; a kind it does not is reported, not faked."""

    hypervisor_restart: bool  # `hypervisor serve --state`: the books outlive the process
    irqbus_restart: bool  # irqbus keeps (or is told again) its wiring and a new epoch

    def why_not(self, kind: Kind) -> str | None:
        """None if the host is meant to survive `kind`, else the missing feature."""
        if kind.action is Action.STOP:
            return None
        if kind.role is Role.HYPERVISOR and not self.hypervisor_restart:
            return "hypervisor serve has no --state: a restart is a host reboot"
        if kind.role is Role.IRQBUS and not self.irqbus_restart:
            return "irqbus has no restart support"
        return None


ALL_KINDS = tuple(Kind(a, r) for r in Role for a in Action)


def supported_kinds(support: Support) -> list[Kind]:
    return [k for k in ALL_KINDS if support.why_not(k) is None]


def choose_fault(
    rng: random.Random,
    kinds: list[Kind],
    targets: dict[Role, list[str]],
    pause_s: tuple[float, float] = (0.2, 1.5),
) -> Fault:
    """A kind uniformly among `kinds` that have a target, then a target of that role uniformly."""
    usable = [k for k in kinds if targets.get(k.role)]
    if not usable:
        raise ValueError("no fault kind has a target")
    kind = rng.choice(usable)
    target = rng.choice(sorted(targets[kind.role]))
    pause = round(rng.uniform(*pause_s), 3) if kind.action is Action.STOP else 0.0
    return Fault(kind, target, pause)


def choose_targets(
    rng: random.Random,
    movable: list[str],
    held: dict[str, int],
    pool_pages: int,
    low_pages: int,
    high_pages: int,
    how_many: int,
    restart_pages: int = 0,
) -> dict[str, int]:
    """New targets for up to `how_many` of the `movable` guests, so that every guest can reach
    its target at once: the sum of what each guest holds or is headed for (`held`: every guest's
    claim, the larger of its target and what a restart would register it with) stays within the
    pool. A guest's new claim is likewise at least `restart_pages` (it may be killed and started
    again with its boot memory). A guest with no room above `low_pages` is left alone."""
    claims = dict(held)
    chosen: dict[str, int] = {}
    for name in rng.sample(sorted(movable), min(how_many, len(movable))):
        others = sum(v for n, v in claims.items() if n != name)
        top = min(high_pages, pool_pages - others)
        if top < restart_pages:  # what it would hold after a restart must fit too
            continue
        if top < low_pages:
            continue
        target = rng.randint(low_pages, top)
        chosen[name] = target
        claims[name] = max(target, restart_pages)
    return chosen
