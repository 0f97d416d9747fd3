"""Play a scenario for real: start every process through its CLI, play the timeline, record the
host, check the expectations, and leave a report, the series (CSV, JSON) and a plot.

Every time here is scenario time (scenarios.clock): `speed` times the real time elapsed.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.toolstack import Toolstack
from scenarios.clock import ScenarioClock
from guest.fleet_plan import SizeRange
from scenarios.aggregate import AGGREGATE_ABOVE
from scenarios.launch import Host, Processes
from scenarios.recording import Recording, Sample, StepRecord
from scenarios.spec import DRIVER_CHECKS, Action, Check, Expectation, Scenario, Step, StepOutcome
from wire.security import Server
from wire.client import RpcClient
from wire.errors import RemoteError, Unreachable
from wire.sizes import pages_to_mib, size_to_pages

REGISTER_TIMEOUT_S = 30.0  # real seconds without a guest registering before the runner gives up on the rest
GRACE_S = 2.0  # real seconds past the duration to wait for a driver's report an expectation needs
BOOKS_SHOWN = 5  # unbalanced samples listed in the report (the rest counted)
SHOWN = 10  # guests named in one verdict (the rest counted)
FLEET_CLIENTS = 8  # a step on a fleet: requests in flight at once (see _play_on_fleet)
FLEET_PART = 64  # ...and guests between two looks at whether a sample is due
FLEET_RETRIES = 9  # ...and tries of one request, a second each, before it counts as refused
JOURNAL_FILE = "hypervisor.db"  # the hypervisor's journal, kept in the run's output folder


@dataclass
class Outcome:
    expectation: Expectation
    passed: bool
    detail: str


@dataclass
class Run:
    scenario: Scenario
    recording: Recording
    outcomes: list[Outcome] = field(default_factory=list)
    audit_ok: bool | None = None
    audit_text: str = ""
    exited: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)  # processes that misbehaved (did not start, exited)
    books: list[str] = field(default_factory=list)  # samples whose free + owned pages were not the total
    started: bool = True  # every process started and every guest registered
    real_seconds: float = 0.0

    @property
    def steps_ok(self) -> bool:
        return all(st.as_expected for st in self.recording.steps)

    @property
    def passed(self) -> bool:
        return self.started and not self.problems and not self.books and self.steps_ok and all(o.passed for o in self.outcomes)


def last_error(log: str) -> str:
    """What a process said last that explains its end: its last error line, else its last words."""
    lines = [line for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical"):
            return ": ".join(str(x) for x in [event.get("event", "error"), *(event[k] for k in ("error", "message") if k in event)])
    plain = [line for line in lines if not line.startswith("{")]
    return plain[-1].strip() if plain else "(its log is empty)"


class Runner:
    def __init__(
        self,
        scenario: Scenario,
        on_sample: Callable[[Sample], None] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.on_sample = on_sample
        self.on_step = on_step
        self.procs = Processes()
        # the run's own keys (the run's folder, removed with it; docs/protocol.md): provisioned
        # before any process starts, every process pointed at them, the runner's clients using
        # the toolstack key there; the user's own key directory is never read or written
        self.security = self.procs.own_keys()
        self.host: Host | None = None
        self.tool: Toolstack | None = None
        self.sampler: Toolstack | None = None  # samples only: one try each (see run)
        self.clock = ScenarioClock(scenario.speed)
        self.irqbus_endpoint = self.procs.ipc("irqbus") if scenario.irqbus else None
        self._line_checks: dict[Expectation, tuple[float, bool]] = {}
        self._signalled: set[int] = set()  # pids the runner stopped or killed itself
        self._told: set[int] = set()  # pids already reported as failing to start
        self._sample_if_due: Callable[[], None] = lambda: None  # the timeline's sampler, while it plays

    # --- processes -------------------------------------------------------------------------

    def _start(self, name: str, fresh: bool = False) -> None:
        """(Re)start a process as the scenario describes it. `fresh`: a guest's first start, on
        a new host (no domain of its to clean up first: no `list` per guest of a thousand)."""
        s, host = self.scenario, self.host
        if name == "hypervisor":  # with a journal it recovers the books (same boot id); without, a fresh host
            host.start()
            return
        if name == "irqbus":
            self.procs.start("irqbus", "irqbus", "serve", "--endpoint", self.irqbus_endpoint, "--log-level", "info")
            return
        device = next((d for d in s.devices if d.process == name), None)
        if device is not None:
            self.procs.start(name, "irqbus", *device.cli_args(self.irqbus_endpoint))
            return
        if not fresh and any(d["name"] == name for d in self.tool.list()):  # a guest that died leaves its domain: the toolstack cleans up first
            try:
                self.tool.destroy(name)
            except RemoteError:
                pass  # gone meanwhile
        args = s.guest(name).cli_args(host.guest_endpoint, self.irqbus_endpoint, speed=s.speed)
        assert args[0] == "run"
        self.procs.start_guest(name, [*args[1:], "--log-level", "info"])  # forked by the run's guest fleet

    def _running(self, name: str) -> bool:
        instances = self.procs.instances(name)
        return bool(instances) and instances[-1].poll() is None

    def _signal(self, name: str, sig: int) -> str:
        instances = self.procs.instances(name)
        if not self._running(name):
            return "not running"
        self._signalled.add(instances[-1].pid)
        self.procs.stop(instances[-1], sig)
        return ""

    def _expected(self, step: Step) -> StepOutcome:
        """The step's own `expect`, or what a `step` expectation says of it."""
        for exp in self.scenario.expectations:
            if exp.check is Check.STEP and exp.action is step.action and exp.target == step.target and exp.at in (None, step.at):
                return exp.outcome
        return step.expect

    def _play(self, step: Step) -> StepRecord:
        t = round(self.clock.now(), 3)
        message, outcome = "", StepOutcome.ACCEPTED
        try:
            fleet = self.scenario.fleet(step.target)
            if fleet is not None:  # the spec allows FLEET_ACTIONS only
                message = self._play_on_fleet(step, fleet.members)
                outcome = StepOutcome.REFUSED if message else outcome
            elif step.action is Action.BEHAVE:  # a running guest's control keys (wire/control.py)
                self.tool.guest_set(step.target, step.control)
            elif step.action is Action.MEM_SET:
                self.tool.mem_set(step.target, size_to_pages(step.size))
            elif step.action is Action.MEM_MAX:
                self.tool.mem_max(step.target, size_to_pages(step.size))
            elif step.action is Action.DESTROY:
                self.tool.destroy(step.target)
            elif step.action in (Action.KILL, Action.STOP):  # of a process that is not running: did nothing
                message = self._signal(step.target, signal.SIGKILL if step.action is Action.KILL else signal.SIGTERM)
                outcome = StepOutcome.REFUSED if message else outcome
            elif step.action is Action.START:
                if self._running(step.target):  # `start` is for a stopped process; `restart` stops it first
                    message, outcome = f"{step.target} is running (use restart)", StepOutcome.REFUSED
                else:
                    self._start(step.target)
            elif step.action is Action.RESTART:
                self._signal(step.target, signal.SIGTERM)
                self._start(step.target)
        except (RemoteError, Unreachable) as err:
            message, outcome = str(err), StepOutcome.REFUSED
        return StepRecord(t, step.label, str(outcome), message, str(self._expected(step)), step.at, str(step.action), step.target)

    def _play_on_fleet(self, step: Step, members: tuple[str, ...]) -> str:
        """The step on every guest of a fleet; a size range is spread over them as the fleet's
        own sizes are (guest/fleet_plan.py). Refusals, in words ("" if none).

        FLEET_CLIENTS requests at a time, each from a connection of its own: the hypervisor
        takes requests from its connections in turn, so behind a crowd of ballooning guests one
        connection gets one request in per round, and 200 in a row took 2.7 s (13 ms each);
        eight at a time spread the step over a few hundred ms."""
        sizes = SizeRange.parse(step.size) if step.size is not None else None
        local = threading.local()
        clients: list[Toolstack] = []
        lock = threading.Lock()

        def one(i: int) -> str | None:
            tool = getattr(local, "tool", None)
            if tool is None:
                # patient: behind a crowd that balloons all at once, on a loaded machine, the
                # hypervisor was seen silent for 3 s (a retry is answered from its record: safe)
                tool = local.tool = Toolstack(self.host.admin_endpoint, retries=FLEET_RETRIES, security=self.security)
                with lock:
                    clients.append(tool)
            name = members[i]
            try:
                if step.action is Action.BEHAVE:
                    tool.guest_set(name, step.control)
                elif step.action is Action.MEM_SET:
                    tool.mem_set(name, sizes.pages_for(i, len(members)))
                else:
                    tool.mem_max(name, sizes.pages_for(i, len(members)))
            except (RemoteError, Unreachable) as err:
                return f"{name}: {err}"
            return None

        pool = ThreadPoolExecutor(max_workers=min(FLEET_CLIENTS, len(members)), thread_name_prefix="fleet-step")
        refused: list[str] = []
        try:
            for first in range(0, len(members), FLEET_PART):  # the samples go on between the parts
                refused += [r for r in pool.map(one, range(first, min(first + FLEET_PART, len(members)))) if r is not None]
                self._sample_if_due()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for tool in clients:
                tool.close()
        if not refused:
            return ""
        return f"{len(refused)} of {len(members)} refused: " + listed(refused, SHOWN)

    # --- the run ---------------------------------------------------------------------------

    def run(self, out_dir: Path | None = None) -> Run:
        s = self.scenario
        real_start = time.monotonic()
        try:
            extra = ("--irqbus", self.irqbus_endpoint) if s.irqbus else ()
            extra += ("--reclaim-after", f"{self.clock.real(s.reclaim_after):g}") if s.reclaim_after is not None else ()
            try:
                self.host = Host(self.procs, memory=s.memory, extra=extra, log_level="info", state=self._journal(out_dir))
            except AssertionError:
                run = Run(s, Recording(speed=s.speed), started=False)
                run.problems.append(f"the hypervisor did not start: {last_error(self.procs.log('hypervisor'))}")
                return run
            self.tool = Toolstack(self.host.admin_endpoint, security=self.security)
            # samples ask once and move on: while the hypervisor is down, a retrying client would
            # hold the timeline back by seconds (a minute of scenario time at speed 20)
            self.sampler = Toolstack(self.host.admin_endpoint, timeout=max(0.25, self.clock.real(s.sample_interval)), retries=0, security=self.security)
            if s.irqbus:
                self._start("irqbus")
            for g in s.guests:
                self._start(g.name, fresh=True)
            failed = self._wait_registered(tuple(g.name for g in s.guests))
            if failed:
                run = Run(s, Recording(speed=s.speed), problems=failed, started=False)
                self._finish(run)
                return run
            for d in s.devices:
                self._start(d.process)
            run = Run(s, self._play_timeline())
            self._finish(run)
            run.real_seconds = time.monotonic() - real_start
            return run
        finally:
            for client in (self.tool, self.sampler):
                if client is not None:
                    client.close()
            self.procs.stop_all() if out_dir is None else self._stop_and_keep_logs(out_dir)

    def _wait_registered(self, names: tuple[str, ...]) -> list[str]:
        """Wait for every guest's domain; a guest that exits first failed to start, and why is in
        its log. Returns what went wrong, one line per guest, the first SHOWN of each kind and
        then a count (empty: all registered). A crowd registers as fast as the host takes it
        (a thousand: a minute or more on a loaded machine), so the wait gives up
        REGISTER_TIMEOUT_S after the last guest registered, not after the first was started."""
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        progress = 0
        while True:
            try:
                registered = {d["name"] for d in self.tool.list()}
            except (Unreachable, RemoteError):
                registered = set()
            if len(registered) > progress:
                progress, deadline = len(registered), time.monotonic() + REGISTER_TIMEOUT_S
            latest = dict(self.procs.procs)  # each name's latest instance
            failed = []
            waiting = []
            for name in names:
                if name in registered:
                    continue
                proc = latest[name]
                if proc.poll() is not None:
                    self._told.add(proc.pid)
                    failed.append(name)
                else:
                    waiting.append(name)
            said = [f"guest {n} did not start (exit status {latest[n].returncode}): {last_error(self.procs.log(n))}" for n in failed[:SHOWN]]
            said += [f"... and {len(failed) - SHOWN} more guests did not start (each one's log says why)"] if len(failed) > SHOWN else []
            if not waiting:
                return said
            if time.monotonic() > deadline:
                late = [f"guest {n} did not register within {REGISTER_TIMEOUT_S:g} s: {last_error(self.procs.log(n))}" for n in waiting[:SHOWN]]
                late += [f"... and {len(waiting) - SHOWN} more guests did not register within {REGISTER_TIMEOUT_S:g} s"] if len(waiting) > SHOWN else []
                return said + late
            time.sleep(0.05 if len(names) <= AGGREGATE_ABOVE else 0.25)  # each `list` of a thousand is pages of RPCs

    def _journal(self, out_dir: Path | None) -> Path | None:
        """Where this run's hypervisor keeps its journal: OUTDIR/hypervisor.db, the run's record
        (an earlier run's is removed: each run starts a new host). None: `journal = false`."""
        if not self.scenario.journal:
            return None
        if out_dir is None:
            return self.procs.dir / JOURNAL_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            (out_dir / (JOURNAL_FILE + suffix)).unlink(missing_ok=True)
        return out_dir / JOURNAL_FILE

    def _stop_and_keep_logs(self, out_dir: Path) -> None:
        logs = out_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs.stop_processes()
        for path in self.procs.dir.glob("*.log"):
            shutil.copy(path, logs / path.name)
        self.procs.stop_all()

    def _sample(self) -> Sample | None:
        """One snapshot: the pool and every domain at one instant."""
        before = self.clock.now()
        try:
            snap = self.sampler.snapshot()
        except (Unreachable, RemoteError):
            return None
        t = round((before + self.clock.now()) / 2, 3)
        return Sample(t, snap["free_pages"], {d["name"]: d for d in snap["domains"]}, snap["total_pages"])

    def _play_timeline(self) -> Recording:
        s = self.scenario
        rec = Recording(speed=s.speed)
        pending = list(s.timeline)
        self.clock.restart()
        last_sample = [0.0]

        def sample() -> None:
            last_sample[0] = time.monotonic()
            taken = self._sample()
            if taken is not None:
                rec.samples.append(taken)
                if self.on_sample:
                    self.on_sample(taken)

        def sample_if_due() -> None:  # between the parts of a long step (a thousand guests' mem-set)
            if time.monotonic() - last_sample[0] >= self.clock.real(s.sample_interval):
                sample()

        self._sample_if_due = sample_if_due
        while True:
            real_top = time.monotonic()
            t = self.clock.now()
            while pending and pending[0].at <= t:
                rec.steps.append(self._play(pending.pop(0)))
                if self.on_step:
                    self.on_step(rec.steps[-1])
            sample()
            if t >= s.duration and (self._reports_in(rec) or t >= s.duration + self.clock.scenario(GRACE_S)):
                return rec
            if not pending and self._settled(rec):
                return rec
            time.sleep(max(0.0, self.clock.real(s.sample_interval) - (time.monotonic() - real_top)))

    def _last_moment(self) -> float | None:
        return max((e.moment for e in self.scenario.expectations if e.moment is not None), default=None)

    def _reports_in(self, rec: Recording) -> bool:
        """Every driver expectation has the report it is judged on."""
        return all(driver_samples(e, rec, self.scenario) is not None for e in self.scenario.expectations if e.check in DRIVER_CHECKS)

    def _settled(self, rec: Recording) -> bool:
        """Nothing is left to watch: the run is past the last expectation's time, each driver
        expectation has its report, each line check holds, each `exited` process is gone."""
        if not rec.samples:
            return False
        t = rec.samples[-1].t
        last = self._last_moment()
        if last is not None and t < last:
            return False
        if not self._reports_in(rec):
            return False
        watched = last is not None
        for exp in self.scenario.expectations:
            if exp.check in {Check.LINE_DISABLED, Check.LINE_ENABLED}:
                watched = True
                if not self._line_holds(exp, t):
                    return False
            elif exp.check is Check.EXITED:
                watched = True
                if not all(self._gone(n) for n in _names(exp, self.scenario)):
                    return False
        return watched

    def _gone(self, name: str) -> bool:
        instances = self.procs.instances(name)
        return bool(instances) and instances[-1].poll() is not None

    def _line_holds(self, exp: Expectation, t: float) -> bool:
        """The line expectation, asked of the guests at most once a second while running.
        A line that must stay enabled is only settled once one that must go down has."""
        if exp.check is Check.LINE_ENABLED:
            return any(e.check is Check.LINE_DISABLED for e in self.scenario.expectations) and self._line_state(exp)[0]
        last = self._line_checks.get(exp)
        if last is None or t - last[0] >= self.clock.scenario(1.0):
            last = self._line_checks[exp] = (t, self._line_state(exp)[0])
        return last[1]

    def _finish(self, run: Run) -> None:
        try:
            audit = self.tool.audit()
            run.audit_ok = audit["ok"]
            run.audit_text = "books balance" if audit["ok"] else "; ".join(audit["problems"])
        except (Unreachable, RemoteError) as err:
            run.audit_ok, run.audit_text = False, f"could not ask: {err}"
        run.exited = {name for name, _ in self.procs.procs if self._gone(name)}
        run.books = unbalanced(run.recording)
        run.problems += self._misbehaved()
        if not run.started:
            return
        for exp in self.scenario.expectations:
            if exp.check is Check.AUDIT:
                run.outcomes.append(Outcome(exp, bool(run.audit_ok), run.audit_text))
            elif exp.check in {Check.LINE_DISABLED, Check.LINE_ENABLED}:
                run.outcomes.append(Outcome(exp, *self._line_state(exp)))
            elif exp.check is Check.EXITED:  # the latest instance of each: a restarted guest is running
                names = _names(exp, self.scenario)
                missing = [n for n in names if not self._gone(n)]
                wrong = [] if exp.status is None else [
                    f"{n}: status {rc}, not {exp.status}"
                    for n in names if n not in missing and (rc := self.procs.instances(n)[-1].returncode) != exp.status
                ]
                detail = "; ".join(([f"still running: {missing if len(missing) <= SHOWN else listed(missing, SHOWN, ', ')}"] if missing else []) + wrong[:SHOWN])
                run.outcomes.append(Outcome(exp, not detail, detail or "all exited" + ("" if exp.status is None else f" with status {exp.status}")))
            else:
                run.outcomes.append(Outcome(exp, *evaluate(exp, run.recording, self.scenario)))

    def _misbehaved(self) -> list[str]:
        """Processes that ended on their own with a non-zero status (the runner's own kills and
        stops, and processes an `exited` expectation names, excepted)."""
        # an `exited` expectation excuses the latest instance of each guest it names (any status,
        # or the one it gives); an earlier instance that failed on its own is still reported
        may_exit: dict[str, set[int | None]] = {}
        for e in self.scenario.expectations:
            if e.check is Check.EXITED:
                for n in _names(e, self.scenario):
                    may_exit.setdefault(n, set()).add(e.status)
        out = []
        fleet = self.procs.fleet
        if fleet is not None and fleet.problem is not None:
            out.append(f"{fleet.problem}: {last_error(fleet.log_path.read_text(errors='replace'))}")
        counts: dict[str, int] = {}
        for name, proc in self.procs.procs:
            instance = counts[name] = counts.get(name, -1) + 1
            code = proc.poll()
            if code in (None, 0) or proc.pid in self._signalled | self._told:
                continue
            excused = may_exit.get(name, set())
            if proc is self.procs.instances(name)[-1] and (None in excused or code in excused):
                continue
            which = name if instance == 0 else f"{name} (instance {instance}, {self.procs.log_of(proc).name})"
            out.append(f"{which} exited with status {code}: {last_error(self.procs.log_of(proc).read_text(errors='replace'))}")
        return out

    def _line_state(self, exp: Expectation) -> tuple[bool, str]:
        """Ask each guest, through irqbus, whether genirq disabled the line (nobody cared)."""
        client = RpcClient(self.irqbus_endpoint, server=Server.IRQBUS, timeout=1.0, retries=2, security=self.security)
        bad, seen = [], []
        try:
            for guest in _names(exp, self.scenario):
                rows = client.call("interrupts", {"guest": guest, "format": "json"}).get("rows")
                # the guest's own words: a row that is not what genirq writes counts as absent
                row = next((r for r in (rows if isinstance(rows, list) else ()) if isinstance(r, dict) and r.get("irq") == exp.irq), None)
                disabled = row is not None and "SPURIOUS_DISABLED" in str(row.get("status"))
                count = row.get("count") if row is not None and type(row.get("count")) is int else 0
                seen.append(f"{guest} irq {exp.irq}: {'disabled' if disabled else 'enabled'} after {count} interrupts")
                if disabled != (exp.check is Check.LINE_DISABLED):
                    bad.append(guest)
        except (RemoteError, Unreachable) as err:
            return False, f"could not ask: {err}"
        finally:
            client.close()
        return not bad, "; ".join(seen)


