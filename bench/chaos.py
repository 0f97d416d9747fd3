"""Chaos: a whole host under random faults, its invariants checked after each one.

A hypervisor (with `--state` and `--reclaim-after` when it has them), irqbus, N guests (g0 with
an MSI-X device, g1 slow with a level-triggered NIC on pin 11, g2 on a slow clock, g3 stuck, the
rest plain) and their `irqbus device` processes, all started through their CLIs. Then, for a
number of faults or a time, one seeded random fault at a time: SIGKILL, SIGSTOP/SIGCONT or a
clean restart of any process, with toolstack mem-sets in between. A killed guest's domain is
left to the hypervisor's reclaim when it has one (destroyed through the toolstack otherwise),
then a new guest of the same name is started, and its device with it.

After each fault, once the host has settled (bench/chaos_checks.py: every live guest at its
target with its driver done, the stuck one reporting what it is booked; bounded by
--settle-timeout), the invariants: `audit` balances, every guest's view of its pages (its
heartbeat report and its log's sum of grants and releases) equals the books, and every
device's interrupts are handled by its driver over a short window. A process that exits when
no fault told it to is a violation too. A recovery is timed from the fault's signal (from the
SIGCONT for a stop) until the host has settled, restarts and a dead guest's reclaim included. A fault kind the host is not built to survive (no
`--state`: a hypervisor restart is a host reboot) is reported as unsupported, never faked.
CURVE on every endpoint, as a host runs: each run makes its own key directory (WORKDIR/keys, or
the temporary folder's), the toolstack's, hypervisor's and irqbus's keys provisioned before any
process starts; the user's own keys are never read or written.

    python bench/chaos.py [--faults 200 | --duration 600] [--seed 1] [--guests 4] [--workdir DIR]

Exit status: 0 with no violation, 1 with any, 2 on bad arguments.

Measured (seed 7, with the journal, reclaim and irqbus restarts merged; a loaded 2-core
machine running the test suite alongside): 1,000 faults in 2,110 s, 0 violations; 96
hypervisor SIGKILLs, 82 restarts and 82 stops, 98 irqbus SIGKILLs, 88 restarts and 80 stops, 142
guests killed or restarted, 755 mem-sets; slowest recovery 7.0 s (a SIGKILLed guest: reclaim
after 4 s, then a new guest and its device), median 0.8 s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.chaos_checks import (  # noqa: E402
    book_violations,
    interrupt_violations,
    irq_figures,
    ledger_from_log,
    settle_problems,
)
from bench.chaos_plan import Action, Fault, Role, Support, ALL_KINDS, choose_fault, choose_targets, supported_kinds  # noqa: E402
from hypervisor.toolstack import Toolstack  # noqa: E402
from irqbus.show import fetch_show  # noqa: E402
from scenarios.launch import Processes  # noqa: E402
from wire.security import Security, Server  # noqa: E402
from wire.client import RpcClient  # noqa: E402
from wire.errors import RemoteError, Unreachable  # noqa: E402
from wire.sizes import parse_size  # noqa: E402

# the tests' timers (tests/processes.py): a fault's recovery takes a second, not a minute
GUEST_TIMERS = ("--retry-delay", "0.1", "--max-retry-delay", "0.8", "--heartbeat", "0.2", "--kernel-floor", "none")


@dataclass
class ChaosConfig:
    seed: int = 1
    faults: int | None = 20
    duration_s: float | None = None
    guests: int = 4
    host_memory: str = "64m"
    guest_memory: str = "8m"
    guest_maxmem: str = "24m"
    reclaim_after_s: float = 4.0
    liveness_s: float = 1.0
    settle_timeout_s: float = 20.0
    irq_window_s: float = 0.6
    device_rate: float = 25.0
    mem_set_chance: float = 0.5
    pause_s: tuple[float, float] = (0.2, 1.5)
    workdir: Path | None = None
    verbose: bool = False


@dataclass(frozen=True)
class GuestSpec:
    name: str
    args: tuple[str, ...] = ()
    stuck: bool = False
    device: str | None = None  # its device's name
    device_args: tuple[str, ...] = ()  # `irqbus device` options beyond guest, name, rate


def guest_specs(n: int) -> list[GuestSpec]:
    """g0: an MSI-X device; g1: slow (a paced driver) with a level NIC; g2: a slow clock; g3:
    stuck; the rest plain."""
    specs = [
        GuestSpec("g0", ("--device", "msi0:msi"), device="msi0", device_args=("--msi",)),
        GuestSpec("g1", ("--balloon-rate", "2048", "--device", "nic:pin=11:level"), device="nic", device_args=("--pin", "11", "--level")),
        GuestSpec("g2", ("--speed", "0.5")),
        GuestSpec("g3", ("--stuck",), stuck=True),
    ]
    specs += [GuestSpec(f"g{i}") for i in range(4, n)]
    return specs[:n]


def detect_support() -> tuple[Support, bool]:
    """What this tree's CLIs offer: (restart support, reclaim of dead guests)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    def help_of(*command: str) -> str:
        return subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True, env=env, cwd=REPO).stdout

    hv = help_of("hypervisor", "serve")
    # irqbus restarts: an `irqbus device` that rides them out (it has a grace for its guest to
    # come back to the new instance); the epoch that keeps drivers right comes with it
    irqbus_restart = "--guest-grace" in help_of("irqbus", "device")
    return Support(hypervisor_restart="--state" in hv, irqbus_restart=irqbus_restart), "--reclaim-after" in hv


