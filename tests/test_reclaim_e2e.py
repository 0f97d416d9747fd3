"""Silent guests and a silent hypervisor, with real processes (issue 12).

- A hypervisor stopped for a couple of seconds while a guest balloons: the guest says once
  that it is unreachable and once that it is back, and carries on to its target.
- `serve --reclaim-after 1`: a SIGKILLed guest's pages return to the pool and its neighbour,
  short of memory and far from its next retry, grows to its target on the memory interrupt; a
  SIGSTOPped guest is reclaimed too, and once continued it exits 4 saying so; its name is free.
"""

from __future__ import annotations

import signal
import time

import pytest

from guest.cli import GuestExit
from tests.processes import Host, Irqbus, Processes, wait_for

pytestmark = pytest.mark.timeout(90)
MIB = 256  # pages
SLOW_TIMER = ("--retry-delay", "20", "--max-retry-delay", "20")  # far longer than any wait below


def events(procs: Processes, name: str, event: str) -> list[dict]:
    return [e for e in procs.log_events(name) if e.get("event") == event]


def test_a_stopped_hypervisor_is_reported_once_gone_and_once_back_and_the_guest_carries_on(procs):
    host = Host(procs, memory="64m")
    web = host.guest("web", "--memory", "16m", "--maxmem", "48m", "--balloon-rate", "2048")  # 8 MiB/s: 3 s to 40m
    host.wait_registered("web")
    assert host.tool("mem-set", "web", "40m").returncode == 0
    wait_for(lambda: host.domains()["web"]["current_pages"] > 16 * MIB, 10, "web to start growing")
    host.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.0)
    finally:
        host.proc.send_signal(signal.SIGCONT)
    host.wait_converged(("web",), timeout=20)
    assert web.poll() is None
    gone, back = events(procs, "web", "hypervisor unreachable"), events(procs, "web", "hypervisor back")
    assert len(gone) == 1 and len(back) == 1, procs.log("web")[-3000:]
    assert gone[0]["level"] == "warning" and gone[0]["since"].endswith("Z") and gone[0]["seq"] == back[0]["seq"]
    assert back[0]["outage_s"] >= 1.0
    assert host.tool("audit").returncode == 0
    assert host.domains()["web"]["on_crash"] == "destroy"  # xl's default
    assert host.tool("on-crash", "web", "preserve").returncode == 0
    assert host.domains()["web"]["on_crash"] == "preserve"
    assert host.tool("on-crash", "web", "restart").returncode == 2  # not a choice: a usage error


def bound(bus: Irqbus, *names: str) -> bool:
    guests = bus.show()
    return all(n in guests and "memory" in guests[n]["virqs"] for n in names)


def test_dead_and_stopped_guests_are_reclaimed_the_pages_go_to_the_guest_short_of_memory_and_the_names_are_free(procs):
    bus = Irqbus(procs)
    host = Host(procs, memory="72m", extra=("--irqbus", bus.endpoint, "--reclaim-after", "1"))
    sleeper = host.guest("sleeper", "--memory", "8m", "--irqbus", bus.endpoint)
    dead = host.guest("dead", "--memory", "40m", "--irqbus", bus.endpoint)
    host.guest("needy", "--memory", "24m", "--maxmem", "48m", "--irqbus", bus.endpoint, *SLOW_TIMER)
    host.wait_registered("sleeper", "dead", "needy")
    wait_for(lambda: bound(bus, "sleeper", "dead", "needy"), 20, "the guests to bind their virtual interrupts")

    sleeper.send_signal(signal.SIGSTOP)  # stopped, not dead: the host cannot tell
    wait_for(lambda: "sleeper" not in host.domains(), 10, "the stopped guest's domain to be reclaimed")
    assert host.tool("mem-set", "needy", "40m").returncode == 0  # 8 MiB free: it gets 32m of its 40m
    wait_for(lambda: host.domains()["needy"]["balloon"].get("retry_count", 0) >= 1, 10, "needy to be refused and back off")

    dead.kill()
    dead.wait(5)
    doms = host.wait_converged(("needy",), timeout=15)  # its next retry is 20 s away: the interrupt did it
    assert set(doms) == {"needy"}
    (reclaim,) = [e for e in procs.log_events("hypervisor") if e.get("event") == "reclaim" and e.get("name") == "dead"]
    assert reclaim["released"] == 40 * MIB and reclaim["silent_s"] >= 1.0
    assert events(procs, "needy", "memory available")
    assert host.tool("audit").returncode == 0

    sleeper.send_signal(signal.SIGCONT)
    assert sleeper.wait(10) == GuestExit.RECLAIMED == 4
    log = procs.log("sleeper")
    assert "was reclaimed by the host" in log and "exiting with status 4" in log  # its stderr
    (said,) = events(procs, "sleeper", "domain reclaimed")
    assert said["level"] == "error"
    again = host.guest("sleeper", "--memory", "4m")  # the name is free again
    host.wait_registered("sleeper")
    assert again.poll() is None
