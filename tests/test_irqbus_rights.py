"""irqbus's rights (irqbus/rights.py, docs/protocol.md "Rights"), on the core with the keys a
shell would hand it: who may attach as which guest, drive which device, send virqs and say
who owns what, and see whom. Every refusal is EACCES naming the key and what would grant
the right, and leaves the bus as it was."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from irqbus.dispatch import IrqBus, Outcome
from tests.populated import bus_fingerprint
from wire.gate import Peer
from wire.keys import Role

pytestmark = pytest.mark.timeout(10)


def key(c: str) -> str:
    return c * 40


HV = Peer(key("H"), frozenset({Role.HYPERVISOR}))
TOOL = Peer(key("T"), frozenset({Role.TOOLSTACK}))
VM1 = Peer(key("a"), frozenset({Role.GUEST}))
VM2 = Peer(key("b"), frozenset({Role.GUEST}))
DEV = Peer(key("D"), frozenset({Role.DEVICE}), frozenset())
DEV_ON_1 = Peer(key("E"), frozenset({Role.DEVICE}), frozenset({1}))
STRANGER = Peer(key("S"), frozenset())


_SEQ = itertools.count(1)  # one counter for all: a client string may be written again by a new Client


class Client:
    """One client of the bus: its client string and its key."""

    def __init__(self, bus: IrqBus, name: str, peer: Peer) -> None:
        self.bus, self.name, self.peer, self.seq = bus, name, peer, 0

    def send(self, op: str, **args: Any) -> Outcome:
        self.seq = next(_SEQ)
        frame = msgpack.packb({"v": 1, "op": op, "seq": self.seq, "client": self.name, "args": args})
        return self.bus.handle(frame, 1.0 + self.seq / 1000, peer=self.peer)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        reply = msgpack.unpackb(self.send(op, **args).reply)
        assert reply["ok"], reply
        return reply["result"]

    def refused(self, op: str, code: str = "EACCES", **args: Any) -> str:
        """The request is refused with `code`, sends nothing and changes nothing; its message."""
        before = bus_fingerprint(self.bus)
        out = self.send(op, **args)
        reply = msgpack.unpackb(out.reply)
        assert (reply["ok"], reply.get("error")) == (False, code), reply
        assert not out.sends
        assert bus_fingerprint(self.bus) == before
        return reply["message"]


@pytest.fixture
def bus() -> IrqBus:
    """vm1 (domid 1) and vm2 (domid 2) attached with their own keys; nic0 on vm1's pin 5,
    driven by the device key; disk0 on vm2's pin 10, plugged in by the toolstack."""
    bus = IrqBus(epoch=7)
    Client(bus, "hv", HV).call("owners", domains=[[1, VM1.key, "vm1"], [2, VM2.key, "vm2"]], replace=True)
    for name, domid, peer in (("vm1", 1, VM1), ("vm2", 2, VM2)):
        guest = Client(bus, "irq", peer)  # the same client string: each key has its own namespace
        guest.call("attach", name=name, domid=domid)
        guest.call("bind_virq", virq="target", vector=0x60)
    Client(bus, "dev", DEV).call("attach_device", guest="vm1", device="nic0", pin=5)
    Client(bus, "tool", TOOL).call("attach_device", guest="vm2", device="disk0", pin=10)
    return bus


def test_the_same_client_string_under_two_keys_is_two_sessions(bus):
    assert sorted(m.name for m in bus.router.guests.values()) == ["vm1", "vm2"]
    assert {m.owner_key for m in bus.router.guests.values()} == {VM1.key, VM2.key}


def test_only_the_hypervisor_sends_virqs_and_owners(bus):
    for peer in (STRANGER, VM1, TOOL, DEV):
        message = Client(bus, "x", peer).refused("send_virq", guest="vm1", virq="target")
        assert f"key '{peer.short()}' is not the hypervisor's key" in message and "--role hypervisor" in message
        Client(bus, "x", peer).refused("owners", domains=[[1, STRANGER.key]])
    out = Client(bus, "hv", HV).send("send_virq", guest="vm1", virq="target")
    assert [s.client for s in out.sends] == [f"{VM1.key}|irq"]


def test_owners_answers_the_epoch_and_how_many_it_knows(bus):
    assert Client(bus, "hv", HV).call("owners") == {"epoch": 7, "owners": 2}
    assert Client(bus, "hv", HV).call("owners", domains=[[3, key("c")]], gone=[2]) == {"epoch": 7, "owners": 2}
    assert bus.owners.items() == [(1, VM1.key, "vm1"), (3, key("c"), None)]  # a [domid, key] pair: no name known


