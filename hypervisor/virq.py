"""The hypervisor's line to irqbus: virtual interrupts (Xen's event channels) for guests.

Fire and forget: the hypervisor never waits on irqbus. While irqbus is down nothing is queued
(ZMQ_IMMEDIATE), the interrupt is dropped and counted, and guests still converge on their
retry timer and heartbeat; when irqbus is back, ZeroMQ reconnects and notifications resume.
"""

from __future__ import annotations

import secrets

import structlog
import zmq

from wire import envelope
from wire import security
from wire.security import Server


class VirqSender:
    def __init__(self, endpoint: str, log: structlog.typing.FilteringBoundLogger, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.log = log
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        security.current().secure_client(self.socket, Server.IRQBUS)
        self.socket.connect(endpoint)
        self.client_id = "hypervisor-" + secrets.token_hex(6)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.refused = 0

    def send(self, domid: int, virq: str) -> bool:
        """Raise `virq` on domain `domid`; False when irqbus is not connected (dropped)."""
        self.seq += 1
        frame = envelope.encode(envelope.request("send_virq", self.seq, self.client_id, {"guest": domid, "virq": virq}))
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            self.log.debug("virq dropped: irqbus not connected", domid=domid, virq=virq, seq=self.seq, dropped=self.dropped)
            return False
        self.sent += 1
        self.log.debug("virq sent", domid=domid, virq=virq, seq=self.seq)
        return True

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
            if not reply.get("ok") and reply.get("error") != "ESRCH":
                self.refused += 1
                self.log.warning("irqbus refused a virq", seq=reply.get("seq"), error=reply.get("error"), message=reply.get("message"))

    def close(self) -> None:
        self.socket.close(linger=0)
