"""Benchmark the page pool under balloon-driver traffic, against a trivial baseline.

    python bench/pool_bench.py [--ops N] [--pages N] [--domains N] [--seed N]

Each operation picks a random domain and a random batch size n in 1..512 (one page of frame
list, as the balloon driver uses). Half the time, if the domain holds pages, it gives back a
random contiguous sub-range of its highest n pages (decrease_reservation); otherwise it asks
for n pages (increase_reservation, possibly granted short).

Machines are noisy, so the same operation stream is also run against a baseline in the same
process: one integer per domain plus a free counter. That is the cost of the driver loop and
the random numbers alone; the ratio pool/baseline is the figure to compare across machines.
The baseline also predicts every domain's final page count, which the pool must match.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypervisor.pool import PagePool  # noqa: E402
from wire.extent import Extent  # noqa: E402

BATCH = 512  # pages per increase/decrease, as in drivers/xen/balloon.c


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


def run_pool(ops: int, pages: int, domains: int, seed: int) -> tuple[float, PagePool, float]:
    """Returns the time taken, the pool, and the mean number of extents per release."""
    rng = random.Random(seed)
    rand = rng.random  # int(rand() * n): several times cheaper than randrange
    pool = PagePool(pages)
    allocate, release, owned, highest = pool.allocate, pool.release, pool.owned_pages, pool.highest_extents
    releases = released_extents = 0
    t0 = time.perf_counter()
    for _ in range(ops):
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
    return time.perf_counter() - t0, pool, released_extents / max(releases, 1)


def run_baseline(ops: int, pages: int, domains: int, seed: int) -> tuple[float, list[int]]:
    rng = random.Random(seed)
    rand = rng.random  # int(rand() * n): several times cheaper than randrange
    counts = [0] * domains
    free = pages
    t0 = time.perf_counter()
    for _ in range(ops):
        d = int(rand() * domains)
        n = 1 + int(rand() * BATCH)
        held = counts[d]
        if held and rand() < 0.5:
            w = n if n < held else held
            a = int(rand() * w)
            b = a + 1 + int(rand() * (w - a))
            counts[d] = held - (b - a)
            free += b - a
        else:
            g = n if n < free else free
            counts[d] = held + g
            free -= g
    return time.perf_counter() - t0, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=10**6)
    ap.add_argument("--pages", type=int, default=2**28)
    ap.add_argument("--domains", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    gc.collect()
    base_s, expected = run_baseline(args.ops, args.pages, args.domains, args.seed)
    pool_s, pool, per_release = run_pool(args.ops, args.pages, args.domains, args.seed)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    pool_rate, base_rate = args.ops / pool_s, args.ops / base_s
    per_domain = [pool.owned_extent_count(d) for d in range(args.domains)]
    print(f"ops {args.ops}  pages {args.pages}  domains {args.domains}  seed {args.seed}")
    print(f"pool ops/s      {pool_rate:,.0f}  ({pool_s * 1e6 / args.ops:.2f} us/op)")
    print(f"baseline ops/s  {base_rate:,.0f}  ({base_s * 1e6 / args.ops:.2f} us/op)")
    print(f"ratio           {pool_s / base_s:.2f}  (pool time / baseline time)")
    print(f"peak RSS        {peak_mib:.1f} MiB")
    print(f"allocated pages {pool.allocated_pages}  free pages {pool.free_pages}")
    print(
        f"extents: free {pool.free_extent_count}  owned {sum(per_domain)}"
        f"  (max per domain {max(per_domain, default=0)}, owners {len(pool.owners())})"
    )
    print(f"release requests {per_release:.2f} extents on average")

    failures = []
    mismatched = [d for d in range(args.domains) if pool.owned_pages(d) != expected[d]]
    if mismatched:
        failures.append(f"{len(mismatched)} domains differ from the baseline's page counts, e.g. {mismatched[:5]}")
    t0 = time.perf_counter()
    problems = pool.audit()
    print(f"audit           {'ok' if not problems else f'{len(problems)} problems'} ({time.perf_counter() - t0:.2f} s)")
    failures += problems[:10]
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
