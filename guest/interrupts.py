"""The guest's irqbus attachment: a DEALER socket in the guest's loop (guest/service.py's
`Attachment`), moving what guest/irqlink.py decides.

Setup (attach, programming each driver's line) is done with plain request/reply calls, so a
refusal is known before a driver counts as up. Per-interrupt traffic is not waited for: each
`chip` request is posted and its reply read later, because the next interrupt on a busy line
arrives right behind it. If irqbus forgets the guest (it restarted; an empty `chip` request
every two seconds finds out even when nothing happens), the guest attaches again and
reprograms its lines; the new instance's epoch makes its drivers forget the generations they
claimed from the old one (guest/irqlink.py, `attached`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from guest.drivers import Driver, DriverSpec
from guest.irq import BogusReturn, HandlerFault, IrqSetupError, NobodyCared, SpuriousPolicy
from guest.irqlink import IrqLink, Request
from wire import envelope
from wire import multipart
from wire.client import RpcClient
from wire.security import Server
from wire.epoch import read_epoch
from wire.errors import RemoteError, Unreachable
from wire.operations import VIRQS

ATTACH_RETRY_S = 2.0
# irqbus answers EAGAIN until the hypervisor told it which key owns this domain (irqbus.rights):
# a moment after the guest registered, so it is asked again soon, and said once
OWNER_WAIT_S = 0.2
OWNER_WARN_S = 5.0  # still not: the hypervisor is not telling it (no --irqbus there, or other keys)
PING_S = 2.0  # an idle guest still notices within this long that irqbus restarted and forgot it
RETRY_TIMEOUT_S = 0.2
DRAIN_BUDGET = 1024
REPORT_EVERY_S = 1.0
# irqbus drops a guest's events past 16,384 unread (irqbus.backlog) and takes any request from
# the guest as proof it reads; edge and MSI interrupts need no chip operation, so a guest in a
# storm of them says it reads with an empty chip request every so many events.
READING_EVERY = 4096


class IrqbusAttachment:
    def __init__(
        self,
        endpoint: str,
        specs: list[DriverSpec],
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.monotonic,
        spurious: SpuriousPolicy | None = None,
        timeout_s: float = 0.5,
        virqs: tuple[str, ...] = VIRQS,
    ) -> None:
        self.endpoint = endpoint
        self.link = IrqLink(specs, spurious, virqs)
        self.notify: Callable[[str], None] = lambda name: None
        self.client = RpcClient(endpoint, server=Server.IRQBUS, timeout=timeout_s, retries=1)
        self.socket: zmq.Socket = self.client.socket
        self.log = log
        self.clock = clock
        self.timeout_s = timeout_s
        self.domid: int | None = None
        self.name = ""
        self.attached = False
        self._retry_at: float | None = None
        self._ping_at: float | None = None
        self._ping_seq: int | None = None
        self._refused: set[str] = set()  # drivers refused for good: not retried on re-attach
        self._next_report = 0.0
        self._reported_unknown = 0
        self._reported_stale = 0
        self._since_request = 0  # events read since this guest last sent irqbus a request
        self._waiting_owner: float | None = None  # since when irqbus does not know this domain's key
        self._warned_owner = False

    # -- Attachment ----------------------------------------------------------------------------------

    def started(self, domid: int, name: str, now: float, notify: Callable[[str], None]) -> None:
        self.domid, self.name, self.notify = domid, name, notify
        self.log = self.log.bind(domid=domid)
        self._attach(now)

    def on_readable(self, now: float) -> None:
        """Drain what irqbus sent. Each interrupt is stamped with the clock as it is handled:
        a batch can be long, and spurious detection judges the gaps between interrupts."""
        clock = self.clock
        link = self.link
        if self.client.events:
            self._on_events(self._queued_events(), now)
        sock = self.socket
        decode = envelope.decode_incoming
        for _ in range(DRAIN_BUDGET):
            try:
                frame = sock.recv(multipart.NOBLOCK)  # one frame per message; a stray part is malformed
            except zmq.Again:
                break
            try:
                body = decode(frame)
            except envelope.EnvelopeError:
                link.malformed += 1
            else:
                if body.get("event") == "irq":  # _on_event's common case, without its dispatch
                    self._answer(link.on_irq(body.get("args"), clock()))
                elif "event" in body:
                    self._on_event(body, clock())
                elif not body["ok"]:
                    self._refused_reply(body, clock())
            if not multipart.readable(sock):
                break
        if link.fired:
            for name in link.take_fired():
                self.notify(name)
        if link.irq.table.events or link.unknown_vectors != self._reported_unknown or link.stale != self._reported_stale:
            self._report(clock())  # else it would find nothing to say

    def next_wakeup(self) -> float | None:
        return self._retry_at if not self.attached else self._ping_at

    def tick(self, now: float) -> None:
        if not self.attached:
            if self._retry_at is not None and now >= self._retry_at:
                self._attach(now)
        elif self._ping_at is not None and now >= self._ping_at:
            self._ping_seq = self.client.post("chip", {})
            self._ping_at = now + PING_S

    def close(self) -> None:
        if self.attached:
            self.client.timeout = RETRY_TIMEOUT_S
            try:
                self.client.call("detach", retries=0)
                self.log.info("detached from irqbus")
            except (Unreachable, RemoteError) as err:
                self.log.warning("detach not confirmed", error=str(err))
        self.client.close()

    # -- attaching -----------------------------------------------------------------------------------

    def _attach(self, now: float) -> None:
        first = self._retry_at is None and not self.link.delivered
        try:
            result = self.client.call("attach", {"name": self.name, "domid": self.domid}, retries=1 if first else 0)
            before = self.link.epoch
            # before anything is reprogrammed: what that delivers is this instance's
            if self.link.attached(read_epoch(result.get("epoch"))) and before is not None:
                self.log.warning("irqbus restarted: generations start again", previous_epoch=before, epoch=self.link.epoch)
            for request in self.link.reprogram():  # lines already up (a re-attach)
                self._call(request)
            for driver in self.link.drivers:
                if driver.irq is None and driver.name not in self._refused:
                    self._bring_up(driver)
            for request in self.link.bind_virqs():
                self._call(request)
        except Unreachable:
            self.client.timeout = RETRY_TIMEOUT_S
            self._retry_at = now + ATTACH_RETRY_S
            self.log.warning("irqbus not answering; will retry", endpoint=self.endpoint, retry_in_s=ATTACH_RETRY_S)
            return
        except RemoteError as err:
            if err.code == "EAGAIN":
                self._retry_at = now + OWNER_WAIT_S
                if self._waiting_owner is None:
                    self._waiting_owner = now
                    self.log.info("irqbus does not know this domain's key yet; waiting", message=err.message)
                elif now - self._waiting_owner >= OWNER_WARN_S and not self._warned_owner:
                    self._warned_owner = True
                    self.log.warning("irqbus still does not know this domain's key: is the hypervisor started with --irqbus, "
                                     "with the same key directory?", waited_s=round(now - self._waiting_owner, 1))
                return
            self._retry_at = now + ATTACH_RETRY_S
            self.log.error("irqbus refused the guest", error=err.code, message=err.message)
            return
        self._waiting_owner = None
        self._warned_owner = False
        self.client.timeout = self.timeout_s
        self.attached = True
        self._retry_at = None
        self._ping_at = now + PING_S
        up = [str(d.spec) + f"->irq{d.irq}" for d in self.link.drivers if d.irq is not None]
        self.log.info("attached to irqbus", endpoint=self.endpoint, seq=self.client.last_seq, drivers=up, replaced=result.get("replaced"))
        self._on_events(self._queued_events(), self.clock())

    def _call(self, request: Request) -> dict[str, Any]:
        return self.client.call(request.op, request.args)

    def _bring_up(self, driver: Driver) -> None:
        """Register the driver here, program its line at irqbus, then let the line on."""
        try:
            setup = self.link.setup(driver)
        except IrqSetupError as err:
            self._refused.add(driver.name)
            self.log.error("driver refused", device=driver.name, spec=str(driver.spec), error=str(err.code), message=err.message)
            return
        try:
            for request in setup.program:
                self._call(request)
        except RemoteError as err:
            self.link.abandon(driver)
            self._refused.add(driver.name)
            self.log.error("irqbus refused the driver's line", device=driver.name, spec=str(driver.spec), error=err.code, message=err.message)
            return
        if setup.chip is not None:
            self._call(setup.chip)
        self.log.info("driver up", device=driver.name, spec=str(driver.spec), irq=driver.irq)

    # -- traffic -------------------------------------------------------------------------------------

    def _queued_events(self) -> list[dict[str, Any]]:
        """Events that arrived while a setup call waited for its reply."""
        events = list(self.client.events)
        self.client.events.clear()
        return events

    def _on_events(self, events: list[dict[str, Any]], now: float) -> None:
        for event in events:
            self._on_event(event, now)

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        name = event["event"]
        if name == "irq":
            request = self.link.on_irq(event.get("args"), now)
        elif name == "query":
            request = self.link.on_query(event.get("args"))
        else:
            self.link.malformed += 1
            return
        self._answer(request)

    def _answer(self, request: Request | None) -> None:
        """Post what an event asks irqbus for; after READING_EVERY events that asked nothing,
        an empty chip request, so irqbus knows this guest reads (irqbus.backlog)."""
        self._since_request += 1
        if request is not None:
            self.client.post(request.op, request.args)
            self._since_request = 0
        elif self._since_request >= READING_EVERY:
            self.client.post("chip", {})
            self._since_request = 0

    def _refused_reply(self, body: dict[str, Any], now: float) -> None:
        self.log.warning("irqbus refused a request", seq=body.get("seq"), error=body.get("error"), message=body.get("message"))
        if body.get("error") == "ESRCH" and body.get("seq") == self._ping_seq and self.attached:
            # an empty chip request can only fail so if irqbus forgot this guest (it restarted)
            self.attached = False
            self._retry_at = now
            self.log.warning("irqbus forgot this guest; attaching again", endpoint=self.endpoint)

    def _report(self, now: float) -> None:
        """Log what the interrupt subsystem recorded: one line per nobody-cared, bogus return
        value or faulty handler; unknown vectors at most once a second."""
        for event in self.link.events():
            if isinstance(event, NobodyCared):
                self.log.error(
                    "nobody cared",
                    irq=event.irq,
                    actions=list(event.actions),
                    irqs_unhandled=event.irqs_unhandled,
                    window=event.window,
                    message=event.message,
                )
            elif isinstance(event, BogusReturn):
                self.log.error("bogus return value", irq=event.irq, value=event.value, actions=list(event.actions), message=event.message)
            elif isinstance(event, HandlerFault):
                self.log.warning("handler fault", irq=event.irq, action=event.action, reason=event.reason)
        unknown = self.link.unknown_vectors
        if unknown != self._reported_unknown and now >= self._next_report:
            self.log.warning("interrupts on vectors with no handler", count=unknown - self._reported_unknown)
            self._reported_unknown = unknown
            self._next_report = now + REPORT_EVERY_S
        stale = self.link.stale
        if stale != self._reported_stale and now >= self._next_report:
            self.log.info("interrupts of an irqbus instance that is gone, not handled", count=stale - self._reported_stale)
            self._reported_stale = stale
            self._next_report = now + REPORT_EVERY_S