def test_a_guest_attaches_only_for_its_own_domain(bus):
    thief = Client(bus, "irq", VM2)
    assert "does not own domain 1" in thief.refused("attach", name="vm1", domid=1)
    message = Client(bus, "irq", STRANGER).refused("attach", code="EAGAIN", name="new", domid=9)
    assert "has not heard from the hypervisor which key owns domain 9 yet" in message


def test_a_guest_cannot_take_another_guests_name_with_its_own_domid(bus):
    """Even where the hypervisor said no name (a [domid, key] pair), the live session of that
    name is not replaced; the refusal repeats the caller's name and domid, not vm1's domid."""
    Client(bus, "hv", HV).call("owners", domains=[[5, STRANGER.key]])
    message = Client(bus, "irq", STRANGER).refused("attach", name="vm1", domid=5)
    assert "may not replace the guest attached as 'vm1' or for domain 5" in message and "domain 1" not in message


def test_a_key_attaches_only_under_its_domains_name_so_it_cannot_squat_anothers(bus):
    """Review 1a: domid 7's key attached as `db` before the real db (domid 6) did; db was then
    refused ('may not replace guest db') and devices plugged onto `db` went to the squatter."""
    hv = Client(bus, "hv", HV)
    hv.call("owners", domains=[[7, STRANGER.key, "web"]])
    message = Client(bus, "irq", STRANGER).refused("attach", name="db", domid=7)
    assert f"key '{STRANGER.short()}' may not attach as guest 'db': domain 7 was registered under another name" in message
    hv.call("owners", domains=[[6, key("V"), "db"]])
    db = Peer(key("V"), frozenset({Role.GUEST}))
    assert Client(bus, "irq", db).call("attach", name="db", domid=6)["replaced"] == 0
    Client(bus, "tool", TOOL).call("attach_device", guest="db", device="nic9", pin=3)
    assert bus.router.owner("nic9").owner_key == db.key
    Client(bus, "irq", STRANGER).call("attach", name="web", domid=7)  # its own name: fine


def test_a_session_whose_name_is_not_its_domains_goes_when_the_hypervisor_names_it(bus):
    hv = Client(bus, "hv", HV)
    hv.call("owners", domains=[[7, STRANGER.key]])  # no name: attached unchecked
    Client(bus, "irq", STRANGER).call("attach", name="db", domid=7)
    hv.call("owners", domains=[[7, STRANGER.key, "web"]])
    assert "db" not in bus.router.guests


@pytest.mark.parametrize("entry,where", [
    ([1, key("a"), "12"], "domains[0][2]"),  # a number names a domid, never a guest
    ([1, key("a"), 5], "domains[0][2]"),
    ([1, key("a"), ""], "domains[0][2]"),
    ([1, key("a"), "vm1", "x"], "domains[0]"),
    ([1], "domains[0]"),
])
def test_owners_entries_are_domid_key_and_a_domain_name(bus, entry, where):
    message = Client(bus, "hv", HV).refused("owners", code="EINVAL", domains=[entry])
    assert f"'{where}'" in message


def test_a_revoked_toolstack_keys_session_is_of_no_more_use(bus):
    """Review 1b: a session the toolstack's right attached (no owner key) took chip and
    bind_virq from the key after its revocation; `owners` never ended it."""
    Client(bus, "tool", TOOL).call("attach", name="tooled", domid=40)
    revoked = Client(bus, "tool", Peer(TOOL.key, frozenset()))  # the same key, its grant gone
    for op, args in (("chip", {}), ("bind_virq", {"virq": "memory", "vector": 0x70}), ("program_pin", {"pin": 3, "trigger": "edge"})):
        message = revoked.refused(op, **args)
        assert f"key '{TOOL.short()}' is no longer a toolstack key" in message
    assert revoked.call("detach")["domid"] == 40  # giving it up is always allowed


def test_a_toolstack_session_goes_when_the_hypervisor_names_its_domain_anothers(bus):
    Client(bus, "tool", TOOL).call("attach", name="tooled", domid=40)
    hv = Client(bus, "hv", HV)
    hv.call("owners", domains=[[40, TOOL.key, "tooled"]])  # its own key: stays
    assert "tooled" in bus.router.guests
    hv.call("owners", domains=[[40, VM2.key, "other"]])
    assert "tooled" not in bus.router.guests


