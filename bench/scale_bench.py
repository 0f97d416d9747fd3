"""A host grown to many guests: `hypervisor serve` and one `guest fleet` of N, for each N.

For each N the run starts a fresh hypervisor sized for N guests (its own key directory, ipc://
endpoints, real processes through their CLIs, all stopped also on failure), then `guest fleet
--count N` (every guest with `guest run`'s default 1 s heartbeat and CURVE, at the fleet's default
niceness), and measures:

- registered: from starting the fleet until the hypervisor holds N domains;
- converged down / up: a host-wide mem-set, every domain's target written, down by a quarter
  and then back up: one toolstack client sends the N `mem_set` requests back to back (xl has no
  host-wide mem-set; a toolstack script would do the same, one request per domain) and the
  time runs from the first request until every domain holds its target and its driver reports
  `done` (read with `list`, every 0.2 s: those reads are part of the hypervisor's load);
- hypervisor CPU: utime + stime from /proc/PID/stat (the process's every thread, libzmq's I/O
  and CURVE included), over a window while the guests only heartbeat, and over each convergence;
- memory: PSS (smaps_rollup) of every guest process and of the fleet parent: forked guests
  share their pages copy-on-write, which RSS would count once per guest;
- stopped: SIGTERM to the fleet until it and every guest have exited and no domain is left.

The goals are absolute (issue 14: 1,000 guests on this machine), so each figure is printed
next to its goal, met or NOT met; the baseline measured in the same run is the smallest N: each
figure's growth from it to the largest N, against the growth of N, says how the host scales.
A shared machine's load moves every figure: the load average is printed with each N.

    python bench/scale_bench.py [--guests 100,300,1000] [--idle 10] [--heartbeat 1]
    python bench/scale_bench.py --guests 5 --idle 1 --quick      (a smoke test)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypervisor.toolstack import Toolstack  # noqa: E402  (after the path: run from anywhere)
from scenarios.launch import Host, Processes, wait_for  # noqa: E402
from wire import envelope, multipart  # noqa: E402
from wire.extent import PAGE_SIZE  # noqa: E402

MIB_PAGES = (1 << 20) // PAGE_SIZE
GUEST_MIB = 32  # each guest's memory and maxmem
DOWN_MIB = 24  # the host-wide mem-set down: a quarter of every guest, 2,048 pages, 4 batches of 512
HOST_SLACK_MIB = 256
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30

# issue 14's goals for 1,000 guests on this machine
GOAL_N = 1000
GOAL_REGISTER_S = 30.0
GOAL_CONVERGE_S = 5.0
GOAL_IDLE_CPU = 0.10
GOAL_PSS_BYTES = 8 * GIB
GOAL_STOP_S = 15.0


@dataclass
class Figures:
    guests: int
    load: list[float] = field(default_factory=list)  # the 1-minute load average at each phase
    registered_s: float | None = None
    idle_cpu: float | None = None  # hypervisor CPU seconds per second
    down_s: float | None = None
    up_s: float | None = None
    converging_cpu: float | None = None
    answered_s: float | None = None  # the slower of the two mem-sets' N requests, until all answered
    pss_bytes: int | None = None
    fleet_pss_bytes: int | None = None  # the fleet parent's share of pss_bytes
    stopped_s: float | None = None
    audit_ok: bool | None = None
    note: str = ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5), counted after the name


def pss_bytes(pid: int) -> int:
    """The process's proportional set size, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def load_average() -> float:
    return os.getloadavg()[0]


MEM_SET_WINDOW = 100  # requests in flight: below ZeroMQ's high-water marks (1,000), past which replies are dropped


def mem_set_all(tool: Toolstack, domids: list[int], target_pages: int, timeout: float = 60.0) -> None:
    """Every domain's target, one `mem_set` each, sent back to back on one connection (at most
    MEM_SET_WINDOW unanswered); returns once every one is answered (an error reply raises)."""
    client = tool.client
    waiting = list(domids)
    pending: set[int] = set()
    deadline = time.monotonic() + timeout
    while pending or waiting:
        while waiting and len(pending) < MEM_SET_WINDOW:
            pending.add(client.post("mem_set", {"domain": waiting.pop(), "target_pages": target_pages}))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending) + len(waiting)} mem_set requests unanswered after {timeout:g} s")
        if not client.socket.poll(100):
            continue
        body = envelope.decode_incoming(multipart.receive(client.socket)[-1])
        if body.get("seq") not in pending:
            continue
        if not body["ok"]:
            raise RuntimeError(f"mem_set refused: {body.get('error')}: {body.get('message')}")
        pending.discard(body["seq"])


def converged(tool: Toolstack, target_pages: int, count: int) -> bool:
    doms = tool.list()
    return len(doms) == count and all(
        d["current_pages"] == target_pages == d["target_pages"] and (d.get("balloon") or {}).get("state") == "done" for d in doms
    )


