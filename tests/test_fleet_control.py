"""The runner's handles on forked guests (scenarios/fleet_control.py): which start each of the
fleet's events answers, what a refused start and a lost fleet look like to the runner, and that
a real fleet's guests end when the run's processes are stopped."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from scenarios.fleet_control import STATUS_USAGE, FleetBook, FleetGuest
from tests.processes import TEST_TIMERS, Host, wait_for


def guest(name: str, tmp_path) -> FleetGuest:
    return FleetGuest(None, name, ["--name", name], tmp_path / f"{name}.log")  # type: ignore[arg-type]


def test_each_answer_goes_to_its_start_in_order_and_exits_by_pid(tmp_path):
    book = FleetBook()
    a, b, a_again = guest("a", tmp_path), guest("b", tmp_path), guest("a", tmp_path)
    for g in (a, b, a_again):
        g.log_path.touch()
        book.sent(g)
    assert book.on_event({"event": "started", "name": "a", "pid": 101}) is a
    assert book.on_event({"event": "refused", "name": "b", "error": "--maxmem must not be below --memory"}) is b
    assert book.on_event({"event": "exited", "name": "a", "pid": 101, "status": -9}) is a
    assert book.on_event({"event": "started", "name": "a", "pid": 102}) is a_again  # a started again: its own handle
    assert (a._pid, a.returncode, a.answered) == (101, -9, True)
    assert (b._pid, b.returncode) == (None, STATUS_USAGE)  # as `guest run` exits on flags it refuses
    assert b.log_path.read_text() == "guest run: --maxmem must not be below --memory\n"  # the runner's "did not start" reads it
    assert (a_again._pid, a_again.returncode) == (102, None)
    assert book.running == {102: a_again} and not book.pending and not book.unexpected


def test_an_event_that_answers_nothing_is_kept_not_applied(tmp_path):
    book = FleetBook()
    a = guest("a", tmp_path)
    book.sent(a)
    assert book.on_event({"event": "started", "name": "zed", "pid": 5}) is None  # not the start we sent
    assert book.on_event({"event": "exited", "name": "a", "pid": 6, "status": 0}) is None
    assert book.on_event({"event": "exploded"}) is None
    assert len(book.unexpected) == 3 and a.answered is False and list(book.pending) == [a]


def test_a_lost_fleet_settles_every_start_and_hands_back_the_orphans(tmp_path):
    book = FleetBook()
    running, waiting = guest("r", tmp_path), guest("w", tmp_path)
    book.sent(running)
    book.on_event({"event": "started", "name": "r", "pid": 7})
    book.sent(waiting)
    assert book.lost("the guest fleet exited on its own (status 1)") == [running]
    assert waiting.answered and waiting.returncode == STATUS_USAGE
    assert "the guest fleet exited on its own (status 1): this guest was never started" in waiting.log_path.read_text()
    assert not book.running and not book.pending


@pytest.mark.timeout(60)
def test_forked_guests_behave_as_processes_and_all_end_with_the_run(procs):
    """A handle is signalled and waited for like a Popen; stop_processes ends the fleet and every
    guest it forked, before the hypervisor (each shuts its domain down)."""
    host = Host(procs, memory="128m")
    flags = [x for pair in TEST_TIMERS.items() for x in pair]
    guests = {n: procs.start_guest(n, ["--name", n, "--memory", "8m", "--hypervisor", host.guest_endpoint, *flags]) for n in ("a", "b", "c")}
    bad = procs.start_guest("d", ["--name", "d", "--memory", "8m", "--maxmem", "4m", "--hypervisor", host.guest_endpoint])
    host.wait_registered("a", "b", "c")
    assert bad.wait(10) == 2 and bad.pid is None and "--maxmem must not be below --memory" in procs.log("d")
    fleet = procs.fleet
    pids = {n: g.pid for n, g in guests.items()}
    assert len(set(pids.values())) == 3 and fleet.proc.pid not in pids.values()
    assert {int(p) for p in open(f"/proc/{fleet.proc.pid}/task/{fleet.proc.pid}/children").read().split()} == set(pids.values())
    assert guests["a"].poll() is None
    assert procs.stop(guests["a"], signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        guests["b"].wait(0.2)
    assert procs.stop(guests["b"]) == 0  # SIGTERM: it shuts its domain down and exits 0, as `guest run` does
    assert set(host.domains()) == {"a", "c"}  # a was killed: its domain stays, as with `guest run`
    procs.stop_processes()
    assert procs.fleet is None and fleet.proc.returncode == 1  # one of its guests ended badly (a)
    assert guests["c"].returncode == 0
    assert "a (killed by SIGKILL)" in (procs.dir / "guest-fleet.log").read_text()
    for pid in pids.values():
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, f"guest {pid} to be gone")