def test_the_toolstack_attaches_as_any_guest(bus):
    Client(bus, "tool", TOOL).call("attach", name="test", domid=30)  # no owner known: still fine
    assert Client(bus, "tool-2", TOOL).call("attach", name="vm1", domid=1)["replaced"] == 1


def test_a_stolen_client_string_is_worthless(bus):
    """The attacker writes vm1's client string under its own key: no session there."""
    attacker = Client(bus, "irq", STRANGER)
    for op, args in (("chip", {}), ("detach", {}), ("bind_virq", {"virq": "memory", "vector": 0x70})):
        attacker.refused(op, code="ESRCH", **args)


def test_a_session_goes_when_its_key_no_longer_owns_the_domain(bus):
    hv = Client(bus, "hv", HV)
    Client(bus, "tool", TOOL).call("attach", name="tooled", domid=40)
    hv.call("owners", domains=[[1, VM1.key]])  # the same owner again: nothing happens
    assert len(bus.router) == 3
    hv.call("owners", domains=[[1, key("z")]])
    hv.call("owners", gone=[2, 40])
    assert [m.name for m in bus.router.guests.values()] == ["tooled"]  # the toolstack's session is its own business
    assert bus.router.owner("nic0") is None


def test_a_full_list_in_chunks_does_not_end_the_sessions_of_the_later_chunks(bus):
    hv = Client(bus, "hv", HV)
    hv.call("owners", domains=[[1, VM1.key]], replace=True)
    hv.call("owners", domains=[[2, VM2.key]])
    assert len(bus.router) == 2


def test_plugging_a_device_needs_a_device_key_for_that_guest(bus):
    for peer in (STRANGER, VM2, HV):
        message = Client(bus, "x", peer).refused("attach_device", guest="vm2", device="rogue", pin=10)
        assert "is not a device key for guest vm2:" in message and "--role device" in message
    Client(bus, "x", DEV_ON_1).refused("attach_device", guest="vm2", device="rogue", pin=10)
    Client(bus, "x", DEV_ON_1).call("attach_device", guest="vm1", device="kbd", pin=1)
    assert bus.router.guests["vm1"].devices["kbd"].key == DEV_ON_1.key


def test_only_the_toolstack_names_the_key_that_drives_a_device(bus):
    assert "only the toolstack names the key" in Client(bus, "x", DEV).refused("attach_device", guest="vm1", device="x0", pin=3, key=DEV.key)
    Client(bus, "tool", TOOL).call("attach_device", guest="vm1", device="x0", pin=3, key=DEV_ON_1.key)
    assert bus.router.guests["vm1"].devices["x0"].key == DEV_ON_1.key


def test_a_device_key_cannot_take_over_another_keys_device(bus):
    Client(bus, "x", DEV_ON_1).refused("attach_device", guest="vm1", device="nic0", pin=5)


def test_a_device_the_guest_declared_is_claimed_by_the_first_device_key(bus):
    Client(bus, "irq", VM1).call("program_msi", device="net1", address=0xFEE00000, data=0x41)
    assert bus.router.guests["vm1"].devices["net1"].key is None
    Client(bus, "x", DEV_ON_1).call("attach_device", guest="vm1", device="net1", msi=True)
    assert bus.router.guests["vm1"].devices["net1"].key == DEV_ON_1.key


def test_a_device_the_guest_declared_is_driven_by_the_first_device_key_that_drives_it(bus):
    """After an irqbus restart the guest declares its MSI device again before the device
    process plugs it back in: the device process finds it plugged (locate) and raises."""
    Client(bus, "irq", VM1).call("program_msi", device="net1", address=0xFEE00000, data=0x41)
    Client(bus, "x", STRANGER).refused("locate", guest="vm1", device="net1")
    Client(bus, "x", DEV).call("locate", guest="vm1", device="net1")
    assert bus.router.guests["vm1"].devices["net1"].key is None  # locate reads only
    Client(bus, "x", DEV_ON_1).call("raise", guest="vm1", device="net1")
    assert bus.router.guests["vm1"].devices["net1"].key == DEV_ON_1.key
    Client(bus, "x", DEV).refused("raise", guest="vm1", device="net1")


