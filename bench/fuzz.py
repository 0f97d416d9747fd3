"""Fuzz the real servers over ZeroMQ with the strategies of tests/strategies.py.

Starts `irqbus serve`, `hypervisor serve --irqbus` and two `guest run` processes (with interrupt
drivers) through their CLIs on ipc:// endpoints, plugs devices into the guests, registers two
domains and attaches two irqbus sessions of its own (puppets: their client ids are known, so
guest operations act on real state), then sends what Hypothesis draws to the guest, admin and
irqbus endpoints: from DEALER and REQ sockets, from fresh client ids (thousands of them), as
new requests, identical retries and stale seqs, and now and then as a multi-frame DEALER
message. Batches alternate: mixed (about a third well-formed) and broken (mangled requests
only). After every batch:

- crashes: a server process exited (its log's tail is printed; the host is started afresh);
- hangs: a well-formed probe to each endpoint got no reply within --timeout;
- state changes: a batch whose every request was refused changed the state (the hypervisor's
  domains, targets, maxmem, pages of domains at rest and audit; irqbus `show` without
  timestamps), taken once it had settled before the batch;
- protocol: replies that are not a valid envelope under 1 MiB (tests/replies.py), a retry
  answered differently, a stale seq not refused EPROTO, a multi-frame message not refused EPROTO.

Through CURVE, as an attacker with a valid key would: each host has its own key directory (in
the run's temporary folder), and of each endpoint's fuzzing sockets half call with the
toolstack's key (every right: the deepest reach into the cores) and half with a key of no role
(a stranger on the host, refused where it has no right); the bench's own probes and puppets
use the toolstack's.

RSS (VmRSS) of each server is read before the first batch and after the last. The goal:
100,000 messages, 0 crashes, 0 hangs, 0 state changes, RSS growth under 64 MiB each.

    python bench/fuzz.py [--count 20000 | --seconds S] [--batch 50] [--seed N] [--timeout 2]
"""

from __future__ import annotations

import argparse
import atexit
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scenarios.launch import Processes, wait_for  # noqa: E402
from tests.replies import check_reply  # noqa: E402
from tests.strategies import (  # noqa: E402
    BusDevice,
    BusGuest,
    BusWorld,
    Draft,
    HostDomain,
    HostWorld,
    bus_broken,
    bus_requests,
    host_broken,
    host_requests,
)
from wire.operations import OPERATIONS, Endpoint  # noqa: E402
from wire.security import Security, Server  # noqa: E402

