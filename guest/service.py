"""The guest's ZeroMQ shell: registers its domain, then carries out what the balloon core decides.

The loop has one socket to the hypervisor. Replies drive the balloon; `target` events (a push
when the toolstack writes the target) reach the driver at once (what it does with one is its
generation's rule); a heartbeat reports statistics and carries the target too, as the fallback
when a push is lost.

Time scale: the balloon core runs on the driver clock, the real clock times `speed` (`guest
run --speed`), so every driver timer and the pace run `speed` times faster while the figures
(schedule_delay, max_schedule_delay) stay in Linux seconds. Heartbeats, RPC timeouts and the
interrupt attachments stay in real time.
"""

from __future__ import annotations

import datetime
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import zmq

from guest.balloon import Balloon, BalloonConfig, Decrease, DriverState, Increase
from guest.floor import minimum_target_pages
from guest.control import GuestControl
from guest.memory import GuestMemory
from guest.pace import Pace, Unlimited
from wire.backoff import Backoff
from wire.client import Outage, RpcClient
from wire.security import Server
from wire.domain_end import DomainEnd, parse_domain_end
from wire.errors import RemoteError, Unreachable
from wire.extent import Extent
from wire.pages import every_page
from wire.shown import clip
from wire.signals import SignalWakeup, signal_wakeup

DEFAULT_HEARTBEAT_S = 1.0
# While the hypervisor is away (stopped, restarting): the longest wait between two tries of a
# request, and between two heartbeats. Short enough that a hypervisor back with its journal
# hears from every guest within it (keep --reclaim-after well above it); long enough that a
# long outage costs a few frames, not one per RPC timeout.
DEFAULT_RETRY_CAP_S = 2.0
MAX_IDLE_WAIT_S = 0.25  # how often the loop looks at the stop flag when nothing is due, off the main thread
MAX_SLEEP_S = 5.0  # the same on the main thread, where a signal ends the sleep (wire.signals.SignalWakeup)


class HypervisorRestarted(Exception):
    """An ESRCH from a hypervisor whose boot id is not the one this guest registered with: not
    "my domain was destroyed" but "the hypervisor restarted and knows nothing of my domain"."""

    def __init__(self, domid: int | None, registered_boot_id: str | None, boot_id: str | None) -> None:
        super().__init__(
            f"the hypervisor restarted (boot {boot_id}) and knows nothing of domain {domid}, "
            f"which was registered with boot {registered_boot_id}"
        )
        self.domid = domid
        self.registered_boot_id = registered_boot_id
        self.boot_id = boot_id


@dataclass(frozen=True)
class DomainGone:
    """The guest's domain ended while it ran: how (the hypervisor's word, wire/domain_end.py)
    and what the hypervisor said about it."""

    domid: int | None
    end: DomainEnd
    message: str


class Attachment(Protocol):
    """Something else the guest talks to besides the hypervisor (irqbus), sharing the loop."""

    socket: zmq.Socket

    def started(self, domid: int, name: str, now: float, notify: Callable[[str], None]) -> None: ...

    def on_readable(self, now: float) -> None: ...

    def next_wakeup(self) -> float | None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


@dataclass
class GuestSettings:
    name: str
    memory_pages: int
    max_pages: int
    hypervisor: str
    workload_pages: int = 0
    balloon: BalloonConfig = field(default_factory=BalloonConfig)
    pace: Callable[[float], Pace] = lambda now: Unlimited()
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    rpc_timeout_s: float = 0.5
    speed: float = 1.0  # the driver clock runs this many times faster than the real one
    kernel_floor_pages: int | None = None  # None: guest/floor.py's function of the boot maxmem
    hotplug: bool = False  # memory hotplug: no growth cap from the boot balloon
    ceiling_pages: int | None = None  # the most the guest can hold (guest/control.py)
    inaccuracy_pages: int = 0  # settles this many pages short of its target
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    on_crash: str | None = None  # what the host does once this guest falls silent (None: its default, destroy)


