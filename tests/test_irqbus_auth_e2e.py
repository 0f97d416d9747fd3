"""Issue 13's attacks on irqbus, with real processes: each refused with EACCES naming the key,
and the bus left as it was (wiring and interrupt counts). The guests attach with their own keys
(`guest-NAME`); the test plays the hypervisor's part, telling irqbus who owns which domain
(`owners`) with the run's hypervisor key, since this hypervisor is not started with --irqbus.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.processes import Host, Irqbus, Processes, wait_for
from wire.client import RpcClient
from wire.errors import RemoteError
from wire.keys import Grant, KeyDir, Role
from wire.security import Security, Server

pytestmark = pytest.mark.timeout(90)


def keydir() -> KeyDir:
    return KeyDir(os.environ["BALLONET_KEYS"])


def as_key(name: str, endpoint: str) -> RpcClient:
    """An irqbus client with key `name` of the run's key directory (created, never authorized)."""
    keys = keydir()
    return RpcClient(endpoint, server=Server.IRQBUS, security=Security(keys, keys.pair(name)), timeout=2.0, retries=1)


@dataclass
class World:
    procs: Processes
    bus: Irqbus
    host: Host
    domids: dict[str, int]
    keys: dict[str, str]  # guest name -> its key (Z85)
    logged_in_setup: dict[str, int]  # process name -> how many log lines it had written when the fixture was done

    def setup_events(self, name: str) -> list[dict[str, Any]]:
        """`name`'s log lines up to the end of the fixture: what the tests do later (in any
        order) is not counted."""
        return self.procs.log_events(name)[: self.logged_in_setup[name]]

    def tell_owners(self, **args: Any) -> dict[str, Any]:
        hv = as_key("hypervisor", self.bus.endpoint)
        try:
            return hv.call("owners", args)
        finally:
            hv.close()

    def irqbus(self, *args: str, key: str = "toolstack") -> Any:
        return self.bus.cmd(*args, "--key", key)

    def state(self) -> dict[str, Any]:
        """Every guest's wiring and counts as the toolstack sees them, and each guest's own
        /proc/interrupts counts (but when each was last heard from)."""
        guests = self.bus.show()
        for g in guests.values():
            g.pop("last_seen_s")
        rows = {name: {irq: [a["handled"] for a in row["actions"]] for irq, row in self.bus.interrupts(name).items()} for name in guests}
        return {"guests": guests, "interrupts": rows}

    def refused(self, result: Any, key: str) -> str:
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "EACCES" in result.stderr and f"key '{keydir().public(key).decode()[:8]}'" in result.stderr, result.stderr
        return result.stderr


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """vm1 (nic0, level pin 5) and vm2 (ser0, edge pin 5) attached with their own keys; nic0
    and ser0 plugged in by the toolstack for the device keys `dev-vm1` (scoped to vm1) and
    `device` (any guest); a stranger key with no role."""
    procs = Processes(own_groups=True)
    try:
        bus = Irqbus(procs, ("--log-level", "debug"))  # its "attach deferred" lines: each guest told to wait
        host = Host(procs, memory="64m")
        keys = keydir()
        keys.pair("stranger")
        for name, spec in (("vm1", "nic0:pin=5:level"), ("vm2", "ser0:pin=5")):
            host.guest(name, "--memory", "8m", "--irqbus", bus.endpoint, "--device", spec)
        host.wait_registered("vm1", "vm2")
        domids = {name: d["domid"] for name, d in host.domains().items()}
        owners = {name: keys.public(f"guest-{name}").decode() for name in domids}
        w = World(procs, bus, host, domids, owners, {})

        def deferred(name: str) -> int:
            return sum(e.get("event") == "attach deferred" and e.get("key") == owners[name][:8] for e in procs.log_events("irqbus"))

        # each guest asked irqbus and was told to wait (EAGAIN) three times: enough to see it
        # says so once, not once per try
        wait_for(lambda: all(deferred(n) >= 3 for n in domids), 20, "both guests to be told to wait three times")
        assert w.tell_owners(domains=[[domids[n], owners[n]] for n in domids], replace=True)["owners"] == 2
        wait_for(lambda: {"vm1", "vm2"} <= set(bus.show()), 20, "both guests to attach")
        dev_vm1 = keys.pair("dev-vm1")
        keys.authorize(Grant(Role.DEVICE, dev_vm1.public.decode(), "dev-vm1", frozenset({domids["vm1"]})))
        assert w.irqbus("attach", "vm1", "nic0", "--pin", "5", "--level", "--device-key", "dev-vm1").returncode == 0
        assert w.irqbus("attach", "vm2", "ser0", "--pin", "5", "--device-key", "device").returncode == 0
        wait_for(lambda: all(bus.interrupts(n).get(5) for n in domids), 20, "both drivers to be up")
        w.logged_in_setup = {name: len(procs.log_events(name)) for name in ("irqbus", *domids)}
        yield w
    except BaseException:
        print(procs.dump_logs())
        raise
    finally:
        procs.stop_all()


