"""irqbus request handling without sockets: a frame and the time go in; a reply frame, the
frames to push to other clients (irq events for guests, replies held for a forwarded query)
and the figures to log come out. Same envelope, sequence and replay rules as the hypervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from irqbus import rights
from irqbus.backlog import Backlog
from irqbus.machine import Delivery, Device, DeviceKind, GuestMachine, msi_message
from irqbus.queries import DEFAULT_QUERY_TIMEOUT_S, PendingQueries, Query
from irqbus.owners import Owners
from irqbus.routing import Router
from wire import envelope
from wire.epoch import new_epoch
from wire.errors import ErrorCode, WireError
from wire.gate import INSECURE, Peer
from wire.keys import Role
from wire.identity import key_of, scoped, shown_client
from wire.operations import Endpoint, chip_commands, lookup, status_clears
from wire import replay
from wire.replay import ReplayRecord, Verdict, replay_refusal
from wire.names import domain_ref_text
from wire.shown import clip

SHOW_PAGE_BYTES = 512 * 1024  # half the message limit: the envelope and one more guest always fit

# A device's signal, as the fast lane takes it (IrqBus._signal_routes): the operation and how
# its device is driven.
_SIGNALS = frozenset({"raise", "pulse", "msi"})
# What cannot change who may drive which device where: every other operation clears the routes.
_ROUTE_NEUTRAL = frozenset({"raise", "pulse", "msi", "lower", "chip", "show", "interrupts", "answer", "locate", "send_virq", "bind_virq"})
MAX_SIGNAL_ROUTES = 4096
_NEW = Verdict.NEW
_CHIP_ARGS = frozenset({"ops", "clear", "reply"})  # the chip fast lane's arguments (wire.operations' `chip`)

# Per-interrupt traffic is logged at debug level; everything else at info.
QUIET_OPS = frozenset({"chip", "raise", "lower", "pulse", "msi", "show", "answer", "interrupts", "send_virq", "locate", "owners"})


@dataclass(slots=True)
class Send:
    """A frame for another client: an event for a guest, or a reply that was held."""

    client: str
    frame: bytes


@dataclass(slots=True)
class Outcome:
    reply: bytes | None  # None: nothing to send the requester now (its query is open), or not committed yet
    op: str | None = None
    seq: int | None = None
    client: str | None = None
    error: ErrorCode | None = None
    message: str = ""
    replayed: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    result: dict[str, Any] | None = None  # executed, its reply not yet encoded and recorded
    frame: bytes | None = None  # executed, not yet recorded: the request, whose digest the record keeps
    digest: int | None = None  # the frame's, when the verdict needed it already
    read_only: bool = False
    peer: Peer = INSECURE  # the caller's key, for the log line
    reply_wanted: bool = True  # False: a `chip` with "reply": false that succeeded; its reply is recorded, not sent

    @property
    def quiet(self) -> bool:
        """Per-interrupt traffic that went as it should: logged at debug level only."""
        return self.error is None and not self.replayed and self.op in QUIET_OPS and not self.fields.get("changed")


@dataclass(slots=True)
class _Result:
    result: dict[str, Any] | None  # None: deferred
    fields: dict[str, Any] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)


def irq_events(machine: GuestMachine, deliveries: list[Delivery], epoch: int, frames: EventFrames | None = None) -> list[Send]:
    """Each delivery becomes an `irq` event on the guest's own session, and nowhere else, with
    this instance's epoch (its generations compare with this instance's only: wire.epoch);
    once events were dropped for it (irqbus.backlog), each carries the count so far.
    `frames`: the encoder that packs only what changes per interrupt (the same bytes)."""
    client, encode, event = machine.client, envelope.encode, envelope.event
    if machine.dropped:
        return [Send(client, encode(event("irq", {**d.event_args(epoch), "dropped": machine.dropped}))) for d in deliveries]
    if frames is not None:
        return [Send(client, frames.encode(d)) for d in deliveries]
    return [Send(client, encode(event("irq", d.event_args(epoch)))) for d in deliveries]


class EventFrames:
    """`irq` events packed the way envelope.encode packs them, byte for byte, with all but the
    status latches packed once per route (vector, controller, pin or device): an interrupt
    costs packing its status map. Bounded: past MAX_SIGNAL_ROUTES routes it starts again."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._parts: dict[tuple[int, str, int | None, str | None], tuple[bytes, bytes]] = {}

    def encode(self, d: Delivery) -> bytes:
        key = (d.vector, d.source, d.pin, d.device)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._parts_of(d)
            if len(self._parts) >= MAX_SIGNAL_ROUTES:
                self._parts.clear()
            self._parts[key] = parts
        head, tail = parts
        return b"".join((head, envelope.encode(d.status), tail))

    def _parts_of(self, d: Delivery) -> tuple[bytes, bytes]:
        """The frame of `d` split around its status map: what comes before, what after."""
        args = d.event_args(self.epoch)
        marker = {"status": "\x00"}  # a stand-in of known bytes where the status map goes
        whole = envelope.encode(envelope.event("irq", {**args, **marker}))
        cut = envelope.encode("\x00")
        at = whole.index(envelope.encode("status") + cut) + len(envelope.encode("status"))
        return whole[:at], whole[at + len(cut):]


