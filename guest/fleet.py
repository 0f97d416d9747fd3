"""`guest fleet`: many guests, each its own OS process, forked from one interpreter.

A guest started alone (`guest run`) is a fresh interpreter: about 0.1 s of imports and ~30 MB
that no other process shares, so a thousand of them take minutes and more memory than a small
host has. The fleet imports everything once, then forks one child per guest. The children
share the interpreter's pages copy-on-write (`gc.freeze()` first, so that a collection in a
child does not write to, and so copy, every object the parent made). Each child is still a
whole guest: its own process, its own key, its own ZeroMQ context and sockets, opened after
the fork (a context must never cross a fork: its I/O threads do not), and it runs exactly
`guest run`'s code, so it behaves as one started alone.

Each guest runs at niceness NICE over the fleet's (`--nice`), below the host's own services.

The fleet process supervises: it reaps children and logs how each ended, and on SIGTERM or
Ctrl-C it passes SIGTERM to every guest (each shuts its domain down as `guest run` does), waits
`--stop-timeout` seconds for all of them together, then SIGKILLs the rest. Stopping is bounded
by that one timeout, however many guests there are.

With `--control` it is a launcher for another program (the scenario runner): it reads one JSON
object per line on stdin and writes one per line on stdout:
  in:  {"op": "start", "argv": [...`guest run` flags...], "log": "PATH"}   (log optional)
       {"op": "stop"}                          stop every guest, then exit (as EOF does)
  out: {"event": "started", "name": N, "pid": P}
       {"event": "refused", "name": N, "error": "..."}      (flags `guest run` would refuse)
       {"event": "exited", "name": N, "pid": P, "status": S}  (S: the exit status, or -SIGNAL)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from guest.fleet_plan import GuestLaunch
from wire import logsetup
from wire.signals import STOP_SIGNALS, StopFlag, stop_on_signals

STOP_TIMEOUT_S = 10.0
# The guests' niceness, over the fleet's: a host's hundreds of guests, runnable together after a
# host-wide mem-set, otherwise take the CPU from the one hypervisor they all wait on (and from
# the toolstack and irqbus): 1,000 guests registered in 31 s at 0, 21 s at 10 (scale_bench).
NICE = 10
POLL_S = 0.05  # the supervisor's longest sleep: reaping and the stop flag
STATUS_CRASHED = 70  # EX_SOFTWARE: a child whose guest raised


RunGuest = Callable[[argparse.Namespace, StopFlag], int]


@dataclass
class Child:
    """A forked guest, while it runs."""

    launch: GuestLaunch
    pid: int
    started_at: float


@dataclass
class Ended:
    name: str
    pid: int
    status: int  # exit status, or -SIGNAL


@dataclass
class Fleet:
    """The forked guests of one fleet process. `run_guest` is `guest run`'s body; it runs in the
    child with the parsed flags and its return value is the child's exit status."""

    run_guest: RunGuest
    log: Any
    log_dir: Path | None = None
    nice: int = 0  # added to each guest's niceness (see NICE)
    clock: Callable[[], float] = time.monotonic
    children: dict[int, Child] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)

    def start(self, launch: GuestLaunch, args: argparse.Namespace, log_path: Path | None = None) -> int:
        """Fork one guest; returns its pid (in the parent only: the child never returns)."""
        path = log_path or (self.log_dir / f"{launch.name}.log" if self.log_dir else None)
        # the child is born with SIGTERM and SIGINT held, and lets them in once its own handler
        # is there: one sent the moment it exists is a stop, never a death or the fleet's flag
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _become_guest(self.run_guest, args, path, self.nice)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self.children[pid] = Child(launch, pid, self.clock())
        self.log.debug("guest started", name=launch.name, pid=pid)
        return pid

    def reap(self) -> list[Ended]:
        """The children that ended since the last call (never blocks)."""
        ended = []
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            status = os.waitstatus_to_exitcode(wait_status)
            ended.append(Ended(child.launch.name, pid, status))
        self.ended.extend(ended)
        return ended

    def stop(self, timeout: float = STOP_TIMEOUT_S, on_ended: Callable[[Ended], None] = lambda e: None) -> list[str]:
        """SIGTERM every guest, wait up to `timeout` for all, SIGKILL the rest; returns the names
        of those killed."""
        self._signal_all(signal.SIGTERM)
        deadline = self.clock() + timeout
        while self.children and self.clock() < deadline:
            for ended in self.reap():
                on_ended(ended)
            time.sleep(POLL_S / 5)
        killed = [c.launch.name for c in self.children.values()]
        if killed:
            self.log.warning("guests did not stop in time: killed", count=len(killed), timeout_s=timeout, first=killed[:5])
            self._signal_all(signal.SIGKILL)
            while self.children:
                for ended in self.reap():
                    on_ended(ended)
                time.sleep(POLL_S / 5)
        return killed

    def _signal_all(self, sig: signal.Signals) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # ended; reaped next


def prepare_for_fork() -> None:
    """Once, in the parent, before the first fork: everything a guest imports is imported, and
    the collector leaves what exists alone from now on (in the parent and in every child)."""
    import guest.service  # noqa: F401  (the guest's whole graph: zmq, msgpack, structlog, genirq)
    import guest.irqlink  # noqa: F401
    import wire.keys  # noqa: F401

    gc.collect()
    gc.freeze()


