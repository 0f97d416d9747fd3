"""What a run prints and leaves behind: live progress lines, the report, the series and a plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from scenarios.plot import write_svg
from scenarios.recording import Sample
from scenarios.runner import Run
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
        guests = "  ".join(
            f"{n} {pages_to_mib(d['current_pages'])}/{pages_to_mib(d['target_pages'])} {d['balloon'].get('state', '-')}"
            for n, d in sample.domains.items()
        )
        print(for_terminal(f"t={sample.t:6.1f}s  free {pages_to_mib(sample.free_pages):>5} MiB  {guests}"), file=self.out, flush=True)

    def step(self, t: float, label: str) -> None:
        print(for_terminal(f"t={t:6.1f}s  >> {label}"), file=self.out, flush=True)


def text(run: Run) -> str:
    """The report; what guests and servers said (names, states, messages) escaped for a terminal."""
    s, rec = run.scenario, run.recording
    lines = [f"scenario {s.name}: {'PASSED' if run.passed else 'FAILED'}", f"  {s.description}" if s.description else ""]
    if rec.samples:
        last = rec.samples[-1]
        lines.append(f"  ran {last.t:.1f} s; {len(rec.samples)} samples; {len(rec.steps)} timeline steps")
        lines.append(f"  {'guest':<12} {'memory':>8} {'target':>8}  {'state':<13} at target since")
        for name, d in last.domains.items():
            since = rec.reached_at(name)
            lines.append(
                f"  {name:<12} {pages_to_mib(d['current_pages']):>5} MiB {pages_to_mib(d['target_pages']):>5} MiB  "
                f"{str(d['balloon'].get('state', '-')):<13} {'-' if since is None else f'{since:.1f} s'}"
            )
        done = rec.converged_at()
        lines.append(f"  every guest at target: {'never' if done is None else f'{done:.1f} s'}")
    lines.append(f"  audit: {run.audit_text}")
    lines.append("  expectations:")
    for o in run.outcomes:
        e = o.expectation
        what = f"{e.check}" + (f" by {e.by:g} s" if e.by is not None else "") + (f" within {e.pages} pages" if e.pages else "")
        lines.append(f"    [{'ok' if o.passed else 'FAIL'}] {what} {list(e.guests) or ''}: {o.detail}")
    return "\n".join(for_terminal(line) for line in lines if line)


def write(run: Run, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "series.csv", out_dir / "series.json", out_dir / "plot.svg", out_dir / "report.txt"]
    run.recording.write_csv(paths[0])
    run.recording.write_json(paths[1])
    write_svg(run.recording, f"{run.scenario.name}: memory per domain over time", paths[2])
    paths[3].write_text(text(run) + "\n")
    return paths
