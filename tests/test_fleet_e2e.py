"""`guest fleet` as a user runs it: forked guests against a real hypervisor, each a whole guest
(its own process, key and sockets), stopped together in bounded time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from guest.fleet import NICE
from tests.processes import REPO, TEST_TIMERS, Host, wait_for

pytestmark = pytest.mark.timeout(60)
MIB = 256  # pages
GUEST_FLAGS = [x for pair in TEST_TIMERS.items() for x in pair]


@pytest.fixture
def host(procs):
    return Host(procs, memory="256m")


def fleet(host: Host, *args: str, guest_flags: tuple[str, ...] = ()) -> subprocess.Popen:
    return host.procs.start(
        "fleet", "guest", "fleet", *args, "--log-dir", str(host.procs.dir / "fleet-guests"),
        "--", "--hypervisor", host.guest_endpoint, *GUEST_FLAGS, *guest_flags,
    )


def pids_of_children(parent: int) -> dict[int, str]:
    """The fleet's guest processes: pid -> the name in their command line is the fleet's, so
    read the log file each child holds open instead."""
    out = {}
    for task in os.listdir(f"/proc/{parent}/task"):
        try:
            children = open(f"/proc/{parent}/task/{task}/children").read().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                out[pid] = os.path.basename(os.readlink(f"/proc/{pid}/fd/2")).removesuffix(".log")
            except OSError:
                pass
    return out


def niceness(pid: int) -> int:
    """Field 19 of /proc/PID/stat (proc(5)), counted after the command's closing parenthesis."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_a_fleet_registers_every_guest_with_its_planned_size_and_each_balloons(host):
    proc = fleet(host, "--count", "4", "--name-prefix", "vm", "--memory", "16m..40m", "--maxmem", "64m")
    wait_for(lambda: {"vm1", "vm2", "vm3", "vm4"} <= set(host.domains()), 20, "the fleet to register")
    doms = host.domains()
    assert [doms[f"vm{i}"]["current_pages"] for i in range(1, 5)] == [16 * MIB, 24 * MIB, 32 * MIB, 40 * MIB]
    assert {doms[f"vm{i}"]["max_pages"] for i in range(1, 5)} == {64 * MIB}
    children = pids_of_children(proc.pid)
    assert sorted(children.values()) == ["vm1", "vm2", "vm3", "vm4"]  # one process per guest
    assert {niceness(pid) for pid in children} == {niceness(proc.pid) + NICE}  # below the host's services
    assert host.tool("mem-set", "vm2", "8m").returncode == 0
    assert host.tool("mem-set", "vm3", "48m").returncode == 0
    doms = host.wait_converged(("vm2", "vm3"), timeout=20)
    assert (doms["vm2"]["current_pages"], doms["vm3"]["current_pages"]) == (8 * MIB, 48 * MIB)
    assert host.procs.stop(proc, signal.SIGTERM, timeout=20) == 0
    assert host.domains() == {}  # each guest shut its domain down, as `guest run` does on SIGTERM
    assert host.json("audit")["ok"]


def test_a_guest_that_dies_is_reported_and_the_others_carry_on(host):
    proc = fleet(host, "--count", "3", "--memory", "16m", "--maxmem", "32m")
    wait_for(lambda: {"g1", "g2", "g3"} <= set(host.domains()), 20, "the fleet to register")
    victim = next(pid for pid, name in pids_of_children(proc.pid).items() if name == "g2")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "killed by SIGKILL" in host.procs.log("fleet"), 10, "the fleet to log the death")
    assert proc.poll() is None
    assert host.tool("mem-set", "g3", "24m").returncode == 0
    host.wait_converged(("g3",), timeout=20)
    assert host.procs.stop(proc, signal.SIGTERM, timeout=20) == 1  # one guest ended badly
    assert "g2 (killed by SIGKILL)" in host.procs.log("fleet")
    assert set(host.domains()) == {"g2"}  # the dead guest's domain stays, as with `guest run`


def test_stopping_is_bounded_even_with_a_guest_that_cannot_answer(host):
    proc = fleet(host, "--count", "3", "--memory", "16m", "--stop-timeout", "1.5")
    wait_for(lambda: {"g1", "g2", "g3"} <= set(host.domains()), 20, "the fleet to register")
    stuck = next(pid for pid, name in pids_of_children(proc.pid).items() if name == "g1")
    os.kill(stuck, signal.SIGSTOP)
    began = time.monotonic()
    status = host.procs.stop(proc, signal.SIGTERM, timeout=20)
    assert time.monotonic() - began < 10  # the bound is --stop-timeout, not the stopped guest
    assert status == 1
    assert "guests did not stop in time: killed" in host.procs.log("fleet")
    assert set(host.domains()) == {"g1"}


def test_a_plan_guest_run_would_refuse_starts_nothing(host):
    result = host.procs.run("guest", "fleet", "--count", "3", "--memory", "64m..256m", "--maxmem", "128m")
    assert result.returncode == 2
    assert "guest g2: maxmem" in result.stderr
    result = host.procs.run("guest", "fleet", "--count", "2", "--memory", "64m", "--", "--stuck", "--balloon-rate", "9")
    assert result.returncode == 2 and "guest g1: --stuck never moves" in result.stderr
    assert host.domains() == {}


def test_control_mode_starts_guests_on_request_and_reports_their_ends(host, tmp_path):
    command = [sys.executable, "-m", "guest", "fleet", "--control", "--", "--hypervisor", host.guest_endpoint, *GUEST_FLAGS]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "fleet.log", "wb"),
                            cwd=REPO, env=host.procs.env, text=True, start_new_session=True)
    try:
        def send(command: dict) -> None:
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()

        def event() -> dict:
            return json.loads(proc.stdout.readline())

        send({"op": "start", "argv": ["--name", "a", "--memory", "16m"], "log": str(tmp_path / "a.log")})
        started = event()
        assert started["event"] == "started" and started["name"] == "a"
        send({"op": "start", "argv": ["--name", "b", "--memory", "16m", "--maxmem", "8m"]})
        assert event() == {"event": "refused", "name": "b", "error": "--maxmem must not be below --memory"}
        send({"op": "explode"})
        assert event()["error"] == "unknown op 'explode': start or stop"
        proc.stdin.write("[1, 2\n")
        proc.stdin.flush()
        assert event()["error"] == "not a JSON object"
        host.wait_registered("a")
        assert '"event": "registered"' in (tmp_path / "a.log").read_text()
        os.kill(started["pid"], signal.SIGTERM)
        assert event() == {"event": "exited", "name": "a", "pid": started["pid"], "status": 0}
        send({"op": "start", "argv": ["--name", "early", "--memory", "16m"]})
        early = event()
        os.kill(early["pid"], signal.SIGTERM)  # at once: while it imports nothing, sets up, registers
        assert event() == {"event": "exited", "name": "early", "pid": early["pid"], "status": 0}  # a stop, not a death
        assert "early" not in host.domains()
        send({"op": "start", "argv": ["--name", "a", "--memory", "16m"]})  # started again, as the runner restarts one
        again = event()
        host.wait_registered("a")
        proc.stdin.close()  # EOF: stop everything
        assert event() == {"event": "exited", "name": "a", "pid": again["pid"], "status": 0}
        assert proc.wait(20) == 0
        assert host.domains() == {}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
