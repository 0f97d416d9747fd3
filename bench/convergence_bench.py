"""Convergence of the seed patch's scenario with Linux's timings (retry 1 s doubling to 32 s).

For each run: the time from the targets being set to every guest at target, and how much of
that was spent waiting on the retry timer after the memory the guests needed was already free.
The baseline, measured in the same run, is the moment that memory was free: a driver that
retried at once would converge then. Also runs the pre-patch driver, which does not converge.

    python bench/convergence_bench.py [--runs 3] [--legacy-seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scenarios import patch  # noqa: E402
from scenarios.launch import Host, Processes  # noqa: E402

LINUX_TIMERS = ("--retry-delay", "1", "--max-retry-delay", "32", "--heartbeat", "0.2")


def one_run(legacy: bool, until: float) -> patch.Recording:
    procs = Processes()
    try:
        host = Host(procs, memory=patch.HOST_MEMORY, log_level="warning")
        patch.start_guests(host, legacy, LINUX_TIMERS, log_level="warning")
        patch.set_targets(host)
        return patch.record(host.admin_endpoint, until, interval=0.02)
    finally:
        procs.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--legacy-seconds", type=float, default=20.0)
    args = parser.parse_args()

    done, free = [], []
    for i in range(args.runs):
        rec = one_run(legacy=False, until=120)
        d, f = rec.converged_at(), rec.memory_free_at()
        if d is None or f is None:
            print(f"run {i + 1}: did not converge within 120 s")
            return 1
        done.append(d)
        free.append(f)
        print(f"run {i + 1}: converged {d:.2f} s, memory free {f:.2f} s, waited {d - f:.2f} s on the retry timer")
    d, f = statistics.median(done), statistics.median(free)
    print(f"retrying driver (median of {args.runs})")
    print(f"  converged after targets set   {d:.2f} s")
    print(f"  memory free (baseline)        {f:.2f} s")
    print(f"  waiting after memory free     {d - f:.2f} s")
    print(f"  ratio converged / baseline    {d / f:.2f}")

    rec = one_run(legacy=True, until=args.legacy_seconds)
    last = rec.samples[-1].domains
    short = {n: last[n]["target_pages"] - last[n]["current_pages"] for n in patch.UP}
    print("pre-patch driver (legacy hard limit)")
    print(f"  converged                     {'no' if rec.converged_at() is None else f'{rec.converged_at():.2f} s'} (watched {args.legacy_seconds:g} s)")
    print(f"  memory free at                {rec.memory_free_at():.2f} s")
    print(f"  pages still missing at the end {short}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
