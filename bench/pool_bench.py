"""Benchmark the page pool under balloon-driver traffic, against a trivial baseline.

    python bench/pool_bench.py [--workload lifo|random-tail] [--ops N] [--pages N] [--domains N]
                               [--seed N] [--repeat N]

Each operation picks a random domain and a random batch size n in 1..512 (one page of frame
list, as the balloon driver uses). Half the time, if the domain holds pages, it gives back
up to n of them (decrease_reservation); otherwise it asks for n pages (increase_reservation,
possibly granted short). Which pages a decrease gives back is the workload:

- `lifo` (default) is what ballonet's guests do (guest/memory.py, GuestMemory.take): each
  domain keeps the extents it was granted in grant order (a grant that starts where the
  newest extent ends extends it) and gives back its newest min(n, held) pages, splitting
  the newest extent when only part of it goes.
- `random-tail` gives back a random contiguous sub-range of the domain's highest-addressed
  n pages (the pool's `highest_extents`): releases that punch holes anywhere near the top.

Machines are noisy, so the same operation stream is also run against a baseline in the same
process: one integer per domain plus a free counter. That is the cost of the driver loop and
the random numbers alone; the ratio pool/baseline is the figure to compare across machines.
The pool's figure includes the guest's own bookkeeping (its extent list), as a real guest
pays it too. The baseline also predicts every domain's final page count, which the pool
must match, and the pool's audit() must find nothing wrong at the end. --repeat N runs the
baseline and the pool N times, alternately, and also reports the medians: on a shared
machine one run can be a third off.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypervisor.pool import PagePool  # noqa: E402
from wire.extent import Extent  # noqa: E402

BATCH = 512  # pages per increase/decrease, as in drivers/xen/balloon.c
SLICES = 10  # the run is timed in this many equal slices, to show any slow-down as state grows


def sub_range(window: list[Extent], a: int, b: int) -> list[tuple[int, int]]:
    """Pages a..b-1 of the window, counted through its extents, as extents."""
    out: list[tuple[int, int]] = []
    pos = 0
    for start, count in window:
        lo, hi = max(a, pos), min(b, pos + count)
        if lo < hi:
            out.append((start + lo - pos, hi - lo))
        pos += count
        if pos >= b:
            break
    return out


class Run:
    """One timed run: total seconds, seconds per slice, and what the run left behind."""

    def __init__(self) -> None:
        self.slices: list[float] = []
        self.pool: PagePool | None = None
        self.counts: list[int] = []
        self.memory: list[list[tuple[int, int]]] = []  # lifo: each guest's extents, grant order
        self.releases = 0
        self.released_extents = 0

    @property
    def seconds(self) -> float:
        return sum(self.slices)


def merged(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Extents sorted with touching neighbours joined: how the pool reports holdings."""
    out: list[tuple[int, int]] = []
    for start, count in sorted(extents):
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((start, count))
    return out