def timed_convergence(tool: Toolstack, hypervisor_pid: int, domids: list[int], target_pages: int, timeout: float) -> tuple[float, float, float]:
    """(seconds to converge, hypervisor CPU seconds meanwhile, seconds until every mem_set was answered)."""
    cpu0, began = cpu_seconds(hypervisor_pid), time.monotonic()
    mem_set_all(tool, domids, target_pages)
    answered = time.monotonic() - began
    wait_for(lambda: converged(tool, target_pages, len(domids)), timeout, f"{len(domids)} guests to reach {target_pages} pages", 0.2)
    return time.monotonic() - began, cpu_seconds(hypervisor_pid) - cpu0, answered


def measure(n: int, args: argparse.Namespace) -> Figures:
    fig = Figures(n)
    procs = Processes(own_groups=True)
    tool = None
    try:
        toolstack_key = procs.own_keys()
        host = Host(procs, memory=f"{n * GUEST_MIB + HOST_SLACK_MIB}m", log_level="info")
        tool = Toolstack(host.admin_endpoint, timeout=10.0, security=toolstack_key)
        hv = host.proc.pid
        fig.load.append(load_average())
        heartbeat = () if args.heartbeat is None else ("--heartbeat", f"{args.heartbeat:g}")
        began = time.monotonic()
        fleet = procs.start(
            "fleet", "guest", "fleet", "--count", str(n), "--memory", f"{GUEST_MIB}m", "--log-dir", str(procs.dir / "guests"),
            "--", "--hypervisor", host.guest_endpoint, "--kernel-floor", "none", *heartbeat,
        )
        register_timeout = args.timeout + n * 0.5
        wait_for(lambda: fleet.poll() is not None or tool.info()["domains"] >= n, register_timeout, f"{n} guests to register", 0.05)
        if fleet.poll() is not None:
            raise RuntimeError(f"the fleet exited with status {fleet.returncode}: {procs.log('fleet')[-2000:]}")
        fig.registered_s = time.monotonic() - began
        fig.load.append(load_average())
        # every guest has heartbeaten once (its driver's state is known) and the start is over
        wait_for(lambda: converged(tool, GUEST_MIB * MIB_PAGES, n), args.timeout, "every guest's first report", 0.2)
        time.sleep(args.settle)
        cpu0, t0 = cpu_seconds(hv), time.monotonic()
        time.sleep(args.idle)
        fig.idle_cpu = (cpu_seconds(hv) - cpu0) / (time.monotonic() - t0)
        fig.load.append(load_average())
        guests = children_of(fleet.pid)
        if len(guests) != n:
            raise RuntimeError(f"the fleet has {len(guests)} guest processes, not {n}")
        fig.fleet_pss_bytes = pss_bytes(fleet.pid)
        fig.pss_bytes = fig.fleet_pss_bytes + sum(pss_bytes(p) for p in guests)
        domids = sorted(d["domid"] for d in tool.list())
        down_s, down_cpu, down_answered = timed_convergence(tool, hv, domids, DOWN_MIB * MIB_PAGES, args.timeout)
        up_s, up_cpu, up_answered = timed_convergence(tool, hv, domids, GUEST_MIB * MIB_PAGES, args.timeout)
        fig.down_s, fig.up_s, fig.answered_s = down_s, up_s, max(down_answered, up_answered)
        fig.converging_cpu = (down_cpu + up_cpu) / (down_s + up_s)
        fig.audit_ok = tool.audit()["ok"]
        fig.load.append(load_average())
        began = time.monotonic()
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(args.timeout + 60)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in guests), args.timeout, "every guest process to end")
        wait_for(lambda: tool.info()["domains"] == 0, args.timeout, "every domain to be shut down", 0.05)
        fig.stopped_s = time.monotonic() - began
        if fleet.returncode != 0:
            fig.note = f"the fleet exited with status {fleet.returncode}"
    except (TimeoutError, AssertionError, RuntimeError) as err:  # wait_for gives up with AssertionError
        fig.note = str(err)
        print(f"N={n}: {err}\n{procs.dump_logs()[-3000:]}", file=sys.stderr)
    finally:
        if tool is not None:
            tool.close()
        procs.stop_all()
    return fig


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.0f} MiB"