def _become_guest(run_guest: RunGuest, args: argparse.Namespace, log_path: Path | None, nice: int = 0) -> None:
    """The child's side of the fork: a plain process again, then `guest run`; exits, never
    returns (no atexit handler or `finally` of the parent's may run in it)."""
    status = STATUS_CRASHED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stop = stop_on_signals()  # then a SIGTERM held since the fork sets this flag
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # also what a parent mid-stop held off
        if nice:
            os.nice(nice)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # never read the fleet's control stream
        os.close(devnull)
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        os.dup2(2, 1)  # never write into the fleet's event stream
        logsetup.reset()
        status = run_guest(args, stop)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 2
    except BaseException:  # noqa: BLE001 - the child's last word, then its exit status
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status & 0xFF)


def describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class ControlReader:
    """Lines on a file descriptor without blocking: whole lines only, at most MAX_LINE each."""

    MAX_LINE = 1 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def wait(self, timeout: float) -> list[str | None]:
        """The lines that arrived within `timeout`; None for one longer than MAX_LINE."""
        if self.closed:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.closed = True
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > self.MAX_LINE:
            self.buffer = b""
            return [None]
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]


def supervise(
    fleet: Fleet,
    launches: list[tuple[GuestLaunch, argparse.Namespace]],
    should_stop: Callable[[], bool],
    parse_guest: Callable[[list[str]], tuple[GuestLaunch, argparse.Namespace]],
    start_rate: float | None = None,
    stop_timeout: float = STOP_TIMEOUT_S,
    control: ControlReader | None = None,
    events: IO[str] | None = None,
) -> int:
    """Start the planned guests (at most `start_rate` a second), then reap them until every one
    has ended or a stop is asked (a signal; with `--control`, `stop` or EOF). 0 when every guest
    ended with status 0, 1 otherwise."""
    log = fleet.log
    began = fleet.clock()
    pending = list(reversed(launches))
    failed: list[Ended] = []
    refused = 0

    def emit(event: dict[str, Any]) -> None:
        if events is not None:
            events.write(json.dumps(event) + "\n")
            events.flush()

    def ended(e: Ended) -> None:
        emit({"event": "exited", "name": e.name, "pid": e.pid, "status": e.status})
        if e.status != 0:
            failed.append(e)
            log.warning("guest exited", name=e.name, pid=e.pid, status=e.status, how=describe(e.status))
        else:
            log.debug("guest exited", name=e.name, pid=e.pid, status=0)

    def start(launch: GuestLaunch, args: argparse.Namespace, log_path: Path | None = None) -> None:
        pid = fleet.start(launch, args, log_path)
        emit({"event": "started", "name": launch.name, "pid": pid})

    started = 0
    announced = not launches
    while not should_stop():
        allowed = len(launches) if start_rate is None else int((fleet.clock() - began) * start_rate) + 1
        while pending and started < allowed and not should_stop():
            start(*pending.pop())
            started += 1
        if not pending and not announced:
            announced = True
            log.info("fleet started", guests=started, seconds=round(fleet.clock() - began, 3))
        for e in fleet.reap():
            ended(e)
        if control is None:
            if not pending and not fleet.children:
                break
            time.sleep(POLL_S)
            continue
        stop_asked = False
        for line in control.wait(POLL_S):
            stop_asked, refusal = _on_control(line, parse_guest, start)
            if refusal is not None:
                refused += 1
                emit(refusal)
                log.warning("start refused", name=refusal.get("name"), error=refusal["error"])
            if stop_asked:
                break
        if stop_asked or control.closed:
            break
    killed = fleet.stop(stop_timeout, ended)
    log.info(
        "fleet stopped", guests=len(fleet.ended), failed=len(failed), killed=len(killed), refused=refused,
        seconds=round(fleet.clock() - began, 3),
    )
    if failed:
        shown = ", ".join(f"{e.name} ({describe(e.status)})" for e in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        print(f"guest fleet: {len(failed)} of {len(fleet.ended)} guests ended badly: {shown}{more}", file=sys.stderr)
        return 1
    return 0


def _on_control(
    line: str | None,
    parse_guest: Callable[[list[str]], tuple[GuestLaunch, argparse.Namespace]],
    start: Callable[[GuestLaunch, argparse.Namespace, Path | None], None],
) -> tuple[bool, dict[str, Any] | None]:
    """One control line: (stop now?, a refusal event or None)."""
    if line is None:
        return False, {"event": "refused", "name": None, "error": f"a line longer than {ControlReader.MAX_LINE} bytes"}
    try:
        command = json.loads(line)
    except ValueError:
        return False, {"event": "refused", "name": None, "error": "not a JSON object"}
    if not isinstance(command, dict):
        return False, {"event": "refused", "name": None, "error": "not a JSON object"}
    op = command.get("op")
    if op == "stop":
        return True, None
    if op != "start":
        return False, {"event": "refused", "name": None, "error": f"unknown op {op!r}: start or stop"}
    argv = command.get("argv")
    log_path = command.get("log")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or not (log_path is None or isinstance(log_path, str)):
        return False, {"event": "refused", "name": None, "error": "start takes argv, a list of strings, and log, a path"}
    try:
        launch, args = parse_guest(argv)
    except ValueError as err:
        return False, {"event": "refused", "name": _name_in(argv), "error": str(err)}
    start(launch, args, Path(log_path) if log_path else None)
    return False, None


def _name_in(argv: list[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == "--name" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--name="):
            return word.split("=", 1)[1]
    return None


def fleet_logger(level: str) -> Any:
    return logsetup.configure(level, "fleet")

