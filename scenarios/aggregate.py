"""A crowd of guests in a few figures: per sample, the spread of every guest's distance to its
target, how many are at target and in which driver state; per guest, how badly it did, so the
worst can be named. A plot of a thousand lines, or a table of a thousand rows, says nothing;
these figures say how the crowd did and who lagged.

Distance to target: |target_pages - current_pages| of a domain in one sample (pages).

Percentiles are nearest-rank (Hyndman & Fan 1996, "Sample quantiles in statistical packages",
definition 1, the inverse of the empirical distribution function; numpy.percentile's
method="inverted_cdf"; the "nearest-rank method" of Wikipedia's "Percentile"): the P-th
percentile of N sorted values is the value at rank ceil(P / 100 * N) (1-based), and the 0th is
the smallest. Every figure is then a distance some guest really had, never an interpolation
between two guests, and the 100th is the maximum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from scenarios.recording import Recording

AGGREGATE_ABOVE = 32  # more guests than this: plots and tables show the crowd, not each guest
WORST_SHOWN = 5  # guests named in the crowd's plot
WORST_LISTED = 10  # guests listed in the crowd's tables
NO_REPORT = "-"  # a domain whose driver has not reported a state


def percentile(values: Sequence[int], p: int) -> int:
    """Nearest-rank percentile (see the module's docstring) of `values`, 0 <= p <= 100."""
    if not values:
        raise ValueError("the percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not in 0..100")
    ordered = sorted(values)
    rank = -(-p * len(ordered) // 100)  # ceil(p * N / 100) in integers: no 0.7 * 10 = 7.000000000000001
    return ordered[max(rank, 1) - 1]


def distance(domain: dict) -> int:
    return abs(domain["target_pages"] - domain["current_pages"])


def many(names: Sequence[str]) -> bool:
    return len(names) > AGGREGATE_ABOVE


@dataclass(frozen=True)
class Spread:
    """The crowd in one sample."""

    t: float
    free_pages: int
    guests: int  # domains in the sample
    p50: int  # distance to target, pages
    p90: int
    max: int
    at_target: int
    states: dict[str, int] = field(default_factory=dict)  # driver state -> guests


def spread(rec: Recording) -> list[Spread]:
    out = []
    for s in rec.samples:
        gaps = [distance(d) for d in s.domains.values()]
        if gaps:
            p50, p90, top = percentile(gaps, 50), percentile(gaps, 90), percentile(gaps, 100)
        else:
            p50 = p90 = top = 0
        out.append(Spread(s.t, s.free_pages, len(gaps), p50, p90, top, gaps.count(0), state_counts(s.domains)))
    return out


@dataclass(frozen=True)
class GuestRecord:
    """How one guest did over the run."""

    name: str
    final: dict | None  # its domain in the last sample (None: no domain then)
    mean_distance: float  # over the samples that held its domain
    reached_at: float | None  # since when it has held its target (Recording.reached_at)

    @property
    def final_distance(self) -> int | None:
        return None if self.final is None else distance(self.final)


def ranked(rec: Recording) -> list[GuestRecord]:
    """Every guest, worst first: no domain at the end, then furthest from its target at the
    end, then furthest on average over the run (the slowest to get there), then by name."""
    totals: dict[str, list[int]] = {}
    for s in rec.samples:
        for name, d in s.domains.items():
            totals.setdefault(name, []).append(distance(d))
    last = rec.samples[-1].domains if rec.samples else {}
    records = [
        GuestRecord(name, last.get(name), sum(gaps) / len(gaps) if gaps else 0.0, rec.reached_at(name))
        for name, gaps in ((n, totals.get(n, [])) for n in rec.names())
    ]
    return sorted(records, key=lambda r: (r.final is not None, -(r.final_distance or 0), -r.mean_distance, r.name))


def state_counts(domains: dict[str, dict]) -> dict[str, int]:
    return dict(Counter(str(d.get("balloon", {}).get("state") or NO_REPORT) for d in domains.values()))


def summary(records: Sequence[GuestRecord]) -> str:
    """The guests not listed one by one, in one line: how many, at target, their distances, states."""
    present = [r for r in records if r.final is not None]
    gaps = [distance(r.final) for r in present if r.final is not None]
    words = [f"{len(records)} more guests"]
    if len(present) < len(records):
        words.append(f"{len(records) - len(present)} without a domain")
    if gaps:
        words.append(f"{gaps.count(0)} at target")
        mib = [percentile(gaps, p) / 256 for p in (50, 90, 100)]
        words.append("distance to target p50 {:g} / p90 {:g} / max {:g} MiB".format(*(round(m, 2) for m in mib)))
        states = state_counts({r.name: r.final for r in present if r.final is not None})
        words.append("states " + ", ".join(f"{k} {v}" for k, v in sorted(states.items(), key=lambda kv: (-kv[1], kv[0]))))
    return "; ".join(words)
