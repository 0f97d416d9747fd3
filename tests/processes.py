"""Real processes for end-to-end tests: scenarios.launch, with timers at test speed."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import zmq

from scenarios.launch import REPO, Processes, wait_for
from scenarios.launch import Host as _Host
from wire import security
from wire.security import Server

__all__ = ["REPO", "Host", "Irqbus", "Processes", "wait_for"]

# test-speed timers, and no kernel floor: the tests' guests are a few MiB, below any kernel's
# minimum_target() (a test of the floor passes --kernel-floor itself)
TEST_TIMERS = {"--retry-delay": "0.1", "--max-retry-delay": "0.8", "--heartbeat": "0.2", "--kernel-floor": "none"}


class Host(_Host):
    def guest(self, name: str, *args: str, log_level: str = "debug") -> subprocess.Popen:
        """`guest run` with test-speed timers unless the test gives its own."""
        extra = [x for flag, value in TEST_TIMERS.items() if flag not in args for x in (flag, value)]
        return super().guest(name, *extra, *args, log_level=log_level)


class Irqbus:
    """A running `irqbus serve` and its CLI pointed at it."""

    def __init__(self, procs: Processes, extra: tuple[str, ...] = ()) -> None:
        self.procs = procs
        self.endpoint = procs.ipc("irq")
        self.proc = procs.start("irqbus", "irqbus", "serve", "--endpoint", self.endpoint, *extra)
        wait_for(lambda: self.cmd("show").returncode == 0, 15, "irqbus to answer")

    def cmd(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return self.procs.run("irqbus", *args, "--endpoint", self.endpoint, timeout=timeout)

    def show(self) -> dict[str, dict[str, Any]]:
        """The attached guests by name, as `irqbus show --json` reports them."""
        result = self.cmd("show", "--json")
        assert result.returncode == 0, result.stderr
        return {g["name"]: g for g in json.loads(result.stdout)["guests"]}

    def device(self, name: str, *args: str) -> subprocess.Popen:
        """`irqbus device` as a process whose log (stdout and stderr) is `name`."""
        return self.procs.start(name, "irqbus", "device", *args, "--endpoint", self.endpoint)

    def interrupts(self, guest: str) -> dict[int, dict[str, Any]]:
        """The guest's /proc/interrupts rows by IRQ number (`guest interrupts --json`)."""
        result = self.procs.run("guest", "interrupts", guest, "--json", "--irqbus", self.endpoint)
        assert result.returncode == 0, result.stderr
        return {row["irq"]: row for row in json.loads(result.stdout)}

    def handled(self, guest: str, irq: int) -> dict[str, int]:
        """How often each action on `irq` said HANDLED."""
        row = self.interrupts(guest).get(irq)
        return {a["name"]: a["handled"] for a in row["actions"]} if row else {}


def secure(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    """CURVE for a test's raw socket, as for the tests' own clients (the run's toolstack key):
    irqbus's endpoints are named irq*, the hypervisor's anything else (scenarios.launch)."""
    server = Server.IRQBUS if endpoint.rsplit("/", 1)[-1].startswith("irq") else Server.HYPERVISOR
    security.current().secure_client(sock, server)
    return sock
