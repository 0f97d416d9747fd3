"""The guest control interface with real processes: `hypervisor guest-set` changes a running
guest's pace, stuck state and ceiling, and the guest acts on it without a restart."""

from __future__ import annotations

import time

import pytest

from tests.processes import Host, wait_for

pytestmark = pytest.mark.timeout(60)
MIB = 256  # pages


def test_guest_set_changes_a_running_guests_behaviour(procs):
    host = Host(procs, memory="64m")
    # 3.1: at its ceiling it is idle and done (today's driver cancels there: test_guest_control)
    host.guest("vm", "--memory", "8m", "--maxmem", "32m", "--stuck", "--heartbeat", "0.2", "--driver", "3.1")
    host.wait_registered("vm")
    assert host.tool("mem-set", "vm", "24m").returncode == 0
    time.sleep(0.6)
    assert host.domains()["vm"]["current_pages"] == 8 * MIB  # stuck: it never asked

    # unstuck, but slow: 512 pages a second, so it is seen on the way (16 MiB take 8 s)
    done = host.tool("guest-set", "vm", "stuck=off", "rate=512")
    assert done.returncode == 0, done.stderr
    assert "stuck=False" in done.stdout and "rate=512" in done.stdout
    wait_for(lambda: 9 * MIB <= host.domains()["vm"]["current_pages"] <= 20 * MIB, 10, "the guest to move at its new pace")

    # no limit, and a ceiling at 16 MiB: it settles there (or gives back down to it), done
    assert host.tool("guest-set", "vm", "rate=0", "ceiling=16m").returncode == 0
    doms = wait_for(
        lambda: (d := host.domains())["vm"]["current_pages"] == 16 * MIB and d["vm"]["balloon"].get("state") == "done" and d,
        10, "the guest to settle at its ceiling",
    )
    assert doms["vm"]["target_pages"] == 24 * MIB and doms["vm"]["control"] == {"stuck": False, "rate": 0.0, "ceiling_pages": 16 * MIB}
    time.sleep(0.6)
    assert host.domains()["vm"]["current_pages"] == 16 * MIB  # and stays: it never asks past its ceiling
    assert host.json("info")["free_pages"] == 48 * MIB

    # stuck again: a new target is not followed
    assert host.tool("guest-set", "vm", "stuck=on", "ceiling=none").returncode == 0
    time.sleep(0.5)  # the push arrives before the target write
    assert host.tool("mem-set", "vm", "4m").returncode == 0
    time.sleep(0.8)
    assert host.domains()["vm"]["current_pages"] == 16 * MIB
    applied = [e for e in procs.log_events("vm") if e.get("event") == "control applied"]
    assert [e.get("stuck") for e in applied if "stuck" in e] == [False, True]
    assert host.tool("audit").returncode == 0


def test_guest_set_refuses_bad_input_clearly(procs):
    host = Host(procs, memory="16m")
    bad = host.tool("guest-set", "vm", "speed=3")
    assert bad.returncode == 2 and "argument KEY=VALUE: unknown key 'speed'" in bad.stderr and "Traceback" not in bad.stderr
    missing = host.tool("guest-set", "nobody", "stuck=on")
    assert missing.returncode == 1 and "ESRCH" in missing.stderr and "nobody" in missing.stderr