def test_the_guests_waited_quietly_for_their_owner_and_attached_with_their_own_keys(world):
    """Judged on the logs up to the end of the fixture: the attacks refused later are
    warnings at irqbus, and vm1 waits again in the last test."""
    for name in ("vm1", "vm2"):
        events = [e.get("event") for e in world.setup_events(name)]
        assert events.count("irqbus does not know this domain's key yet; waiting") == 1
        assert "attached to irqbus" in events and "irqbus refused the guest" not in events
    assert not [e for e in world.setup_events("irqbus") if e.get("level") == "warning"]


def test_strangers_and_guests_touch_nothing_of_another_guest(world):
    before = world.state()
    stranger = as_key("stranger", world.bus.endpoint)
    vm2 = as_key("guest-vm2", world.bus.endpoint)
    try:
        for client, op, args in [
            (stranger, "send_virq", {"guest": "vm1", "virq": "target"}),
            (vm2, "send_virq", {"guest": "vm1", "virq": "memory"}),
            (stranger, "attach", {"name": "vm1", "domid": world.domids["vm1"]}),  # a session takeover
            (vm2, "attach", {"name": "vm1", "domid": world.domids["vm1"]}),
            (vm2, "attach", {"name": "vm1", "domid": world.domids["vm2"]}),
            (stranger, "owners", {"domains": [[world.domids["vm1"], world.keys["vm2"]]]}),
        ]:
            with pytest.raises(RemoteError) as refused:
                client.call(op, args)
            assert refused.value.code == "EACCES", (op, refused.value)
    finally:
        stranger.close()
        vm2.close()
    attacks = {  # each by a stranger; the commonest ones also by another guest's key and another device's
        ("raise", "vm1", "nic0"): ("stranger", "guest-vm2", "device"),
        ("lower", "vm1", "nic0"): ("stranger",),
        ("detach", "vm1", "nic0"): ("stranger",),
        ("msi", "vm1", "--address", "0xfee00000", "--data", "0x45"): ("stranger", "guest-vm2", "device"),  # past every mask
        ("attach", "vm1", "rogue", "--pin", "5"): ("stranger", "guest-vm2"),  # a rogue device on the guest's pin
    }
    for command, keys in attacks.items():
        for key in keys:
            message = world.refused(world.irqbus(*command, key=key), key)
            if command[0] == "msi":
                assert "raw MSI" in message and "toolstack" in message
    # a device key scoped to vm1, on vm2
    message = world.refused(world.irqbus("attach", "vm2", "rogue", "--pin", "5", key="dev-vm1"), "dev-vm1")
    assert "is not a device key for guest vm2" in message and "--role device" in message
    world.refused(world.irqbus("raise", "vm2", "ser0", key="dev-vm1"), "dev-vm1")
    assert world.state() == before


def test_the_real_guest_keeps_its_interrupts_after_a_takeover_attempt(world):
    handled = world.bus.handled("vm1", 5)["nic0"]
    assert world.irqbus("raise", "vm1", "nic0", key="dev-vm1").returncode == 0
    assert world.irqbus("lower", "vm1", "nic0", key="dev-vm1").returncode == 0
    wait_for(lambda: world.bus.handled("vm1", 5)["nic0"] == handled + 1, 10, "vm1's driver to handle its device's interrupt")


