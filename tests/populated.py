"""The two sans-I/O cores with some life in them, for the fuzz properties: domains registered
with pages moved around; irqbus guests with pin and MSI devices, an interrupt in service, a
masked MSI pending and a forwarded query open. Each built through the wire, as clients would,
so each client's latest seq is known; and the fingerprint of each core's state, which a
refused request must leave as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from hypervisor.dispatch import Hypervisor
from irqbus.dispatch import IrqBus
from tests.strategies import BusDevice, BusGuest, BusWorld, Draft, HostDomain, HostWorld, envelope_draft
from wire.gate import Peer
from wire.keys import Role
from wire.operations import Endpoint

NOW = 100.0  # every fuzzed request arrives at this time; the setup happens earlier
FIRST_SEQ = 100  # where a client unknown so far starts numbering: room below for stale seqs


@dataclass
class Sender:
    """Numbers each client's requests as a client does (increasing from FIRST_SEQ) and sends
    drafts to a core; `deliver(endpoint, frame, now)` returns the core's outcome."""

    deliver: Callable[[Endpoint, bytes, float], Any]
    seqs: dict[str, int] = field(default_factory=dict)
    peer: Peer | None = None  # a secured bus: call with this key rather than the client's own

    def next_seq(self, client: str | None) -> int:
        if client is None:
            return FIRST_SEQ
        self.seqs[client] = self.seqs.get(client, FIRST_SEQ - 1) + 1
        return self.seqs[client]

    def send(self, draft: Draft, now: float = NOW) -> tuple[Any, int]:
        seq = self.next_seq(draft.client)
        return self.deliver(draft.endpoint, draft.frame(seq), now), seq

    def resend(self, draft: Draft, seq: int, now: float = NOW) -> Any:
        return self.deliver(draft.endpoint, draft.frame(seq), now)

    def call(self, endpoint: Endpoint, client: str, op: str, now: float, **args: Any) -> dict[str, Any] | None:
        """A setup request that must succeed; its result (None: a held reply)."""
        out, _ = self.send(envelope_draft(endpoint, client, op, args), now)
        if out.reply is None:
            return None
        reply = msgpack.unpackb(out.reply)
        assert reply["ok"], (op, args, reply)
        return reply["result"]


# --- the hypervisor ----------------------------------------------------------------------------

HOST_PAGES = 16_384


def populated_host(hv: Hypervisor | None = None) -> tuple[Hypervisor, HostWorld, Sender]:
    """Three domains whose pages were granted, given back from the middle and granted again
    (so they are fragmented and interleaved), targets written, statistics reported; and a
    fourth whose guest fell silent and which was kept as crashed (on_crash=preserve), so its
    client is told why it has no domain. `hv`: an empty hypervisor of HOST_PAGES to populate
    (e.g. one with a journal)."""
    # every populated host alike, so replies compare; reclaim on only while it is set up
    if hv is None:
        hv = Hypervisor(total_pages=HOST_PAGES, boot_id="populated")
    hv.reclaim_after_s = 5.0
    s = Sender(lambda ep, frame, now: hv.handle(ep, frame, now))
    G, A = Endpoint.GUEST, Endpoint.ADMIN
    web = s.call(G, "guest-web", "register", 10.0, name="web", memory_pages=2048, max_pages=4096)
    db = s.call(G, "guest-db", "register", 10.0, name="db", memory_pages=3000, max_pages=3000)
    s.call(G, "guest-idle", "register", 10.0, name="idle", memory_pages=1024, max_pages=8192)
    s.call(G, "guest-lost", "register", 10.0, name="lost", memory_pages=256, max_pages=512, on_crash="preserve")
    s.call(G, "guest-web", "increase_reservation", 11.0, nr_pages=512)
    start, count = db["extents"][0]
    s.call(G, "guest-db", "decrease_reservation", 12.0, extents=[[start + 100, 200], [start + count - 50, 50]])
    s.call(G, "guest-web", "increase_reservation", 13.0, nr_pages=300)
    start, _ = web["extents"][0]
    s.call(G, "guest-web", "decrease_reservation", 14.0, extents=[[start + 7, 1], [start + 9, 30]])
    s.call(A, "toolstack", "mem_set", 15.0, domain="web", target_pages=3000)
    s.call(A, "toolstack", "mem_max", 15.0, domain="idle", max_pages=4096)
    s.call(G, "guest-db", "status", 16.0, balloon={"target_kb": 10_000, "current_kb": 11_000, "state": "retrying", "schedule_delay": 4})
    s.call(G, "guest-idle", "status", 14.0)
    for tick in range(40, 65):  # the service's sweeps, every 0.25 s from 10 s: "lost" crashes at 15 s
        hv.sweep(tick / 4)
    assert hv.table.state(hv.table.resolve("lost"), 16.0) == "crashed"
    hv.reclaim_after_s = None
    domains = tuple(
        HostDomain(d.name, d.domid, d.client, tuple((e.start, e.count) for e in hv.pool.extents_of(d.domid)), d.max_pages)
        for d in hv.table.domains()
    )
    world = HostWorld(domains, admin_clients=("toolstack", "xl-2"), fresh_clients=("fresh-1", "fresh-2"), total_pages=HOST_PAGES)
    return hv, world, s


