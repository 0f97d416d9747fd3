"""Guests as real processes against a real hypervisor: the scenario of the patch, legacy mode,
hidden floors, stuck and cancelled drivers, and guests that die."""

from __future__ import annotations

import signal
import time

import pytest

from tests.processes import Host, wait_for

pytestmark = pytest.mark.timeout(90)
MIB = 256  # pages


@pytest.fixture
def host(procs):
    return Host(procs, memory="64m")


def start_patch_scenario(host: Host, legacy: bool) -> None:
    """A nearly full host (60 of 64 MiB given out); two guests balloon down slowly, two balloon up."""
    extra = ("--driver", "pre-patch" if legacy else "seed")
    for name in ("down1", "down2"):
        host.guest(name, "--memory", "24m", "--maxmem", "32m", "--balloon-rate", "1500")
    for name in ("up1", "up2"):
        host.guest(name, "--memory", "6m", "--maxmem", "32m", *extra)
    host.wait_registered("down1", "down2", "up1", "up2")
    assert host.json("info")["free_pages"] == 4 * MIB
    # the up-movers first, so they meet the shortage however slowly the CLI runs on a busy machine
    for name, size in [("up1", "18m"), ("up2", "18m"), ("down1", "12m"), ("down2", "12m")]:
        assert host.tool("mem-set", name, size).returncode == 0


def test_patch_scenario_every_guest_reaches_its_target(host):
    start_patch_scenario(host, legacy=False)
    doms = host.wait_converged(("down1", "down2", "up1", "up2"), timeout=40)
    assert [doms[n]["current_pages"] for n in ("down1", "down2", "up1", "up2")] == [12 * MIB, 12 * MIB, 18 * MIB, 18 * MIB]
    assert host.json("info")["free_pages"] == 4 * MIB
    assert host.tool("audit").returncode == 0
    # the up-movers met the shortage on the way and retried on the timer
    up_log = host.procs.log_events("up1")
    assert any(e.get("event") == "balloon retrying" for e in up_log)


def test_legacy_driver_stays_below_target_after_memory_is_free(host):
    start_patch_scenario(host, legacy=True)
    host.wait_converged(("down1", "down2"), timeout=40)
    time.sleep(1.5)  # many legacy retry periods after the memory was freed
    doms = host.domains()
    stuck = [n for n in ("up1", "up2") if doms[n]["current_pages"] < doms[n]["target_pages"]]
    assert stuck, "a legacy guest that met the shortage must stay below its target"
    missing = sum(doms[n]["target_pages"] - doms[n]["current_pages"] for n in stuck)
    assert host.json("info")["free_pages"] >= missing  # ...although the memory it needs is free
    for n in stuck:
        assert doms[n]["balloon"]["state"] == "hard-limited"
        assert doms[n]["balloon"]["hard_limit_kb"] is not None
    # writing the same target again lifts the hard limit
    for n in stuck:
        assert host.tool("mem-set", n, "18m").returncode == 0
    host.wait_converged(tuple(stuck), timeout=20)


def test_sigkill_leaves_the_books_balanced(host):
    host.guest("victim", "--memory", "8m", "--maxmem", "48m")
    host.guest("other", "--memory", "8m")
    host.wait_registered("victim", "other")
    assert host.tool("mem-set", "victim", "40m").returncode == 0
    time.sleep(0.3)  # mid-ballooning
    victim = host.procs.get("victim")
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    assert host.tool("audit").returncode == 0
    info = host.json("info")
    doms = host.domains()
    assert info["free_pages"] + sum(d["current_pages"] for d in doms.values()) == info["total_pages"]
    wait_for(lambda: host.tool("audit").returncode == 0, 5, "a clean audit")
    assert host.tool("destroy", "victim").returncode == 0
    assert host.json("info")["free_pages"] == 56 * MIB