@pytest.mark.parametrize("op,args", [
    ("raise", {}), ("lower", {}), ("pulse", {"count": 2}), ("detach_device", {}), ("locate", {}),
])
def test_a_device_is_driven_by_its_key_or_the_toolstack_only(bus, op, args):
    for peer in (STRANGER, VM1, DEV_ON_1, HV):
        message = Client(bus, "x", peer).refused(op, guest="vm1", device="nic0", **args)
        if op == "locate" and peer in (STRANGER, HV):  # no right to know of the guest: refused before the device
            assert f"key '{peer.short()}' may not locate guest vm1" in message
        else:
            assert f"key '{peer.short()}' does not drive device nic0" in message
    Client(bus, "dev", DEV).call(op, guest="vm1", device="nic0", **args)
    Client(bus, "tool", TOOL).call(op, guest="vm2", device="disk0", **args)


def test_a_revoked_device_key_drives_nothing(bus):
    revoked = Peer(DEV.key, frozenset())  # the same key, its grant gone from `authorized`
    message = Client(bus, "dev", revoked).refused("raise", guest="vm1", device="nic0")
    assert "is no longer a device key for guest vm1" in message


def test_raw_msi_is_the_toolstacks_only(bus):
    Client(bus, "irq", VM1).call("program_msi", device="net1", address=0xFEE00000, data=0x41)
    Client(bus, "x", DEV).call("attach_device", guest="vm1", device="net1", msi=True)
    for peer in (DEV, VM1, STRANGER):
        message = Client(bus, "x", peer).refused("msi", guest="vm1", address=0xFEE00000, data=0x45)
        assert "a raw MSI write (address/data) is for toolstack keys only" in message
        Client(bus, "x", peer).refused("msi", guest="vm1", device="net1", address=0xFEE00000, data=0x45)
    Client(bus, "x", DEV).call("msi", guest="vm1", device="net1")
    assert Client(bus, "tool", TOOL).call("msi", guest="vm1", address=0xFEE00000, data=0x45)["vector"] == 0x45


def test_a_guest_sees_itself_and_only_the_toolstack_sees_all(bus):
    guest = Client(bus, "irq", VM1)
    assert [g["name"] for g in guest.call("show", guest="vm1")["guests"]] == ["vm1"]
    assert "does not own guest vm2" in guest.refused("show", guest="vm2")
    assert "'show' of every guest is for toolstack keys only" in guest.refused("show")
    guest.refused("interrupts", guest="vm2")
    Client(bus, "x", DEV).refused("show", guest="vm1")
    assert len(Client(bus, "tool", TOOL).call("show")["guests"]) == 2
    out = Client(bus, "asker", VM2).send("interrupts", guest="vm2")  # forwarded to vm2 itself
    assert out.reply is None and out.error is None


def test_an_insecure_bus_refuses_nothing_of_this():
    """No key (an --insecure server): every peer holds every right, as before rights."""
    bus = IrqBus()
    anyone = Client(bus, "anyone", Peer(None, frozenset(Role), frozenset()))
    anyone.call("attach", name="vm1", domid=1)
    Client(bus, "dev", Peer(None, frozenset(Role), frozenset())).call("attach_device", guest="vm1", device="nic0", pin=5)
    anyone.call("raise", guest="vm1", device="nic0")
    anyone.call("msi", guest="vm1", address=0xFEE00000, data=0x45)
    anyone.call("send_virq", guest="vm1", virq="target")
    anyone.call("show")


@pytest.mark.parametrize("args,where", [
    ({"domains": [[1, "short"]]}, "domains[0][1]"),
    ({"domains": [[1, "a" * 39 + "~"]]}, "domains[0][1]"),  # '~' is no Z85 digit
    ({"domains": [[-1, key("a")]]}, "domains[0][0]"),
    ({"domains": [[1, key("a")]] * 4097}, "domains"),
    ({"gone": list(range(4097))}, "gone"),
    ({"gone": [1, "2"]}, "gone[1]"),
    ({"replace": 1}, "replace"),
])
def test_owners_checks_its_arguments(bus, args, where):
    message = Client(bus, "hv", HV).refused("owners", code="EINVAL", **args)
    assert f"'{where}'" in message


def test_attach_device_takes_a_z85_key_only(bus):
    message = Client(bus, "tool", TOOL).refused("attach_device", code="EINVAL", guest="vm1", device="x0", pin=3, key="device")
    assert "'key': expected a Z85 public key" in message