GOAL_MESSAGES = 100_000
GOAL_RSS_MIB = 64
PROGRESS_EVERY = 10_000  # messages between progress lines (with the servers' RSS) on stderr
READ_ONLY = frozenset(name for name, op in OPERATIONS.items() if op.read_only)  # replies not kept: a retry runs again
HOST_MEMORY = "512m"
PAGES = 512 * 256  # HOST_MEMORY in 4 KiB pages
GUESTS = {  # the real guests: name -> (guest run flags, devices the bench plugs in)
    "web": (("--memory", "64m", "--maxmem", "128m", "--device", "nic0:pin=5:level", "--device", "net0:msi"),
            (BusDevice("nic0", "pin", 5, "level"), BusDevice("net0", "msi"))),
    "db": (("--memory", "96m", "--maxmem", "96m", "--workload", "32m", "--device", "disk0:pin=20:level", "--device", "kbd0:pin=1:edge"),
           (BusDevice("disk0", "pin", 20, "level"), BusDevice("kbd0", "pin", 1, "edge"))),
}
PUPPET_SESSIONS = (("pup-c", 30000), ("pup-d", 30001))  # domids far from those the host hands out
PUPPET_DEVICES = (BusDevice("pdev0", "pin", 10, "edge"), BusDevice("pdev1", "pin", 11, "level"), BusDevice("pmsi0", "msi"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Tally:
    sent: int = 0
    accepted: int = 0
    clean_errors: int = 0
    unanswered: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    state_changes: list[str] = field(default_factory=list)
    violations: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first of each violation
    errors: Counter = field(default_factory=Counter)
    by_endpoint: Counter = field(default_factory=Counter)
    ways: Counter = field(default_factory=Counter)
    keys: Counter = field(default_factory=Counter)  # messages by the key they were sent with
    clients: set[str] = field(default_factory=set)
    batches_checked: int = 0  # broken batches refused throughout, the state compared
    batches_accepting: int = 0  # broken batches in which something was accepted all the same
    unsettled: Counter = field(default_factory=Counter)  # broken batches not compared, and why
    guest_restarts: int = 0

    def violation(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        self.examples.setdefault(kind, detail[:300])


class Slot:
    """One client socket to one endpoint; replaced when it stops answering."""

    def __init__(self, ctx: zmq.Context, address: str, kind: int, security: Security, server: Server) -> None:
        self.ctx, self.address, self.kind = ctx, address, kind
        self.security, self.server = security, server
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(self.kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        self.security.secure_client(sock, self.server)
        sock.connect(self.address)
        return sock

    def renew(self) -> None:
        self.sock.close(0)
        self.sock = self._open()

    def exchange(self, parts: list[bytes], seq: int | None, timeout: float) -> bytes | None:
        """Send one message; its reply (events and late replies to others are skipped), or
        None after `timeout` (the socket is then replaced: a REQ socket is stuck without a reply)."""
        sock = self.sock
        if self.kind == zmq.DEALER:
            while sock.poll(0):
                sock.recv_multipart()
        sock.send_multipart(parts)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                self.renew()
                return None
            frame = sock.recv_multipart()[-1]
            try:
                body = msgpack.unpackb(frame, strict_map_key=False)
            except Exception:
                return frame  # not msgpack: the caller reports it
            if isinstance(body, dict) and "event" in body:
                continue
            if seq is not None and isinstance(body, dict) and body.get("seq") not in (seq, None):
                continue  # the late reply to an earlier request of this socket
            return frame


class FuzzedHost:
    """The processes under test and the bench's own clients of them."""

    def __init__(self, procs: Processes, ctx: zmq.Context, timeout: float, generation: int) -> None:
        self.procs, self.ctx, self.timeout = procs, ctx, timeout
        tag = f"g{generation}"
        # the host's own keys, before any process starts; a stranger's key: valid, no role
        self.security = procs.own_keys()
        assert procs.keys is not None
        stranger = Security.curve(procs.keys, "stranger")
        self.addr = {Endpoint.GUEST: procs.ipc(f"hv{tag}"), Endpoint.ADMIN: procs.ipc(f"adm{tag}"), Endpoint.IRQBUS: procs.ipc(f"irq{tag}")}
        self.irqbus = procs.start(f"irqbus.{tag}", "irqbus", "serve", "--endpoint", self.addr[Endpoint.IRQBUS], "--query-timeout", "0.05", "--log-level", "error")
        self.hypervisor = procs.start(
            f"hypervisor.{tag}", "hypervisor", "serve", "--memory", HOST_MEMORY, "--guest-endpoint", self.addr[Endpoint.GUEST],
            "--admin-endpoint", self.addr[Endpoint.ADMIN], "--irqbus", self.addr[Endpoint.IRQBUS], "--log-level", "error",
        )
        self.tag = tag
        self.servers = {"hypervisor": self.hypervisor, "irqbus": self.irqbus}
        server = {Endpoint.GUEST: Server.HYPERVISOR, Endpoint.ADMIN: Server.HYPERVISOR, Endpoint.IRQBUS: Server.IRQBUS}
        self.slots = {
            ep: [Slot(ctx, a, kind, (self.security, stranger)[i % 2], server[ep]) for i, kind in enumerate([zmq.DEALER] * 6 + [zmq.REQ] * 2)]
            for ep, a in self.addr.items()
        }
        self.own = {ep: Slot(ctx, a, zmq.DEALER, self.security, server[ep]) for ep, a in self.addr.items()}  # the bench's probes
        self.seqs: dict[str, int] = {}
        self.guests: dict[str, subprocess.Popen] = {}
        self.guest_logs: dict[str, str] = {}
        self.exits: Counter = Counter()  # why real guests ended, as their logs say
        self.puppets: dict[str, tuple[str, int, tuple[tuple[int, int], ...]]] = {}  # name -> client, domid, extents
        self.sessions: dict[str, tuple[str, int]] = {}  # puppet irqbus guest name -> client, domid
        self.made = 0
        self.ready = False  # every real guest registered and attached with its devices
        wait_for(lambda: self.call(Endpoint.ADMIN, "bench", "info") is not None, 20, "the hypervisor to answer")
        wait_for(lambda: self.call(Endpoint.IRQBUS, "bench", "show", after=1 << 14) is not None, 20, "irqbus to answer")
        for name in GUESTS:
            self.start_guest(name)
        wait_for(self.real_guests_ready, 30, "the guests to register and attach to irqbus", interval=0.1)
        self.restock()

    # -- talking -------------------------------------------------------------------------------

    def next_seq(self, client: str) -> int:
        self.seqs[client] = self.seqs.get(client, random.randrange(1, 1000)) + 1
        return self.seqs[client]

    def call(self, endpoint: Endpoint, client: str, op: str, **args: Any) -> dict[str, Any] | None:
        """A request of the bench's own: its reply map, or None without one."""
        seq = self.next_seq(client)
        frame = self.own[endpoint].exchange([msgpack.packb({"v": 1, "op": op, "seq": seq, "client": client, "args": args})], seq, self.timeout)
        return None if frame is None else msgpack.unpackb(frame)

    def ok(self, endpoint: Endpoint, client: str, op: str, **args: Any) -> dict[str, Any]:
        reply = self.call(endpoint, client, op, **args)
        if reply is None or not reply["ok"]:
            raise RuntimeError(f"{op} {args}: {reply}")
        return reply["result"]

    def domains(self) -> list[dict[str, Any]]:
        return self._every_page(Endpoint.ADMIN, "list", "domains")

    def show(self) -> list[dict[str, Any]]:
        return self._every_page(Endpoint.IRQBUS, "show", "guests")

    def _every_page(self, endpoint: Endpoint, op: str, key: str) -> list[dict[str, Any]]:
        items, after = [], -1
        while after is not None:
            page = self.ok(endpoint, "bench", op, after=after)
            items += page[key]
            if page.get("next") is not None and page["next"] <= after:
                raise RuntimeError(f"{op}: the cursor does not move past {after}")
            after = page.get("next")
        return items

    def plug(self, guest: str, d: BusDevice) -> None:
        where = {"msi": True} if d.kind == "msi" else {"pin": d.pin, "trigger": d.trigger}
        self.call(Endpoint.IRQBUS, "bench-plug", "attach_device", guest=guest, device=d.name, **where)

    # -- keeping some life in the host -----------------------------------------------------------

    def start_guest(self, name: str) -> None:
        flags, _ = GUESTS[name]
        log = self.guest_logs[name] = f"{name}.{self.tag}.{self.made}"
        self.guests[name] = self.procs.start(
            log, "guest", "run", "--name", name, "--hypervisor", self.addr[Endpoint.GUEST],
            "--irqbus", self.addr[Endpoint.IRQBUS], "--heartbeat", "0.5", "--retry-delay", "0.2", "--max-retry-delay", "1",
            "--log-level", "info", *flags,
        )
        self.made += 1

    def exit_reason(self, name: str) -> str:
        """Why a real guest ended, from its log's last line."""
        lines = self.procs.log(self.guest_logs[name]).strip().splitlines()
        try:
            last = json.loads(lines[-1])
            return f"{last.get('event')}: {last.get('message') or last.get('error') or ''}".strip(": ")[:120]
        except (IndexError, ValueError):
            return (lines[-1] if lines else f"exit status {self.guests[name].returncode}, nothing logged")[:120]

    def restock(self) -> int:
        """Restart real guests that exited (a fuzzed destroy ends them; they come up while
        the fuzz goes on) and plug in the devices of those that are up; register and attach
        puppets anew, with new client ids, where the fuzz destroyed or replaced them. Returns
        the guests restarted."""
        restarted = 0
        for name, proc in self.guests.items():
            if proc.poll() is not None:
                self.exits[self.exit_reason(name)] += 1
                # a fuzzed register may have taken the name meanwhile: the guest would exit
                # again at once (EEXIST); and if it died without a word, its domain is stale
                self.call(Endpoint.ADMIN, "bench", "destroy", domain=name)
                self.start_guest(name)
                restarted += 1
        self.ready = self.real_guests_ready()
        for name in ("pup-a", "pup-b"):
            known = self.puppets.get(name)
            if known is None or not (self.call(Endpoint.GUEST, known[0], "get_target") or {}).get("ok"):
                self.made += 1
                client = f"bench-{name}-{self.made}"
                reply = self.call(Endpoint.GUEST, client, "register", name=name, memory_pages=2048, max_pages=8192)
                if reply is not None and reply["ok"]:
                    self.puppets[name] = (client, reply["result"]["domid"], tuple(map(tuple, reply["result"]["extents"])))
        for name, domid in PUPPET_SESSIONS:
            mine = self.sessions.get(name)
            if mine is None or not (self.call(Endpoint.IRQBUS, mine[0], "chip") or {}).get("ok"):
                self.made += 1
                client = f"bench-{name}-{self.made}"
                reply = self.call(Endpoint.IRQBUS, client, "attach", name=name, domid=domid)
                if reply is not None and reply["ok"]:
                    self.sessions[name] = (client, domid)
                    for d in PUPPET_DEVICES:
                        self.plug(name, replace(d, name=f"{d.name}{name[-1]}"))
        return restarted

    def real_guests_ready(self) -> bool:
        """Every real guest registered and attached under its own domid; its devices plugged."""
        domids = {d["name"]: d["domid"] for d in self.domains()}
        shown = {g["name"]: g for g in self.show()}
        ready = True
        for name, (_, devices) in GUESTS.items():
            guest = shown.get(name)
            if name not in domids or guest is None or guest["domid"] != domids[name]:
                ready = False
                continue
            plugged = {d["name"] for d in guest["devices"]}
            for device in devices:
                if device.name not in plugged:
                    self.plug(name, device)
        return ready

    def bound(self) -> set[str]:
        """The bench's clients that own a domain or a session: the servers keep their records."""
        return {client for client, _, _ in self.puppets.values()} | {client for client, _ in self.sessions.values()}

    def worlds(self) -> tuple[HostWorld, BusWorld]:
        doms = {d["name"]: d for d in self.domains()}
        host = [HostDomain(n, doms[n]["domid"], "", (), doms[n]["max_pages"]) for n in GUESTS if n in doms]
        host += [HostDomain(n, domid, client, extents, 8192) for n, (client, domid, extents) in self.puppets.items()]
        fresh = tuple(f"fresh-{i}" for i in range(8))
        bus = [BusGuest(n, doms[n]["domid"] if n in doms else 1, "", devices) for n, (_, devices) in GUESTS.items()]
        bus += [BusGuest(n, domid, client, tuple(replace(d, name=f"{d.name}{n[-1]}") for d in PUPPET_DEVICES)) for n, (client, domid) in self.sessions.items()]
        return (HostWorld(tuple(host), ("xl", "toolstack"), fresh, PAGES), BusWorld(tuple(bus), ("tool", "dev"), fresh))

    # -- watching --------------------------------------------------------------------------------

    def dead(self) -> list[str]:
        return [name for name, proc in self.servers.items() if proc.poll() is not None]

    def probe(self) -> list[str]:
        """The endpoints that did not answer a well-formed request in time."""
        silent = []
        for endpoint, op, args in ((Endpoint.ADMIN, "info", {}), (Endpoint.GUEST, "get_target", {}), (Endpoint.IRQBUS, "show", {"after": 1 << 14})):
            if self.call(endpoint, "bench-probe", op, **args) is None:
                silent.append(str(endpoint))
        return silent

    def fingerprint(self) -> dict[str, Any] | None:
        """What a refused request must not change; None if a server did not answer."""
        try:
            domains = self.domains()
            audit = self.ok(Endpoint.ADMIN, "bench", "audit")
            guests = self.show()
        except RuntimeError:
            return None
        doms = {d["domid"]: {k: d[k] for k in ("name", "target_pages", "max_pages", "current_pages")} for d in domains}
        # The real guests act on irqbus by themselves: they answer interrupts, and one that
        # irqbus forgot (a fuzzed attach under its name or domid replaced it) attaches again
        # within 2 s, replacing whoever holds its name or domid. Their entries are left out.
        theirs = set(GUESTS) | {d["domid"] for d in domains if d["name"] in GUESTS}
        kept = {}
        for g in guests:
            if g["name"] not in theirs and g["domid"] not in theirs:
                g.pop("last_seen_s", None)
                kept[g["domid"]] = g
        return {"domains": doms, "audit": audit, "irqbus": kept}

    def settled(self) -> dict[str, Any] | None:
        """The fingerprint once two readings 50 ms apart agree (guests reacting to earlier
        requests, pages moving toward a target), or None if it does not settle within 1 s."""
        last = self.fingerprint()
        for _ in range(20):
            time.sleep(0.05)
            now = self.fingerprint()
            if now is not None and now == last:
                return now
            last = now
        return None

    def rss(self) -> dict[str, float]:
        return {name: rss_mib(proc.pid) for name, proc in self.servers.items() if proc.poll() is None}

    def close(self) -> None:
        for slots in self.slots.values():
            for slot in slots:
                slot.sock.close(0)
        for slot in self.own.values():
            slot.sock.close(0)


def differences(before: Any, after: Any, path: str = "", out: list[str] | None = None) -> list[str]:
    """Where two fingerprints differ, as "path: before -> after" (at most 6)."""
    out = [] if out is None else out
    if len(out) >= 6 or before == after:
        return out
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            differences(before.get(key, "(none)"), after.get(key, "(none)"), f"{path}.{key}", out)
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            differences(b, a, f"{path}[{i}]", out)
    else:
        out.append(f"{path.lstrip('.')}: {before!r:.80} -> {after!r:.80}")
    return out


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.procs = Processes()
        self.ctx = zmq.Context()
        self.generation = 0
        try:
            self.host = FuzzedHost(self.procs, self.ctx, args.timeout, self.generation)
        except BaseException:  # the processes started so far must not outlive a failed setup
            self.procs.stop_all()
            self.ctx.destroy(linger=0)
            raise
        self.rss_before = self.host.rss()
        self.started = time.monotonic()
        self.batch: list[tuple[Draft, bool]] = []
        self.batch_no = 0
        self.broken_host = False
        self.last_reply: bytes | None = None
        self.next_batch()

    def next_batch(self) -> None:
        """Strategies aimed at the host as it is now; for a broken batch, the state to keep."""
        host_world, bus_world = self.host.worlds()
        self.host_world = host_world
        self.mixed = st.one_of(host_requests(host_world), bus_requests(bus_world))
        self.broken = st.one_of(host_broken(host_world), bus_broken(bus_world))
        self.before: dict[str, Any] | None = None  # a broken batch's starting state, if at rest
        self.why_not: str = ""
        if self.batch_no % 2:
            self.before = self.host.settled() if self.host.ready else None
            self.why_not = "" if self.before is not None else "state moving" if self.host.ready else "a guest restarting"

    def next_strategy(self) -> st.SearchStrategy[Draft]:
        return self.broken if self.batch_no % 2 else self.mixed

    def done(self) -> bool:
        if self.args.seconds is not None:
            return time.monotonic() - self.started >= self.args.seconds
        return self.tally.sent >= self.args.count

    # -- one draft, played in a few ways -----------------------------------------------------------

    def play(self, draft: Draft) -> list[bool | None]:
        """Send a draft and sometimes its retry, a stale copy, a multi-frame copy; whether each
        was accepted (None: no valid reply)."""
        rng, host, t = self.rng, self.host, self.tally
        draft = self.spare_real_guests(draft)
        fresh = draft.client is not None and draft.client.startswith(("fresh-", "xl", "tool", "dev"))
        if fresh and isinstance(draft.body, dict) and rng.random() < 0.5:
            client = f"fz-{rng.getrandbits(48):012x}"  # thousands of clients, each with a record to keep
            draft = replace(draft, body={**draft.body, "client": client}, client=client)
        if draft.client is not None:
            t.clients.add(draft.client)
        seq = host.next_seq(draft.client) if draft.client else rng.randrange(1 << 20)
        frame = draft.frame(seq)
        readable = draft.readable_seq(seq)
        slots = host.slots[draft.endpoint]
        slot = slots[rng.randrange(len(slots))]
        outcomes = [self.send(slot, [frame], readable, draft, "new")]
        first = self._decoded(self.last_reply)
        first_frame = self.last_reply
        # The server keeps this client's request for sure (docs/protocol.md, Retries) if the
        # client is bound (a puppet's domain or session) or the request changed something.
        kept = first is not None and first["seq"] == seq and (
            draft.client in host.bound() or (first["ok"] and draft.op not in READ_ONLY)
        )
        if readable is not None and rng.random() < 0.15:
            outcomes.append(self.send(slot, [frame], readable, draft, "retry"))
            if kept and draft.op not in READ_ONLY and self.last_reply is not None and self.last_reply != first_frame:
                t.violation("retry answered differently", f"{draft.op} ({draft.mutation}): {first_frame[:120]!r} then {self.last_reply[:120]!r}")
        if readable is not None and seq > 1 and rng.random() < 0.1:
            stale = draft.frame(seq - rng.randrange(1, min(seq - 1, 50) + 1))
            outcomes.append(self.send(slot, [stale], None, draft, "stale seq"))
            reply = self._decoded(self.last_reply)
            if kept and reply is not None and (reply["ok"] or reply["error"] != "EPROTO"):
                t.violation("stale seq not refused EPROTO", f"{draft.op} ({draft.mutation}): {reply}")
        if rng.random() < 0.03:
            dealer = slots[rng.randrange(6)]
            parts = rng.choice([[b"", frame], [frame, frame], [frame, b""], [b"", b"", frame]])
            outcomes.append(self.send(dealer, parts, None, draft, "multi-frame"))
            reply = self._decoded(self.last_reply)
            if reply is not None and (reply["ok"] or reply["error"] != "EPROTO"):
                t.violation("multi-frame message not refused EPROTO", f"{[len(p) for p in parts]} frames: {reply}")
        return outcomes

    def spare_real_guests(self, draft: Draft) -> Draft:
        """Most destroys of a real guest go to a puppet instead: a destroyed guest restarts, and
        the batches until it is up again cannot be checked for state changes."""
        if draft.op != "destroy" or not isinstance(draft.body, dict) or not isinstance(draft.body.get("args"), dict):
            return draft
        real = set(GUESTS) | {d.domid for d in self.host_world.domains if d.name in GUESTS} | {str(d.domid) for d in self.host_world.domains if d.name in GUESTS}
        target = draft.body["args"].get("domain")
        if isinstance(target, int | str) and target in real and self.rng.random() < 0.8:
            return replace(draft, body={**draft.body, "args": {**draft.body["args"], "domain": self.rng.choice(("pup-a", "pup-b"))}})
        return draft

    @staticmethod
    def _decoded(frame: bytes | None) -> dict[str, Any] | None:
        try:
            return None if frame is None else check_reply(frame)
        except AssertionError:
            return None

    def send(self, slot: Slot, parts: list[bytes], seq: int | None, draft: Draft, way: str) -> bool | None:
        t = self.tally
        t.sent += 1
        t.by_endpoint[str(draft.endpoint)] += 1
        t.ways[way + (" REQ" if slot.kind == zmq.REQ else "")] += 1
        t.keys[slot.security.own.name if slot.security.own else "insecure"] += 1
        if slot.kind == zmq.REQ and len(parts) > 1:
            parts = parts[-1:]
        self.last_reply = frame = slot.exchange(parts, seq, self.args.timeout)
        if frame is None:
            t.unanswered += 1
            t.examples.setdefault(f"unanswered {t.unanswered}", f"{draft.op} ({draft.mutation}, {way}, {'REQ' if slot.kind == zmq.REQ else 'DEALER'}, {len(parts[-1]):,} bytes)")
            self.broken_host = self.broken_host or bool(self.host.dead())
            return None
        try:
            reply = check_reply(frame, seq)
        except AssertionError as err:
            t.violation("invalid reply", f"{draft.op} ({draft.mutation}, {way}): {err}")
            return None
        if reply["ok"]:
            t.accepted += 1
            return True
        t.clean_errors += 1
        t.errors[reply["error"]] += 1
        return False

    # -- batches ----------------------------------------------------------------------------------

    def step(self, draft: Draft) -> None:
        """One drawn draft; at the end of a batch, check the servers and start the next."""
        before = self.tally.sent
        outcomes = self.play(draft)
        if self.tally.sent // PROGRESS_EVERY > before // PROGRESS_EVERY:
            rss = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in self.host.rss().items())
            print(f"  {self.tally.sent:,} sent in {time.monotonic() - self.started:.0f} s; RSS {rss}", file=sys.stderr, flush=True)
        self.batch.append((draft, all(o is False for o in outcomes)))
        size = self.args.batch // 2 if self.batch_no % 2 else self.args.batch  # broken ones: mostly refused throughout
        if len(self.batch) >= size or self.done() or self.broken_host:
            self.end_batch()

    def end_batch(self) -> None:
        t, host = self.tally, self.host
        dead = host.dead()
        self.broken_host = False
        if dead:
            for name in dead:
                kept = self.keep_log(f"{name}.{host.tag}")
                log = self.procs.log(f"{name}.{host.tag}").strip().splitlines()
                t.crashes.append(f"{name} exited {host.servers[name].returncode} ({kept}): {' | '.join(log[-3:])[:400]}")
            self.restart()
        else:
            silent = host.probe()
            if silent:
                t.hangs.append(f"batch {self.batch_no}: no reply from {', '.join(silent)} within {self.args.timeout} s")
                self.restart()
            elif self.batch_no % 2:  # a broken batch: did its refusals change anything?
                if self.before is None:
                    t.unsettled[self.why_not] += 1
                elif not all(refused for _, refused in self.batch):
                    t.batches_accepting += 1
                else:
                    after = host.fingerprint()
                    t.batches_checked += 1
                    if after is not None and after != self.before:
                        sample = "; ".join(f"{d.op}/{d.mutation}" for d, _ in self.batch[:8])
                        t.state_changes.append(f"batch {self.batch_no} ({sample} ...): {'; '.join(differences(self.before, after))}")
            t.guest_restarts += host.restock() if not host.dead() else 0
        self.batch = []
        self.batch_no += 1
        self.next_batch()

    def keep_log(self, name: str) -> str:
        """Copy a process's log where it outlives the run: out/fuzz/."""
        out = REPO / "out" / "fuzz"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.log").write_text(self.procs.log(name))
        return f"log in out/fuzz/{name}.log"

    def restart(self) -> None:
        """A server died or hung: stop everything and start a new host, to go on fuzzing."""
        for name in self.host.servers:
            self.keep_log(f"{name}.{self.host.tag}")
        self.host.close()
        self.procs.stop_all()
        self.procs = Processes()
        self.generation += 1
        self.host = FuzzedHost(self.procs, self.ctx, self.args.timeout, self.generation)
        self.rss_before = self.host.rss()  # growth is measured on the last host

    # -- the report -------------------------------------------------------------------------------

    def report(self) -> bool:
        t = self.tally
        elapsed = time.monotonic() - self.started
        rss_after = self.host.rss()
        eps = ", ".join(f"{k} {v:,}" for k, v in sorted(t.by_endpoint.items()))
        ways = ", ".join(f"{k} {v:,}" for k, v in sorted(t.ways.items()))
        print(f"fuzz: {t.sent:,} messages in {elapsed:.0f} s ({t.sent / max(elapsed, 1e-9):.0f}/s) from {len(t.clients):,} client ids")
        print(f"  endpoints: {eps}")
        print(f"  sent as: {ways}")
        print(f"  with keys: {', '.join(f'{k} {v:,}' for k, v in sorted(t.keys.items()))} (CURVE)")
        print(f"  accepted         {t.accepted:>9,}")
        print(f"  clean errors     {t.clean_errors:>9,}  ({', '.join(f'{k} {v:,}' for k, v in t.errors.most_common())})")
        print(f"  unanswered       {t.unanswered:>9,}  (no reply within {self.args.timeout:g} s; the socket is replaced)")
        for i in range(1, min(t.unanswered, 5) + 1):
            print(f"    {t.examples[f'unanswered {i}']}")
        print(f"  crashes          {len(t.crashes):>9,}")
        for line in t.crashes[:5]:
            print(f"    {line}")
        print(f"  hangs            {len(t.hangs):>9,}")
        for line in t.hangs[:5]:
            print(f"    {line}")
        print(f"  state changes    {len(t.state_changes):>9,}  (of {t.batches_checked:,} batches refused throughout; "
              f"{t.batches_accepting:,} broken batches had an acceptance; not compared: "
              f"{', '.join(f'{n:,} {why}' for why, n in t.unsettled.items()) or 'none'})")
        for line in t.state_changes[:5]:
            print(f"    {line}")
        print(f"  protocol         {sum(t.violations.values()):>9,}")
        for kind, n in t.violations.most_common():
            print(f"    {kind}: {n:,}; first: {t.examples[kind]}")
        print(f"  guests restarted {t.guest_restarts:>9,}  (a fuzzed destroy ends a real guest)")
        for why, n in self.host.exits.most_common(4):
            print(f"    {n:,} x {why}")
        growth = {}
        for name in ("hypervisor", "irqbus"):
            before, after = self.rss_before.get(name, 0.0), rss_after.get(name, 0.0)
            growth[name] = after - before
            print(f"  RSS {name:<12} {before:7.1f} -> {after:7.1f} MiB ({after - before:+.1f})")
        if self.generation:
            print(f"  (the host was started {self.generation} more time(s); RSS is the last host's)")
        misses = []
        if t.sent < GOAL_MESSAGES:
            misses.append(f"{t.sent:,} messages")
        for label, items in (("crash", t.crashes), ("hang", t.hangs), ("state change", t.state_changes)):
            if items:
                misses.append(f"{len(items)} {label}{'es' if label == 'crash' and len(items) > 1 else 's' if len(items) > 1 else ''}")
        for name, g in growth.items():
            if g >= GOAL_RSS_MIB:
                misses.append(f"{name} RSS +{g:.0f} MiB")
        verdict = "met" if not misses else "NOT met (" + "; ".join(misses) + ")"
        print(f"goal: {GOAL_MESSAGES:,} messages, 0 crashes, 0 hangs, 0 state changes, RSS growth under {GOAL_RSS_MIB} MiB: {verdict}")
        return not misses

    def close(self) -> None:
        try:
            self.host.close()
        finally:
            self.procs.stop_all()
            self.ctx.destroy(linger=0)


def drawer(seed_value: int) -> Callable[[st.SearchStrategy[Draft]], Draft]:
    """Draws from a strategy with a seeded random, outside Hypothesis' test engine.

    The engine runs a test function over reproducible examples and shrinks failures; a
    campaign against live processes, whose world changes between batches, is not such a
    function (the engine rightly calls it flaky). So the strategies are drawn from directly,
    through the engine's own data object -- an internal API, hence the fallback to the public,
    slower `example()`.
    """
    rng = random.Random(seed_value)
    try:
        from hypothesis.control import BuildContext
        from hypothesis.internal.conjecture.data import ConjectureData

        def draw(strategy: st.SearchStrategy[Draft]) -> Draft:
            while True:
                data = ConjectureData(random=rng)
                try:
                    with BuildContext(data, wrapped_test=None):
                        return data.draw(strategy)
                except Exception as err:  # an overrun or a rejected draw: draw again
                    if type(err).__name__ not in ("StopTest", "UnsatisfiedAssumption", "Frozen"):
                        raise

        draw(st.none())
        return draw
    except Exception:  # the internals moved
        import warnings

        from hypothesis.errors import NonInteractiveExampleWarning

        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return lambda strategy: strategy.example()


class StopRequest:
    """SIGTERM, SIGINT or SIGHUP ask the campaign to stop after the message in flight. The
    handler only sets a flag: an exception raised from a handler can land in a callback that
    swallows it (a garbage-collector hook did, here)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: Any) -> None:
        self.signal = signum


def run(args: argparse.Namespace) -> int:
    campaign: Campaign | None = None
    stop = StopRequest()
    try:
        campaign = Campaign(args)
        atexit.register(campaign.close)
        draw = drawer(args.seed)
        while not campaign.done() and stop.signal is None:
            campaign.step(draw(campaign.next_strategy()))
        if stop.signal is not None:
            print(f"fuzz: stopped by signal {stop.signal}; the figures so far:", file=sys.stderr)
        return 0 if campaign.report() else 1
    finally:
        if campaign is not None:
            campaign.close()
            atexit.unregister(campaign.close)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how_long = parser.add_mutually_exclusive_group()
    how_long.add_argument("--count", type=int, default=20_000, help="messages to send (default 20,000)")
    how_long.add_argument("--seconds", type=float, help="send for this long instead")
    parser.add_argument("--batch", type=int, default=50, help="drafts between checks (each sent 1-4 ways)")
    parser.add_argument("--seed", type=int, default=11, help="Hypothesis' and the bench's seed")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for any reply")
    args = parser.parse_args()
    random.seed(args.seed)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
