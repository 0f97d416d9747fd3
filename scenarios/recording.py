"""The time series a scenario run leaves: every domain's memory and the pool, sample by sample."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    t: float
    free_pages: int
    domains: dict[str, dict[str, Any]]


@dataclass
class Recording:
    """Samples from the moment the timeline started, and the steps played, with their times."""

    samples: list[Sample] = field(default_factory=list)
    steps: list[tuple[float, str]] = field(default_factory=list)

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
            out.writerow(["t", "free_pages", *(f"{n}.{k}" for n in names for k in ("current_pages", "target_pages", "state"))])
            for s in self.samples:
                row: list[Any] = [f"{s.t:.3f}", s.free_pages]
                for n in names:
                    d = s.domains.get(n)
                    row += [d["current_pages"], d["target_pages"], d["balloon"].get("state", "")] if d else ["", "", ""]
                out.writerow(row)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"steps": self.steps, "samples": [asdict(s) for s in self.samples]}))
