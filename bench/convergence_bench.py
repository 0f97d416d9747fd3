"""Convergence of the seed patch's scenario with Linux's timings (retry 1 s doubling to 32 s),
in three modes: the pre-patch driver (legacy hard limit), the retrying driver on its timer
alone, and the retrying driver woken by the hypervisor's memory-available interrupt.

For each run: the time from the targets being set to every guest at target, and how long the
guests ballooning up still waited after the memory they needed was free. That moment is the
baseline measured in the same run: a driver that retried at once would be done then. Two
timelines: the patch's (everyone's target set at once), and a late release, where the guests
ballooning down are told to only after the others have backed off for a while.

    python bench/convergence_bench.py [--runs 3] [--late 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scenarios.runner import Runner  # noqa: E402
from scenarios.spec import Scenario, load  # noqa: E402
from wire.sizes import size_to_pages  # noqa: E402

LINUX_TIMINGS = {"retry_delay": 1.0, "max_retry_delay": 32.0}


def ballooning(s: Scenario, up: bool) -> tuple[str, ...]:
    sets = {st.target: st.size for st in s.timeline if st.action == "mem-set"}
    return tuple(g.name for g in s.guests if g.name in sets and (size_to_pages(sets[g.name]) > size_to_pages(g.memory)) == up)


def modes(base: Scenario) -> dict[str, Scenario]:
    linux = replace(base.with_guests(**LINUX_TIMINGS), sample_interval=0.02, duration=60)
    up = ballooning(base, up=True)
    legacy = replace(linux, guests=tuple(replace(g, legacy=g.name in up) for g in linux.guests), duration=15, expectations=())
    return {
        "legacy": legacy,
        "timer only": replace(linux, irqbus=False),
        "timer + interrupt": replace(linux, irqbus=True),
    }


def late_release(base: Scenario, delay: float) -> Scenario:
    down = ballooning(base, up=False)
    steps = tuple(replace(st, at=st.at + delay) if st.target in down else st for st in base.timeline)
    return replace(base, name=base.name + "-late", timeline=tuple(sorted(steps, key=lambda st: st.at)))


def measure(s: Scenario, up: tuple[str, ...], runs: int) -> tuple[float | None, float | None, list[str]]:
    done, waited, notes = [], [], []
    for _ in range(runs):
        rec = Runner(s).run().recording
        d, f = rec.converged_at(), rec.memory_free_at(up)
        if d is None:
            last = rec.samples[-1]
            notes.append(", ".join(f"{n} {last.domains[n]['target_pages'] - last.domains[n]['current_pages']} pages short" for n in up))
            continue
        done.append(d)
        waited.append(d - f if f is not None else float("nan"))
    if not done:
        return None, None, notes
    return statistics.median(done), statistics.median(waited), notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--late", type=float, default=9.0, help="seconds before the late release")
    args = parser.parse_args()
    base = load(REPO / "scenarios" / "patch.toml")
    up = ballooning(base, up=True)
    for timeline in (base, late_release(base, args.late)):
        print(f"{timeline.name}: {len(timeline.guests)} guests, Linux timings, median of {args.runs} runs")
        print(f"  {'mode':<20} {'converged':>10} {'waited after free':>18}   ratio to timer only")
        figures = {}
        for mode, scenario in modes(timeline).items():
            done, waited, notes = measure(scenario, up, 1 if mode == "legacy" else args.runs)
            figures[mode] = done
            if done is None:
                print(f"  {mode:<20} {'never':>10} {'-':>18}   ({'; '.join(notes[:1])} after {scenario.duration:g} s)")
                continue
            ratio = f"{done / figures['timer only']:.2f}" if figures.get("timer only") else "-"
            print(f"  {mode:<20} {done:>9.2f}s {waited:>17.2f}s   {ratio}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
