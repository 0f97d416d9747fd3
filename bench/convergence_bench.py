"""Convergence of the seed patch's scenario, driver generation by generation, with Linux's timings.

Modes: the pre-patch driver (a hard limit), and seed, 3.1 and current, each on its retry timer
alone and woken by the hypervisor's memory-available interrupt (which no Linux has). For each
run: the time from the targets being set to every guest at target, and how long the guests
ballooning up still waited after the memory they needed was free -- the baseline measured in
the same run: a driver that retried at once would be done then. The ratio column compares each
mode's convergence time with the seed driver's on its timer. Two timelines: the patch's
(every target set at once), and a late release, where the guests ballooning down are told only
after the others have met the shortage and backed off for a while (default 40 s: 3.1 waits
out a 32 s backoff, current has cancelled after its 4th failed step).

Every guest runs at `--speed` (guest run's time scale) and the timeline is compressed alike,
so the figures are in Linux seconds: real seconds times the speed. The runner's own latency
(an RPC, a sample) is scaled up with them, so a figure carries about speed x 0.05 s of noise.

    python bench/convergence_bench.py [--runs 1] [--late 40] [--speed 4] [--quick]

Measured (one run, --speed 4, a loaded 2026 CI-class machine; Linux seconds; after the
memory-available interrupt's early steps stopped counting as failures):

    patch                converged  waited after free   ratio to seed
      seed                   3.38 s      0.80 s          1.00
      seed + interrupt       2.82 s      0.08 s          0.83
      3.1                    2.86 s      0.18 s          0.85
      3.1 + interrupt        2.60 s      0.08 s          0.77
      current                9.56 s      0.00 s          2.83
      current + interrupt    4.04 s      0.08 s          1.19
      pre-patch              never (both up guests hard-limited, memory free)
    patch-late (release at 40 s)
      seed                  42.62 s      0.24 s          1.00
      seed + interrupt      42.70 s      0.10 s          1.00
      3.1                   62.35 s     19.38 s          1.46   (failed at 0, 2, 6, 14, 30; next try 62)
      3.1 + interrupt       42.83 s      0.12 s          1.00
      current               never (cancelled at its 4th failure, 14 s, before the release)
      current + interrupt   never (cancelled likewise: the interrupt does not revive it)
      pre-patch             never (hard-limited)

Before that change, `current + interrupt` never converged on the patch timeline: each early
wake that found too little memory was a failed step, and four of them cancelled up2.
The patch timeline's small figures move by about a second from run to run (the RPC latency
is scaled up four times); the late release's are the rules' own.
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
BASELINE = "seed"


def ballooning(s: Scenario, up: bool) -> tuple[str, ...]:
    sets = {st.target: st.size for st in s.timeline if st.action == "mem-set"}
    return tuple(g.name for g in s.guests if g.name in sets and (size_to_pages(sets[g.name]) > size_to_pages(g.memory)) == up)


def at_speed(s: Scenario, speed: float, duration: float) -> Scenario:
    """The scenario with its guests at `speed` and its timeline (Linux seconds) compressed alike."""
    guests = tuple(replace(g, args=(*g.args, "--speed", f"{speed:g}")) for g in s.guests)
    timeline = tuple(replace(st, at=st.at / speed) for st in s.timeline)
    return replace(s, guests=guests, timeline=timeline, duration=duration / speed, sample_interval=0.02, expectations=())


def modes(base: Scenario, quick: bool) -> dict[str, Scenario]:
    linux = base.with_guests(**LINUX_TIMINGS)
    out = {}
    for driver in ("seed",) if quick else ("seed", "3.1", "current"):
        out[driver] = replace(linux.with_guests(driver=driver), irqbus=False)
        if not quick:
            out[f"{driver} + interrupt"] = replace(linux.with_guests(driver=driver, memory_interrupt=True), irqbus=True)
    out["pre-patch"] = replace(linux.with_guests(driver="pre-patch"), irqbus=False)
    return out


def late_release(base: Scenario, delay: float) -> Scenario:
    down = ballooning(base, up=False)
    steps = tuple(replace(st, at=st.at + delay) if st.target in down else st for st in base.timeline)
    return replace(base, name=base.name + "-late", timeline=tuple(sorted(steps, key=lambda st: st.at)))


def measure(s: Scenario, up: tuple[str, ...], runs: int, speed: float) -> tuple[float | None, float | None, list[str]]:
    """Median convergence and wait after the memory was free, in Linux seconds."""
    done, waited, notes = [], [], []
    for _ in range(runs):
        rec = Runner(s).run().recording
        d, f = rec.converged_at(), rec.memory_free_at(up)
        if d is None:
            last = rec.samples[-1]
            short = [f"{n} {last.domains[n]['target_pages'] - last.domains[n]['current_pages']} pages short ({last.domains[n].get('balloon', {}).get('state', '?')})" for n in up]
            notes.append(", ".join(short))
            continue
        done.append(d * speed)
        waited.append((d - f) * speed if f is not None else float("nan"))
    if not done:
        return None, None, notes
    return statistics.median(done), statistics.median(waited), notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--late", type=float, default=40.0, help="Linux seconds before the late release")
    parser.add_argument("--speed", type=float, default=4.0, help="guest run --speed for every guest")
    parser.add_argument("--quick", action="store_true", help="seed and pre-patch only, 20 Linux seconds of the patch timeline (a smoke test)")
    args = parser.parse_args(argv)
    base = load(REPO / "scenarios" / "patch.toml")
    up = ballooning(base, up=True)
    timelines = [(base, 20.0)] if args.quick else [(base, 40.0), (late_release(base, args.late), args.late + 50.0)]
    for timeline, duration in timelines:
        print(f"{timeline.name}: {len(timeline.guests)} guests, Linux timings at --speed {args.speed:g}, "
              f"median of {args.runs} run(s), Linux seconds")
        print(f"  {'mode':<20} {'converged':>10} {'waited after free':>18}   ratio to {BASELINE}")
        figures: dict[str, float | None] = {}
        for mode, scenario in modes(timeline, args.quick).items():
            runs = 1 if mode == "pre-patch" else args.runs
            done, waited, notes = measure(at_speed(scenario, args.speed, duration), up, runs, args.speed)
            figures[mode] = done
            if done is None:
                print(f"  {mode:<20} {'never':>10} {'-':>18}   ({'; '.join(notes[:1])} after {duration:g} s)")
                continue
            ratio = f"{done / figures[BASELINE]:.2f}" if figures.get(BASELINE) else "-"
            print(f"  {mode:<20} {done:>9.2f}s {waited:>17.2f}s   {ratio}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
