"""The hypervisor's line to irqbus: virtual interrupts (Xen's event channels) for guests, and
which key owns which domain (irqbus's `owners`, hypervisor/owners.py).

Fire and forget: the hypervisor never waits on irqbus. While irqbus is down nothing is queued
(ZMQ_IMMEDIATE), the interrupt is dropped and counted, and guests still converge on their
retry timer and heartbeat; when irqbus is back, ZeroMQ reconnects and notifications resume.
An owners change that could not be sent is not lost: the next ping's reply brings the whole list.
"""

from __future__ import annotations

import collections
import secrets
from typing import Any

import structlog
import zmq

from hypervisor.owners import PING_S, Owners, OwnersFeed
from wire import envelope
from wire import security
from wire.security import Security, Server

OWNERS_IN_FLIGHT = 1024  # seqs of unanswered `owners` requests remembered, to tell their replies apart


class VirqSender:
    def __init__(
        self,
        endpoint: str,
        log: structlog.typing.FilteringBoundLogger,
        context: zmq.Context | None = None,
        owners: Owners | None = None,
        security_setting: Security | None = None,
        ping_s: float = PING_S,
    ) -> None:
        """`owners`: every live guest's (domid, scoped client, name), for the full list; None (or an
        insecure process, whose guests have no keys) sends no `owners` at all."""
        self.endpoint = endpoint
        self.log = log
        setting = security_setting or security.current()
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        setting.secure_client(self.socket, Server.IRQBUS)
        self.socket.connect(endpoint)
        self.client_id = "hypervisor-" + secrets.token_hex(6)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.refused = 0
        self.feed = None if owners is None or setting.insecure else OwnersFeed(owners, ping_s)
        self._owners_seqs: collections.deque[int] = collections.deque(maxlen=OWNERS_IN_FLIGHT)
        self._owners_problem: tuple[Any, Any] | None = None  # the last refusal logged, said once

    def _send(self, op: str, args: dict[str, Any]) -> bool:
        self.seq += 1
        frame = envelope.encode(envelope.request(op, self.seq, self.client_id, args))
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send(self, domid: int, virq: str) -> bool:
        """Raise `virq` on domain `domid`; False when irqbus is not connected (dropped)."""
        if not self._send("send_virq", {"guest": domid, "virq": virq}):
            self.dropped += 1
            self.log.debug("virq dropped: irqbus not connected", domid=domid, virq=virq, seq=self.seq, dropped=self.dropped)
            return False
        self.sent += 1
        self.log.debug("virq sent", domid=domid, virq=virq, seq=self.seq)
        return True

    def owned(self, domid: int, client: str, name: str | None) -> None:
        """Domain `domid` was registered as `name` by `client` (scoped by its key)."""
        if self.feed is not None and (args := self.feed.owned(domid, client, name)) is not None:
            self._send_owners(args)

    def gone(self, domid: int) -> None:
        """Domain `domid` no longer has a guest (destroyed, reclaimed, crashed)."""
        if self.feed is not None:
            self._send_owners(self.feed.gone(domid))

    def tick(self, now: float) -> None:
        """Once per service loop turn: the ping, or the full list when irqbus needs it."""
        if self.feed is not None:
            for args in self.feed.due(now):
                self._send_owners(args)

    def _send_owners(self, args: dict[str, Any]) -> None:
        if self._send("owners", args):
            self._owners_seqs.append(self.seq)
            return
        assert self.feed is not None
        self.feed.lost()
        self.log.debug("owners not sent: irqbus not connected", seq=self.seq)

    def drain(self) -> None:
        """Read irqbus's replies; a guest not attached there (ESRCH) is normal, other errors are logged."""
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = envelope.decode_incoming(frame)
            except envelope.EnvelopeError:
                continue
            if self._is_owners_reply(reply.get("seq")):
                self._owners_reply(reply)
            elif not reply.get("ok") and reply.get("error") != "ESRCH":
                self.refused += 1
                self.log.warning("irqbus refused a virq", seq=reply.get("seq"), error=reply.get("error"), message=reply.get("message"))

    def _is_owners_reply(self, seq: Any) -> bool:
        """Replies come in order: requests older than `seq` went unanswered (irqbus restarted)."""
        seqs = self._owners_seqs
        while seqs and type(seq) is int and seqs[0] < seq:
            seqs.popleft()
        if seqs and seqs[0] == seq:
            seqs.popleft()
            return True
        return False

    def _owners_reply(self, reply: dict[str, Any]) -> None:
        assert self.feed is not None
        if reply.get("ok"):
            self._owners_problem = None
            self.feed.heard(reply.get("result"))
            return
        problem = (reply.get("error"), reply.get("message"))
        if problem != self._owners_problem:  # said once, not at every ping
            self._owners_problem = problem
            self.log.warning("irqbus refused owners: it cannot check which key owns which guest", error=problem[0], message=problem[1])
        self.feed.lost()  # what it refused is not there: the whole list when it takes one again

    def close(self) -> None:
        self.socket.close(linger=0)