# --- judging (pure: a recording in, a verdict out) ------------------------------------------------


def unbalanced(rec: Recording) -> list[str]:
    """The samples whose books did not balance, in words (the first BOOKS_SHOWN, then a count)."""
    bad = [s for s in rec.samples if not s.balanced()]
    out = [
        f"at {s.t:.2f} s: free {s.free_pages} + domains {s.owned_pages} = {s.free_pages + s.owned_pages} pages, not the total {s.total_pages}"
        for s in bad[:BOOKS_SHOWN]
    ]
    return out + ([f"... and {len(bad) - BOOKS_SHOWN} more samples"] if len(bad) > BOOKS_SHOWN else [])


def _names(exp: Expectation, scenario: Scenario) -> tuple[str, ...]:
    """The guests an expectation is about: those it names (a fleet's name, all of its), else all."""
    if not exp.guests:
        return tuple(g.name for g in scenario.guests)
    return tuple(n for name in exp.guests for n in scenario.members(name))


def listed(items: list[str], shown: int, sep: str = "; ") -> str:
    """The first `shown` items, then how many more: a verdict about a thousand guests stays a line."""
    more = f"{sep}... and {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def _who(names: tuple[str, ...]) -> str:
    return ", ".join(names) if len(names) <= SHOWN else f"{len(names)} guests"


