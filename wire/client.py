"""A request/reply client over a DEALER socket that retries with the same sequence number.

The server answers a retried request from its record of the first, so resending after a lost
reply is always safe; that is what lets a guest retry a decrease forever without ever giving
the same pages back twice.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from wire import envelope
from wire import security as security_module
from wire.backoff import Backoff
from wire import multipart
from wire.errors import MAX_BOOT_ID, MAX_REASON, RemoteError, Unreachable
from wire.security import Security, Server

_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

EAGAIN_PAUSE_S = 0.25  # before resending a request the server could not take yet


@dataclass(frozen=True)
class Outage:
    """The server stopped answering: the request that met the silence, and since when."""

    op: str
    seq: int
    since: float  # time.monotonic() when that attempt was sent
    since_wall: float  # the same instant as time.time(), for log lines


class RpcClient:
    """`backoff_cap`: a request retried without limit (retries=-1) waits twice as long for each
    unanswered attempt, up to this many seconds (None: `timeout` each time). A reply that comes
    meanwhile ends the wait at once, so a longer wait costs nothing when the server is merely
    slow or stopped; it only spaces the resends to one that lost the request (restarted).

    `on_outage(outage)` is called once when an attempt goes unanswered, `on_back(outage,
    seconds)` once when anything arrives from the server again: a log line per change of
    state, not per try.

    `server` names whose public key the connection expects (wire.security): the process's
    setting (`security.current()`) unless `security` is given."""

    def __init__(
        self,
        endpoint: str,
        *,
        server: Server | str,
        security: Security | None = None,
        context: zmq.Context | None = None,
        timeout: float = 1.0,
        retries: int = 3,
        client_id: str | None = None,
        backoff_cap: float | None = None,
        on_outage: Callable[[Outage], None] | None = None,
        on_back: Callable[[Outage, float], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.client_id = client_id or secrets.token_hex(8)
        self._client_part = envelope.client_part(self.client_id)  # packed once (envelope.encode_request)
        self.backoff_cap = backoff_cap
        self.outage: Outage | None = None  # set while the server is not answering
        self._on_outage = on_outage
        self._on_back = on_back
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1024)
        self._seq = 0
        self._receive_timeout_ms: int | None = None  # what RCVTIMEO is set to (set only when it changes)
        self._context = context or zmq.Context.instance()
        self.server = Server(server)
        self.security = security or security_module.current()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.security.secure_client(self.socket, self.server)
        # CURVE: a handshake that fails (a wrong server key, a server without CURVE) is silence
        # to the sender; the monitor lets an Unreachable say why.
        self._monitor = None if self.security.insecure else self.socket.get_monitor_socket(_HANDSHAKE_FAILED)
        self.handshake_failures = 0
        self.socket.connect(endpoint)

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest request, for log lines."""
        return self._seq

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=0)

    def handshake_hint(self) -> str:
        """Why the server may be silent: the CURVE handshakes that failed so far, if any."""
        if self._monitor is not None:
            while self._monitor.poll(0):
                self._monitor.recv_multipart()
                self.handshake_failures += 1
        if not self.handshake_failures:
            return ""
        where = self.security.keys.public_file(str(self.server)) if self.security.keys is not None else f"{self.server}.key"
        return (
            f"; the CURVE handshake failed {self.handshake_failures} time(s): the server's key is not the one in {where} "
            f"(a wrong or stale server key), or the server runs --insecure"
        )

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        retries: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Send `op` and return its result; raise RemoteError on an error reply.

        retries=-1 retries until answered or until should_stop() says so; either way the
        caller gets Unreachable when it gives up. An EAGAIN (the server did not execute the
        request: no room to record it yet) is retried the same way, after a short pause.
        """
        self._seq += 1
        seq = self._seq
        frame = envelope.encode_request(op, seq, self._client_part, args or {})
        budget = self.retries if retries is None else retries
        attempt = 0
        started = time.monotonic()
        wait = self.timeout  # the first wait; the backoff is worked out once an attempt goes unanswered
        waits: Backoff | None = None
        while True:
            sent = time.monotonic()
            self._send(frame)
            reply = self._await_reply(seq, sent + wait)
            if reply is None:
                self._unanswered(op, seq, sent)
                if waits is None:
                    longest = max(self.timeout, self.backoff_cap) if budget < 0 and self.backoff_cap is not None else self.timeout
                    waits = Backoff(longest, self.timeout)
                    waits.delay()  # the first: waited already
                wait = waits.delay()
            else:
                if reply["ok"]:
                    return reply.get("result") or {}
                busy = reply.get("error") == "EAGAIN"  # not executed: the same frame may go again
                if not busy or (budget >= 0 and attempt >= budget) or (should_stop is not None and should_stop()):
                    boot_id = reply.get("boot_id")
                    boot_id = boot_id if type(boot_id) is str and 0 < len(boot_id) <= MAX_BOOT_ID else None
                    reason = reply.get("reason")
                    reason = reason if type(reason) is str and 0 < len(reason) <= MAX_REASON else None
                    raise RemoteError(str(reply.get("error")), str(reply.get("message")), boot_id, reason)
                time.sleep(min(self.timeout, EAGAIN_PAUSE_S))
            attempt += 1
            if (budget >= 0 and attempt > budget) or (should_stop is not None and should_stop()):
                raise Unreachable(
                    f"no reply from {self.endpoint} to {op!r} after {attempt} attempt(s) in {time.monotonic() - started:.3g} s{self.handshake_hint()}"
                )

    def _unanswered(self, op: str, seq: int, sent: float) -> None:
        if self.outage is None:
            self.outage = Outage(op, seq, sent, time.time() - (time.monotonic() - sent))
            if self._on_outage is not None:
                self._on_outage(self.outage)

    def _heard(self) -> None:
        """Something came from the server: an outage, if there was one, is over."""
        outage, self.outage = self.outage, None
        if outage is not None and self._on_back is not None:
            self._on_back(outage, time.monotonic() - outage.since)

    def post(self, op: str, args: dict[str, Any] | None = None) -> int:
        """Send a request without waiting and return its seq; the caller reads the reply off
        `socket` itself. Never retried, so several may be in flight (irqbus chip operations)."""
        self._seq += 1
        self._send(envelope.encode_request(op, self._seq, self._client_part, args or {}))
        return self._seq

    def wait_event(self, timeout: float) -> dict[str, Any] | None:
        """Return the next unsolicited event, waiting up to `timeout` seconds."""
        if not self.events and self.socket.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
            self._receive_one()
        return self.events.popleft() if self.events else None

    def _send(self, frame: bytes) -> None:
        try:
            self.socket.send(frame, multipart.NOBLOCK)
        except zmq.Again:  # queue full while the server is away; the retry will resend
            pass

    def _await_reply(self, seq: int, deadline: float) -> dict[str, Any] | None:
        """Block in libzmq itself (a receive timeout) rather than in a Python poll: right after
        a send, the less this process runs, the sooner the request is on its way."""
        while True:
            # past the deadline, still a look at what is queued: a process stopped (SIGSTOP)
            # while it waited finds the reply there when it runs again
            left = deadline - time.monotonic()
            # to the nearest ms: a fresh call's wait is the whole timeout less a few us, the
            # same setting as the call before, which then is not set again (a pyzmq setsockopt
            # converts the option to an enum every time)
            timeout_ms = max(1, round(left * 1000)) if left > 0 else 0
            if timeout_ms != self._receive_timeout_ms:
                self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
                self._receive_timeout_ms = timeout_ms
            try:
                frames = multipart.receive(self.socket)
            except zmq.Again:
                return None
            body = self._decode(frames)
            if body is not None and body.get("seq") == seq:
                return body
            # a late reply to an earlier attempt, or garbage: ignore it

    def _receive_one(self) -> dict[str, Any] | None:
        return self._decode(multipart.receive(self.socket))

    def _decode(self, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            body = envelope.decode_incoming(frames[-1])
        except envelope.EnvelopeError:
            return None
        if self.outage is not None:
            self._heard()
        if "event" in body:
            self.events.append(body)
            return None
        return body
