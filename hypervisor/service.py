"""The hypervisor's ZeroMQ shell: two ROUTER sockets, decode nothing itself, log every outcome.

Group commit (DESIGN.md principle 9, durable before acknowledged): each turn of the loop drains
a batch of requests, executes them, commits the batch's changes to the journal in one
transaction (`_commit`), and only then sends the batch's replies and notifications and logs its
outcomes (`_flush`). Without a journal the commit is a no-op and the replies leave at the end of
the same turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import structlog
import zmq

from hypervisor.dispatch import SWEEP_INTERVAL_S, Hypervisor, Notification, Outcome, Ownership
from hypervisor.journal import Journal
from hypervisor.pacing import HeartbeatPacer
from hypervisor.virq import VirqSender
from wire import envelope
from wire import multipart
from wire.errors import ErrorCode
from wire.gate import Gate
from wire.identity import shown_client
from wire.operations import Endpoint
from wire import security as security_module
from wire.security import Security

_EACCES = ErrorCode.EACCES
POLL_MS = 100
HARD_FRAME_LIMIT = 64 << 20  # past this ZeroMQ drops the peer; up to it we answer EMSGSIZE


class HypervisorService:
    def __init__(
        self,
        hypervisor: Hypervisor,
        guest_endpoint: str,
        admin_endpoint: str,
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context | None = None,
        virqs: VirqSender | None = None,
        journal: Journal | None = None,
        security: Security | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.security = security or security_module.current()
        self._authenticated = not self.security.insecure
        # who each message's key is, per message (a revocation applies to open sessions)
        self.gate = Gate(self.security.keys, clock, lambda problem: log.warning("authorized keys not reloaded", problem=problem))
        self.journal = journal
        # The turn's batch, held until it is committed: its outcomes (for the journal's events
        # and the log), the frames to send (replies, and pushed events: `note` says which), the
        # virtual interrupts to raise.
        self._batch: list[tuple[Endpoint | None, Outcome]] = []
        self._outbox: list[tuple[zmq.Socket, list[bytes], Notification | None]] = []
        self._irqbus_out: list[Notification] = []  # virqs and owners news, in the order they came
        self.virqs = virqs
        self.log = log
        # Routine successes are debug lines: when those are filtered out, _log builds nothing
        # for them (the filtered call alone, with its keyword arguments, cost a tenth of a request).
        self._routine_logged = log.is_enabled_for(logging.DEBUG)
        self.clock = clock
        self._context = context or zmq.Context.instance()
        self.guests = self._bind(guest_endpoint)
        self.admin = self._bind(admin_endpoint)
        self._routes: dict[str, bytes] = {}  # guest client id -> ROUTER identity, for pushes
        self._endpoints = {self.guests: Endpoint.GUEST, self.admin: Endpoint.ADMIN}
        self.pacer = HeartbeatPacer()  # hypervisor/pacing.py: heartbeats in batches on a busy host
        self._heartbeats = 0  # this turn's: served heartbeats, and other requests served
        self._others = 0

    def _bind(self, address: str) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
        self.security.secure_server(sock)
        sock.bind(address)
        return sock

    def close(self) -> None:
        self.guests.close(linger=0)
        self.admin.close(linger=0)
        if self.virqs is not None:
            self.virqs.close()

    def serve(self, should_stop: Callable[[], bool]) -> None:
        """The loop; each turn: re-read `authorized` if it changed, serve what came, sweep,
        commit, then send (wire.gate, `_commit`, `_flush`)."""
        poller = zmq.Poller()
        poller.register(self.guests, zmq.POLLIN)
        poller.register(self.admin, zmq.POLLIN)
        if self.virqs is not None:
            poller.register(self.virqs.socket, zmq.POLLIN)
        admin_only = zmq.Poller()
        admin_only.register(self.admin, zmq.POLLIN)
        next_sweep = 0.0
        paced_until = 0.0
        while not should_stop():
            self.gate.refresh()
            pause = paced_until - self.clock()
            if pause > 0:
                admin_only.poll(int(pause * 1000) + 1)
            self._heartbeats = self._others = 0
            for sock, _ in poller.poll(POLL_MS):
                if self.virqs is not None and sock is self.virqs.socket:
                    self.virqs.drain()
                else:
                    self._drain(sock)
            now = self.clock()
            if now >= next_sweep:  # silent guests: liveness changes, reclaim (Hypervisor.sweep)
                next_sweep = now + SWEEP_INTERVAL_S
                for outcome in self.hypervisor.sweep(now):
                    self._queue(outcome)
            self._commit()
            self._flush()
            paced_until = self.pacer.after_turn(self.clock(), self._heartbeats, self._others)

    def _commit(self) -> None:
        """The turn's changes, whoever made them, in the journal: one transaction. A failure
        (disk full, I/O error) raises, and the batch's replies are never sent: the books in
        memory are ahead of the journal, so the process must stop and recover from it."""
        if self.journal is not None:
            try:
                self.journal.commit(self.hypervisor, [outcome for _, outcome in self._batch])
            except Exception as err:
                self.log.error("journal commit failed: stopping without sending the batch's replies", error=str(err), requests=len(self._batch))
                raise
        else:  # nothing keeps the marks: drop them, so they cannot grow
            table = self.hypervisor.table
            if table.dirty or table.destroyed or table.pool.dirty or self.hypervisor.tombstones.dirty:
                table.dirty.clear()
                table.destroyed.clear()
                table.pool.dirty.clear()
                self.hypervisor.tombstones.dirty.clear()

    def _flush(self) -> None:
        """After the commit: send the batch's replies and notifications, then log its outcomes."""
        for sock, frames, note in self._outbox:
            if note is None:
                multipart.send(sock, frames)
                continue
            try:
                multipart.send(sock, frames, multipart.NOBLOCK)
            except zmq.Again:  # the guest is not reading; its heartbeat carries the target too
                self.log.warning("notification dropped", client=shown_client(note.client), event=note.event.get("event") if note.event else None)
        self._outbox.clear()
        virqs = self.virqs
        if self._irqbus_out:
            if virqs is not None:
                for note in self._irqbus_out:
                    if note.virq is not None:
                        virqs.send(note.domid, note.virq)
                    elif note.ownership is Ownership.OWNED:
                        virqs.owned(note.domid, note.client, note.name)
                    else:
                        virqs.gone(note.domid)
            self._irqbus_out.clear()
        if virqs is not None:
            virqs.tick(self.clock())  # the owners ping, or the whole list when irqbus needs it
        for endpoint, outcome in self._batch:
            if not outcome.routine or self._routine_logged:
                self._log(endpoint, outcome)
        self._batch.clear()

    def _drain(self, sock: zmq.Socket, budget: int = 64) -> None:
        """Serve what is queued without a poll per message; the budget keeps the sockets fair."""
        for _ in range(budget):
            try:
                identity, body, req, user = multipart.receive_routed(sock, multipart.NOBLOCK, self._authenticated)
            except zmq.Again:
                return
            if user is None and self._authenticated:  # never on CURVE (ZAP names every peer); if it were: no rights
                msg = "the connection carries no authenticated key"
                self.log.warning("request refused", error=str(ErrorCode.EACCES), message=msg, req_peer=req)
                reply = envelope.encode(envelope.error_reply(None, ErrorCode.EACCES, msg))
                self._outbox.append((sock, [*multipart.envelope_of(identity, req), reply], None))
            else:
                self._serve_one(sock, identity, body, req, user)
            if not multipart.readable(sock):  # rather than a last receive that ends in zmq.Again
                return

    def _serve_one(self, sock: zmq.Socket, identity: bytes, body: list[bytes], req: bool, user: str | None = None) -> None:
        """One message; `user`: the public key its connection authenticated with (None: an
        insecure socket's peer, who may do everything; `_drain` never passes None on CURVE)."""
        route = multipart.envelope_of(identity, req)
        if len(body) != 1:
            msg = f"expected one frame per message, got {len(body)}"
            self.log.warning("request refused", error=str(ErrorCode.EPROTO), message=msg, req_peer=req)
            self._outbox.append((sock, [*route, envelope.encode(envelope.error_reply(None, ErrorCode.EPROTO, msg))], None))
            return
        endpoint = self._endpoints[sock]
        outcome = self.hypervisor.handle(endpoint, body[0], self.clock(), self.gate.peer(user))
        if outcome.op == "status" and outcome.error is None:
            self._heartbeats += 1
        else:
            self._others += 1
        if outcome.error is _EACCES and self.gate.recheck():  # refused on rights a moment old: a refusal changed nothing
            outcome = self.hypervisor.handle(endpoint, body[0], self.clock(), self.gate.peer(user))
        self._outbox.append((sock, [*route, outcome.reply], None))
        # the guest endpoint (`sock is`, as reading Endpoint.GUEST costs an Enum class lookup)
        if sock is self.guests and outcome.client is not None and outcome.error is None:
            if req or self.hypervisor.table.find_client(outcome.client) is None:
                self._routes.pop(outcome.client, None)  # a REQ peer takes no events; a shut-down one needs none
            else:
                self._routes[outcome.client] = identity
        self._queue(outcome, endpoint)

    def _queue(self, outcome: Outcome, endpoint: Endpoint | None = None) -> None:
        """An outcome into the turn's batch: journalled at the commit, its notifications sent
        and its line logged after it. Routes are read now, as of this outcome."""
        self._batch.append((endpoint, outcome))
        for note in outcome.notifications:
            if note.virq is not None or note.ownership is not None:
                self._irqbus_out.append(note)
                continue
            if note.event is None:
                continue
            route = self._routes.get(note.client)
            if route is not None:
                self._outbox.append((self.guests, [route, envelope.encode(note.event)], note))
            if note.event.get("event") in ("destroyed", "crashed"):
                self._routes.pop(note.client, None)

    def _log(self, endpoint: Endpoint | None, outcome: Outcome) -> None:
        # the client as shown_client has it: its key's first characters and its name's, never
        # the whole (on an insecure socket the client string is a guest's only credential)
        fields = dict(outcome.fields, op=outcome.op, seq=outcome.seq, client=shown_client(outcome.client), endpoint=str(endpoint) if endpoint else None)
        if outcome.error is not None:
            self.log.warning("request refused", error=str(outcome.error), message=outcome.message, **fields)
        elif outcome.replayed:
            self.log.info("request answered from record", **fields)
        elif outcome.routine:
            self.log.debug(outcome.op, **fields)
        else:
            self.log.info(outcome.op, **fields)