@dataclass
class Violation:
    index: int  # the fault's number (0: the start)
    fault: str
    what: str


@dataclass
class Report:
    seed: int
    support: Support
    reclaim: bool
    faults: collections.Counter = field(default_factory=collections.Counter)
    violations: list[Violation] = field(default_factory=list)
    recoveries: list[tuple[float, int, str]] = field(default_factory=list)  # (seconds, index, fault)
    mem_sets: int = 0
    length_s: float = 0.0

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def lines(self) -> list[str]:
        out = [f"chaos: seed {self.seed}, hypervisor --state {'on' if self.support.hypervisor_restart else 'unsupported'}, "
               f"reclaim {'on' if self.reclaim else 'unsupported (dead domains destroyed by the toolstack)'}"]
        out.append(f"faults injected            {self.injected} ({self.mem_sets} mem-sets in between)")
        for kind, n in sorted(self.faults.items()):
            out.append(f"  {kind:<24} {n}")
        unsupported = [(str(k), self.support.why_not(k)) for k in ALL_KINDS if self.support.why_not(k)]
        for kind, why in unsupported:
            out.append(f"  {kind:<24} unsupported: {why}")
        out.append(f"invariant violations       {len(self.violations)}")
        for v in self.violations:
            out.append(f"  after fault {v.index} ({v.fault}): {v.what}")
        if self.recoveries:
            worst = max(self.recoveries)
            times = sorted(r[0] for r in self.recoveries)
            out.append(f"slowest recovery           {worst[0]:.2f} s (fault {worst[1]}: {worst[2]}); median {times[len(times) // 2]:.2f} s")
        out.append(f"run length                 {self.length_s:.1f} s")
        return out