def driver_samples(exp: Expectation, rec: Recording, scenario: Scenario) -> dict[str, Sample] | None:
    """For each named guest, the first sample holding a report its driver sent at or after
    `exp.at` (the state column lags the pages by up to a heartbeat); None while one is missing."""
    out = {}
    for name in _names(exp, scenario):
        found = next((s for s in rec.samples if (r := s.reported_at(name, rec.speed)) is not None and r >= exp.at), None)
        if found is None:
            return None
        out[name] = found
    return out


def _in_range(value: float, exp: Expectation) -> bool:
    return (exp.low is None or value >= exp.low) and (exp.high is None or value <= exp.high)


def _range_text(exp: Expectation, show: Callable[[float], str]) -> str:
    if exp.low is not None and exp.high is not None:
        return f"{show(exp.low)}..{show(exp.high)}"
    return f">= {show(exp.low)}" if exp.low is not None else f"<= {show(exp.high)}"


def _mib(pages: float) -> str:
    return f"{pages_to_mib(int(pages))} MiB"


def stale_after(scenario: Scenario) -> float:
    """How old, in scenario seconds, the sample a check is judged on may be: two sample
    intervals and a real second of slack for a slow snapshot. Older, and the host went unseen
    (the hypervisor down or stopped), so the check cannot be judged on it."""
    return 2 * scenario.sample_interval + scenario.speed * 1.0


