"""The hypervisor's ZeroMQ shell: two ROUTER sockets, decode nothing itself, log every outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import structlog
import zmq

from hypervisor.dispatch import SWEEP_INTERVAL_S, Hypervisor, Outcome
from hypervisor.virq import VirqSender
from wire import envelope
from wire import multipart
from wire.errors import ErrorCode
from wire.operations import Endpoint

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
    ) -> None:
        self.hypervisor = hypervisor
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

    def _bind(self, address: str) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_FRAME_LIMIT)
        sock.bind(address)
        return sock

    def close(self) -> None:
        self.guests.close(linger=0)
        self.admin.close(linger=0)
        if self.virqs is not None:
            self.virqs.close()

    def serve(self, should_stop: Callable[[], bool]) -> None:
        poller = zmq.Poller()
        poller.register(self.guests, zmq.POLLIN)
        poller.register(self.admin, zmq.POLLIN)
        if self.virqs is not None:
            poller.register(self.virqs.socket, zmq.POLLIN)
        next_sweep = 0.0
        while not should_stop():
            for sock, _ in poller.poll(POLL_MS):
                if self.virqs is not None and sock is self.virqs.socket:
                    self.virqs.drain()
                else:
                    self._drain(sock)
            now = self.clock()
            if now >= next_sweep:  # silent guests: liveness changes, reclaim (Hypervisor.sweep)
                next_sweep = now + SWEEP_INTERVAL_S
                for outcome in self.hypervisor.sweep(now):
                    self.log.info(outcome.op, client=outcome.client, **outcome.fields)
                    self._notify(outcome)

    def _drain(self, sock: zmq.Socket, budget: int = 64) -> None:
        """Serve what is queued without a poll per message; the budget keeps the sockets fair."""
        for _ in range(budget):
            try:
                identity, body, req = multipart.receive_routed(sock, multipart.NOBLOCK)
            except zmq.Again:
                return
            self._serve_one(sock, identity, body, req)

    def _serve_one(self, sock: zmq.Socket, identity: bytes, body: list[bytes], req: bool) -> None:
        route = multipart.envelope_of(identity, req)
        if len(body) != 1:
            msg = f"expected one frame per message, got {len(body)}"
            self.log.warning("request refused", error=str(ErrorCode.EPROTO), message=msg, req_peer=req)
            multipart.send(sock, [*route, envelope.encode(envelope.error_reply(None, ErrorCode.EPROTO, msg))])
            return
        endpoint = self._endpoints[sock]
        outcome = self.hypervisor.handle(endpoint, body[0], self.clock())
        multipart.send(sock, [*route, outcome.reply])
        # the guest endpoint (`sock is`, as reading Endpoint.GUEST costs an Enum class lookup)
        if sock is self.guests and outcome.client is not None and outcome.error is None:
            if req or self.hypervisor.table.find_client(outcome.client) is None:
                self._routes.pop(outcome.client, None)  # a REQ peer takes no events; a shut-down one needs none
            else:
                self._routes[outcome.client] = identity
        if not outcome.routine or self._routine_logged:
            self._log(endpoint, outcome)
        self._notify(outcome)

    def _notify(self, outcome: Outcome) -> None:
        """Push an outcome's news: events on the guest socket, virqs through irqbus."""
        for note in outcome.notifications:
            if note.virq is not None:
                if self.virqs is not None:
                    self.virqs.send(note.domid, note.virq)
                continue
            route = self._routes.get(note.client)
            if route is not None:
                try:
                    multipart.send(self.guests, [route, envelope.encode(note.event)], multipart.NOBLOCK)
                except zmq.Again:  # the guest is not reading; its heartbeat carries the target too
                    self.log.warning("notification dropped", client=note.client, event=note.event.get("event"))
            if note.event.get("event") in ("destroyed", "crashed"):
                self._routes.pop(note.client, None)

    def _log(self, endpoint: Endpoint, outcome: Outcome) -> None:
        fields = dict(outcome.fields, op=outcome.op, seq=outcome.seq, client=outcome.client, endpoint=str(endpoint))
        if outcome.error is not None:
            self.log.warning("request refused", error=str(outcome.error), message=outcome.message, **fields)
        elif outcome.replayed:
            self.log.info("request answered from record", **fields)
        elif outcome.routine:
            self.log.debug(outcome.op, **fields)
        else:
            self.log.info(outcome.op, **fields)
