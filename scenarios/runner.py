"""Play a scenario for real: start every process through its CLI, play the timeline, record the
host, check the expectations, and leave a report, the series (CSV, JSON) and a plot."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypervisor.toolstack import Toolstack
from scenarios.launch import Host, Processes
from scenarios.recording import Recording, Sample
from scenarios.spec import Action, Check, Expectation, Scenario
from wire.client import RpcClient
from wire.errors import RemoteError, Unreachable
from wire.sizes import size_to_pages


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

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


class Runner:
    def __init__(self, scenario: Scenario, on_sample: Callable[[Sample], None] | None = None, on_step: Callable[[float, str], None] | None = None) -> None:
        self.scenario = scenario
        self.on_sample = on_sample
        self.on_step = on_step
        self.procs = Processes()
        self.host: Host | None = None
        self.irqbus_endpoint = self.procs.ipc("irqbus") if scenario.irqbus else None
        self._line_checks: dict[Expectation, tuple[float, bool]] = {}

    # --- processes -------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        """(Re)start a process as the scenario describes it."""
        s, host = self.scenario, self.host
        if name == "hypervisor":  # a fresh one, as `hypervisor serve` starts today: no domains, a new boot id
            host.start()
            return
        if name == "irqbus":
            self.procs.start("irqbus", "irqbus", "serve", "--endpoint", self.irqbus_endpoint, "--log-level", "info")
            return
        device = next((d for d in s.devices if d.process == name), None)
        if device is not None:
            self.procs.start(name, "irqbus", *device.cli_args(self.irqbus_endpoint))
            return
        if name in host.domains():  # a guest that died leaves its domain: the toolstack cleans up first
            host.tool("destroy", name)
        self.procs.start(name, "guest", *s.guest(name).cli_args(host.guest_endpoint, self.irqbus_endpoint), "--log-level", "info")

    def _signal(self, name: str, sig: int) -> None:
        try:
            proc = self.procs.get(name)
        except StopIteration:
            return
        self.procs.stop(proc, sig)

    def _play(self, tool: Toolstack, step_action: Action, target: str, size: str | None) -> str:
        try:
            if step_action is Action.MEM_SET:
                tool.mem_set(target, size_to_pages(size))
            elif step_action is Action.MEM_MAX:
                tool.mem_max(target, size_to_pages(size))
            elif step_action is Action.DESTROY:
                tool.destroy(target)
            elif step_action is Action.KILL:
                self._signal(target, signal.SIGKILL)
            elif step_action is Action.STOP:
                self._signal(target, signal.SIGTERM)
            elif step_action is Action.START:
                self._start(target)
            elif step_action is Action.RESTART:
                self._signal(target, signal.SIGTERM)
                self._start(target)
        except (RemoteError, Unreachable) as err:
            return f"{step_action} {target}: failed: {err}"
        return f"{step_action} {target}" + (f" {size}" if size else "")

    # --- the run ---------------------------------------------------------------------------

    def run(self, out_dir: Path | None = None) -> Run:
        s = self.scenario
        try:
            extra = ("--irqbus", self.irqbus_endpoint) if s.irqbus else ()
            self.host = Host(self.procs, memory=s.memory, extra=extra, log_level="info")
            if s.irqbus:
                self._start("irqbus")
            for g in s.guests:
                self._start(g.name)
            self.host.wait_registered(*(g.name for g in s.guests), timeout=30)
            for d in s.devices:
                self._start(d.process)
            run = Run(s, self._play_timeline())
            self._finish(run)
            return run
        finally:
            self.procs.stop_all() if out_dir is None else self._stop_and_keep_logs(out_dir)

    def _stop_and_keep_logs(self, out_dir: Path) -> None:
        logs = out_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name, proc in reversed(self.procs.procs):
            self.procs.stop(proc)
        for path in self.procs.dir.glob("*.log"):
            shutil.copy(path, logs / path.name)
        self.procs.stop_all()

    def _play_timeline(self) -> Recording:
        s = self.scenario
        rec = Recording()
        pending = list(s.timeline)
        tool = Toolstack(self.host.admin_endpoint)
        start = time.monotonic()
        try:
            while True:
                t = time.monotonic() - start
                while pending and pending[0].at <= t:
                    step = pending.pop(0)
                    label = self._play(tool, step.action, step.target, step.size)
                    rec.steps.append((round(time.monotonic() - start, 3), label))
                    if self.on_step:
                        self.on_step(rec.steps[-1][0], label)
                try:
                    domains = {d["name"]: d for d in tool.list()}
                    rec.samples.append(Sample(round(time.monotonic() - start, 3), tool.info()["free_pages"], domains))
                    if self.on_sample:
                        self.on_sample(rec.samples[-1])
                except Unreachable:
                    pass
                if t >= s.duration or (not pending and self._settled(rec)):
                    return rec
                time.sleep(max(0.0, s.sample_interval - (time.monotonic() - start - t)))
        finally:
            tool.close()

    def _settled(self, rec: Recording) -> bool:
        """Every expectation about the run is decided and holds: nothing is left to watch."""
        if not rec.samples:
            return False
        t = rec.samples[-1].t
        watched = False
        for exp in self.scenario.expectations:
            if exp.check is Check.OFF_TARGET:
                watched = True
                if t < exp.by:
                    return False
            elif exp.check is Check.AT_TARGET:
                watched = True
                if not evaluate(exp, rec, self.scenario)[0]:
                    return False
            elif exp.check in {Check.LINE_DISABLED, Check.LINE_ENABLED}:
                watched = True
                if not self._line_holds(exp, t):
                    return False
        return watched

    def _line_holds(self, exp: Expectation, t: float) -> bool:
        """The line expectation, asked of the guests at most once a second while running.
        A line that must stay enabled is only settled once one that must go down has."""
        if exp.check is Check.LINE_ENABLED:
            return any(e.check is Check.LINE_DISABLED for e in self.scenario.expectations) and self._line_state(exp)[0]
        last = self._line_checks.get(exp)
        if last is None or t - last[0] >= 1.0:
            last = self._line_checks[exp] = (t, self._line_state(exp)[0])
        return last[1]

    def _finish(self, run: Run) -> None:
        audit = self.host.tool("audit")
        run.audit_ok, run.audit_text = audit.returncode == 0, (audit.stdout or audit.stderr).strip()
        run.exited = {name for name, proc in self.procs.procs if proc.poll() is not None}
        for exp in self.scenario.expectations:
            if exp.check is Check.AUDIT:
                run.outcomes.append(Outcome(exp, bool(run.audit_ok), run.audit_text))
            elif exp.check in {Check.LINE_DISABLED, Check.LINE_ENABLED}:
                run.outcomes.append(Outcome(exp, *self._line_state(exp)))
            elif exp.check is Check.EXITED:
                missing = [n for n in exp.guests if n not in run.exited]
                wrong = [] if exp.status is None else [
                    f"{n}: status {rc}, not {exp.status}" for n in exp.guests if n not in missing and (rc := self.procs.get(n).returncode) != exp.status
                ]
                detail = "; ".join(([f"still running: {missing}"] if missing else []) + wrong)
                run.outcomes.append(Outcome(exp, not detail, detail or "all exited" + ("" if exp.status is None else f" with status {exp.status}")))
            else:
                ok, detail = evaluate(exp, run.recording, self.scenario)
                run.outcomes.append(Outcome(exp, ok, detail))


    def _line_state(self, exp: Expectation) -> tuple[bool, str]:
        """Ask each guest, through irqbus, whether genirq disabled the line (nobody cared)."""
        client = RpcClient(self.irqbus_endpoint, timeout=1.0, retries=2)
        bad, seen = [], []
        try:
            for guest in exp.guests:
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


def evaluate(exp: Expectation, rec: Recording, scenario: Scenario) -> tuple[bool, str]:
    """Judge an at-target / off-target expectation on the last sample taken by `exp.by`."""
    names = exp.guests or tuple(g.name for g in scenario.guests)
    sample = rec.at(exp.by)
    if sample is None:
        return False, f"no sample by {exp.by:g} s"
    if rec.samples[-1].t < exp.by and exp.check is Check.OFF_TARGET:
        return False, f"the run ended at {rec.samples[-1].t:.1f} s, before {exp.by:g} s"
    bad = []
    for n in names:
        d = sample.domains.get(n)
        if d is None:
            bad.append(f"{n}: no domain")
            continue
        gap = d["target_pages"] - d["current_pages"]
        if exp.check is Check.AT_TARGET and abs(gap) > exp.pages:
            bad.append(f"{n}: {gap:+d} pages from target")
        if exp.check is Check.OFF_TARGET and abs(gap) <= exp.pages:
            bad.append(f"{n}: {gap:+d} pages from target")
    where = f"at {sample.t:.1f} s"
    return (not bad), (f"{where}: " + "; ".join(bad) if bad else f"{where}: {', '.join(names)} ok")
