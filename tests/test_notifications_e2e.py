"""Virtual interrupts from the hypervisor through irqbus, with real processes: a guest short of
memory retries the moment pages are freed instead of waiting out its timer; with the flag
off it waits; with irqbus down everyone still converges, and notifications resume when it
returns, without restarting anyone."""

from __future__ import annotations

import time

import pytest

from tests.processes import Host, Irqbus, Processes, wait_for

pytestmark = pytest.mark.timeout(90)
MIB = 256
SLOW_TIMER = ("--retry-delay", "20", "--max-retry-delay", "20")  # far longer than any wait below


def bound(bus: Irqbus, *names: str) -> bool:
    """Every named guest attached to irqbus and its virtual interrupts bound."""
    guests = bus.show()
    return all(n in guests and "target" in guests[n]["virqs"] for n in names)


def memory_scenario(procs: Processes, bus: Irqbus, *needy_flags: str) -> Host:
    """A full host: 'needy' wants 16 MiB more, 'giver' will free it when told."""
    host = Host(procs, memory="64m", extra=("--irqbus", bus.endpoint))
    host.guest("giver", "--memory", "40m", "--irqbus", bus.endpoint)
    host.guest("needy", "--memory", "24m", "--maxmem", "48m", "--irqbus", bus.endpoint, *SLOW_TIMER, *needy_flags)
    host.wait_registered("giver", "needy")
    wait_for(lambda: bound(bus, "giver", "needy"), 20, "both guests to bind their virtual interrupts")
    assert host.tool("mem-set", "needy", "40m").returncode == 0
    wait_for(lambda: host.domains()["needy"]["balloon"].get("retry_count", 0) >= 2, 10, "needy to be refused and back off")
    return host


def test_memory_available_interrupt_ends_the_wait_at_once(procs):
    bus = Irqbus(procs)
    host = memory_scenario(procs, bus)
    assert host.tool("mem-set", "giver", "24m").returncode == 0
    host.wait_converged(("needy", "giver"), timeout=10)  # long before its 20 s timer
    rows = {r["actions"][0]["name"]: r for r in bus.interrupts("needy").values() if r["actions"]}
    assert rows["balloon-memory"]["chip"] == "xen-dyn" and rows["balloon-memory"]["count"] >= 1
    assert rows["balloon-target"]["count"] >= 1  # the mem-set came as a virtual interrupt too
    assert any(e.get("event") == "memory available" for e in procs.log_events("needy"))


def test_without_the_memory_interrupt_the_guest_waits_for_its_timer(procs):
    bus = Irqbus(procs)
    host = memory_scenario(procs, bus, "--no-memory-interrupt")
    assert host.tool("mem-set", "giver", "24m").returncode == 0
    host.wait_converged(("giver",), timeout=10)
    time.sleep(2.0)
    needy = host.domains()["needy"]
    assert needy["current_pages"] < needy["target_pages"] and needy["balloon"]["state"] == "retrying"
    assert "balloon-memory" not in bus.cmd("show").stdout


def test_with_irqbus_down_guests_converge_and_notifications_resume_when_it_returns(procs):
    bus_endpoint = procs.ipc("irq")
    host = Host(procs, memory="64m", extra=("--irqbus", bus_endpoint))
    host.guest("giver", "--memory", "40m", "--irqbus", bus_endpoint)
    host.guest("needy", "--memory", "24m", "--maxmem", "48m", "--irqbus", bus_endpoint, "--retry-delay", "0.5", "--max-retry-delay", "0.5")
    host.wait_registered("giver", "needy")
    # no irqbus at all: the target push, the heartbeat and the retry timer carry everything
    assert host.tool("mem-set", "giver", "24m").returncode == 0
    assert host.tool("mem-set", "needy", "40m").returncode == 0
    host.wait_converged(("giver", "needy"), timeout=15)
    assert host.tool("audit").returncode == 0

    bus = Irqbus(procs)  # irqbus comes up on the endpoint everyone was given
    wait_for(lambda: bound(bus, "giver", "needy"), 20, "the guests to attach to the new irqbus")
    assert host.tool("mem-set", "needy", "20m").returncode == 0
    wait_for(lambda: bus.show()["needy"]["virqs"].get("target", {}).get("sent", 0) >= 1, 10, "the target interrupt")
    host.wait_converged(("needy",), timeout=10)
