"""wire.signals in this process: the first signal sets the flag (or unwinds) and makes the next
ones no-ops in every thread; a sleeping `wait` wakes when the flag is set."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

import pytest

from wire import signals
from wire.signals import STOP_SIGNALS, StopFlag, stop_on_signals, unwind_on_signals


@pytest.fixture
def restored_signals():
    """Put back pytest's handlers and signal mask, discarding the signals the test left pending
    (SIG_IGN discards a pending signal, so unblocking then delivers nothing)."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    atexit.unregister(signals._ignore_at_exit)
    signals._exiting = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def held_off() -> set[int]:
    """The stop signals blocked in this (the main) thread."""
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) & STOP_SIGNALS


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_sets_the_flag_and_holds_off_the_next(restored_signals: None, first: signal.Signals) -> None:
    stop = stop_on_signals()
    assert not stop.is_set() and not held_off()
    os.kill(os.getpid(), first)
    assert stop.is_set()
    assert held_off() == STOP_SIGNALS
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: it stays pending and dies with the process
    os.kill(os.getpid(), signal.SIGTERM)
    assert set(signal.sigpending()) == STOP_SIGNALS


def test_signals_that_arrive_together_each_find_the_handler(restored_signals: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python runs their handlers in one pass; had the first one ignored the signals, the
    second would be reported as "Signal 15 ignored due to race condition"."""
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    stop = stop_on_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # both delivered at once
    assert stop.is_set() and held_off() == STOP_SIGNALS
    assert not unraisable


def test_at_exit_the_signals_are_ignored_in_every_thread(restored_signals: None) -> None:
    """Finalizing, the interpreter would put SIG_DFL back; another thread could then take one."""
    stop_on_signals()
    signals._ignore_at_exit()
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in STOP_SIGNALS)


def test_unwinding_raises_once_with_the_signals_exit_status(restored_signals: None) -> None:
    unwind_on_signals()
    with pytest.raises(SystemExit) as exit_:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # not reached: the handler raises at the next bytecode
    assert exit_.value.code == 128 + signal.SIGTERM
    assert held_off() == STOP_SIGNALS
    os.kill(os.getpid(), signal.SIGINT)  # the `finally` blocks on the way out are not cut short
    os.kill(os.getpid(), signal.SIGTERM)
    assert set(signal.sigpending()) == STOP_SIGNALS


def test_wait_sleeps_its_timeout_when_nobody_stops() -> None:
    stop = StopFlag()
    began = time.monotonic()
    assert stop.wait(0.12) is False
    assert time.monotonic() - began >= 0.12


def test_wait_wakes_when_the_flag_is_set() -> None:
    stop = StopFlag()
    threading.Timer(0.1, stop.set).start()
    began = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - began < 10  # woken, not timed out


def test_wait_on_a_set_flag_returns_at_once() -> None:
    stop = StopFlag()
    stop.set()
    assert stop.wait(30) is True


def test_a_signal_wakes_a_poll_on_the_wakeup_and_close_puts_the_previous_fd_back(restored_signals: None) -> None:
    """A guest sleeps in one poll until its next timer: without the wakeup a SIGTERM would wait
    for the poll's timeout (the handler runs, the poll resumes: PEP 475)."""
    import select

    stop = stop_on_signals()
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    wakeup = signals.signal_wakeup()
    assert wakeup is not None
    try:
        assert select.select([wakeup], [], [], 0)[0] == []
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        began = time.monotonic()
        ready, _, _ = select.select([wakeup], [], [], 30)
        assert ready == [wakeup] and stop.is_set() and time.monotonic() - began < 20
        wakeup.drain()
        assert select.select([wakeup], [], [], 0)[0] == []
    finally:
        wakeup.close()
    assert signal.set_wakeup_fd(before) == before  # the previous one was back in place


def test_off_the_main_thread_there_is_no_wakeup() -> None:
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(signals.signal_wakeup()))
    thread.start()
    thread.join(10)
    assert got == [None]
