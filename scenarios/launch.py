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


class Processes:
    """Every process started here, each with its log file; stop_all() stops them all."""

    def __init__(self, workdir: Path | None = None) -> None:
        # short paths: ipc:// endpoints are limited to about 100 bytes
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="bn-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_dir = workdir is None
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: dict[int, Path] = {}  # pid -> that instance's log
        self.env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")

    def ipc(self, name: str) -> str:
        return f"ipc://{self.dir}/{name}"

    def log_path(self, name: str, instance: int) -> Path:
        """Instance 0 of `name` logs to NAME.log, instance n (its n-th restart) to NAME.n.log."""
        return self.dir / (f"{name}.log" if instance == 0 else f"{name}.{instance}.log")

    def instances(self, name: str) -> list[subprocess.Popen]:
        """Every process started under `name`, oldest first."""
        return [p for n, p in self.procs if n == name]

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
            )
        self.procs.append((name, proc))
        self._logs[proc.pid] = path
        return proc

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

    def get(self, name: str) -> subprocess.Popen:
        return next(p for n, p in reversed(self.procs) if n == name)

    def log(self, name: str) -> str:
        """The log of the latest instance of `name`."""
        instances = self.instances(name)
        path = self._logs[instances[-1].pid] if instances else self.log_path(name, 0)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_of(self, proc: subprocess.Popen) -> Path:
        return self._logs[proc.pid]

    def log_events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log(name).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

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