class GuestService:
    def __init__(
        self,
        settings: GuestSettings,
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.monotonic,
        attachments: list[Attachment] | None = None,
    ) -> None:
        self.settings = settings
        self.attachments = attachments or []
        self.log = log.bind(name=settings.name)
        self.clock = clock
        self.speed = settings.speed
        self.client = RpcClient(
            settings.hypervisor, server=Server.HYPERVISOR, timeout=settings.rpc_timeout_s, backoff_cap=settings.retry_cap_s,
            on_outage=self._hypervisor_unreachable, on_back=self._hypervisor_back,
        )
        self.balloon: Balloon | None = None
        self.control: GuestControl | None = None
        self.domid: int | None = None
        self.boot_id: str | None = None  # the hypervisor's, from register: see _no_such_domain
        self._target_writes = 0
        self._failed_steps = 0
        self._reported_state: DriverState | None = None
        self._report_now = False  # the driver changed state: tell the hypervisor at once
        self._heartbeat_waits = Backoff(max(settings.heartbeat_s, settings.retry_cap_s), settings.heartbeat_s)  # while the hypervisor is away
        self._heartbeat_phase = random.random  # the first period's fraction: see run()
        # the statistics the hypervisor acknowledged last: a heartbeat with the same ones
        # again carries none (see _heartbeat)
        self._acknowledged_stats: dict[str, Any] | None = None
        self.gone: DomainGone | None = None  # set when the domain ended under the guest

    def close(self) -> None:
        for attachment in self.attachments:
            attachment.close()
        self.client.close()

    def on_virq(self, name: str) -> None:
        """A virtual interrupt from the hypervisor, through irqbus (Xen's event channels).

        "target": the toolstack wrote the target: report and read it back at once.
        "memory": pages were freed while this guest was short: retry now, not at the timer.
        """
        if name == "target":
            self._report_now = True
        elif name == "memory":
            self.balloon.wake(self.driver_clock())
            self.log.info("memory available", current_pages=self.balloon.current_pages, target_pages=self.balloon.target_pages)

    def driver_clock(self) -> float:
        """The balloon core's clock: real seconds times `speed`."""
        return self.clock() * self.speed

    # --- lifecycle -----------------------------------------------------------------------------

    def register(self, should_stop: Callable[[], bool]) -> None:
        s = self.settings
        args: dict[str, Any] = {"name": s.name, "memory_pages": s.memory_pages, "max_pages": s.max_pages}
        if s.on_crash is not None:
            args["on_crash"] = s.on_crash
        result = self.client.call("register", args, retries=-1, should_stop=should_stop)
        if result.get("next") is not None:  # a fragmented host: the rest of the memory map
            call = functools.partial(self.client.call, retries=-1, should_stop=should_stop)
            result["extents"] = every_page(call, "memory_map", "extents", first=result)["extents"]
        now = self.driver_clock()
        self.domid = result["domid"]
        boot_id = result.get("boot_id")
        self.boot_id = boot_id if isinstance(boot_id, str) else None
        self.log = self.log.bind(domid=self.domid)
        floor = minimum_target_pages(result["max_pages"]) if s.kernel_floor_pages is None else s.kernel_floor_pages
        memory = GuestMemory([Extent(a, b) for a, b in result["extents"]], s.workload_pages, kernel_floor_pages=floor)
        self.balloon = Balloon(memory, result["max_pages"], target_pages=result["target_pages"], config=s.balloon, pace=s.pace(now))
        if s.hotplug:
            self.balloon.set_growth_cap(None, now)
        self.control = GuestControl(self.balloon, now, ceiling_pages=s.ceiling_pages, inaccuracy_pages=s.inaccuracy_pages)
        self._target_writes = result["target_writes"]
        self._failed_steps = 0
        self.log.info(
            "registered", pages=memory.current_pages, max_pages=result["max_pages"], workload_pages=s.workload_pages,
            driver=str(s.balloon.generation), kernel_floor_pages=floor, growth_cap=self.balloon.growth_cap, speed=self.speed, boot_id=self.boot_id,
        )

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Register, then balloon until stopped or destroyed; a clean stop shuts the domain down."""
        self.register(should_stop)
        for attachment in self.attachments:
            attachment.started(self.domid, self.settings.name, self.clock(), self.on_virq)
        poller = zmq.Poller()
        for sock in [self.client.socket, *(a.socket for a in self.attachments)]:
            poller.register(sock, zmq.POLLIN)
        wakeup = signal_wakeup()
        if wakeup is not None:
            poller.register(wakeup, zmq.POLLIN)
        try:
            self._loop(should_stop, poller, wakeup)
        finally:
            if wakeup is not None:
                wakeup.close()
        if self.gone is None:
            self._shutdown()

    def _loop(self, should_stop: Callable[[], bool], poller: zmq.Poller, wakeup: SignalWakeup | None) -> None:
        """Until stopped or the domain is gone: drive the balloon, heartbeat, and sleep in one
        poll until the next of those is due, something arrives, or (`wakeup`) a signal does."""
        longest_sleep = MAX_IDLE_WAIT_S if wakeup is None else MAX_SLEEP_S
        next_heartbeat = self.clock()
        first_gap = True
        while not should_stop() and self.gone is None:
            self._drive(should_stop)
            if self.gone is not None:
                break
            now = self.clock()
            if now >= next_heartbeat or self._report_now:
                self._report_now = False
                self._heartbeat(should_stop)
                gap = self._next_heartbeat_gap()
                if first_gap:  # a random phase: guests started together do not beat in lockstep
                    first_gap = False
                    gap *= 0.5 + self._heartbeat_phase()
                next_heartbeat = now + gap
            for attachment in self.attachments:
                attachment.tick(now)
            driver_due = self.balloon.next_wakeup()
            wakeups = [None if driver_due is None else driver_due / self.speed, *(a.next_wakeup() for a in self.attachments)]
            due = min([next_heartbeat, *(w for w in wakeups if w is not None)])
            wait_ms = int(1000 * min(longest_sleep, max(0.0, due - self.clock())))
            ready = dict(poller.poll(wait_ms))
            if wakeup is not None and wakeup in ready:
                wakeup.drain()
            if self.client.socket in ready:
                event = self.client.wait_event(0)
                if event is not None:
                    self._on_event(event)
            for attachment in self.attachments:
                if attachment.socket in ready:
                    attachment.on_readable(self.clock())

    def _next_heartbeat_gap(self) -> float:
        """The heartbeat's period; while the hypervisor is away, twice the last gap each time,
        up to the retry cap (never below the period)."""
        if self.client.outage is not None:
            return self._heartbeat_waits.delay()
        self._heartbeat_waits.reset()
        return self._heartbeat_waits.delay()  # the period; the next, if away by then, twice it

    # --- the hypervisor going away and coming back --------------------------------------------

    def _hypervisor_unreachable(self, outage: Outage) -> None:
        self._acknowledged_stats = None  # a hypervisor back from a restart may not have them
        since = datetime.datetime.fromtimestamp(outage.since_wall, datetime.UTC).isoformat().replace("+00:00", "Z")
        self.log.warning("hypervisor unreachable", since=since, op=outage.op, seq=outage.seq, retry_cap_s=self.settings.retry_cap_s)

    def _hypervisor_back(self, outage: Outage, seconds: float) -> None:
        self.log.info("hypervisor back", outage_s=round(seconds, 3), op=outage.op, seq=outage.seq)

    def _shutdown(self) -> None:
        try:
            result = self.client.call("shutdown", retries=2)
            self.log.info("shut down", released=result.get("released"))
        except RemoteError as err:
            if err.code == "ESRCH":  # gone already: say how (or that the hypervisor restarted without it)
                self._no_such_domain(err)
            else:
                self.log.warning("shutdown not confirmed", error=str(err))
        except Unreachable as err:
            self.log.warning("shutdown not confirmed", error=str(err))

    # --- the balloon -------------------------------------------------------------------------

    def _drive(self, should_stop: Callable[[], bool]) -> None:
        """Carry out every action the balloon wants now, one RPC at a time."""
        balloon = self.balloon
        while not should_stop():
            for event in self._drain_events():
                self._on_event(event)
            action = balloon.poll(self.driver_clock())
            self._log_failed_steps()
            if action is None:
                break
            try:
                if isinstance(action, Increase):
                    result = self.client.call("increase_reservation", {"nr_pages": action.nr}, retries=-1, should_stop=should_stop)
                    granted = [Extent(a, b) for a, b in result["extents"]]
                    balloon.increase_done(granted, self.driver_clock())
                    self.log.debug("increase", seq=self.client.last_seq, asked=action.nr, granted=result["granted"], current_pages=balloon.current_pages)
                elif isinstance(action, Decrease):
                    self.client.call("decrease_reservation", {"extents": [list(e) for e in action.extents]}, retries=-1, should_stop=should_stop)
                    balloon.decrease_done(self.driver_clock())
                    self.log.debug("decrease", seq=self.client.last_seq, released=action.nr, current_pages=balloon.current_pages)
            except RemoteError as err:
                balloon.request_failed(self.driver_clock())
                if err.code == "ESRCH":
                    self._no_such_domain(err)
                    return
                self.log.error("request refused", seq=self.client.last_seq, error=err.code, message=err.message)
            except Unreachable:  # only when stopping: retries are unlimited
                balloon.request_failed(self.driver_clock())
                return
            self._log_failed_steps()
            self._report_state()

    def _log_failed_steps(self) -> None:
        """One line per failed step: the retry timeline, in driver seconds."""
        balloon = self.balloon
        if balloon.failed_steps == self._failed_steps:
            return
        self._failed_steps = balloon.failed_steps
        now = self.driver_clock()
        due = balloon.next_wakeup()
        stats = balloon.stats()
        self.log.info(
            "step failed", driver_time=round(now, 6), retry_in=None if due is None else round(due - now, 6),
            retry_count=stats.retry_count, schedule_delay=stats.schedule_delay, state=stats.state,
            current_pages=balloon.current_pages, target_pages=balloon.target_pages,
        )

    def _report_state(self) -> None:
        balloon = self.balloon
        if balloon.state is self._reported_state:
            return
        self._reported_state = balloon.state
        self._report_now = True
        stats = balloon.stats()
        self.log.info(
            "balloon " + str(balloon.state),
            current_pages=balloon.current_pages,
            target_pages=balloon.target_pages,
            retry_count=stats.retry_count,
            schedule_delay=stats.schedule_delay,
        )

    # --- the hypervisor's news ---------------------------------------------------------------

    def _drain_events(self) -> list[dict[str, Any]]:
        events = list(self.client.events)
        self.client.events.clear()
        return events

    def _on_event(self, event: dict[str, Any]) -> None:
        name, args = event.get("event"), event.get("args", {})
        if name == "target":
            self._apply_target(args, pushed=True)
        elif name in ("destroyed", "crashed"):
            end = parse_domain_end(args.get("reason")) or (DomainEnd.CRASHED if name == "crashed" else DomainEnd.DESTROYED)
            message = args.get("message")
            self._ended(end, message if isinstance(message, str) else f"domain {self.domid} was {end}", via="event")
        elif name == "control":
            self._apply_control(args.get("control"), pushed=True)

    def _apply_control(self, keys: Any, pushed: bool) -> None:
        """The domain's control keys, as the hypervisor keeps them: apply what changed."""
        if not isinstance(keys, dict):
            self.log.warning("malformed control keys", keys=str(keys)[:200])
            return
        outcome = self.control.apply(keys, self.driver_clock())
        via = "push" if pushed else "heartbeat"
        if outcome.applied:
            self.log.info("control applied", via=via, current_pages=self.balloon.current_pages, **outcome.applied)
            self._report_now = True
        for key, why in outcome.refused.items():
            self.log.warning("control refused", key=key, reason=why, via=via)

    def _no_such_domain(self, err: RemoteError) -> None:
        """ESRCH: the domain is gone, if the books that say so are the ones it was registered
        in (how, their `reason` says: destroyed when they do not remember); else the hypervisor
        restarted without it (raises HypervisorRestarted)."""
        if err.boot_id != self.boot_id:
            raise HypervisorRestarted(self.domid, self.boot_id, err.boot_id)
        self._ended(parse_domain_end(err.reason) or DomainEnd.DESTROYED, err.message, via="reply", seq=self.client.last_seq)

    def _ended(self, end: DomainEnd, message: str, **fields: Any) -> None:
        """One line, at the level the end deserves: a toolstack's destroy is an end as asked."""
        if self.gone is not None:
            return
        self.gone = DomainGone(self.domid, end, clip(message, 400))
        if end is DomainEnd.DESTROYED:
            self.log.info("domain destroyed", message=self.gone.message, **fields)
        else:
            self.log.error(f"domain {end}", message=self.gone.message, **fields)

    def _apply_target(self, info: dict[str, Any], pushed: bool) -> None:
        """A target write (seen by its counter, so a write of the same value counts) reaches the driver."""
        now = self.driver_clock()
        try:
            max_pages, target, writes = int(info["max_pages"]), int(info["target_pages"]), int(info["target_writes"])
        except (KeyError, TypeError, ValueError):
            self.log.warning("malformed target information", info=str(info)[:200])
            return
        if self.settings.hotplug and max_pages > self.balloon.maxmem_pages:
            # Linux's driver never reads Xen's max after boot (it watches memory/target only): a
            # lowered max shows as refused increases, not as a smaller guest. With memory
            # hotplug it can grow into a raised one (reserve_additional_memory()).
            self.balloon.set_maxmem(max_pages, now)
        if writes != self._target_writes:
            self._target_writes = writes
            self.control.set_target(target, now)
            self.log.info("target changed", target_pages=target, current_pages=self.balloon.current_pages, via="push" if pushed else "heartbeat")

    def _heartbeat(self, should_stop: Callable[[], bool]) -> None:
        """The statistics when they changed since the hypervisor last acknowledged them, else a
        bare `status` (the hypervisor keeps the last ones it was sent): on a host of a thousand
        guests at rest, nearly every heartbeat is bare, a smaller frame with nothing to check
        or journal."""
        stats = self.balloon.stats().to_dict()
        args = {} if stats == self._acknowledged_stats else {"balloon": stats}
        try:
            result = self.client.call("status", args, retries=0)
        except Unreachable:  # said once, when the outage began (_hypervisor_unreachable)
            self.log.debug("heartbeat unanswered", seq=self.client.last_seq)
            return
        except RemoteError as err:
            if err.code == "ESRCH":
                self._no_such_domain(err)
                return
            self.log.error("heartbeat refused", error=err.code, message=err.message)
            return
        self._acknowledged_stats = stats
        self._apply_target(result, pushed=False)
        if "control" in result:
            self._apply_control(result["control"], pushed=False)