def evaluate(exp: Expectation, rec: Recording, scenario: Scenario) -> tuple[bool, str]:
    """Judge one expectation about the recording (not audit, exited or lines: those ask the host)."""
    if exp.check in DRIVER_CHECKS:
        return _driver(exp, rec, scenario)
    if exp.check is Check.STEP:
        steps = [st for st in rec.steps if st.action == exp.action and st.target == exp.target and exp.at in (None, st.at)]
        if not steps:
            return False, "not played"
        bad = [st for st in steps if st.outcome != exp.outcome]
        said = "; ".join(f"at {st.t:.2f} s {st.outcome}" + (f" ({st.message})" if st.message else "") for st in steps)
        return not bad, said
    when = exp.by if exp.by is not None else exp.at
    sample = rec.at(when)
    if sample is None:
        return False, f"no sample by {when:g} s"
    if rec.samples[-1].t < when and exp.check is not Check.AT_TARGET:
        return False, f"the run ended at {rec.samples[-1].t:.1f} s, before {when:g} s"
    if rec.samples[-1].t >= when and when - sample.t > stale_after(scenario):
        return False, (
            f"no sample between {sample.t:.1f} s and {when:g} s (the hypervisor did not answer): "
            f"what held at {sample.t:.1f} s says nothing of {when:g} s"
        )
    where = f"at {sample.t:.1f} s"
    if exp.check is Check.FREE:
        ok = _in_range(sample.free_pages, exp)
        return ok, f"{where}: free {_mib(sample.free_pages)} ({sample.free_pages} pages), expected {_range_text(exp, _mib)}"
    names = _names(exp, scenario)
    if exp.check is Check.SUM:
        missing = [n for n in names if n not in sample.domains]
        total = sum(sample.domains[n]["current_pages"] for n in names if n in sample.domains)
        gone = f" (no domain: {listed(missing, SHOWN, ', ')})" if missing else ""
        together = "+".join(names) if len(names) <= SHOWN else f"{len(names)} guests together"
        return _in_range(total, exp), f"{where}: {together} = {_mib(total)} ({total} pages){gone}, expected {_range_text(exp, _mib)}"
    bad = []
    for n in names:
        d = sample.domains.get(n)
        if d is None:
            bad.append(f"{n}: no domain")
            continue
        gap = d["target_pages"] - d["current_pages"]
        if exp.check is Check.AT_TARGET and abs(gap) > exp.pages:
            bad.append(f"{n}: {gap:+d} pages from target, not within {exp.pages}")
        if exp.check is Check.OFF_TARGET and abs(gap) <= exp.pages:
            bad.append(f"{n}: {gap:+d} pages from target, not more than {exp.pages}")
    if bad and len(names) > SHOWN:
        return False, f"{where}: {len(bad)} of {len(names)} guests: " + listed(bad, SHOWN)
    return (not bad), (f"{where}: " + "; ".join(bad) if bad else f"{where}: {_who(names)} ok")