def test_only_the_toolstack_reads_every_guest_and_a_guest_reads_itself(world):
    for key in ("stranger", "device"):
        world.refused(world.irqbus("show", key=key), key)
    for key in ("stranger", "guest-vm2"):
        world.refused(world.irqbus("show", "vm1", key=key), key)
        world.refused(world.procs.run("guest", "interrupts", "vm1", "--irqbus", world.bus.endpoint, "--key", key), key)
    own = world.irqbus("show", "vm2", "--json", key="guest-vm2")
    assert own.returncode == 0 and [g["name"] for g in json.loads(own.stdout)["guests"]] == ["vm2"]
    rows = world.procs.run("guest", "interrupts", "vm2", "--irqbus", world.bus.endpoint, "--key", "guest-vm2", "--json")
    assert rows.returncode == 0 and any(r["irq"] == 5 for r in json.loads(rows.stdout))


def test_a_device_key_revoked_mid_session_is_refused_at_its_next_raise(world):
    keys = keydir()
    doomed = keys.pair("dev-doomed")
    keys.authorize(Grant(Role.DEVICE, doomed.public.decode(), "dev-doomed"))
    device = world.bus.device("dev-doomed", "vm2", "ser1", "--pin", "5", "--rate", "50", "--key", "dev-doomed")
    wait_for(lambda: "ser1" in {d["name"] for d in world.bus.show()["vm2"]["devices"]}, 20, "the device to plug itself in")
    assert device.poll() is None
    keys.revoke(doomed.public.decode())
    assert device.wait(15) == 1
    log = world.procs.log("dev-doomed")
    assert "EACCES" in log and f"key '{doomed.public.decode()[:8]}' is no longer a device key for guest vm2" in log


def test_a_session_goes_when_the_hypervisor_says_its_domain_did(world):
    """Last: vm1's domain is gone as far as irqbus hears it; the guest, finding itself
    forgotten, asks again and is told to wait, quietly."""
    world.tell_owners(gone=[world.domids["vm1"]])
    assert "vm1" not in world.bus.show()
    wait_for(lambda: any(e.get("event") == "irqbus forgot this guest; attaching again" for e in world.procs.log_events("vm1")),
             10, "vm1 to notice")
    world.tell_owners(domains=[[world.domids["vm1"], world.keys["vm1"]]])
    wait_for(lambda: "vm1" in world.bus.show(), 10, "vm1 to attach again")
    assert not [e for e in world.procs.log_events("vm1") if e.get("level") == "error"]


@pytest.mark.timeout(60)
def test_a_guest_cannot_squat_another_guests_name_before_it_attaches(procs):
    """Review 1a, with a hypervisor telling irqbus the owners itself (--irqbus): web's key
    attaching as `db` (with web's own domid) before db is up is refused, so db attaches,
    and a device the toolstack plugs onto `db` by name is db's."""
    bus = Irqbus(procs)
    host = Host(procs, memory="32m", extra=("--irqbus", bus.endpoint))
    host.guest("web", "--memory", "8m", "--irqbus", bus.endpoint)
    host.wait_registered("web")
    wait_for(lambda: "web" in bus.show(), 20, "web to attach")
    web_domid = host.domains()["web"]["domid"]
    squatter = as_key("guest-web", bus.endpoint)
    try:
        with pytest.raises(RemoteError) as refused:
            squatter.call("attach", {"name": "db", "domid": web_domid})
        assert refused.value.code == "EACCES" and f"may not attach as guest 'db': domain {web_domid} was registered under another name" in str(refused.value)
    finally:
        squatter.close()
    host.guest("db", "--memory", "8m", "--irqbus", bus.endpoint)
    host.wait_registered("db")
    wait_for(lambda: "db" in bus.show(), 20, "db to attach")
    assert bus.cmd("attach", "db", "disk9", "--pin", "7").returncode == 0
    shown = bus.show()
    assert shown["db"]["domid"] == host.domains()["db"]["domid"] != web_domid
    assert "disk9" in {d["name"] for d in shown["db"]["devices"]} and shown["web"]["domid"] == web_domid
    assert not [e for e in procs.log_events("db") if e.get("event") == "irqbus refused the guest"]
