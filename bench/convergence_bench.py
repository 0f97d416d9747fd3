"""Convergence of the seed patch's scenario (scenarios/patch.toml) with Linux's timings.

For each run: the time from the targets being set to every guest at target, and how much of
that was spent waiting on the retry timer after the memory the guests ballooning up needed
was already free. The baseline, measured in the same run, is that moment: a driver that
retried at once would converge then. The pre-patch driver (patch-legacy.toml) is run too.

    python bench/convergence_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scenarios.recording import Recording  # noqa: E402
from scenarios.runner import Runner  # noqa: E402
from scenarios.spec import Scenario, load  # noqa: E402
from wire.sizes import size_to_pages  # noqa: E402

LINUX_TIMINGS = {"retry_delay": 1.0, "max_retry_delay": 32.0}


def ballooning_up(s: Scenario) -> tuple[str, ...]:
    sets = {st.target: st.size for st in s.timeline if st.action == "mem-set"}
    return tuple(g.name for g in s.guests if g.name in sets and size_to_pages(sets[g.name]) > size_to_pages(g.memory))


def run(s: Scenario) -> Recording:
    return Runner(s).run().recording


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scenario = replace(load(REPO / "scenarios" / "patch.toml").with_guests(**LINUX_TIMINGS), sample_interval=0.02)
    up = ballooning_up(scenario)

    done, free = [], []
    for i in range(args.runs):
        rec = run(scenario)
        d, f = rec.converged_at(), rec.memory_free_at(up)
        if d is None or f is None:
            print(f"run {i + 1}: did not converge within {scenario.duration:g} s")
            return 1
        done.append(d)
        free.append(f)
        print(f"run {i + 1}: converged {d:.2f} s, memory free {f:.2f} s, waited {d - f:.2f} s on the retry timer")
    d, f = statistics.median(done), statistics.median(free)
    print(f"retrying driver, Linux timings (median of {args.runs})")
    print(f"  converged after targets set    {d:.2f} s")
    print(f"  memory free (baseline)         {f:.2f} s")
    print(f"  waiting after memory free      {d - f:.2f} s")
    print(f"  ratio converged / baseline     {d / f:.2f}")

    legacy = load(REPO / "scenarios" / "patch-legacy.toml").with_guests(**LINUX_TIMINGS)
    legacy = replace(legacy, expectations=())  # watch the whole duration
    rec = run(legacy)
    last = rec.samples[-1]
    short = {n: last.domains[n]["target_pages"] - last.domains[n]["current_pages"] for n in up}
    conv = rec.converged_at()
    print("pre-patch driver (legacy hard limit)")
    print(f"  converged                      {'no' if conv is None else f'{conv:.2f} s'} (watched {last.t:.1f} s)")
    print(f"  memory free at                 {rec.memory_free_at(up):.2f} s")
    print(f"  pages still missing at the end {short}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
