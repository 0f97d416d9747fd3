"""Ctrl-C and SIGTERM ask a process to stop: its loop finishes its step and exits cleanly, with
its normal exit status, however many more of them arrive.

The handler stores True in a plain attribute and takes no lock. Python runs a handler in the
main thread between two bytecodes, wherever that thread is, and runs it again, nested, when
another signal arrives meanwhile; `threading.Event.set()` takes the Event's lock, so a second
SIGTERM during the first handler's `set()` waited forever for a lock its own thread held
(issue 11: three SIGTERMs back to back hung the hypervisor twice in 35 tries).

The first signal also blocks SIGTERM and SIGINT in the main thread (`pthread_sigmask`). Later
ones stay pending and are discarded at exit, so none can interrupt the shutdown (closing
sockets, the last log lines) nor meet the default action: while finalizing, the interpreter
puts SIG_DFL back for every signal it handled, and a SIGTERM in those last milliseconds ended
the process with status -15 after it had logged "stopped". libzmq's threads block every signal,
so no other thread takes them instead. Consequences: a second Ctrl-C cannot cut a slow shutdown
short (SIGKILL can), and a child started after the stop would inherit the mask; no user starts
one.

Sleeping: `StopFlag.wait(timeout)` sleeps in slices of at most `WAKE_S`, looking at the flag
between them; `time.sleep` and `select` resume after a handler has run (PEP 475), so one long
sleep would not wake. A wakeup fd (`signal.set_wakeup_fd` and a select on a socketpair) would
wake at once, but there is one per process, it must be drained, and it costs a socketpair for
the sake of one sleeper (`irqbus device`'s pacer) for which 50 ms is prompt. The servers look
at the flag after every poll (at most 100 ms), the guest after every poll or RPC attempt (250 and
500 ms), `hypervisor top` every 100 ms of its delay.
"""

from __future__ import annotations

import signal
import sys
import time
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


def _hold_further_signals() -> None:
    """Block SIGTERM and SIGINT in this (the main) thread for the rest of the process's life."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def stop_on_signals() -> StopFlag:
    """SIGTERM and SIGINT set the returned flag; from the first on, both are held off."""
    stop = StopFlag()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        _hold_further_signals()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return stop


def unwind_on_signals() -> None:
    """For a program that blocks in many places (the scenario runner): the first SIGTERM or
    SIGINT raises SystemExit(128 + signal), so every `finally` on the way out runs, and holds
    off any later one, so that none cuts those `finally` blocks short."""

    def handler(signum: int, frame: FrameType | None) -> None:
        _hold_further_signals()
        sys.exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