HOST_WORLD = populated_host()[1]
# Clients whose latest request the record keeps whatever it was: bound to a domain, or having
# changed something (docs/protocol.md: a client that only ever read or was refused has no record,
# and needs none: executing its request again changes nothing).
HOST_RECORDED = ("guest-web", "guest-db", "guest-idle", "toolstack")


def host_fingerprint(hv: Hypervisor) -> bytes:
    """Everything a request can change but the replay record and when a guest was last heard
    from (any guest request counts as a sign of life, refused or not)."""
    pool, table = hv.pool, hv.table
    domains = [
        [d.domid, d.name, d.client, d.target_pages, d.max_pages, d.target_writes, table.short_of_memory(d), d.balloon, d.control,
         str(d.on_crash), str(d.liveness), table.is_guests(d), [[e.start, e.count] for e in pool.extents_of(d.domid)]]
        for d in table.domains()
    ]
    free = [[e.start, e.count] for e in pool.free_extents()]
    # a private part of the table: the next domid
    hidden = [getattr(table, "_next_domid", None)]
    return msgpack.packb([pool.total_pages, pool.free_pages, free, table.audit(), hidden, domains])


# --- irqbus ------------------------------------------------------------------------------------


def _key(c: str) -> str:
    return (c * 40)[:40]  # 40 Z85 characters


# The keys of a secured bus (irqbus.rights): who each client of the populated world is.
BUS_PEERS = {
    "toolstack": Peer(_key("T"), frozenset({Role.TOOLSTACK})),
    "hypervisor": Peer(_key("H"), frozenset({Role.HYPERVISOR})),
    "vm1": Peer(_key("a"), frozenset({Role.GUEST})),
    "vm2": Peer(_key("b"), frozenset({Role.GUEST})),
    "device": Peer(_key("D"), frozenset({Role.DEVICE}), frozenset()),  # any guest
    "device-vm2": Peer(_key("E"), frozenset({Role.DEVICE}), frozenset({2})),
    "stranger": Peer(_key("S"), frozenset()),
}
_PEER_OF_CLIENT = {"irq-vm1": "vm1", "irq-vm2": "vm2", "tool": "toolstack", "asker": "toolstack", "hv": "hypervisor",
                   "fresh-1": "stranger", "fresh-2": "device", "fresh-3": "device-vm2"}


def peer_of(frame: bytes) -> Peer:
    """The key a client of the populated world calls with; a stranger's for anything else."""
    try:
        client = msgpack.unpackb(frame).get("client")
    except Exception:  # garbage: whoever sent it has no rights
        client = None
    return BUS_PEERS[_PEER_OF_CLIENT.get(client, "stranger") if isinstance(client, str) else "stranger"]


