"""The runner's side of `guest fleet --control` (guest/fleet.py): one fleet process per run forks
every guest, and each guest gets a handle that behaves like the `subprocess.Popen` the runner
used to hold for a `guest run` of its own (pid, poll, returncode, send_signal, wait), fed by the
fleet's events. A thousand guests are then a thousand forks of one interpreter, not a thousand
cold interpreters, and everything the runner does to one guest (kill it, stop it, start it again,
read its log and exit status) works as before.

`FleetBook` is the bookkeeping (no I/O): which start each event answers, which handle a pid is.
`GuestFleet` is the shell: the process, its pipes, and a thread that reads its events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

STOP_TIMEOUT_S = 5.0  # the fleet's --stop-timeout: all guests together, then SIGKILL
START_TIMEOUT_S = 30.0  # real seconds a caller of `pid` waits for the fleet to answer that start
STATUS_USAGE = 2  # `guest run`'s exit status for flags it refuses (guest.cli.GuestExit.USAGE)


class FleetGuest:
    """One guest forked by the fleet, as a Popen-like handle. `pid` is known once the fleet
    answered its start; a start the fleet refused is a process that exited with status 2 at
    once (as `guest run` does on bad flags), its reason in its log."""

    def __init__(self, fleet: GuestFleet, name: str, argv: list[str], log_path: Path) -> None:
        self.fleet = fleet
        self.name = name
        self.args = ["guest", "run", *argv]
        self.log_path = log_path
        self._pid: int | None = None
        self.returncode: int | None = None
        self.answered = False  # the fleet said started or refused

    @property
    def pid(self) -> int | None:
        """The guest's pid; waits for the fleet's answer to its start. None if it never started."""
        self.fleet.wait_answer(self)
        return self._pid

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.fleet.wait_until(lambda: self.returncode is not None, timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the guest's process, unless it has ended (as Popen.send_signal)."""
        pid = self.pid
        if pid is None or self.returncode is not None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # ended; its event is on the way

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class FleetBook:
    """What the fleet has said so far. Each start is answered by exactly one `started` or
    `refused` event, in the order of the starts; `exited` names the pid."""

    pending: deque[FleetGuest] = field(default_factory=deque)
    running: dict[int, FleetGuest] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # events that answered nothing

    def sent(self, guest: FleetGuest) -> None:
        self.pending.append(guest)

    def on_event(self, event: dict[str, Any]) -> FleetGuest | None:
        """Apply one event; the handle it was about (None: about nothing we started)."""
        kind = event.get("event")
        if kind in ("started", "refused"):
            if not self.pending or (event.get("name") not in (None, self.pending[0].name)):
                self.unexpected.append(json.dumps(event)[:200])
                return None
            guest = self.pending.popleft()
            guest.answered = True
            if kind == "started" and type(event.get("pid")) is int:
                guest._pid = event["pid"]
                self.running[event["pid"]] = guest
            else:
                guest.returncode = STATUS_USAGE
                _append(guest.log_path, f"guest run: {event.get('error', 'refused by the fleet')}\n")
            return guest
        if kind == "exited" and type(event.get("pid")) is int and type(event.get("status")) is int:
            guest = self.running.pop(event["pid"], None)
            if guest is None:
                self.unexpected.append(json.dumps(event)[:200])
                return None
            guest.returncode = event["status"]
            return guest
        self.unexpected.append(json.dumps(event)[:200])
        return None

    def lost(self, why: str) -> list[FleetGuest]:
        """The fleet is gone: nothing more will be answered. Every start not answered is a guest
        that never started; returns the guests still running (orphans, for the caller to kill)."""
        while self.pending:
            guest = self.pending.popleft()
            guest.answered = True
            guest.returncode = STATUS_USAGE
            _append(guest.log_path, f"guest fleet: {why}: this guest was never started\n")
        orphans = list(self.running.values())
        self.running.clear()
        return orphans


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


class GuestFleet:
    """A `guest fleet --control` process and the guests it forked for us."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path, own_group: bool, stop_timeout: float = STOP_TIMEOUT_S) -> None:
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.book = FleetBook()
        self._cond = threading.Condition()
        self._stopping = False
        self.problem: str | None = None  # the fleet ended while guests still needed it
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # --nice 0: a scenario's guests compete for the CPU as guests started alone do
                # (an interrupt storm's guest at niceness 10 fell short of Linux's 100,000)
                [sys.executable, "-m", "guest", "fleet", "--control", "--nice", "0", "--stop-timeout", f"{stop_timeout:g}", "--log-level", "info"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=cwd,
                start_new_session=own_group, text=True, bufsize=1,
            )
        self._reader = threading.Thread(target=self._read_events, args=(self.proc.stdout,), name="guest-fleet-events", daemon=True)
        self._reader.start()

    # --- starting guests ---------------------------------------------------------------------

    def start(self, name: str, argv: list[str], log_path: Path) -> FleetGuest:
        """Ask for one guest (`guest run ARGV`, logging to `log_path`); returns at once. The
        fleet forks in order; the handle learns its pid when the fleet answers."""
        log_path.write_bytes(b"")  # a fresh log, as Processes.start gives each instance
        guest = FleetGuest(self, name, list(argv), log_path)
        with self._cond:
            self.book.sent(guest)
            if self.problem is not None:
                self.book.lost(self.problem)
                return guest
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "start", "argv": list(argv), "log": str(log_path)}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._lose(f"the guest fleet is gone ({self._status_text()})")
        return guest

    def wait_answer(self, guest: FleetGuest) -> None:
        """Until the fleet answered the guest's start, or START_TIMEOUT_S (its pid stays None:
        nothing is signalled; a fleet that hangs shows as guests that never register)."""
        self.wait_until(lambda: guest.answered, START_TIMEOUT_S)

    def wait_until(self, predicate: Any, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # --- events --------------------------------------------------------------------------------

    def _read_events(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                with self._cond:
                    self.book.on_event(event)
                    self._cond.notify_all()
        self.proc.wait()
        if not self._stopping:
            self._lose(f"the guest fleet exited on its own ({self._status_text()})")
        else:
            self._lose("the guest fleet stopped")

    def _status_text(self) -> str:
        code = self.proc.poll()
        return "still running" if code is None else f"status {code}"

    def _lose(self, why: str) -> None:
        """Nothing more will come from the fleet: settle every handle, kill orphaned guests."""
        with self._cond:
            if self.problem is None and not self._stopping:
                self.problem = why
            orphans = self.book.lost(why)
            for guest in orphans:
                if guest._pid:  # never 0: os.kill(0, ...) would signal our own process group
                    try:
                        os.kill(guest._pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                guest.returncode = -signal.SIGKILL
            self._cond.notify_all()

    # --- stopping ------------------------------------------------------------------------------

    def running(self) -> list[FleetGuest]:
        with self._cond:
            return list(self.book.running.values())

    def stop(self) -> None:
        """Every guest at once: the fleet SIGTERMs them all and SIGKILLs what is left after its
        stop timeout, then exits; bounded by that timeout, however many guests there are."""
        with self._cond:
            already = self._stopping
            self._stopping = True
        if already and self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # EOF: stop every guest, then exit
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(self.stop_timeout + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        self._lose("the guest fleet stopped")  # any guest it did not report: killed here
        if self.proc.stdout is not None:
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    def kill_group(self) -> None:
        """With a process group of its own: whatever of it is left, at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
