"""What a run prints and leaves behind: live progress lines, the report, the series and a plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from scenarios.aggregate import WORST_LISTED, distance, many, percentile, ranked, state_counts, summary
from scenarios.crowd_plot import render_crowd
from scenarios.page import write_page
from scenarios.plot import write_svg
from scenarios.recording import Recording, Sample, StepRecord
from scenarios.runner import Run
from scenarios.wording import expectation_line, step_line
from wire.shown import for_terminal
from wire.sizes import pages_to_mib


class Progress:
    """One line per `every` seconds: the pool and every guest, current/target MiB and state."""

    def __init__(self, every: float = 1.0, out: TextIO = sys.stdout) -> None:
        self.every, self.out, self._last = every, out, -1e9

    def sample(self, sample: Sample) -> None:
        if sample.t - self._last < self.every:
            return
        self._last = sample.t
        if many(list(sample.domains)):  # a line, not a screenful per second
            gaps = [distance(d) for d in sample.domains.values()]
            states = ", ".join(f"{k} {v}" for k, v in sorted(state_counts(sample.domains).items()))
            guests = (
                f"{len(gaps)} guests, {gaps.count(0)} at target, from target p50/p90/max "
                f"{'/'.join(str(pages_to_mib(percentile(gaps, p))) for p in (50, 90, 100))} MiB; {states}"
            )
        else:
            guests = "  ".join(
                f"{n} {pages_to_mib(d['current_pages'])}/{pages_to_mib(d['target_pages'])} {d['balloon'].get('state', '-')}"
                for n, d in sample.domains.items()
            )
        print(for_terminal(f"t={sample.t:6.1f}s  free {pages_to_mib(sample.free_pages):>5} MiB  {guests}"), file=self.out, flush=True)

    def step(self, step: StepRecord) -> None:
        print(for_terminal(f"t={step.t:6.1f}s  >> {step_line(step)}"), file=self.out, flush=True)


def why_failed(run: Run) -> str:
    """One line: what made the run fail."""
    reasons = [f"{p.split(':')[0]}" for p in run.problems]
    bad_steps = [st.label for st in run.recording.steps if not st.as_expected]
    reasons += [f"step {label} not as expected" for label in bad_steps]
    reasons += [f"books unbalanced on {len(run.books)} sample(s)"] if run.books else []
    reasons += [f"expectation {o.expectation.check} failed" for o in run.outcomes if not o.passed]
    return ", ".join(reasons) or "unknown"


def text(run: Run) -> str:
    """The report; what guests and servers said (names, states, messages) escaped for a terminal."""
    s, rec = run.scenario, run.recording
    lines = [f"scenario {s.name}: {'PASSED' if run.passed else 'FAILED'}", f"  {s.description}" if s.description else ""]
    speed = f"; speed x{s.speed:g}: {run.real_seconds:.1f} s of real time" if s.speed != 1 else ""
    lines.append(f"  times are scenario seconds after the timeline started{speed}")
    for problem in run.problems:
        lines.append(f"  [FAIL] {problem}")
    if not run.started:
        lines.append("  the timeline was not played: not every process started")
    if rec.samples:
        last = rec.samples[-1]
        lines.append(f"  ran {last.t:.1f} s; {len(rec.samples)} samples; {len(rec.steps)} timeline steps")
        lines += guest_table(rec)
        first, settled = rec.converged_at(), rec.settled_since()
        lines.append(
            f"  every guest at target: first {'never' if first is None else f'{first:.1f} s'}, "
            f"settled since {'-' if settled is None else f'{settled:.1f} s'}"
            + ("" if settled is not None else " (not at target at the end)")
        )
    if rec.steps:
        lines.append("  timeline (as written; when a step was played late, when):")
        lines += [f"    {st.at:6.2f} s  {step_line(st)}" + (f"  (played at {st.t:.2f} s)" if st.t - st.at > 0.05 else "") for st in rec.steps]
    if run.books:
        lines.append(f"  [FAIL] free + owned != total on {len(run.books)} sample(s):")
        lines += [f"    {b}" for b in run.books]
    elif rec.samples:
        lines.append(f"  books: free + owned = total on every one of {len(rec.samples)} samples")
    lines.append(f"  audit: {run.audit_text}")
    lines.append("  expectations:" if run.outcomes else "  expectations: not judged")
    for o in run.outcomes:
        lines.append(f"    {expectation_line(o)}")
    return "\n".join(for_terminal(line) for line in lines if line)


def guest_table(rec: Recording) -> list[str]:
    """Each guest at the end; past AGGREGATE_ABOVE guests, the worst (scenarios/aggregate.py)
    and one line for the rest."""
    last = rec.samples[-1]
    crowd = many(rec.names())
    head = f"  {'guest':<12} {'memory':>8} {'target':>8}  {'state':<13} at target since"
    lines = [f"  the {WORST_LISTED} worst of {len(rec.names())} guests (furthest from target at the end, then over the run):"] if crowd else []
    lines.append(head)
    records = ranked(rec) if crowd else None
    shown = [r.name for r in records[:WORST_LISTED]] if records is not None else list(last.domains)
    for name in shown:
        d = last.domains.get(name)
        since = rec.reached_at(name)
        if d is None:
            lines.append(f"  {name:<12} {'no domain at the end':>19}")
            continue
        lines.append(
            f"  {name:<12} {pages_to_mib(d['current_pages']):>5} MiB {pages_to_mib(d['target_pages']):>5} MiB  "
            f"{str(d['balloon'].get('state', '-')):<13} {'-' if since is None else f'{since:.1f} s'}"
        )
    if records is not None and len(records) > WORST_LISTED:
        lines.append(f"  and {summary(records[WORST_LISTED:])}")
    return lines


def write(run: Run, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "series.csv", out_dir / "series.json", out_dir / "plot.svg", out_dir / "report.txt"]
    run.recording.write_csv(paths[0])
    run.recording.write_json(paths[1])
    if many(run.recording.names()):
        paths[2].write_text(render_crowd(run.recording, f"{run.scenario.name}: {len(run.recording.names())} guests, how far from their targets"))
    else:
        write_svg(run.recording, f"{run.scenario.name}: memory per domain over time", paths[2])
    paths[3].write_text(text(run) + "\n")
    paths.append(write_page(run, out_dir))
    return paths
