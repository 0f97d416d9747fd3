"""Ctrl-C and SIGTERM ask a process to stop: its loop finishes its step and exits cleanly, with
its normal exit status, however many more of them arrive.

The handler stores True in a plain attribute and takes no lock. Python runs a handler in the
main thread between two bytecodes, wherever that thread is, and runs it again, nested, when
another signal arrives meanwhile; `threading.Event.set()` takes the Event's lock, so a second
SIGTERM during the first handler's `set()` waited forever for a lock its own thread held
(issue 11: three SIGTERMs back to back hung the hypervisor twice in 35 tries).

Later signals are held off in two steps, because each alone leaves a way for one to end the
process with status -15 or -2 after its "stopped" line:
- The first signal blocks SIGTERM and SIGINT in the main thread, so none can interrupt the
  shutdown. Python's handler stays installed: a thread that does not block them (below) still
  only trips it.
- At exit (atexit, before the interpreter's own teardown) both are set to SIG_IGN. Finalizing,
  the interpreter puts SIG_DFL back for every signal that has a Python handler, and blocking in
  the main thread does not cover other threads: a thread starts with its creator's mask, and
  libzmq's I/O threads block every signal only once they first run. Under load one was created
  just before a burst and first ran ~190 ms later, after SIG_DFL was back; the kernel handed it
  a pending SIGTERM (seen with perf's signal tracepoints, about 1 round in 200 at load 10).
  SIG_IGN holds in every thread, and the interpreter leaves it in place.
SIG_IGN is not set in the handler itself: Python runs the handlers of all signals that arrived
together in one pass, and one that finds SIG_IGN where its handler was reports "Signal N
ignored due to race condition" on stderr (54 bursts in 75 that mixed SIGTERM and SIGINT did).
At exit, `signal.signal` first runs the handlers of what has arrived; what a not-yet-running
thread takes in the microsecond before SIG_IGN is in place can still be reported so, on stderr
only. Consequences: a second Ctrl-C cannot cut a slow shutdown short (SIGKILL can), and a
process started after the stop would inherit the blocked mask; no user starts one.

Sleeping: `StopFlag.wait(timeout)` sleeps in slices of at most `WAKE_S`, looking at the flag
between them; `time.sleep` and `select` resume after a handler has run (PEP 475), so one long
sleep would not wake. A wakeup fd (`signal.set_wakeup_fd` and a select on a socketpair) wakes
at once, but there is one per process, it must be drained, and it costs a socketpair: worth it
for the guest (`SignalWakeup`), which otherwise woke four times a second to look at the flag
(a thousand idle guests of a fleet spent half of a 2-core machine on it), not for one sleeper
(`irqbus device`'s pacer) for which 50 ms is prompt. The servers look at the flag after every
poll (at most 100 ms), the guest after every poll (woken by the signal) or RPC attempt (500 ms),
`hypervisor top` every 100 ms of its delay.
"""

from __future__ import annotations

import atexit
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
WAKE_S = 0.05  # the longest a `wait` sleeps without looking at the flag


class StopFlag:
    """Set once, by a signal (or by `set()`); loops look at it between steps."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds or until the flag is set; returns the flag."""
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(WAKE_S, left))
        return self._set


_exiting = StopFlag()  # set by the atexit hook: from then on a handler does nothing


def _hold_off() -> None:
    """Later SIGTERM and SIGINT stay pending in the main thread, and die with the process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _ignore_at_exit() -> None:
    _exiting.set()
    _hold_off()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _install(handler: Callable[[int, FrameType | None], None]) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    atexit.unregister(_ignore_at_exit)
    atexit.register(_ignore_at_exit)


def stop_on_signals() -> StopFlag:
    """SIGTERM and SIGINT set the returned flag; after the first, both are held off."""
    stop = StopFlag()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        _hold_off()

    _install(handler)
    return stop


def unwind_on_signals() -> None:
    """For a program that blocks in many places (the scenario runner): the first SIGTERM or
    SIGINT raises SystemExit(128 + signal), so every `finally` on the way out runs; later ones
    are held off, so that none cuts those `finally` blocks short."""
    unwinding = StopFlag()

    def handler(signum: int, frame: FrameType | None) -> None:
        if unwinding.is_set() or _exiting.is_set():  # Python runs the handler of each that came together
            return
        unwinding.set()
        _hold_off()
        sys.exit(128 + signum)

    _install(handler)


class SignalWakeup:
    """A socket that becomes readable when a signal arrives (`signal.set_wakeup_fd`), for a loop
    that sleeps in a poll: registered with it, a SIGTERM ends the sleep at once instead of at
    its timeout. The handler still runs as installed (`stop_on_signals`); this only wakes. The
    process's previous wakeup fd is put back by `close`."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> None:
        try:
            while self._read.recv(512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        current = signal.set_wakeup_fd(self._previous)
        if current != self._write.fileno():  # another took over since: leave theirs in place
            signal.set_wakeup_fd(current)
        self._read.close()
        self._write.close()


def signal_wakeup() -> SignalWakeup | None:
    """A SignalWakeup, or None off the main thread (where no wakeup fd can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return SignalWakeup()