class ChaosHost:
    """The host's processes, started and restarted through their CLIs, and what they report."""

    def __init__(self, cfg: ChaosConfig, procs: Processes, support: Support, reclaim: bool, security: Security | None = None) -> None:
        """`security`: the bench's own calls (None: the process's setting, wire.security.current())."""
        self.cfg = cfg
        self.security = security
        self.procs = procs
        self.support = support
        self.reclaim = reclaim
        self.hv_endpoint = procs.ipc("hv")
        self.admin_endpoint = procs.ipc("admin")
        self.irq_endpoint = procs.ipc("irq")
        self.specs = {s.name: s for s in guest_specs(cfg.guests)}
        self.devices = {s.device: s for s in self.specs.values() if s.device}
        self.current: dict[str, subprocess.Popen] = {}
        self.boot_pages = parse_size(cfg.guest_memory) // 4096
        self.max_pages = parse_size(cfg.guest_maxmem) // 4096

    # --- processes -----------------------------------------------------------------------------

    def hypervisor_args(self) -> list[str]:
        args = ["serve", "--memory", self.cfg.host_memory, "--guest-endpoint", self.hv_endpoint,
                "--admin-endpoint", self.admin_endpoint, "--irqbus", self.irq_endpoint,
                "--liveness", str(self.cfg.liveness_s), "--log-level", "info"]
        if self.support.hypervisor_restart:
            args += ["--state", str(self.procs.dir / "hypervisor.db")]
        if self.reclaim:
            args += ["--reclaim-after", str(self.cfg.reclaim_after_s)]
        return args

    def start(self, name: str) -> subprocess.Popen:
        if name == "hypervisor":
            proc = self.procs.start(name, "hypervisor", *self.hypervisor_args())
        elif name == "irqbus":
            proc = self.procs.start(name, "irqbus", "serve", "--endpoint", self.irq_endpoint, "--log-level", "info")
        elif name in self.specs:
            spec = self.specs[name]
            proc = self.procs.start(
                name, "guest", "run", "--name", name, "--hypervisor", self.hv_endpoint, "--irqbus", self.irq_endpoint,
                "--memory", self.cfg.guest_memory, "--maxmem", self.cfg.guest_maxmem, *GUEST_TIMERS,
                "--max-retries", "0", "--log-level", "debug", *spec.args,
            )
        else:
            spec = self.devices[name]
            proc = self.procs.start(
                name, "irqbus", "device", spec.name, name, *spec.device_args, "--rate", str(self.cfg.device_rate),
                "--endpoint", self.irq_endpoint, "--log-level", "info",
            )
        self.current[name] = proc
        return proc

    def names(self, role: Role) -> list[str]:
        return {Role.HYPERVISOR: ["hypervisor"], Role.IRQBUS: ["irqbus"], Role.GUEST: list(self.specs),
                Role.DEVICE: list(self.devices)}[role]

    def alive(self, name: str) -> bool:
        return self.current[name].poll() is None

    def last_line(self, name: str) -> str:
        lines = self.procs.log_of(self.current[name]).read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "(empty log)"

    # --- what they report --------------------------------------------------------------------

    def toolstack(self) -> Toolstack:
        return Toolstack(self.admin_endpoint, timeout=0.5, retries=1, security=self.security)

    def domains(self) -> dict[str, dict[str, Any]] | None:
        tool = self.toolstack()
        try:
            return {d["name"]: d for d in tool.list()}
        except (Unreachable, RemoteError):
            return None
        finally:
            tool.close()

    def audit(self) -> dict[str, Any] | None:
        tool = self.toolstack()
        try:
            return tool.audit()
        except (Unreachable, RemoteError):
            return None
        finally:
            tool.close()

    def attached(self) -> dict[str, dict[str, Any]] | None:
        """irqbus's guests by name: each with its domid and its devices."""
        shown = self.show()
        return None if shown is None else {g["name"]: g for g in shown["guests"]}

    def show(self) -> dict[str, Any] | None:
        """irqbus's `show`: its guests and (with restart support) its instance's epoch."""
        client = RpcClient(self.irq_endpoint, server=Server.IRQBUS, timeout=0.5, retries=1, security=self.security)
        try:
            return fetch_show(client)
        except (Unreachable, RemoteError):
            return None
        finally:
            client.close()

    def attached_as(self, guest: str, domains: dict[str, dict[str, Any]] | None) -> bool:
        """The guest is attached to irqbus as the domain the hypervisor books under its name
        (not a dead instance irqbus has not forgotten yet)."""
        attached = self.attached() or {}
        domain = (domains or {}).get(guest)
        return guest in attached and domain is not None and attached[guest].get("domid") == domain["domid"]

    def interrupts(self, guest: str) -> list[dict[str, Any]] | None:
        """The guest's /proc/interrupts rows (`guest interrupts --json`, through irqbus)."""
        client = RpcClient(self.irq_endpoint, server=Server.IRQBUS, timeout=1.0, retries=1, security=self.security)
        try:
            return client.call("interrupts", {"guest": guest, "format": "json"}).get("rows", [])
        except (Unreachable, RemoteError):
            return None
        finally:
            client.close()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON lines of the current instance's log."""
        out = []
        for line in self.procs.log_of(self.current[name]).read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def live_guests(self) -> dict[str, bool]:
        return {n: s.stuck for n, s in self.specs.items() if self.alive(n)}

    def wait_until(self, predicate: Any, timeout: float, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(interval)

    def settle(self) -> list[str]:
        """Wait (bounded) until the host has settled; what still is not, if it never did."""
        problems: list[str] = []
        raised: dict[str, tuple[Any, int]] = {}  # device -> (irqbus epoch, its gen) at the last look

        def settled() -> bool:
            nonlocal problems
            domains = self.domains()
            if domains is None:
                problems = ["the hypervisor does not answer"]
                return False
            problems = settle_problems(domains, self.live_guests())
            shown = self.show()
            if shown is None:
                problems.append("irqbus does not answer")
            else:
                attached = {g["name"]: g for g in shown["guests"]}
                for device, spec in self.devices.items():
                    if not self.alive(spec.name):
                        continue
                    guest = attached.get(spec.name)
                    entry = next((d for d in (guest or {}).get("devices", []) if d.get("name") == device), None)
                    if guest is None or spec.name not in domains or guest.get("domid") != domains[spec.name]["domid"]:
                        problems.append(f"{spec.name}: not attached to irqbus as its domain")
                    elif entry is None:
                        problems.append(f"{device}: not attached to {spec.name}")
                    else:
                        # raising: its generation moved since the last look at this irqbus
                        # instance (listed is not enough: after a restart the guest declares
                        # it again before the device process has found the new instance)
                        now_at, before = (shown.get("epoch"), entry.get("gen", 0)), raised.get(device)
                        raised[device] = now_at
                        if before is None or before[0] != now_at[0] or now_at[1] <= before[1]:
                            problems.append(f"{device}: not raising into this irqbus yet")
            return not problems

        self.wait_until(settled, self.cfg.settle_timeout_s, interval=0.15)
        return problems

    def check(self) -> list[str]:
        """The invariants, on a settled host."""
        domains = self.domains() or {}
        ledgers = {name: ledger_from_log(self.events(name)) for name in self.live_guests()}
        out = book_violations(self.audit(), domains, ledgers)
        watched = [(d, s.name) for d, s in self.devices.items() if self.alive(d) and self.alive(s.name)]
        before = {d: irq_figures(self.interrupts(g) or [], d) for d, g in watched}
        time.sleep(self.cfg.irq_window_s)
        for d, g in watched:
            out += interrupt_violations(d, g, before[d], irq_figures(self.interrupts(g) or [], d))
        return out

    # --- faults --------------------------------------------------------------------------------

    def signal(self, name: str, sig: int) -> None:
        try:
            self.current[name].send_signal(sig)
        except ProcessLookupError:
            pass

    def end(self, name: str, sig: int) -> list[str]:
        """Send `sig` and wait for the process to exit; a clean stop must end with status 0."""
        proc = self.current[name]
        self.signal(name, sig)
        try:
            status = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return [f"{name}: still running 15 s after {signal.Signals(sig).name}"]
        if sig == signal.SIGTERM and status != 0:
            return [f"{name}: exited with status {status} on SIGTERM: {self.last_line(name)}"]
        return []

    def domain_gone(self, name: str) -> bool:
        domains = self.domains()
        return domains is not None and name not in domains

    def replace_guest(self, name: str, killed: bool) -> list[str]:
        """A guest that is gone, started again as a new guest of the same name once its domain
        is gone (the hypervisor's reclaim, else the toolstack's destroy); its device likewise."""
        out = []
        if not self.domain_gone(name):
            if killed and self.reclaim:
                if not self.wait_until(lambda: self.domain_gone(name), self.cfg.reclaim_after_s + 10, 0.2):
                    out.append(f"{name}: its dead domain was not reclaimed within {self.cfg.reclaim_after_s + 10:.0f} s")
            elif not killed:
                if not self.wait_until(lambda: self.domain_gone(name), 5, 0.1):
                    out.append(f"{name}: its domain outlived a clean shutdown")
            if not self.domain_gone(name):
                tool = self.toolstack()
                try:
                    tool.destroy(name)
                except (Unreachable, RemoteError) as err:
                    out.append(f"{name}: destroy failed: {err}")
                finally:
                    tool.close()
        device = self.specs[name].device
        if device and self.alive(device):
            self.end(device, signal.SIGTERM)  # it raised into the old guest: start it with the new one
        self.start(name)
        if not self.wait_until(lambda: name in (self.domains() or {}), self.cfg.settle_timeout_s):
            out.append(f"{name}: started again, not registered within {self.cfg.settle_timeout_s:.0f} s")
        if device:
            self.start_device_when_attached(device)
        return out

    def start_device_when_attached(self, device: str) -> None:
        """Start the device once its guest's current instance is attached to irqbus: started
        earlier, it attaches to the dead instance and is dropped with it."""
        guest = self.devices[device].name
        self.wait_until(lambda: self.attached_as(guest, self.domains()), self.cfg.settle_timeout_s)
        self.start(device)

    def inject(self, fault: Fault) -> tuple[list[str], float]:
        """Carry the fault out and start what it ended; (problems seen, when recovery began)."""
        name, action = fault.target, fault.kind.action
        if action is Action.STOP:
            self.signal(name, signal.SIGSTOP)
            time.sleep(fault.pause_s)
            self.signal(name, signal.SIGCONT)
            return [], time.monotonic()
        sig = signal.SIGKILL if action is Action.KILL else signal.SIGTERM
        began = time.monotonic()
        out = self.end(name, sig)
        if name in self.specs:
            out += self.replace_guest(name, killed=action is Action.KILL)
        else:  # the hypervisor, irqbus or a device: the same command again
            self.start(name)
        return out, began

    def sweep(self, expected_exits: set[str]) -> list[str]:
        """Every process that exited uncalled-for is a violation; each is started again."""
        out = []
        for name in ["hypervisor", "irqbus", *self.specs, *self.devices]:
            if self.alive(name):
                continue
            status = self.current[name].returncode
            if name not in expected_exits:
                out.append(f"{name}: exited with status {status}: {self.last_line(name)}")
            if name in self.specs:
                out += self.replace_guest(name, killed=True)
            elif name in self.devices:
                if self.alive(self.devices[name].name):
                    self.start_device_when_attached(name)
            else:
                self.start(name)
        return out

    def mem_set(self, targets: dict[str, int]) -> list[str]:
        out = []
        tool = self.toolstack()
        try:
            for name, pages in targets.items():
                try:
                    tool.mem_set(name, pages)
                except (Unreachable, RemoteError) as err:
                    out.append(f"mem-set {name} {pages} pages: {err}")
        finally:
            tool.close()
        return out

    def claims(self) -> dict[str, int]:
        """What each guest holds or is headed for (and would register with after a restart)."""
        domains = self.domains() or {}
        out = {}
        for name in self.specs:
            d = domains.get(name)
            held = self.boot_pages if d is None else max(d["target_pages"], d["current_pages"])
            out[name] = max(held, self.boot_pages)
        return out


def run_chaos(cfg: ChaosConfig, out: Any = sys.stdout) -> Report:
    support, reclaim = detect_support()
    report = Report(cfg.seed, support, reclaim)
    rng = random.Random(cfg.seed)
    kinds = supported_kinds(support)
    procs = Processes(cfg.workdir)
    # its own keys (WORKDIR/keys): CURVE on every endpoint as a host runs it, the user's keys untouched
    host = ChaosHost(cfg, procs, support, reclaim, procs.own_keys())
    began = time.monotonic()

    def say(text: str) -> None:
        if cfg.verbose:
            print(f"[{time.monotonic() - began:7.2f}] {text}", file=out, flush=True)

    try:
        host.start("irqbus")
        host.start("hypervisor")
        if not host.wait_until(lambda: host.domains() is not None, 20):
            raise RuntimeError("the hypervisor did not answer within 20 s:\n" + procs.dump_logs())
        for name in host.specs:
            host.start(name)
        for device in host.devices:
            host.start_device_when_attached(device)
        for problem in host.settle() + host.check():
            report.violations.append(Violation(0, "start", problem))
        tool = host.toolstack()
        try:
            pool = tool.info()["total_pages"]
        finally:
            tool.close()
        index = 0
        while (cfg.faults is None or index < cfg.faults) and (cfg.duration_s is None or time.monotonic() - began < cfg.duration_s):
            index += 1
            targets = {role: host.names(role) for role in Role}
            fault = choose_fault(rng, kinds, targets, cfg.pause_s)
            wants_mem_set = rng.random() < cfg.mem_set_chance
            how_many = rng.randint(1, 2)
            sub_rng = random.Random(rng.random())
            say(f"fault {index}: {fault}")
            problems, recovering = host.inject(fault)
            report.faults[str(fault.kind)] += 1
            if wants_mem_set:
                movable = [n for n, s in host.specs.items() if not s.stuck]
                chosen = choose_targets(sub_rng, movable, host.claims(), pool, host.boot_pages // 2, host.max_pages, how_many, host.boot_pages)
                say(f"  mem-set {chosen}")
                problems += host.mem_set(chosen)
                report.mem_sets += len(chosen)
            expected = {fault.target}
            if fault.target in host.specs and host.specs[fault.target].device:
                expected.add(host.specs[fault.target].device)
            problems += host.sweep(expected)
            unsettled = host.settle()
            recovery = time.monotonic() - recovering
            if unsettled:
                problems.append(f"not settled within {cfg.settle_timeout_s:.0f} s: {'; '.join(unsettled)}")
            else:
                report.recoveries.append((recovery, index, str(fault)))
            problems += host.sweep(set())
            problems += host.check()
            say(f"  recovered in {recovery:.2f} s, {len(problems)} problems")
            for problem in problems:
                say(f"  VIOLATION {problem}")
                report.violations.append(Violation(index, str(fault), problem))
    finally:
        report.length_s = time.monotonic() - began
        keep = bool(report.violations) or cfg.workdir is not None
        if keep:
            procs._own_dir = False  # leave the logs for a post-mortem
            print(f"logs kept in {procs.dir}", file=out)
        procs.stop_all()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", type=int, help="faults to inject (default 20 unless --duration)")
    p.add_argument("--duration", type=float, help="seconds to inject faults for")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--guests", type=int, default=4, help="guests (at least 1; g3 is the stuck one)")
    p.add_argument("--settle-timeout", type=float, default=20.0, help="seconds a recovery may take before it is a violation")
    p.add_argument("--reclaim-after", type=float, default=4.0, help="the hypervisor's --reclaim-after, when it has one")
    p.add_argument("--workdir", type=Path, help="keep every process's log here (default: a temporary folder, kept on violations)")
    p.add_argument("--verbose", "-v", action="store_true", help="a line per fault as it goes")
    args = p.parse_args(argv)
    if args.guests < 1 or (args.faults is not None and args.faults < 0) or (args.duration is not None and args.duration <= 0):
        p.error("--guests must be at least 1, --faults at least 0, --duration above 0")
    faults = args.faults if args.faults is not None else (None if args.duration else 20)
    cfg = ChaosConfig(seed=args.seed, faults=faults, duration_s=args.duration, guests=args.guests,
                      settle_timeout_s=args.settle_timeout, reclaim_after_s=args.reclaim_after,
                      workdir=args.workdir, verbose=args.verbose)
    def stop_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # the host's processes are stopped on the way out

    signal.signal(signal.SIGTERM, stop_on_term)
    report = run_chaos(cfg)
    print("\n".join(report.lines()))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
