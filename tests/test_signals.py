"""wire.signals in this process: the first signal sets the flag (or unwinds) and holds off the
next ones; a sleeping `wait` wakes when the flag is set."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from wire.signals import STOP_SIGNALS, StopFlag, stop_on_signals, unwind_on_signals


@pytest.fixture
def restored_signals():
    """Put back pytest's handlers and signal mask, discarding the signals the test left pending
    (SIG_IGN discards a pending signal, so unblocking then delivers nothing)."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def held_off() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) & STOP_SIGNALS


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_sets_the_flag_and_holds_off_the_next(restored_signals: None, first: signal.Signals) -> None:
    stop = stop_on_signals()
    assert not stop.is_set() and not held_off()
    os.kill(os.getpid(), first)
    assert stop.is_set()
    assert held_off() == STOP_SIGNALS
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt, no handler: it waits, and dies with the process
    os.kill(os.getpid(), signal.SIGTERM)
    assert set(signal.sigpending()) == STOP_SIGNALS


def test_unwinding_raises_once_with_the_signals_exit_status(restored_signals: None) -> None:
    unwind_on_signals()
    with pytest.raises(SystemExit) as exit_:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # not reached: the handler raises at the next bytecode
    assert exit_.value.code == 128 + signal.SIGTERM
    assert held_off() == STOP_SIGNALS
    os.kill(os.getpid(), signal.SIGINT)  # the `finally` blocks on the way out are not cut short
    assert signal.SIGINT in signal.sigpending()


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
