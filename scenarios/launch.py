"""Start ballonet's processes through their CLIs, keep their logs, and always stop them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scenarios.fleet_control import FleetGuest, GuestFleet
from wire.keys import KEYS_ENV, KeyDir, Role
from wire.security import Security

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; its value is returned. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def provision(keys: KeyDir) -> Security:
    """The servers' keys (hypervisor: role hypervisor, for irqbus; irqbus: a server only) and the
    toolstack's, as a host's are provisioned (`ballonet keys create`): a server writes its public
    key on first use anyway, but its clients would wait for it (wire.security.setup)."""
    keys.pair("hypervisor", role=Role.HYPERVISOR)
    keys.pair("irqbus")
    return Security.curve(keys, "toolstack", Role.TOOLSTACK)


SERVERS = ("irqbus", "hypervisor")  # stopped after every other process, in this order
FLEET_LOG = "guest-fleet.log"  # the fleet process's own log (each guest has its own)
Process = subprocess.Popen | FleetGuest


class Processes:
    """Every process started here, each with its log file; stop_all() stops them all."""

    def __init__(self, workdir: Path | None = None, own_groups: bool = False) -> None:
        """own_groups: each process in a process group of its own, which stop() kills whole once
        its leader is gone, so nothing a killed process started (a scenario runner's guests) is
        left behind. The tests' choice; the runner itself keeps its children in its own group,
        so a Ctrl-C at the terminal reaches them and killing its group kills them."""
        # short paths: ipc:// endpoints are limited to about 100 bytes
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="bn-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_dir = workdir is None
        self.procs: list[tuple[str, Process]] = []
        self._instances: dict[str, list[Process]] = {}  # name -> its instances, oldest first (a crowd's lookups stay O(1))
        self._logs: dict[int, Path] = {}  # id(process) -> that instance's log
        self.fleet: GuestFleet | None = None  # forks the guests of start_guest, started on first use
        self.env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.own_groups = own_groups
        self.keys: KeyDir | None = None  # own_keys(); else the processes inherit $BALLONET_KEYS

    def own_keys(self) -> Security:
        """A key directory of this run's own (DIR/keys, 0700, gone with DIR): the hypervisor's,
        irqbus's and the toolstack's keys made before any process starts, and every process
        started from now on pointed at it ($BALLONET_KEYS). Returns the toolstack's setting, for
        the run's own clients (`security=`): a run never reads or writes the user's keys, and two
        runs never share one."""
        self.keys = KeyDir(self.dir / "keys")
        self.env[KEYS_ENV] = str(self.keys.path)
        return provision(self.keys)

    def ipc(self, name: str) -> str:
        return f"ipc://{self.dir}/{name}"

    def log_path(self, name: str, instance: int) -> Path:
        """Instance 0 of `name` logs to NAME.log, instance n (its n-th restart) to NAME.n.log."""
        return self.dir / (f"{name}.log" if instance == 0 else f"{name}.{instance}.log")

    def instances(self, name: str) -> list[Process]:
        """Every process started under `name`, oldest first."""
        return list(self._instances.get(name, ()))

    def start(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start `module` as `name`; a name started again keeps the earlier instances' logs."""
        path = self.log_path(name, len(self.instances(name)))
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env, **(env or {})),
                cwd=REPO,
                start_new_session=self.own_groups,
            )
        self._add(name, proc, path)
        return proc

    def start_guest(self, name: str, argv: list[str]) -> FleetGuest:
        """`guest run ARGV` as `name`, forked by this run's one `guest fleet --control` process
        (scenarios/fleet_control.py) rather than started as an interpreter of its own: its own
        process, log (NAME.log, NAME.1.log...) and exit status all the same."""
        if self.fleet is None:
            self.fleet = GuestFleet(self.env, REPO, self.dir / FLEET_LOG, own_group=self.own_groups)
        path = self.log_path(name, len(self.instances(name)))
        guest = self.fleet.start(name, argv, path)
        self._add(name, guest, path)
        return guest

    def _add(self, name: str, proc: Process, log: Path) -> None:
        self.procs.append((name, proc))
        self._instances.setdefault(name, []).append(proc)
        self._logs[id(proc)] = log

    def run(self, module: str, *args: str, timeout: float = 20, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A short-lived CLI command (a toolstack client)."""
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(self.env, **(env or {})),
            cwd=REPO,
        )

    def get(self, name: str) -> Process:
        return self._instances[name][-1]

    def log(self, name: str) -> str:
        """The log of the latest instance of `name`."""
        instances = self.instances(name)
        path = self._logs[id(instances[-1])] if instances else self.log_path(name, 0)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_of(self, proc: Process) -> Path:
        return self._logs[id(proc)]

    def log_events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log(name).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, proc: Process, sig: int = signal.SIGTERM, timeout: float = 5) -> int | None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.own_groups and not isinstance(proc, FleetGuest):  # a forked guest leads no group  # whatever it started and left behind, even if it was killed mid-cleanup
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process (stop_processes), then remove the working folder if it is ours."""
        self.stop_processes()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_processes(self) -> None:
        """Newest first, but the servers last: a hypervisor restarted mid-run is newer than its
        guests, and a guest stopped after it could not shut its domain down (it stayed in the
        journal); devices go before the irqbus they raise on. The fleet's guests go all at once
        (the fleet SIGTERMs every one, then SIGKILLs what is left after its stop timeout), so a
        thousand take seconds, not one after the other."""
        ordered = list(reversed(self.procs))
        for name, proc in ordered:
            if name not in SERVERS and not isinstance(proc, FleetGuest):
                self.stop(proc)
        if self.fleet is not None:
            self.fleet.stop()
            if self.own_groups:
                self.fleet.kill_group()
            self.fleet = None
        for server in SERVERS:
            for name, proc in ordered:
                if name == server:
                    self.stop(proc)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-4000:]}" for name, _ in self.procs)