def populated_bus(secure: bool = False) -> tuple[IrqBus, BusWorld, Sender]:
    """vm1: a level pin 5 shared by nic0 and disk0 (nic0's interrupt in service), an edge pin
    1, a level IOAPIC pin 20, an MSI device programmed and unmasked, the target virq bound.
    vm2: an edge pin 10 and a masked MSI device with an interrupt pending. An `interrupts`
    query to vm1 waits for its answer.

    `secure`: each client calls with its key (BUS_PEERS; `Sender.peer` overrides it): the
    hypervisor told irqbus who owns vm1 and vm2, and the guests attached with those keys;
    kbd is driven by the device key, ioa0 by vm2's scoped device key (the toolstack said so)."""
    bus = IrqBus(query_timeout_s=2.0, epoch=1)  # fixed: two populated buses answer alike
    if secure:
        s = Sender(lambda ep, frame, now: bus.handle(frame, now, peer=s.peer or peer_of(frame)))
    else:
        s = Sender(lambda ep, frame, now: bus.handle(frame, now))
    B = Endpoint.IRQBUS

    def call(client: str, op: str, **args: Any) -> dict[str, Any] | None:
        return s.call(B, client, op, 20.0, **args)

    if secure:
        call("hv", "owners", domains=[[1, BUS_PEERS["vm1"].key, "vm1"], [2, BUS_PEERS["vm2"].key, "vm2"]], replace=True)
    call("irq-vm1", "attach", name="vm1", domid=1)
    call("irq-vm1", "program_pin", pin=5, trigger="level")
    call("irq-vm1", "program_pin", pin=20, trigger="level", vector=0x50)
    call("irq-vm1", "program_msi", device="net1", address=0xFEE00000, data=0x41)
    call("irq-vm1", "chip", ops=[{"kind": "unmask", "pin": 5}, {"kind": "unmask", "pin": 20}, {"kind": "unmask", "pin": 1}, {"kind": "unmask", "device": "net1"}])
    call("irq-vm1", "bind_virq", virq="target", vector=0x60)
    call("tool", "attach_device", guest="vm1", device="nic0", pin=5, trigger="level")
    call("tool", "attach_device", guest="vm1", device="disk0", pin=5, trigger="level")
    if secure:
        call("fresh-2", "attach_device", guest="vm1", device="kbd", pin=1)
        call("tool", "attach_device", guest="vm1", device="ioa0", pin=20, trigger="level", key=BUS_PEERS["device-vm2"].key)
    else:
        call("tool", "attach_device", guest="vm1", device="kbd", pin=1)
        call("tool", "attach_device", guest="vm1", device="ioa0", pin=20, trigger="level")
    call("irq-vm2", "attach", name="vm2", domid=2)
    call("irq-vm2", "program_pin", pin=10, trigger="edge")
    call("irq-vm2", "chip", ops=[{"kind": "unmask", "pin": 10}])
    call("irq-vm2", "program_msi", device="net2", address=0xFEE01000, data=0x52)
    call("tool", "attach_device", guest="vm2", device="ser0", pin=10)
    call("tool", "raise", guest="vm1", device="nic0")
    call("tool", "raise", guest="vm2", device="net2")
    call("tool", "pulse", guest="vm2", device="ser0", count=3)
    call("asker", "interrupts", guest="vm1")
    world = BusWorld(
        guests=(
            BusGuest("vm1", 1, "irq-vm1", (BusDevice("nic0", "pin", 5, "level"), BusDevice("disk0", "pin", 5, "level"),
                                           BusDevice("kbd", "pin", 1), BusDevice("ioa0", "pin", 20, "level"), BusDevice("net1", "msi"))),
            BusGuest("vm2", 2, "irq-vm2", (BusDevice("ser0", "pin", 10), BusDevice("net2", "msi"))),
        ),
        tool_clients=("tool", "asker"),
        fresh_clients=("fresh-1", "fresh-2", "fresh-3"),
        open_queries=((1, "irq-vm1", "text"),),
        keys=tuple(p.key for p in BUS_PEERS.values() if p.key is not None),
    )
    return bus, world, s


BUS_WORLD = populated_bus()[1]
BUS_RECORDED = ("irq-vm1", "irq-vm2", "tool")  # two sessions, and a client that attached devices


def bus_fingerprint(bus: IrqBus, now: float = NOW) -> bytes:
    """Every guest as `show` reports it (but when it was last heard from), whose session it
    is and with which key, which key drives each device, who owns which domain, and the
    open queries."""
    guests = []
    for machine in sorted(bus.router.guests.values(), key=lambda m: m.domid):
        snapshot = machine.snapshot(now)
        snapshot.pop("last_seen_s", None)
        drivers = sorted((d.name, d.key) for d in machine.devices.values())
        guests.append([machine.client, machine.owner_key, drivers, snapshot])
    return msgpack.packb([guests, len(bus.router), len(bus.queries), bus.queries.next_deadline(), bus.owners.items()])
