"""Real processes for end-to-end tests: started through their CLIs, always stopped."""

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
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Every process a test starts, with its log file; stop_all() runs even when the test fails."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bn-"))  # short: ipc:// paths are limited to ~100 bytes
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")

    def ipc(self, name: str) -> str:
        return f"ipc://{self.dir}/{name}"

    def start(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(self.env, **(env or {})),
            cwd=REPO,
        )
        log.close()
        self.procs.append((name, proc))
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

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

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
        shutil.rmtree(self.dir, ignore_errors=True)

    def dump_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-4000:]}" for name, _ in self.procs)


class Host:
    """A running `hypervisor serve` and the toolstack pointed at it."""

    def __init__(self, procs: Processes, memory: str = "1g", extra: tuple[str, ...] = ()) -> None:
        self.procs = procs
        self.guest_endpoint = procs.ipc("hv")
        self.admin_endpoint = procs.ipc("admin")
        self.proc = procs.start(
            "hypervisor", "hypervisor", "serve", "--memory", memory,
            "--guest-endpoint", self.guest_endpoint, "--admin-endpoint", self.admin_endpoint, "--log-level", "debug", *extra,
        )
        wait_for(lambda: self.tool("info").returncode == 0, 15, "the hypervisor to answer")

    def tool(self, *args: str) -> subprocess.CompletedProcess:
        return self.procs.run("hypervisor", *args, "--admin-endpoint", self.admin_endpoint)

    def json(self, command: str) -> Any:
        result = self.tool(command, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def domains(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.json("list")}

    def guest(self, name: str, *args: str) -> subprocess.Popen:
        """`guest run` against this host, with test-speed timers unless the test gives its own."""
        defaults = {"--retry-delay": "0.1", "--max-retry-delay": "0.8", "--heartbeat": "0.2"}
        extra = [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
        return self.procs.start(
            name, "guest", "run", "--name", name, "--hypervisor", self.guest_endpoint, "--log-level", "debug", *extra, *args
        )

    def wait_registered(self, *names: str, timeout: float = 15) -> None:
        wait_for(lambda: set(names) <= set(self.domains()), timeout, f"guests {names} to register")

    def wait_converged(self, names: tuple[str, ...], timeout: float) -> dict[str, dict[str, Any]]:
        """Until every named domain holds its target and its driver reports done."""

        def converged() -> dict[str, dict[str, Any]] | None:
            doms = self.domains()
            ok = all(
                n in doms and doms[n]["current_pages"] == doms[n]["target_pages"] and doms[n]["balloon"].get("state") == "done"
                for n in names
            )
            return doms if ok else None

        return wait_for(converged, timeout, f"{names} to reach their targets", interval=0.2)