def _driver(exp: Expectation, rec: Recording, scenario: Scenario) -> tuple[bool, str]:
    found = driver_samples(exp, rec, scenario)
    if found is None:
        missing = [n for n in _names(exp, scenario) if driver_samples(Expectation(exp.check, (n,), at=exp.at), rec, scenario) is None]
        return False, f"no report from {listed(missing, SHOWN, ', ')} at or after {exp.at:g} s"
    key = {Check.STATE: "state", Check.RETRY_COUNT: "retry_count", Check.SCHEDULE_DELAY: "schedule_delay"}[exp.check]
    bad, seen = [], []
    for name, sample in found.items():
        value: Any = sample.domains[name]["balloon"].get(key)
        at = sample.reported_at(name, rec.speed)
        seen.append(f"{name} {value} (reported at {at:.2f} s)")
        if exp.check is Check.STATE:
            ok = value == exp.state
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _in_range(value, exp)
        if not ok:
            bad.append(name)
    want = exp.state if exp.check is Check.STATE else _range_text(exp, lambda v: f"{v:g}")
    if len(seen) > SHOWN:  # the guests that fail it first, then a count
        first = [x for n, x in zip(found, seen) if n in bad] + [x for n, x in zip(found, seen) if n not in bad]
        return not bad, f"{len(bad)} of {len(seen)} guests not as expected: {listed(first, SHOWN)}; expected {want}"
    return not bad, f"{'; '.join(seen)}; expected {want}"