class Host:
    """A running `hypervisor serve`, the toolstack pointed at it, and its guests."""

    def __init__(
        self, procs: Processes, memory: str = "1g", extra: tuple[str, ...] = (), log_level: str = "debug", state: Path | None = None,
    ) -> None:
        """`state`: the hypervisor's journal (`--state`); without it, each start is a host reboot."""
        self.procs = procs
        self.guest_endpoint = procs.ipc("hv")
        self.admin_endpoint = procs.ipc("admin")
        self.state = state
        journal = ("--state", str(state)) if state is not None else ()
        self._serve_args = (
            "serve", "--memory", memory,
            "--guest-endpoint", self.guest_endpoint, "--admin-endpoint", self.admin_endpoint, "--log-level", log_level,
            *journal, *extra,
        )
        self.start()
        self.wait_serving()

    def start(self) -> subprocess.Popen:
        """Start `hypervisor serve` as this host runs it (again, after a stop: one that recovers
        its journal, or a fresh one without)."""
        self.proc = self.procs.start("hypervisor", "hypervisor", *self._serve_args)
        return self.proc

    def wait_serving(self, timeout: float = 15) -> None:
        wait_for(lambda: self.tool("info").returncode == 0, timeout, "the hypervisor to answer")

    def tool(self, *args: str) -> subprocess.CompletedProcess:
        return self.procs.run("hypervisor", *args, "--admin-endpoint", self.admin_endpoint)

    def json(self, command: str) -> Any:
        result = self.tool(command, "--json")
        if result.returncode != 0:
            raise RuntimeError(f"hypervisor {command} failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def domains(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.json("list")}

    def guest(self, name: str, *args: str, log_level: str = "debug") -> subprocess.Popen:
        return self.procs.start(name, "guest", "run", "--name", name, "--hypervisor", self.guest_endpoint, "--log-level", log_level, *args)

    def wait_registered(self, *names: str, timeout: float = 15) -> None:
        wait_for(lambda: set(names) <= set(self.domains()), timeout, f"guests {names} to register")

    def converged(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
        """The domains, when every named one holds its target and its driver reports done."""
        doms = self.domains()
        ok = all(
            n in doms and doms[n]["current_pages"] == doms[n]["target_pages"] and doms[n]["balloon"].get("state") == "done"
            for n in names
        )
        return doms if ok else None

    def wait_converged(self, names: tuple[str, ...], timeout: float) -> dict[str, dict[str, Any]]:
        return wait_for(lambda: self.converged(names), timeout, f"{names} to reach their targets", interval=0.2)