def test_the_attach_commands_device_key_is_a_z85_key_or_a_key_name(tmp_path):
    """`irqbus attach --device-key`: a Z85 key as it is; a key name of the key directory, its
    public key, created (and authorized as a device key) on first use."""
    from irqbus.cli import device_key
    from wire import security
    from wire.keys import KeyDir

    keys = KeyDir(tmp_path / "keys")
    before = security._current
    security.configure(security.Security(keys, keys.pair("toolstack", role=Role.TOOLSTACK)))
    try:
        assert device_key(key("Q")) == key("Q")
        made = device_key("dev-1")
        assert made == keys.public("dev-1").decode()
        assert keys.authorized().device_scope(made) == frozenset()  # a device key, any guest
        assert device_key("dev-1") == made  # the same key the second time
    finally:
        security._current = before


def test_a_refusal_for_want_of_a_right_is_not_recorded_so_it_can_be_served_once_granted(bus):
    """The shell runs a refused request again when `authorized` changed meanwhile (a command
    that creates and authorizes its key on first use and sends at once): same client, seq and
    frame, from a client whose record irqbus keeps (the device key's, which plugged nic0 in)."""
    frame = msgpack.packb({"v": 1, "op": "attach_device", "seq": next(_SEQ), "client": "dev", "args": {"guest": "vm1", "device": "n9", "pin": 9}})
    refused = msgpack.unpackb(bus.handle(frame, 5.0, peer=Peer(DEV.key, frozenset())).reply)
    assert refused["error"] == "EACCES"
    served = msgpack.unpackb(bus.handle(frame, 5.0, peer=DEV).reply)
    assert served["ok"], served


# --- what a refusal tells (review 1d): the caller's own words back, nothing irqbus resolved ---------


def test_a_refusal_repeats_the_callers_guest_not_the_name_or_domid_behind_it(bus):
    assert Client(bus, "x", STRANGER).refused("show", guest=2).endswith(
        "does not own guest 2: 'show' of a guest is for its own key or a toolstack key (ballonet keys authorize NAME --role toolstack)")
    for op in ("show", "interrupts"):
        for ref in (2, "2", "vm2"):
            message = Client(bus, "x", VM1).refused(op, guest=ref)
            assert f"does not own guest {ref}:" in message and "vm2" not in message.replace(f"guest {ref}:", "")
    message = Client(bus, "x", DEV_ON_1).refused("attach_device", guest=2, device="rogue", pin=10)
    assert "is not a device key for guest 2:" in message and "vm2" not in message


def test_a_stranger_is_told_the_same_whether_a_guest_is_attached_or_not(bus):
    """Refused before anything is looked up: no ESRCH for a guest that is not there."""
    for ref in ("vm2", "nobody", 2, 99):
        Client(bus, "x", STRANGER).refused("show", guest=ref)
        Client(bus, "x", VM1).refused("interrupts", guest=ref)
        Client(bus, "x", STRANGER).refused("attach_device", guest=ref, device="rogue", pin=10)
        Client(bus, "x", STRANGER).refused("locate", guest=ref)
        for op in ("raise", "lower", "detach_device"):
            message = Client(bus, "x", STRANGER).refused(op, guest=ref, device="nic0")
            assert "does not drive device nic0" in message and "vm1" not in message
            Client(bus, "x", STRANGER).refused(op, guest=ref, device="nowhere")


def test_a_device_refusal_never_names_the_guest_the_device_is_on(bus):
    """A device key naming another guest's device, or its own device with the wrong guest;
    a guest naming another guest's device in its own chip operations."""
    message = Client(bus, "dev", DEV).refused("raise", guest="vm1", device="disk0")
    assert "does not drive device disk0" in message and "vm2" not in message
    message = Client(bus, "dev", DEV).refused("raise", code="EPERM", guest="vm2", device="nic0")
    assert message == "device 'nic0' is not attached to guest vm2"
    message = Client(bus, "tool", TOOL).refused("pulse", code="EPERM", guest=2, device="nic0")
    assert "vm1" not in message and "vm2" not in message and "not to 2" in message
    message = Client(bus, "irq", VM1).refused("program_msi", code="EPERM", device="disk0", address=0xFEE00000, data=0x41)
    assert "vm2" not in message
    message = Client(bus, "irq", VM1).refused("chip", code="EPERM", ops=[{"kind": "unmask", "device": "disk0"}])
    assert "vm2" not in message
    message = Client(bus, "x", DEV_ON_1).refused("attach_device", code="EBUSY", guest="vm1", device="disk0", pin=10)
    assert "vm2" not in message