class IrqBus:
    def __init__(self, query_timeout_s: float = DEFAULT_QUERY_TIMEOUT_S, epoch: int | None = None, started: float | None = None) -> None:
        """`epoch`: this instance's (wire.epoch; drawn when not given); `started`: its start on
        the clock `now` comes from (the first request's time when not given), for `up_s`."""
        self.epoch = new_epoch() if epoch is None else epoch
        self.started = started
        self.router = Router()
        self.queries = PendingQueries(query_timeout_s)
        self.record = ReplayRecord()
        self.backlog = Backlog()
        self.owners = Owners()
        self._handlers: dict[str, Callable[[str, Peer, dict[str, Any], float, int], _Result]] = {
            "attach": self._attach,
            "detach": self._detach,
            "program_pin": self._program_pin,
            "program_msi": self._program_msi,
            "chip": self._chip,
            "bind_virq": self._bind_virq,
            "send_virq": self._send_virq,
            "owners": self._owners,
            "answer": self._answer,
            "attach_device": self._attach_device,
            "detach_device": self._detach_device,
            "raise": self._raise,
            "lower": self._lower,
            "pulse": self._pulse,
            "msi": self._msi,
            "show": self._show,
            "interrupts": self._interrupts,
            "locate": self._locate,
        }
        # Each operation with its argument schema, looked up once per request.
        self._served = {name: (lookup(name, Endpoint.IRQBUS), handler) for name, handler in self._handlers.items()}
        # The fast lane of a device's signal: (key, op, guest, device) as a request named them
        # -> the machine and device its checks found, kept until anything that could change
        # them (an attach, a plug, `owners`, new rights: whatever is not _ROUTE_NEUTRAL)
        self._signal_routes: dict[tuple[str | None, str, int | str, str], tuple[GuestMachine, Device]] = {}
        self._frames = EventFrames(self.epoch)
        # The fast lane of a guest's chip ack: (client, key) -> the session `_session` found
        # for it, cleared with the signal routes (an attach, a detach, `owners`, new rights).
        self._chip_sessions: dict[tuple[str, str | None], GuestMachine] = {}
        self.fast_lanes = True  # False: every request goes the whole way (the equivalence tests)

    # -- the shell's entry points ------------------------------------------------------------------

    def handle(self, frame: bytes, now: float, req_peer: bool = False, peer: Peer = INSECURE) -> Outcome:
        """Execute a request and commit its reply."""
        outcome = self.execute(frame, now, req_peer, peer)
        self.commit(outcome, now)
        return outcome

    def execute(self, frame: bytes, now: float, req_peer: bool = False, peer: Peer = INSECURE) -> Outcome:
        """Execute a request: its events (`sends`) are ready to go, its reply is not.

        `peer`: the key the request came with (irqbus.rights); the client it names is a name
        within that key's namespace (wire.identity), so the replay record, the sessions and
        the open queries are all keyed by the scoped name.

        Why two steps: a device's `raise` is waiting on the guest's interrupt, not on the
        device's own reply, so the shell sends the events first and then calls `commit`.
        Nothing may be executed in between: the replay record must hold the reply before the
        next request is looked at.
        """
        if self.started is None:
            self.started = now
        try:
            req = envelope.decode_request(frame)
        except envelope.EnvelopeError as err:
            reply = envelope.encode(envelope.error_reply(err.seq, err.code, err.message))
            return Outcome(reply, seq=err.seq, error=err.code, message=err.message)

        client = req.client if peer.key is None else scoped(peer.key, req.client)
        # A seq past the client's latest is new whatever its bytes: the digest, which only tells
        # a retry from a reuse of the latest seq, waits for `commit`, after the events went out.
        latest = self.record.latest(client)
        frame_digest: int | None = None
        if latest is None or req.seq > latest.seq:
            verdict = _NEW
        else:
            frame_digest = replay.digest(frame)
            verdict, latest = self.record.verdict(client, req.seq, frame_digest)
        if verdict is not _NEW:  # the common case tested once (an enum member's lookup costs a dict probe each)
            if verdict is Verdict.REPLAY:
                assert latest is not None
                return Outcome(latest.reply, req.op, req.seq, client, replayed=True, peer=peer)
            if verdict is Verdict.STALE or verdict is Verdict.REUSED:
                return self._error(req, client, peer, ErrorCode.EPROTO, replay_refusal(verdict, req.seq))
        waiting = self.queries.waiting(client, req.seq) if len(self.queries) else None
        if waiting is not None:  # a retried question whose guest has not answered yet: keep waiting
            if waiting.op != req.op:
                return self._error(req, client, peer, ErrorCode.EPROTO, replay_refusal(Verdict.REUSED, req.seq))
            return Outcome(None, req.op, req.seq, client, replayed=True, fields={"query": waiting.id}, peer=peer)
        try:
            op_name = req.op
            if latest is not None and self.fast_lanes:  # the fast lanes: checked before, nothing they depend on changed since
                if op_name in _SIGNALS:
                    route = self._known_route(req, peer)
                    if route is not None:
                        done = self._signal(op_name, route[0], route[1], 1)
                        return Outcome(None, op_name, req.seq, client, fields=done.fields, sends=done.sends, result=done.result,
                                       frame=frame, digest=frame_digest, peer=peer)
                elif op_name == "chip":
                    machine = self._chip_sessions.get((client, peer.key))
                    if machine is not None:
                        acked = self._chip_fast(machine, req.args, now)
                        if acked is not None:
                            done, reply_wanted = acked
                            return Outcome(None, "chip", req.seq, client, fields=done.fields, sends=done.sends, result=done.result,
                                           frame=frame, digest=frame_digest, peer=peer, reply_wanted=reply_wanted)
            served = self._served.get(req.op)
            if served is None:
                lookup(req.op, Endpoint.IRQBUS)  # raises ENOSYS or EPERM, saying which
                raise WireError(ErrorCode.ENOSYS, f"operation {clip(req.op, 60)!r} is not served by irqbus")
            op, handler = served
            if op.name not in _ROUTE_NEUTRAL and (self._signal_routes or self._chip_sessions):
                self._signal_routes.clear()
                self._chip_sessions.clear()
            args = op.validate(req.args)
            if req_peer and op.name == "attach":
                raise WireError(ErrorCode.EPROTO, "a guest must connect a DEALER socket: irqbus sends it events, which a REQ socket cannot take")
            if latest is None and not (op.read_only or op.binds) and not self.record.admit(client, now):
                raise WireError(ErrorCode.EAGAIN, "irqbus is recording as many recent requests as it can hold; retry later")
            done = handler(client, peer, args, now, req.seq)
        except WireError as err:
            outcome = self._error(req, client, peer, err.code, err.message)
            if err.code is not ErrorCode.EACCES:  # not recorded: the shell may run it again once the key has the right
                digest = replay.digest(frame) if frame_digest is None else frame_digest
                self.record.remember(client, req.seq, digest, outcome.reply, now, changed=False)
            return outcome
        return Outcome(None, req.op, req.seq, client, fields=done.fields, sends=done.sends, result=done.result,
                       frame=frame, digest=frame_digest, read_only=op.read_only, peer=peer, reply_wanted=op.name != "chip" or args.get("reply") is not False)

    def _known_route(self, req: envelope.Request, peer: Peer) -> tuple[GuestMachine, Device] | None:
        """The route a signal naming just its guest and device found before (`_signal_route`);
        None when it must go the whole way. Only for a client with a record: a new one's change
        must first be admitted to the replay record."""
        args = req.args
        if len(args) != 2:
            return None
        ref, name = args.get("guest"), args.get("device")
        if (type(ref) is str or type(ref) is int) and type(name) is str:  # exactly: True == 1 as a key, but no domain
            return self._signal_routes.get((peer.key, req.op, ref, name))
        return None

    def commit(self, outcome: Outcome, now: float) -> None:
        """Encode an executed request's reply and record it for retries."""
        frame = outcome.frame
        if frame is None:  # nothing executed (an error, a replay), or committed already
            return
        outcome.frame = None
        digest = replay.digest(frame) if outcome.digest is None else outcome.digest
        outcome.digest = None
        if outcome.result is None:
            if outcome.client is not None and outcome.seq is not None:
                # a forwarded query: its seq is the client's latest; the reply comes later
                self.record.remember(outcome.client, outcome.seq, digest, None, now, changed=False)
            return
        assert outcome.client is not None and outcome.op is not None and outcome.seq is not None
        outcome.reply = envelope.encode_ok(outcome.seq, outcome.result)
        kept = None if outcome.read_only else outcome.reply
        self.record.remember(outcome.client, outcome.seq, digest, kept, now, changed=not outcome.read_only)
        outcome.result = None

    def tick(self, now: float) -> list[Outcome]:
        """Queries whose guest did not answer in time: their askers get ETIMEDOUT."""
        out = []
        for query in self.queries.expired(now):
            msg = f"guest {query.guest_name} did not answer within {self.queries.timeout_s:g} s"
            out.append(self._fail_query(query, ErrorCode.ETIMEDOUT, msg))
        return out

    def next_deadline(self) -> float | None:
        return self.queries.next_deadline()

    def wants_route(self, client: str) -> bool:
        """Whether the shell must remember how to reach `client` after this request: guests
        (for irq events) and askers of open queries (for the held reply)."""
        return self.router.is_guest(client) or self.queries.is_asker(client)

    # -- helpers -----------------------------------------------------------------------------------

    def _error(self, req: envelope.Request, client: str, peer: Peer, code: ErrorCode, message: str) -> Outcome:
        reply = envelope.encode(envelope.error_reply(req.seq, code, message))
        fields: dict[str, Any] = {}
        if self.router.is_guest(client):
            machine = self.router.session(client)
            fields = {"domid": machine.domid, "guest": machine.name}
        return Outcome(reply, clip(req.op, 40), req.seq, client, error=code, message=message, fields=fields, peer=peer)

    def _fail_query(self, query: Query, code: ErrorCode, message: str) -> Outcome:
        """A query's asker gets its error; `interrupts` is read-only, so nothing is recorded."""
        reply = envelope.encode(envelope.error_reply(query.seq, code, message))
        fields = {"query": query.id, "guest": query.guest_name}
        return Outcome(None, query.op, query.seq, query.asker, error=code, message=message, fields=fields, sends=[Send(query.asker, reply)])

    def _fail_queries_of(self, machine: GuestMachine, why: str) -> list[Send]:
        return [s for q in self.queries.of_guest(machine.client) for s in self._fail_query(q, ErrorCode.ESRCH, why).sends]

    def _events(self, machine: GuestMachine, deliveries: list[Delivery]) -> list[Send]:
        """The guest's `irq` events, as many as its unread budget allows (irqbus.backlog)."""
        if not deliveries:
            return []
        allowed = self.backlog.admit(machine, len(deliveries))
        return irq_events(machine, deliveries if allowed == len(deliveries) else deliveries[:allowed], self.epoch, self._frames)

    def _session(self, client: str, now: float, peer: Peer) -> GuestMachine:
        """The caller's own session. One attached by the toolstack's right (no owner key) is
        of use only while the key is still a toolstack key: revoking the key ends its right
        to the guest's chip (`owners` never ends such a session, and nothing else would)."""
        machine = self.router.session(client)
        if machine.owner_key is None and peer.key is not None and not peer.has(Role.TOOLSTACK):
            raise rights.refused(peer, "is no longer a toolstack key",
                                 "this session was attached by the toolstack's right (ballonet keys authorize NAME --role toolstack), or detach it")
        machine.last_seen = now
        if machine.unread:  # Backlog.heard_from, inline: it runs once per interrupt
            self.backlog.total -= machine.unread
            machine.unread = 0
        return machine

    @staticmethod
    def _guest_fields(machine: GuestMachine, **more: Any) -> dict[str, Any]:
        return {"domid": machine.domid, "guest": machine.name, **more}

    # -- a guest's session -------------------------------------------------------------------------

    def _attach(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        name, domid = args["name"], args["domid"]
        owner_key = rights.attach_owner(peer, name, domid, self.owners)
        for old in self.router.replaced_by(name, domid, client):
            rights.may_replace(peer, old, self.owners.of(old.domid), name, domid)
        machine, replaced = self.router.attach(name, domid, client, now)
        machine.owner_key = owner_key
        sends: list[Send] = []
        for old in replaced:
            sends += self._fail_queries_of(old, f"guest {old.name} re-attached")
            self.record.release(old.client, now)
            self.backlog.heard_from(old)
        self.record.bind(client)  # its record now lives as long as its session
        fields = self._guest_fields(machine, replaced=[f"{m.name}/{m.domid}" for m in replaced], owner=owner_key is not None)
        return _Result({"domid": machine.domid, "name": machine.name, "replaced": len(replaced), "epoch": self.epoch}, fields, sends)

    def _detach(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine = self.router.session(client)
        sends, devices = self._end_session(machine, now, f"guest {machine.name} detached")
        return _Result({"domid": machine.domid, "devices": devices}, self._guest_fields(machine, devices=devices), sends)

    def _end_session(self, machine: GuestMachine, now: float, why: str) -> tuple[list[Send], list[str]]:
        """The guest's session goes, with its devices; whoever waits on it is told `why`."""
        sends = self._fail_queries_of(machine, why)
        devices = self.router.detach(machine)
        self.record.release(machine.client, now)
        self.backlog.heard_from(machine)
        return sends, devices

    def _program_pin(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine = self._session(client, now, peer)
        deliveries = machine.program_pin(args["pin"], args["trigger"], args.get("vector"))
        fields = self._guest_fields(machine, pin=args["pin"], trigger=args["trigger"], vector=args.get("vector"))
        return _Result({"delivered": len(deliveries)}, fields, self._events(machine, deliveries))

    def _program_msi(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """A driver programs its device's MSI-X entry; the device need not have been attached
        yet (the guest enumerates it first), so an unknown name is plugged in as MSI."""
        machine = self._session(client, now, peer)
        message = msi_message(args["address"], args["data"])
        owner = self.router.owner(args["device"])
        if owner is not None and owner is not machine:  # which guest it is on is not this guest's business
            raise WireError(ErrorCode.EPERM, f"device {args['device']!r} is attached to another guest, not to {machine.name}")
        if owner is None:
            machine.check_new_device(DeviceKind.MSI)
            device, _ = self.router.plug(machine, args["device"], DeviceKind.MSI, None, False)
        else:
            device = machine.devices[args["device"]]
        deliveries = machine.program_msi(device, args["address"], args["data"])
        fields = self._guest_fields(machine, device=device.name, vector=message.vector)
        return _Result({"vector": message.vector}, fields, self._events(machine, deliveries))

    def _chip(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine = self._session(client, now, peer)
        if len(self._chip_sessions) >= MAX_SIGNAL_ROUTES:
            self._chip_sessions.clear()
        self._chip_sessions[client, peer.key] = machine  # the session's checks passed: the fast lane's, until they could change
        router = self.router
        clears = [(router.device(machine, name), gen) for name, gen in args.get("clear", ())]
        commands = args.get("ops", [])
        for cmd in commands:
            if cmd.device is not None:
                router.device(machine, cmd.device)
        deliveries = machine.chip(commands, clears)
        fields = self._guest_fields(machine, ops=len(commands), cleared=len(clears), delivered=len(deliveries))
        return _Result({}, fields, self._events(machine, deliveries))

    def _chip_fast(self, machine: GuestMachine, args: Any, now: float) -> tuple[_Result, bool] | None:
        """A chip request of a session `_chip` served before, without what that found then:
        the schema lookup, the session and its rights, the devices through the router's
        refusals. Only what the whole way would accept; None for anything else (unknown or
        bad arguments, a device the session does not have), before anything changed, so the
        whole way runs it and says what is wrong in its own words."""
        if type(args) is not dict or not _CHIP_ARGS.issuperset(args):
            return None
        reply = args.get("reply", True)
        if type(reply) is not bool:
            return None
        try:
            commands = chip_commands("ops", args["ops"]) if "ops" in args else []
            named = status_clears("clear", args["clear"]) if "clear" in args else []
        except WireError:
            return None
        devices = machine.devices
        clears = []
        for name, gen in named:
            device = devices.get(name)
            if device is None:
                return None
            clears.append((device, gen))
        for cmd in commands:
            if cmd.device is not None and cmd.device not in devices:
                return None
        machine.last_seen = now  # _session's bookkeeping
        if machine.unread:
            self.backlog.total -= machine.unread
            machine.unread = 0
        deliveries = machine.chip(commands, clears)
        fields = {"domid": machine.domid, "guest": machine.name, "ops": len(commands), "cleared": len(clears), "delivered": len(deliveries)}
        return _Result({}, fields, self._events(machine, deliveries)), reply

    def _bind_virq(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine = self._session(client, now, peer)
        machine.bind_virq(args["virq"], args["vector"])
        return _Result({}, self._guest_fields(machine, virq=args["virq"], vector=args["vector"]))

    def _send_virq(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """From the hypervisor. A guest that did not bind the interrupt (it opted out) is not
        an error: the answer says nothing was delivered."""
        rights.require_hypervisor(peer, "send_virq")
        machine = self.router.resolve(args["guest"])
        deliveries = machine.send_virq(args["virq"])
        fields = self._guest_fields(machine, virq=args["virq"], delivered=len(deliveries))
        return _Result({"delivered": len(deliveries)}, fields, self._events(machine, deliveries))

    def _owners(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """From the hypervisor: which key registered which domain (irqbus.owners). A session
        attached as its domain's owner by a key that no longer owns it (the domain went, or
        is another's now) is ended: its key has no right to those interrupts any more."""
        rights.require_hypervisor(peer, "owners")
        domains, gone = args.get("domains", []), args.get("gone", [])
        named = self.owners.update(domains, gone, args.get("replace", False))
        sends: list[Send] = []
        detached = []
        if named:
            for machine in list(self.router.guests.values()):
                if machine.domid in named and self._disowned(machine):
                    ended, _ = self._end_session(machine, now, f"guest {machine.name}'s domain is no longer its key's")
                    sends += ended
                    detached.append(f"{machine.name}/{machine.domid}")
        fields = {"domains": len(domains), "gone": len(gone), "replace": args.get("replace", False), "owners": len(self.owners),
                  "detached": detached, "changed": bool(named)}
        return _Result({"epoch": self.epoch, "owners": len(self.owners)}, fields, sends)

    def rights_changed(self, peer_of: Callable[[str], Peer], now: float) -> tuple[list[Send], list[str]]:
        """`authorized` changed: a session attached by the toolstack's right whose key is no
        longer a toolstack key is ended, so its revoked key stops receiving the guest's
        interrupts too (its requests are refused from the first one after: _session).
        Returns the sends for its open queries and the sessions ended (name/domid)."""
        self._signal_routes.clear()
        self._chip_sessions.clear()
        sends: list[Send] = []
        ended = []
        for machine in list(self.router.guests.values()):
            key = key_of(machine.client)
            if machine.owner_key is None and key is not None and not peer_of(key).has(Role.TOOLSTACK):
                sends += self._end_session(machine, now, f"guest {machine.name}'s session: its key is no longer a toolstack key")[0]
                ended.append(f"{machine.name}/{machine.domid}")
        return sends, ended

    def _disowned(self, machine: GuestMachine) -> bool:
        """Whether the hypervisor's word on the session's domain takes the session away: one
        attached as owner, when its key no longer owns the domain (or the name is not the
        domain's); one the toolstack attached, when the domain is named another key's."""
        owner = self.owners.of(machine.domid)
        if machine.owner_key is None:
            return owner is not None and owner != key_of(machine.client)
        registered = self.owners.name_of(machine.domid)
        return owner != machine.owner_key or (registered is not None and registered != machine.name)

    def _answer(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine = self._session(client, now, peer)
        query = self.queries.find(args["query"], client)
        key = "rows" if query.format == "json" else "text"
        if key not in args or len(args) != 2:
            raise WireError(ErrorCode.EINVAL, f"answer to query {query.id}: exactly '{key}' is expected with 'query'")
        result = {"guest": machine.name, "domid": machine.domid, key: args[key]}
        reply = envelope.encode(envelope.ok_reply(query.seq, result))
        if len(reply) > envelope.MAX_MESSAGE_BYTES:  # the asker's reply adds the name and its seq to the answer
            raise WireError(
                ErrorCode.EINVAL,
                f"answer to query {query.id}: the reply would be {len(reply)} bytes, over the limit of {envelope.MAX_MESSAGE_BYTES}",
            )
        self.queries.close(query)
        fields = self._guest_fields(machine, query=query.id, asker=shown_client(query.asker))
        return _Result({}, fields, [Send(query.asker, reply)])

    # -- devices -----------------------------------------------------------------------------------

    def _device(self, peer: Peer, args: dict[str, Any], op: str) -> tuple[GuestMachine, Device]:
        """The guest and device a device operation names, if `peer` may drive the device.

        Any other key than the toolstack's learns nothing here about guests it has no right
        to: a key that is no device key is refused before anything is looked up; a device
        key finds the device by its (host-wide) name, is refused unless it drives it, and
        only then is told whether the guest it named is the device's. Every message repeats
        the caller's own `guest`, never the name or domid irqbus has for it."""
        name, ref = args["device"], args["guest"]
        if peer.has(Role.TOOLSTACK):
            machine = self.router.resolve(ref)
            return machine, self.router.device(machine, name, ref)
        machine = self.router.owner(name)
        device = None if machine is None else machine.devices[name]
        if not peer.has(Role.DEVICE):  # the same words whether the device is there or not, but to its own revoked key
            if device is not None and device.key == peer.key:
                raise rights.no_longer_a_device_key(peer, ref)
            raise rights.not_the_driver(peer, name, op)
        if machine is None or device is None:
            raise WireError(ErrorCode.ESRCH, f"no device {name!r} is attached to irqbus")
        rights.require_driver(peer, machine, device, ref, op)
        if not self.router.names(machine, ref):
            raise WireError(ErrorCode.EPERM, f"device {name!r} is not attached to guest {ref}")
        if device.key is None:  # a device its guest declared: the first device key to drive it keeps it
            device.key = peer.key
        return machine, device

    def _domid_of(self, ref: int | str) -> int | None:
        """The domain a caller's `guest` names, attached or not (the hypervisor's names,
        `owners`), without telling the caller anything; None when irqbus knows no such guest."""
        if isinstance(ref, int):
            return ref
        machine = self.router.guests.get(ref)
        if machine is not None:
            return machine.domid
        domid = domain_ref_text(ref)
        return domid if isinstance(domid, int) else self.owners.domid_named(ref)

    def _attach_device(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        ref = args["guest"]
        if not peer.has(Role.TOOLSTACK):  # before anything is looked up: a refusal says nothing of the guest
            if not rights.scope_allows(peer, self._domid_of(ref)):
                raise rights.not_a_device_key_for(peer, ref)
        machine = self.router.resolve(ref)
        msi = args.get("msi", False)
        if msi == ("pin" in args):
            raise WireError(ErrorCode.EINVAL, "attach_device: give either 'pin' or 'msi': true")
        if msi and "trigger" in args:
            raise WireError(ErrorCode.EINVAL, "attach_device: MSI is edge only; 'trigger' is for pin devices")
        owner = self.router.owner(args["device"])
        existing = machine.devices[args["device"]] if owner is machine else None
        key = rights.attach_device_key(peer, machine, existing, args.get("key"), ref)
        kind = DeviceKind.MSI if msi else DeviceKind.PIN
        device, created = self.router.plug(machine, args["device"], kind, args.get("pin"), args.get("trigger") == "level")
        device.key = key
        result = {"guest": machine.name, "domid": machine.domid, "device": device.name, "kind": str(device.kind),
                  "pin": device.pin, "trigger": device.trigger, "created": created, "epoch": self.epoch}
        fields = self._guest_fields(machine, device=device.name, kind=str(kind), pin=device.pin, trigger=device.trigger, created=created)
        return _Result(result, fields)

    def _detach_device(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine, device = self._device(peer, args, "detach_device")
        deliveries = self.router.unplug(machine, device)
        return _Result({"device": device.name}, self._guest_fields(machine, device=device.name), self._events(machine, deliveries))

    def _raise(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine, device = self._signal_route(peer, args, "raise")
        return self._signal("raise", machine, device, args.get("count", 1))

    def _pulse(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine, device = self._signal_route(peer, args, "pulse")
        return self._signal("pulse", machine, device, args.get("count", 1))

    def _signal_route(self, peer: Peer, args: dict[str, Any], op: str) -> tuple[GuestMachine, Device]:
        """The device a signal names, if `peer` may drive it (`_device`); a request naming just
        the guest and device leaves the answer for the fast lane (`execute`) to find again."""
        machine, device = self._device(peer, args, op)
        if op == "msi" and device.kind is not DeviceKind.MSI:
            raise WireError(ErrorCode.EINVAL, f"device {device.name} is on pin {device.pin}, not an MSI device")
        if len(args) == 2:
            if len(self._signal_routes) >= MAX_SIGNAL_ROUTES:
                self._signal_routes.clear()
            self._signal_routes[peer.key, op, args["guest"], args["device"]] = (machine, device)
        return machine, device

    def _signal(self, op: str, machine: GuestMachine, device: Device, count: int) -> _Result:
        done = machine.pulse_device(device, count) if op == "pulse" else machine.raise_device(device, count)
        return self._raised(machine, device, done.deliveries, done.merged)

    def _raised(self, machine: GuestMachine, device: Device, deliveries: list[Delivery], merged: int) -> _Result:
        result = {"gen": device.gen, "merged": merged, "delivered": len(deliveries)}
        fields = {"domid": machine.domid, "guest": machine.name, "device": device.name, **result}
        return _Result(result, fields, self._events(machine, deliveries))

    def _lower(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        machine, device = self._device(peer, args, "lower")
        deliveries = machine.lower_device(device)
        return _Result({"gen": device.gen}, self._guest_fields(machine, device=device.name), self._events(machine, deliveries))

    def _msi(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        raw = ("address" in args, "data" in args)
        if raw != (False, False):  # any vector, past every mask: the toolstack's test tool only
            rights.require_toolstack(peer, "a raw MSI write (address/data)", "; a device key sends its device's own MSI-X message (msi with 'device' alone)")
        count = args.get("count", 1)
        if raw == (False, False):
            if "device" not in args:
                raise WireError(ErrorCode.EINVAL, "msi: name a 'device', or give 'address' and 'data'")
            machine, device = self._signal_route(peer, args, "msi")
            return self._signal("msi", machine, device, count)
        if raw != (True, True):
            raise WireError(ErrorCode.EINVAL, "msi: 'address' and 'data' go together")
        machine = self.router.resolve(args["guest"])
        device = self.router.device(machine, args["device"], args["guest"]) if "device" in args else None  # the writer (toolstack only)
        deliveries = machine.write_msi(args["address"], args["data"], device, count)
        vector = args["data"] & 0xFF
        result = {"vector": vector, "delivered": len(deliveries), "gen": device.gen if device else None}
        fields = self._guest_fields(machine, device=device.name if device else None, vector=vector, delivered=len(deliveries))
        return _Result(result, fields, self._events(machine, deliveries))

    # -- inspection --------------------------------------------------------------------------------

    def _show(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """One page of guests by domid, from the first after `after`: a thousand guests with
        their devices do not fit in one message. `next` is the cursor for the following page
        (nil on the last); a cursor, unlike an offset, skips no guest when others come and go."""
        if "guest" in args:
            machines = [self._viewed(peer, args["guest"], "show")]
        else:
            rights.require_toolstack(peer, "'show' of every guest", "; a guest's own key may show that guest")
            after = args.get("after", -1)
            machines = sorted((m for m in self.router.guests.values() if m.domid > after), key=lambda m: m.domid)
        page: list[dict[str, Any]] = []
        size = 0
        for machine in machines:
            snapshot = machine.snapshot(now)
            size += len(envelope.encode(snapshot))
            if page and size > SHOW_PAGE_BYTES:
                break
            page.append(snapshot)
        more = len(page) < len(machines)
        result = {"guests": page, "open_queries": len(self.queries), "next": page[-1]["domid"] if more else None,
                  "epoch": self.epoch, "up_s": self.up_s(now)}
        return _Result(result, {"guests": len(page), "more": more})

    def up_s(self, now: float) -> float:
        """Seconds since this instance started (ms precision)."""
        return round(max(0.0, now - (now if self.started is None else self.started)), 3)

    def _locate(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """Where a guest (and one of its devices) stands at this instance, for a device process
        that was refused with ESRCH: is this another irqbus than the one it plugged into, is the
        guest attached yet, and is the device plugged into it (irqbus.outage decides)."""
        result: dict[str, Any] = {"epoch": self.epoch, "up_s": self.up_s(now), "attached": False, "domid": None}
        ref = args["guest"]
        owner = self.router.owner(args["device"]) if "device" in args else None
        if not peer.has(Role.TOOLSTACK):
            self._may_locate(peer, ref)  # first: a stranger learns nothing of the device either
            if owner is not None:  # a plugged device: its own driver asks
                rights.require_driver(peer, owner, owner.devices[args["device"]], ref, "locate")
        try:
            machine = self.router.resolve(ref)
        except WireError:
            machine = None
        if machine is not None:
            result.update(attached=True, domid=machine.domid)
        if "device" in args:
            result["device"] = "absent" if owner is None else "plugged" if owner is machine else "elsewhere"
        return _Result(result, {"guest": args["guest"], **result})

    def _viewed(self, peer: Peer, ref: int | str, op: str) -> GuestMachine:
        """The guest `show`/`interrupts` names, if `peer` may see it; only the toolstack is
        told that no such guest is attached (anyone else: the same EACCES either way)."""
        if peer.has(Role.TOOLSTACK):
            return self.router.resolve(ref)
        try:
            machine: GuestMachine | None = self.router.resolve(ref)
        except WireError:
            machine = None
        rights.require_viewer(peer, machine, None if machine is None else self.owners.of(machine.domid), ref, op)
        assert machine is not None
        return machine

    def _may_locate(self, peer: Peer, ref: int | str) -> None:
        """Whether the guest `ref` is attached, and its domid, are told to a device key whose
        scope includes it (rights.scope_allows), to the guest's own key and to the toolstack;
        to no one else, and the refusal is the same whether the guest exists or not."""
        domid = self._domid_of(ref)
        if rights.scope_allows(peer, domid):
            return
        if domid is not None and peer.key is not None:
            machine = next((m for m in self.router.guests.values() if m.domid == domid), None)
            if peer.key == self.owners.of(domid) or (machine is not None and peer.key == machine.owner_key):
                return
        raise rights.refused(peer, f"may not locate guest {ref}", "'locate' is for the guest's own key, device keys for that guest and the toolstack")

    def _interrupts(self, client: str, peer: Peer, args: dict[str, Any], now: float, seq: int) -> _Result:
        """Forward to the guest; the reply goes out when it answers (or the query times out)."""
        machine = self._viewed(peer, args["guest"], "interrupts")
        fmt = args.get("format", "text")
        query = self.queries.open(machine.client, machine.name, client, seq, "interrupts", fmt, now)
        event = envelope.encode(envelope.event("query", {"query": query.id, "what": "interrupts", "format": fmt}))
        fields = self._guest_fields(machine, query=query.id)
        return _Result(None, fields, [Send(machine.client, event)])
