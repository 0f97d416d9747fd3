"""The main job: the seed patch's scenario on one machine, watched live, ending with a report.

    python -m scenarios.demo              retrying driver, demo timings
    python -m scenarios.demo --legacy     the driver before the patch, for comparison
    python -m scenarios.demo --linux-timings   retry delay 1 s doubling to 32 s
"""

from __future__ import annotations

import argparse
import sys

from hypervisor.toolstack import format_list
from scenarios import patch
from scenarios.launch import Host, Processes
from wire.sizes import pages_to_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", action="store_true", help="guests ballooning up use the pre-patch hard limit")
    parser.add_argument("--linux-timings", action="store_true", help="retry delay 1 s doubling to 32 s (default: 0.25 s to 4 s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    timers = ("--retry-delay", "1", "--max-retry-delay", "32") if args.linux_timings else ("--retry-delay", "0.25", "--max-retry-delay", "4")
    live = sys.stdout.isatty()

    procs = Processes()
    try:
        print(f"starting a {patch.HOST_MEMORY} host and {len(patch.PLAN)} guests (logs in {procs.dir})")
        host = Host(procs, memory=patch.HOST_MEMORY, log_level="info")
        patch.start_guests(host, args.legacy, timers)
        info = host.json("info")
        print(f"host nearly full: {pages_to_mib(info['free_pages'])} MiB free of {pages_to_mib(info['total_pages'])} MiB")
        for g in patch.PLAN:
            print(f"  mem-set {g.name} {g.target}  (from {g.memory})")
        patch.set_targets(host)

        shown = {"lines": 0, "last": -1.0}

        def show(sample: patch.Sample, force: bool = False) -> None:
            if sample.t - shown["last"] < 0.5 and not force:
                return
            shown["last"] = sample.t
            table = format_list(list(sample.domains.values())).splitlines()
            lines = [f"t={sample.t:5.1f} s   free {pages_to_mib(sample.free_pages)} MiB", *table, ""]
            if live and shown["lines"]:
                print(f"\x1b[{shown['lines']}F\x1b[J", end="")
            print("\n".join(lines), flush=True)
            shown["lines"] = len(lines)

        rec = patch.record(host.admin_endpoint, args.timeout, on_sample=show)
        show(rec.samples[-1], force=True)
        return report(host, rec, args.legacy)
    finally:
        procs.stop_all()


def report(host: Host, rec: patch.Recording, legacy: bool) -> int:
    done, free = rec.converged_at(), rec.memory_free_at()
    print("report")
    if done is not None:
        print(f"  every guest at its target {done:.1f} s after the targets were set")
    else:
        last = rec.samples[-1].domains
        short = [f"{n} ({pages_to_mib(d['current_pages'])}/{pages_to_mib(d['target_pages'])} MiB, {d['balloon'].get('state')})" for n, d in last.items() if d["current_pages"] != d["target_pages"]]
        print(f"  not converged after {rec.samples[-1].t:.1f} s: {', '.join(short)}")
    if free is not None:
        print(f"  the memory the guests ballooning up needed was free at {free:.1f} s", end="")
        print(f"; they waited {done - free:.1f} s more on their retry timer" if done is not None else "")
    audit = host.tool("audit")
    print(f"  audit: {audit.stdout.strip() or audit.stderr.strip()}")
    if legacy:
        print("  (legacy mode: a guest that met the shortage stops at its hard limit until its target is written again)")
    return 0 if audit.returncode == 0 and (done is not None or legacy) else 1


if __name__ == "__main__":
    sys.exit(main())