def run_pool_lifo(ops: int, pages: int, domains: int, seed: int) -> Run:
    """Guests give back their newest pages first, exactly as GuestMemory.take does.

    Each guest's extents in grant order, as GuestMemory keeps them, but laid out for speed
    (this loop is timed with the pool): the newest extent is [lo[d], hi[d]) (empty when
    lo == hi, once the guest holds nothing) and the older ones are older[d], oldest first.
    """
    rng = random.Random(seed)
    rand = rng.random  # int(rand() * n): several times cheaper than randrange
    pool = PagePool(pages)
    allocate, release = pool.allocate, pool.release
    lo, hi = [0] * domains, [0] * domains
    older: list[list[tuple[int, int]]] = [[] for _ in range(domains)]  # (start, end) pairs
    counts = [0] * domains
    run = Run()
    releases = longer = 0  # release requests, and extents in them beyond the first
    for _ in range(SLICES):
        t0 = time.perf_counter()
        for _ in range(ops // SLICES):
            d = int(rand() * domains)
            n = 1 + int(rand() * BATCH)
            held = counts[d]
            if held and rand() < 0.5:
                want = n if n < held else held
                counts[d] = held - want
                start, end = lo[d], hi[d]
                if end - start > want:  # the common case: part of the newest extent
                    hi[d] = end - want
                    release(d, [(end - want, want)])
                else:  # all of the newest extent, and perhaps more from older ones
                    request = []
                    stack = older[d]
                    while True:
                        if end - start > want:
                            request.append((end - want, want))
                            end -= want
                            break
                        request.append((start, end - start))
                        want -= end - start
                        start, end = stack.pop() if stack else (0, 0)  # the next newest
                        if not want:
                            break
                    lo[d], hi[d] = start, end
                    request.reverse()  # oldest first, as GuestMemory.take returns them
                    release(d, request)
                    longer += len(request) - 1
                releases += 1
            else:
                for start, count in allocate(d, n):
                    held += count
                    end = hi[d]
                    if end == start:  # extends the newest extent (or the guest held nothing)
                        hi[d] = start + count
                    else:
                        if end > lo[d]:
                            older[d].append((lo[d], end))
                        lo[d], hi[d] = start, start + count
                counts[d] = held
        run.slices.append(time.perf_counter() - t0)
    run.pool, run.counts = pool, counts
    run.memory = [
        [(start, end - start) for start, end in older[d] + [(lo[d], hi[d])] if end > start] for d in range(domains)
    ]
    run.releases, run.released_extents = releases, releases + longer
    return run


def run_pool_random_tail(ops: int, pages: int, domains: int, seed: int) -> Run:
    """Releases are random sub-ranges of the domain's highest-addressed n pages."""
    rng = random.Random(seed)
    rand = rng.random
    pool = PagePool(pages)
    allocate, release, owned, highest = pool.allocate, pool.release, pool.owned_pages, pool.highest_extents
    run = Run()
    releases = released_extents = 0
    for _ in range(SLICES):
        t0 = time.perf_counter()
        for _ in range(ops // SLICES):
            d = int(rand() * domains)
            n = 1 + int(rand() * BATCH)
            held = owned(d)
            if held and rand() < 0.5:
                w = n if n < held else held
                a = int(rand() * w)
                b = a + 1 + int(rand() * (w - a))
                request = sub_range(highest(d, w), a, b)
                release(d, request)
                releases += 1
                released_extents += len(request)
            else:
                allocate(d, n)
        run.slices.append(time.perf_counter() - t0)
    run.pool = pool
    run.releases, run.released_extents = releases, released_extents
    return run


def run_baseline(ops: int, pages: int, domains: int, seed: int, workload: str) -> Run:
    """The same operation stream (same random numbers) on one counter per domain."""
    rng = random.Random(seed)
    rand = rng.random
    counts = [0] * domains
    free = pages
    tail = workload == "random-tail"
    run = Run()
    for _ in range(SLICES):
        t0 = time.perf_counter()
        for _ in range(ops // SLICES):
            d = int(rand() * domains)
            n = 1 + int(rand() * BATCH)
            held = counts[d]
            if held and rand() < 0.5:
                w = n if n < held else held
                if tail:
                    a = int(rand() * w)
                    w = 1 + int(rand() * (w - a))  # pages a .. b-1 of the window: b - a of them
                counts[d] = held - w
                free += w
            else:
                g = n if n < free else free
                counts[d] = held + g
                free -= g
        run.slices.append(time.perf_counter() - t0)
    run.counts = counts
    return run


WORKLOADS = {"lifo": run_pool_lifo, "random-tail": run_pool_random_tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="lifo")
    ap.add_argument("--ops", type=int, default=10**6)
    ap.add_argument("--pages", type=int, default=2**28)
    ap.add_argument("--domains", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    ops = args.ops - args.ops % SLICES

    times: list[tuple[float, float]] = []  # (baseline, pool) seconds of each run
    for i in range(max(args.repeat, 1)):
        run = base = None  # let the previous run's pool go before the next one is built
        gc.collect()
        base = run_baseline(ops, args.pages, args.domains, args.seed, args.workload)
        run = WORKLOADS[args.workload](ops, args.pages, args.domains, args.seed)
        times.append((base.seconds, run.seconds))
        if args.repeat > 1:
            print(f"run {i + 1}: pool ops/s {ops / run.seconds:,.0f}  baseline ops/s {ops / base.seconds:,.0f}"
                  f"  ratio {run.seconds / base.seconds:.2f}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if args.repeat > 1:
        rates = sorted(ops / p for _, p in times)
        ratios = sorted(p / b for b, p in times)
        print(f"median of {len(times)}: pool ops/s {statistics.median(rates):,.0f}"
              f"  ratio {statistics.median(ratios):.2f}  (best {rates[-1]:,.0f}, worst {rates[0]:,.0f});"
              " details of the last run:")
    pool = run.pool
    assert pool is not None

    pool_rate, base_rate = ops / run.seconds, ops / base.seconds
    first, last = (ops / SLICES / run.slices[i] for i in (0, -1))
    per_domain = [pool.owned_extent_count(d) for d in range(args.domains)]
    print(f"workload {args.workload}  ops {ops}  pages {args.pages}  domains {args.domains}  seed {args.seed}")
    print(f"pool ops/s      {pool_rate:,.0f}  ({run.seconds * 1e6 / ops:.2f} us/op)")
    print(f"baseline ops/s  {base_rate:,.0f}  ({base.seconds * 1e6 / ops:.2f} us/op)")
    print(f"ratio           {run.seconds / base.seconds:.2f}  (pool time / baseline time)")
    print(f"peak RSS        {peak_mib:.1f} MiB")
    print(f"pool ops/s by slice: first {first:,.0f}  last {last:,.0f}  (1/{SLICES} of the run each)")
    print(f"allocated pages {pool.allocated_pages}  free pages {pool.free_pages}")
    print(
        f"extents: free {pool.free_extent_count}  owned {sum(per_domain)}"
        f"  (max per domain {max(per_domain, default=0)}, owners {len(pool.owners())})"
    )
    print(f"release requests {run.released_extents / max(run.releases, 1):.2f} extents on average")

    failures = []
    expected = base.counts
    mismatched = [d for d in range(args.domains) if pool.owned_pages(d) != expected[d]]
    if mismatched:
        failures.append(f"{len(mismatched)} domains differ from the baseline's page counts, e.g. {mismatched[:5]}")
    if run.counts and run.counts != expected:
        failures.append("the guests' own page counts differ from the baseline's")
    if run.memory:
        differ = [d for d, mine in enumerate(run.memory) if merged(mine) != pool.extents_of(d)]
        if differ:
            failures.append(f"{len(differ)} guests' extent lists differ from the pool's books, e.g. {differ[:5]}")
    t0 = time.perf_counter()
    problems = pool.audit()
    print(f"audit           {'ok' if not problems else f'{len(problems)} problems'} ({time.perf_counter() - t0:.2f} s)")
    failures += problems[:10]
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