ROWS: list[tuple[str, Callable[[Figures], Any], Callable[[Any], str]]] = [
    ("registered", lambda f: f.registered_s, _s),
    ("converged after mem-set down", lambda f: f.down_s, _s),
    ("converged after mem-set up", lambda f: f.up_s, _s),
    ("  of which N mem_set answered", lambda f: f.answered_s, _s),
    ("hypervisor CPU, idle", lambda f: f.idle_cpu, _pct),
    ("hypervisor CPU, converging", lambda f: f.converging_cpu, _pct),
    ("guests' PSS, total", lambda f: f.pss_bytes, _mib),
    ("  per guest", lambda f: None if f.pss_bytes is None else f.pss_bytes // f.guests, lambda v: "-" if v is None else f"{v / (1 << 20):.2f} MiB"),
    ("stopped", lambda f: f.stopped_s, _s),
]


def verdicts(fig: Figures) -> list[str]:
    """Issue 14's goals, judged at the largest N when it is at least 1,000 (a smaller fleet is
    no evidence about a thousand guests: its figures are shown, not judged)."""
    judged = fig.guests >= GOAL_N

    def line(what: str, ok: bool | None, shown: str) -> str:
        verdict = "-" if ok is None else f"not judged (N={fig.guests:,})" if not judged else "met" if ok else "NOT met"
        return f"  {what:<44} {shown:<12} {verdict}"

    converge = None if fig.down_s is None or fig.up_s is None else max(fig.down_s, fig.up_s)
    return [
        line(f"{GOAL_N:,} registered within {GOAL_REGISTER_S:g} s", None if fig.registered_s is None else fig.registered_s <= GOAL_REGISTER_S, _s(fig.registered_s)),
        line(f"converged within {GOAL_CONVERGE_S:g} s of a host-wide mem-set", None if converge is None else converge <= GOAL_CONVERGE_S, _s(converge)),
        line(f"hypervisor idle CPU under {100 * GOAL_IDLE_CPU:g}%", None if fig.idle_cpu is None else fig.idle_cpu < GOAL_IDLE_CPU, _pct(fig.idle_cpu)),
        line(f"all guests under {GOAL_PSS_BYTES // GIB} GiB PSS", None if fig.pss_bytes is None else fig.pss_bytes < GOAL_PSS_BYTES, _mib(fig.pss_bytes)),
        line(f"all stopped within {GOAL_STOP_S:g} s", None if fig.stopped_s is None else fig.stopped_s <= GOAL_STOP_S, _s(fig.stopped_s)),
    ]


def report(figures: list[Figures], heartbeat: float | None) -> str:
    first, last = figures[0], figures[-1]
    width = 14
    head = f"{'':<32}" + "".join(f"{f'N={f.guests:,}':>{width}}" for f in figures)
    growth = len(figures) > 1
    if growth:
        head += f"{f'growth x{last.guests / first.guests:g}':>{width + 2}}"
    lines = [
        f"scale: guest fleet of N against one hypervisor; every guest {GUEST_MIB} MiB, CURVE, heartbeat "
        f"{'1 s (guest run default)' if heartbeat is None else f'{heartbeat:g} s'}; "
        f"mem-set down to {DOWN_MIB} MiB and up to {GUEST_MIB} MiB",
        head,
    ]
    for label, get, show in ROWS:
        row = f"{label:<32}" + "".join(f"{show(get(f)):>{width}}" for f in figures)
        if growth:
            a, b = get(first), get(last)
            row += f"{'x' + format(b / a, '.2f') if a and b is not None else '-':>{width + 2}}"
        lines.append(row)
    lines.append(f"{'load average (1 min)':<32}" + "".join(f"{'/'.join(f'{x:.1f}' for x in f.load[:1] + f.load[-1:]):>{width}}" for f in figures))
    lines.append(f"{'books balance after':<32}" + "".join(f"{'-' if f.audit_ok is None else 'yes' if f.audit_ok else 'NO':>{width}}" for f in figures))
    for f in figures:
        if f.note:
            lines.append(f"  N={f.guests}: {f.note}")
    if growth:
        lines.append(f"growth: each figure at N={last.guests:,} over the same at N={first.guests:,} (the baseline, measured in this run); "
                     f"linear growth would be x{last.guests / first.guests:g}")
    lines.append(f"goals (issue 14, absolute: {GOAL_N:,} guests on this machine), from N={last.guests:,}:")
    lines += verdicts(last)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", default="100,300,1000", help="comma-separated fleet sizes, smallest first (default 100,300,1000)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle CPU window (default 10)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the first reports before the idle window (default 3)")
    parser.add_argument("--heartbeat", type=float, help="every guest's --heartbeat (default: guest run's, 1 s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds any one phase may take before the run gives up on that N")
    parser.add_argument("--quick", action="store_true", help="short waits: a smoke test of the bench itself")
    args = parser.parse_args(argv)
    if args.quick:
        args.settle = min(args.settle, 0.2)
        args.timeout = min(args.timeout, 60.0)
    sizes = sorted({int(x) for x in args.guests.split(",")})
    figures = []
    for n in sizes:
        print(f"N={n}: measuring (load {load_average():.1f})", file=sys.stderr, flush=True)
        figures.append(measure(n, args))
    print(report(figures, args.heartbeat))
    return 0 if all(not f.note for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
