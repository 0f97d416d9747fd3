"""The time series a scenario run leaves: every domain's memory and the pool, sample by sample."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    """One `snapshot` of the host: the pool and every domain at one instant (scenario seconds)."""

    t: float
    free_pages: int
    domains: dict[str, dict[str, Any]]
    total_pages: int = 0

    @property
    def owned_pages(self) -> int:
        return sum(d["current_pages"] for d in self.domains.values())

    def balanced(self) -> bool:
        """Principle 4, on every sample: free + every domain's pages = total."""
        return self.free_pages + self.owned_pages == self.total_pages

    def reported_at(self, name: str, speed: float = 1.0) -> float | None:
        """When `name`'s driver sent the statistics this sample holds (scenario seconds)."""
        age = self.domains[name].get("reported_s") if name in self.domains else None
        return None if age is None else self.t - age * speed


@dataclass
class StepRecord:
    """A timeline step as played: when, what it came to, and the refusal's words."""

    t: float
    label: str
    outcome: str  # spec.StepOutcome
    message: str = ""
    expected: str = "accepted"
    at: float = 0.0  # when the file said to play it
    action: str = ""
    target: str = ""

    @property
    def as_expected(self) -> bool:
        return self.outcome == self.expected


@dataclass
class Recording:
    """Samples from the moment the timeline started, and the steps played, with their times."""

    samples: list[Sample] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    speed: float = 1.0  # the scenario's: ages the hypervisor measured become scenario seconds

    def at(self, t: float) -> Sample | None:
        """The last sample taken at or before t."""
        found = None
        for s in self.samples:
            if s.t > t:
                break
            found = s
        return found

    def converged_at(self, names: tuple[str, ...] | None = None) -> float | None:
        """First moment every named domain (all, by default) held its target."""
        for s in self.samples:
            doms = [d for n, d in s.domains.items() if names is None or n in names]
            if doms and all(d["current_pages"] == d["target_pages"] for d in doms):
                return s.t
        return None

    def settled_since(self, names: tuple[str, ...] | None = None) -> float | None:
        """Since when every named domain (all, by default) has held its target, to the end."""
        since = None
        for s in self.samples:
            doms = [d for n, d in s.domains.items() if names is None or n in names]
            if doms and all(d["current_pages"] == d["target_pages"] for d in doms):
                since = s.t if since is None else since
            else:
                since = None
        return since

    def reached_at(self, name: str) -> float | None:
        """When `name` last arrived at its target and stayed there to the end."""
        reached = None
        for s in self.samples:
            d = s.domains.get(name)
            if d is not None and d["current_pages"] == d["target_pages"]:
                reached = s.t if reached is None else reached
            else:
                reached = None
        return reached

    def memory_free_at(self, names: tuple[str, ...]) -> float | None:
        """First moment the free pool covered everything the named guests still lacked."""
        for s in self.samples:
            if not all(n in s.domains for n in names):
                continue
            missing = sum(max(0, s.domains[n]["target_pages"] - s.domains[n]["current_pages"]) for n in names)
            if s.free_pages >= missing:
                return s.t
        return None

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.samples:
            seen.update(dict.fromkeys(s.domains))
        return list(seen)

    def write_csv(self, path: Path) -> None:
        names = self.names()
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            # state_at: when the driver reported that state (a heartbeat's age behind the pages)
            columns = ("current_pages", "target_pages", "state", "state_at")
            out.writerow(["t", "free_pages", "total_pages", *(f"{n}.{k}" for n in names for k in columns)])
            for s in self.samples:
                row: list[Any] = [f"{s.t:.3f}", s.free_pages, s.total_pages]
                for n in names:
                    d = s.domains.get(n)
                    at = s.reported_at(n, self.speed) if d else None
                    row += [d["current_pages"], d["target_pages"], d["balloon"].get("state", ""), "" if at is None else f"{at:.3f}"] if d else ["", "", "", ""]
                out.writerow(row)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"speed": self.speed, "steps": [asdict(st) for st in self.steps], "samples": [asdict(s) for s in self.samples]}))