def test_locate_tells_of_a_guest_only_those_who_may_know_of_it(bus):
    """Without a device: device keys whose scope includes the guest, its own key, the
    toolstack. A scoped key asking after a guest irqbus knows nothing of is told it is not
    attached (its device process waits for it)."""
    assert Client(bus, "x", DEV_ON_1).call("locate", guest="vm1")["domid"] == 1
    assert Client(bus, "x", DEV).call("locate", guest="vm2")["domid"] == 2
    assert Client(bus, "x", VM2).call("locate", guest=2)["attached"] is True
    assert Client(bus, "x", TOOL).call("locate", guest="vm2")["attached"] is True
    for peer, ref in ((DEV_ON_1, "vm2"), (DEV_ON_1, 2), (VM1, "vm2"), (VM1, "nobody"), (STRANGER, "vm1"), (HV, "vm1")):
        message = Client(bus, "x", peer).refused("locate", guest=ref)
        assert message.startswith(f"key '{peer.short()}' may not locate guest {ref}:"), message
    assert Client(bus, "x", DEV_ON_1).call("locate", guest="later")["attached"] is False
    Client(bus, "hv", HV).call("owners", domains=[[3, VM2.key, "later"]])
    Client(bus, "x", DEV_ON_1).refused("locate", guest="later")  # named now: domain 3, not its scope
    Client(bus, "x", DEV_ON_1).refused("locate", guest="vm2", device="absent0")


def test_the_shell_on_curve_gives_no_rights_to_a_message_without_an_authenticated_key(tmp_path):
    """Review 1c: a message that came with no User-Id on a CURVE socket (which ZAP never lets
    happen) was served as wire.gate.INSECURE, with every right; it is refused, as the
    hypervisor's shell does (hypervisor/service.py, _drain)."""
    import os

    import structlog

    from irqbus.service import IrqbusService
    from wire.keys import KeyDir
    from wire.security import Security

    lines: list[dict[str, Any]] = []

    def collect(logger: Any, method: str, event: dict[str, Any]) -> Any:
        lines.append({"level": method, **event})
        raise structlog.DropEvent

    keys = KeyDir(os.environ["BALLONET_KEYS"])
    log = structlog.wrap_logger(None, processors=[collect])  # not the process's logger, which an earlier test may have closed
    service = IrqbusService(IrqBus(), f"ipc://{tmp_path}/irq", log, security=Security(keys, keys.pair("irqbus")))
    try:
        def attach(name: str, user: str | None) -> None:
            frame = msgpack.packb({"v": 1, "op": "attach", "seq": 1, "client": name, "args": {"name": name, "domid": 1 if user else 2}})
            service._serve_one(b"peer-" + name.encode(), [frame], False, user)

        attach("unnamed", None)
        assert not service.bus.router.guests
        assert [(l["level"], l["message"]) for l in lines] == [("warning", "the connection carries no authenticated key")]
        attach("tooled", keys.public("toolstack").decode())  # the same path with a key: served
        assert list(service.bus.router.guests) == ["tooled"]
    finally:
        service.close()


def test_a_key_that_is_no_device_key_is_told_the_same_of_any_device(bus):
    """Plugged with another key, declared by its guest (no key yet), or not there at all."""
    Client(bus, "irq", VM1).call("program_msi", device="net1", address=0xFEE00000, data=0x41)
    messages = {Client(bus, "x", peer).refused("raise", guest="vm1", device=device).replace(device, "D")
                for peer in (STRANGER,) for device in ("nic0", "net1", "nowhere")}
    assert len(messages) == 1, messages


def test_a_toolstack_session_ends_when_authorized_no_longer_grants_its_key(bus):
    """Review 1b, the events: refusing the revoked key's requests is not enough while the
    guest's interrupts still go to its session. The shell calls rights_changed when
    `authorized` changed; only sessions held by the toolstack's right of a key that lost it go."""
    Client(bus, "tool", TOOL).call("attach", name="tooled", domid=40)
    roles = {TOOL.key: TOOL, VM1.key: VM1, VM2.key: VM2}
    assert bus.rights_changed(lambda k: roles[k], 2.0) == ([], [])
    roles[TOOL.key] = Peer(TOOL.key, frozenset())
    roles[VM1.key] = Peer(VM1.key, frozenset())  # an owner's session hangs on `owners`, not on a role
    assert bus.rights_changed(lambda k: roles[k], 2.0) == ([], ["tooled/40"])
    assert sorted(bus.router.guests) == ["vm1", "vm2"]