def test_a_guest_that_stops_cleanly_returns_its_domain(host):
    proc = host.guest("brief", "--memory", "8m")
    host.wait_registered("brief")
    assert host.procs.stop(proc) == 0
    assert "brief" not in host.domains()
    assert host.json("info")["free_pages"] == 64 * MIB


def test_hidden_floor_is_approached_but_not_crossed(host):
    host.guest("floor", "--memory", "16m", "--workload", "10m", "--driver", "3.1")  # unlimited retries
    host.wait_registered("floor")
    assert host.tool("mem-set", "floor", "4m").returncode == 0

    def at_floor():
        d = host.domains()["floor"]
        return d if d["current_pages"] == 10 * MIB and d["balloon"].get("retry_count", 0) >= 3 else None

    d = wait_for(at_floor, 15, "the guest to reach its workload floor and keep retrying")
    assert d["balloon"]["state"] == "retrying" and d["target_pages"] == 4 * MIB


def test_stuck_guest_never_moves_while_others_do(host):
    host.guest("stuck", "--memory", "16m", "--maxmem", "32m", "--stuck")
    host.guest("fine", "--memory", "16m", "--maxmem", "32m")
    host.wait_registered("stuck", "fine")
    assert host.tool("mem-set", "stuck", "8m").returncode == 0
    assert host.tool("mem-set", "fine", "8m").returncode == 0
    host.wait_converged(("fine",), timeout=15)
    time.sleep(0.5)
    assert host.domains()["stuck"]["current_pages"] == 16 * MIB


def test_max_retries_cancels_until_the_target_is_written_again(host):
    host.guest("hog", "--memory", "56m", "--maxmem", "60m")
    # 3.1 with max_retry_count written: a write of the same target runs a cancelled worker
    host.guest("wants", "--memory", "4m", "--maxmem", "16m", "--driver", "3.1", "--max-retries", "3")
    host.wait_registered("hog", "wants")
    assert host.tool("mem-set", "wants", "12m").returncode == 0
    wait_for(lambda: host.domains()["wants"]["balloon"].get("state") == "cancelled", 15, "the driver to cancel")
    assert host.tool("mem-set", "hog", "48m").returncode == 0
    host.wait_converged(("hog",), timeout=15)
    time.sleep(1.0)  # memory is free, but a cancelled driver does not look
    assert host.domains()["wants"]["current_pages"] == 8 * MIB
    assert host.tool("mem-set", "wants", "12m").returncode == 0  # the same value, written again
    host.wait_converged(("wants",), timeout=15)


def test_duplicate_name_is_refused_at_startup(host):
    host.guest("twin", "--memory", "4m")
    host.wait_registered("twin")
    dup = host.procs.start("twin-dup", "guest", "run", "--name", "twin", "--memory", "4m", "--hypervisor", host.guest_endpoint)
    assert dup.wait(15) == 1
    assert "EEXIST" in host.procs.log("twin-dup")
    assert host.json("info")["domains"] == 1


def test_a_lowered_max_does_not_shrink_the_guest_it_only_stops_growth(host):
    """XEN_DOMCTL_max_mem below what a domain holds takes nothing away, and Linux's driver never
    reads Xen's max (drivers/xen/balloon.c watches memory/target only): the guest keeps its
    pages and stays done (it only cannot grow: assign_pages refuses "Over-allocation")."""
    host.guest("vm", "--memory", "16m", "--maxmem", "32m", "--driver", "3.1", "--retry-delay", "0.1", "--max-retry-delay", "0.2")
    host.wait_registered("vm")
    assert host.tool("mem-set", "vm", "24m").returncode == 0
    host.wait_converged(("vm",), timeout=20)
    assert host.tool("mem-max", "--domctl", "vm", "8m").returncode == 0
    time.sleep(1.0)  # several heartbeats carry the new max to the guest
    doms = host.domains()
    assert (doms["vm"]["current_pages"], doms["vm"]["balloon"]["state"]) == (24 * MIB, "done")
    assert host.tool("audit").returncode == 0  # above its max, legally: Xen's ratchet
