"""irqbus's ZeroMQ shell: one ROUTER socket; the core decides, this sends and logs.

Events for a guest are sent before the reply to whoever caused them is even encoded, so a
device's raise reaches the guest's handler one hop after it reaches irqbus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
import zmq

from irqbus.backlog import MAX_UNREAD_PER_GUEST
from irqbus.dispatch import IrqBus, Outcome
from wire import envelope
from wire import multipart
from wire.errors import ErrorCode
from wire.gate import INSECURE, Gate
from wire.identity import shown_client
from wire import security as security_module
from wire.security import Security

POLL_MS = 100
HARD_FRAME_LIMIT = 64 << 20  # past this ZeroMQ drops the peer; up to it we answer EMSGSIZE
DRAIN_BUDGET = 256
SEND_QUEUE = MAX_UNREAD_PER_GUEST + 1024  # libzmq's own bound per peer, behind irqbus.backlog's
PRUNE_EVERY_S = 1.0
DROP_REPORT_EVERY_S = 1.0


class IrqbusService:
    def __init__(
        self,
        bus: IrqBus,
        endpoint: str,
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context | None = None,
        debug: bool = False,
        security: Security | None = None,
    ) -> None:
        self.bus = bus
        self.security = security or security_module.current()
        self._authenticated = not self.security.insecure
        self.log = log
        self.clock = clock
        # who each key is, per message (irqbus.rights); `authorized` is read again when it changes
        self.gate = Gate(self.security.keys, clock, lambda problem: log.warning("authorized keys", problem=problem))
        self.debug = debug
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
        self.socket.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        self.security.secure_server(self.socket)
        self.socket.bind(endpoint)
        self._routes: dict[str, list[bytes]] = {}  # client id -> its reply envelope, for events and held replies
        self._dropped = 0
        self._dropped_seen: dict[str, int] = {}  # guest client -> its dropped count when last logged
        self._next_drop_report = 0.0
        self._next_prune = 0.0

    def close(self) -> None:
        self.socket.close(linger=0)

    def serve(self, should_stop: Callable[[], bool]) -> None:
        poller = zmq.Poller()  # kept: Socket.poll builds and registers a new Poller per call
        poller.register(self.socket, zmq.POLLIN)
        while not should_stop():
            if self.gate.refresh():
                self._rights_changed()
            wait_ms = POLL_MS
            deadline = self.bus.next_deadline()
            if deadline is not None:
                wait_ms = max(0, min(POLL_MS, int((deadline - self.clock()) * 1000) + 1))
            if poller.poll(wait_ms):
                self._drain()
            now = self.clock()
            if deadline is not None and now >= deadline:
                for outcome in self.bus.tick(now):
                    self._push(outcome)
                    self._log(outcome)
            if now >= self._next_prune:
                self._prune(now)

    def _drain(self) -> None:
        """Serve what is queued without a poll per message."""
        sock, receive, serve_one, authenticated = self.socket, multipart.receive_routed, self._serve_one, self._authenticated
        for _ in range(DRAIN_BUDGET):
            try:
                identity, body, req, user = receive(sock, multipart.NOBLOCK, authenticated)
            except zmq.Again:
                return
            serve_one(identity, body, req, user)
            if not multipart.readable(sock):
                return

    def _serve_one(self, identity: bytes, body: list[bytes], req: bool, user: str | None = None) -> None:
        """One message; `user`: the public key its connection authenticated with (None: an
        insecure socket's peer, who may do everything; on CURVE, a refusal: wire.gate.INSECURE
        holds every right, and a missing User-Id must never grant them).

        Written for the interrupt path, where each message is one interrupt: the steps are
        inline and every send goes straight to its route."""
        route = multipart.envelope_of(identity, req)
        if len(body) != 1 or (user is None and self._authenticated):
            self._refuse_message(route, body, req)
            return
        now = self.clock()
        bus = self.bus
        peer = INSECURE if user is None else self.gate.peer(user)
        outcome = bus.execute(body[0], now, req, peer)
        if outcome.error is ErrorCode.EACCES and self.gate.recheck():  # refused on rights a moment old (a new key, authorized at once)
            self._rights_changed()
            outcome = bus.execute(body[0], now, req, self.gate.peer(user))
        client = outcome.client
        # An attached guest's events go to its DEALER: a REQ peer using the same client id
        # (which the protocol forbids) must not take them over.
        if client is not None and bus.wants_route(client) and not (req and bus.router.is_guest(client)):
            self._routes[client] = route
        if outcome.sends:
            self._push(outcome)  # a guest's interrupt first; the device's reply can wait a little
        bus.commit(outcome, now)
        if outcome.reply is not None and outcome.reply_wanted:
            multipart.send_routed(self.socket, route, outcome.reply)
        if self.debug or not outcome.quiet:
            self._log(outcome)

    def _refuse_message(self, route: list[bytes], body: list[bytes], req: bool) -> None:
        """A message the envelope cannot even be read from: more than one frame, or (never on
        CURVE, where ZAP names every peer) no authenticated key, so no rights, not all of them."""
        if len(body) != 1:
            code, msg = ErrorCode.EPROTO, f"expected one frame per message, got {len(body)}"
        else:
            code, msg = ErrorCode.EACCES, "the connection carries no authenticated key"
        self.log.warning("request refused", error=str(code), message=msg, req_peer=req)
        multipart.send_routed(self.socket, route, envelope.encode(envelope.error_reply(None, code, msg)))

    def _rights_changed(self) -> None:
        """`authorized` changed: sessions held by the toolstack's right of a key that lost it go."""
        sends, ended = self.bus.rights_changed(self.gate.peer, self.clock())
        if ended:
            self._push(Outcome(None, sends=sends))
            self.log.warning("sessions ended: their key is no longer a toolstack key", detached=ended)

    def _push(self, outcome: Outcome) -> None:
        """Events go to DEALER guests only (a REQ asker gets its held reply, never an event:
        irqbus refuses a REQ guest's attach)."""
        routes, sock, send = self._routes, self.socket, multipart.send_routed
        for event in outcome.sends:
            route = routes.get(event.client)
            if route is None:
                self._note_drop(event.client, "no route")
                continue
            try:
                send(sock, route, event.frame, multipart.NOBLOCK)
            except zmq.Again:  # the guest is not reading
                self._note_drop(event.client, "queue full")

    def _note_drop(self, client: str, why: str) -> None:
        self._dropped += 1
        now = self.clock()
        if now >= self._next_drop_report:
            self.log.warning("frames dropped", client=shown_client(client), reason=why, dropped=self._dropped)
            self._next_drop_report = now + DROP_REPORT_EVERY_S

    def _prune(self, now: float) -> None:
        """Forget routes of clients that are neither guests nor waiting for a query; say which
        guests had events dropped since the last look (irqbus.backlog)."""
        for client in [c for c in self._routes if not self.bus.wants_route(c)]:
            del self._routes[client]
        for machine in self.bus.router.guests.values():
            if machine.dropped != self._dropped_seen.get(machine.client, 0):
                self._dropped_seen[machine.client] = machine.dropped
                self.log.warning("events dropped: the guest is not reading", domid=machine.domid, guest=machine.name,
                                 dropped=machine.dropped, unread=machine.unread)
        for client in [c for c in self._dropped_seen if not self.bus.router.is_guest(c)]:
            del self._dropped_seen[client]
        self._next_prune = now + PRUNE_EVERY_S

    def _log(self, outcome: Outcome) -> None:
        """One line per request but the per-interrupt ones (debug); a client is named by
        enough of it to follow, never all of it (wire.identity.shown_client)."""
        quiet = outcome.quiet
        if quiet and not self.debug:  # the interrupt path: nothing to format
            return
        client = shown_client(outcome.client)
        if outcome.error is ErrorCode.EAGAIN and outcome.op == "attach":
            # a guest a moment ahead of the hypervisor's `owners`: it asks again every 0.2 s
            self.log.debug("attach deferred", message=outcome.message, seq=outcome.seq, client=client, key=outcome.peer.short())
        elif outcome.error is not None:
            fields = dict(outcome.fields, op=outcome.op, seq=outcome.seq, client=client, key=outcome.peer.short())
            self.log.warning("request refused", error=str(outcome.error), message=outcome.message, **fields)
        elif outcome.replayed:
            what = "request answered from record" if outcome.reply is not None else "retry of a request still waiting for its guest"
            self.log.info(what, op=outcome.op, seq=outcome.seq, client=client, key=outcome.peer.short(), **outcome.fields)
        elif quiet:
            self.log.debug(outcome.op, seq=outcome.seq, client=client, key=outcome.peer.short(), **outcome.fields)
        else:
            self.log.info(outcome.op, seq=outcome.seq, client=client, key=outcome.peer.short(), **outcome.fields)
