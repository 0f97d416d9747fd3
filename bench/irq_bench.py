"""Interrupt delivery: device raise -> guest handler, through `irqbus serve`, against a raw pyzmq
two-hop relay (device -> relay -> receiver) measured in the same run.

The irqbus side is the real thing: `irqbus serve` as a process, and in the guest process the
guest's own attachment code (guest/interrupts.py -> guest/irqlink.py -> genirq flow handler ->
the driver's handler reading its device's status), with the driver's handler timestamped. The
guest runs the attachment in a minimal poll loop rather than under `guest run`, which would
need a hypervisor and adds nothing on this path.

The relay is the cheapest two-hop path pyzmq offers: a ROUTER that forwards each frame as it
came to the receiver and acks the device, as irqbus replies to a device's `raise`. Both devices
do the same: send, wait for the reply, wait for their next slot. Latency is the receiver's (the
handler's) clock minus the device's clock at send; CLOCK_MONOTONIC is system-wide, so the two
processes' clocks agree. Throughput: the devices send back to back; the receiver counts.

Why interleaved: the machines are shared, and their load drifts within seconds (a relay run
alone here swings 260-900 us at p50). So both setups run side by side for the whole path, idle
in turn, and the devices take turns in short blocks -- relay, irqbus, irqbus, relay, ... --
so that every stretch of noise is seen by both. The ratios are of the pooled samples; the
spread of the per-block ratios is printed to show how much one block alone can be trusted.

Security (issue 13): each path is measured in both modes in the same run, all setups taking
their turns -- relay and irqbus (and in the throughput blocks the ceiling, below) with
--insecure, the same under CURVE. Under CURVE every
socket on both sides is a CURVE socket with the keys it has in a deployment: the relay and irqbus
with irqbus's key (and a ZAP handler admitting any key), the receiver and the guest with the
guest's key, both devices with the device key. The run makes its own key directory (a temporary
one, provisioned with wire.keys.KeyDir.pair) and starts irqbus with `--keys DIR` or `--insecure`;
under CURVE the bench tells irqbus, with the hypervisor's key, which key owns the guest's domain
(`owners`), as the hypervisor does. The closing table gives, per path and mode, both p50s, the
ratios, and the verdicts against issue 15's goal and floor (below).

What the semantics allow (issue 15): an interrupt is four messages at irqbus -- the device's
raise, irqbus's reply, the guest's event, and the guest's ack (its driver's write to clear the
device's status, and on an i8259 or level line the EOI the next delivery waits for) -- where
the relay moves three. So the throughput blocks also run a ceiling: the same raw relay with
irqbus's four messages and none of its work. On an edge IOAPIC line and MSI-X it is the acked
relay, whose receiver sends each frame's ack back, which the relay reads and drops. On the
i8259 and a level line, which deliver nothing more until the guest's EOI, it is the held
relay: it also forwards nothing while a frame is unacked, keeps the newest frame meanwhile
(the ones it replaces merge, as raises do into a pending request) and forwards it when the ack
comes. The closing table prints the ceiling's rate against the relay's (`ceil x`), and
irqbus's against the ceiling's (`of ceil`).

`unseen`: samples whose raise the handler never saw on its own because it merged into a later
interrupt (an i8259 pin holds one request while the previous one is in service, until the
guest's ack comes back); the relay cannot merge, so any there are losses. `waited`: samples the
handler saw, but whose raise irqbus could not deliver at once (its reply says `delivered: 0`):
the line was still in service, so the raise waited for the previous interrupt's EOI, which a
relay never does; the line under the table gives the p50 ratio of the rest beside it.

`--profile` (issue 15) also says where the time goes, stage by stage, from the device's send to
the guest's handler and then the way back: `irqbus serve --profile FILE` times each stage of
every message (irqbus/stages.py: the stage functions are wrapped only then), the bench's guest
and device time theirs, and the records of the three processes are joined on the raise's seq
and generation; the hops between processes come from CLOCK_MONOTONIC instants, one clock for
the whole host. `--busy N` runs everything under a stated background load (N CPU hogs:
`stress-ng --cpu N` when installed, else Python spinners) and says which; the load average is
printed at the start and end of every run. The closing table gives per path and mode the
ratios against the goal (p50 <= 1.3x, p99 <= 1.5x, throughput >= 0.8x the relay) and the floor
(p50 <= 1.5x, p99 <= 2x).

    python bench/irq_bench.py [--samples 3000] [--rounds 100] [--period-ms 1] [--seconds 3] [--modes insecure,curve]
                              [--paths ...] [--profile] [--busy [N]]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wire.keys import KeyDir, Role  # noqa: E402  (after the path: run from anywhere)
from wire.security import Security, Server  # noqa: E402

INSECURE, CURVE = "insecure", "curve"
MODES = (INSECURE, CURVE)
GUEST_KEY, DEVICE_KEY = "guest-bench", "device"
GUEST_DOMID = 1
GUEST_NAME = "bench"  # the domain's name, as the hypervisor would tell irqbus: the guest attaches under it
# issue 15: the goal, on every path, quiet machine and busy; and the floor below which it fails outright
P50_GOAL, P99_GOAL, RATE_GOAL = 1.3, 1.5, 0.8
P50_FLOOR, P99_FLOOR = 1.5, 2.0

PATHS = {  # name: (guest --device spec, irqbus attach args)
    "i8259 edge pin 5": ("bench0:pin=5:edge", {"pin": 5, "trigger": "edge"}),
    "IOAPIC edge pin 20": ("bench0:pin=20:edge", {"pin": 20, "trigger": "edge"}),
    "IOAPIC level pin 21": ("bench0:pin=21:level", {"pin": 21, "trigger": "level"}),
    "MSI-X": ("bench0:msi", {"msi": True}),
}
# The lines that deliver nothing more until the guest's ack brings their EOI: the i8259's
# in-service bit (Intel 8259A datasheet, "End of Interrupt"; Linux arch/x86/kernel/i8259.c
# mask_and_ack_8259A), an IOAPIC level entry's Remote IRR (82093AA datasheet, IOREDTBL bit 14).
# Their ceiling is the held relay.
HELD_UNTIL_EOI = frozenset({"i8259 edge pin 5", "IOAPIC level pin 21"})


# --- keys ------------------------------------------------------------------------------------------


def provision(keys: Path) -> None:
    """The run's key directory, as a host's is provisioned (the keys each process would use)."""
    directory = KeyDir(keys)
    directory.pair("irqbus")
    directory.pair("hypervisor", role=Role.HYPERVISOR)
    directory.pair(GUEST_KEY, role=Role.GUEST)
    directory.pair(DEVICE_KEY, role=Role.DEVICE)


def security_of(mode: str, keys: str, key_name: str) -> Security:
    return Security.curve(KeyDir(keys), key_name) if mode == CURVE else Security.insecure_mode()


def announce_owner(endpoint: str, keys: str) -> None:
    """What the hypervisor tells irqbus when the guest registers: which key owns its domain. An
    irqbus that does not know `owners` yet (rights not checked) answers ENOSYS: nothing to tell."""
    from wire.client import RpcClient
    from wire.errors import RemoteError

    guest = KeyDir(keys).public(GUEST_KEY).decode()
    with RpcClient(endpoint, server=Server.IRQBUS, security=security_of(CURVE, keys, "hypervisor"), timeout=2.0, retries=5) as client:
        try:
            client.call("owners", {"domains": [[GUEST_DOMID, guest, GUEST_NAME]]})
        except RemoteError as err:
            if err.code != "ENOSYS":
                raise


# --- the baseline: a raw two-hop relay ------------------------------------------------------------


def relay(endpoint: str, mode: str, keys: str, ready: Any, stop: Any, hold: bool = False) -> None:
    """`hold`: the held relay, which forwards nothing while a frame is unacked (see above)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 200_000)
    security_of(mode, keys, "irqbus").secure_server(sock)  # irqbus's key and ZAP handler
    sock.bind(endpoint)
    receiver = None
    outstanding, held = False, None  # the held relay: a frame unacked, and the newest since
    ready.set()
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                identity, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame == b"receiver":
                receiver = identity
                continue
            if identity == receiver:  # the receiver acking a frame (the ceilings): read, as irqbus reads a guest's ack
                if held is not None:
                    sock.send_multipart([receiver, held])
                    held = None
                else:
                    outstanding = False
                continue
            if receiver is not None:
                if outstanding:
                    held = frame
                else:
                    sock.send_multipart([receiver, frame])
                    outstanding = hold
            sock.send_multipart([identity, b"ack"])
    sock.close(0)
    if mode == INSECURE:  # under CURVE the ZAP thread still holds the context; the process ends here anyway
        ctx.term()


def relay_receiver(endpoint: str, mode: str, keys: str, ready: Any, stop: Any, results: Any, ack: bool = False) -> None:
    """`ack`: a ceiling's receiver, which sends each frame's ack back to the relay."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    security_of(mode, keys, GUEST_KEY).secure_client(sock, Server.IRQBUS)
    sock.connect(endpoint)
    sock.send(b"receiver")
    ready.set()
    seen: dict[int, float] = {}
    while not stop.is_set():
        if sock.poll(100):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic()
                seen[msgpack.unpackb(frame)["i"]] = now
                if ack:
                    sock.send(b"ack")
    results.put(seen)
    sock.close(0)
    ctx.term()


class RelayDevice:
    def __init__(self, endpoint: str, mode: str, keys: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        security_of(mode, keys, DEVICE_KEY).secure_client(self.sock, Server.IRQBUS)
        self.sock.connect(endpoint)
        self.i = 0
        self.waited: set[int] = set()  # a relay delivers every frame at once

    def raise_once(self) -> int:
        self.i += 1
        self.sock.send(msgpack.packb({"i": self.i, "op": "raise"}))
        self.sock.recv()
        return self.i

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --- irqbus: the real bus, the real guest attachment ----------------------------------------------


def guest_process(endpoint: str, mode: str, keys: str, spec: str, ready: Any, stop: Any, results: Any, profile: str | None = None) -> None:
    import structlog

    from guest.drivers import parse_device
    from guest.interrupts import IrqbusAttachment
    from guest.irq import IrqReturn
    from wire import logsetup, security

    logsetup.configure("warning", "bench-guest")
    security.configure(security_of(mode, keys, GUEST_KEY))  # as `guest run` would: its guest key
    stages = profile_guest() if profile else None
    attachment = IrqbusAttachment(endpoint, [parse_device(spec)], structlog.get_logger())
    driver = attachment.link.drivers[0]
    seen: dict[int, float] = {}
    original = driver.handler

    def timed(irq: int, dev_id: Any) -> IrqReturn:
        now = time.monotonic()
        if stages is not None:
            stages.stamp("handler", int(now * 1e9))
        ret = original(irq, dev_id)
        if ret == IrqReturn.HANDLED:
            seen[driver.claimed_gen] = now
        return ret

    driver.handler = timed  # type: ignore[method-assign]
    attachment.started(GUEST_DOMID, GUEST_NAME, time.monotonic(), lambda name: None)
    give_up = time.monotonic() + 30
    while not attachment.attached and time.monotonic() < give_up:  # a loaded host: irqbus may take a while to come up
        time.sleep(0.05)
        attachment.tick(time.monotonic())
    ready.set()
    poller = zmq.Poller()
    poller.register(attachment.socket, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            attachment.on_readable(time.monotonic())
    results.put(seen)
    attachment.close()
    if stages is not None:
        stages.dump(profile)


def profile_guest() -> Any:
    """The guest's stages: decoding the event, genirq up to the handler, the ack it posts."""
    from guest.irqlink import IrqLink
    from irqbus.stages import StageClock
    from wire import envelope
    from wire.client import RpcClient

    stages = StageClock()
    stages.wrap(envelope, "decode_incoming", "guest decode", begin=True)

    def gen_of(result: Any, args: tuple[Any, ...]) -> None:
        status = args[1].get("status") if isinstance(args[1], dict) else None
        if status:
            stages.note(gen=max(status.values()))

    stages.wrap(IrqLink, "on_irq", "guest genirq + handler", after=gen_of)
    stages.wrap(RpcClient, "post", "guest post ack", stamp_end="acked", after=lambda seq, args: stages.note(ack_seq=seq))
    return stages


class IrqbusDevice:
    def __init__(self, endpoint: str, mode: str, keys: str, attach: dict[str, Any], profile: bool = False) -> None:
        from wire.client import RpcClient

        self.client = RpcClient(endpoint, server=Server.IRQBUS, security=security_of(mode, keys, DEVICE_KEY), timeout=5.0)
        self.client.call("attach_device", {"guest": "bench", "device": "bench0", **attach})
        self.target = {"guest": "bench", "device": "bench0"}
        self.trace: dict[int, dict[str, int]] | None = {} if profile else None  # gen -> seq and instants (ns)
        self.waited: set[int] = set()  # raises irqbus latched rather than delivered (the line in service)
        if profile:
            send = self.client._send

            def timed_send(frame: bytes) -> None:
                self._sending = time.monotonic_ns()
                send(frame)
                self._sent = time.monotonic_ns()

            self.client._send = timed_send  # type: ignore[method-assign]

    def raise_once(self) -> int:
        result = self.client.call("raise", self.target)
        gen = int(result["gen"])
        if not result.get("delivered"):
            self.waited.add(gen)
        if self.trace is not None:
            self.trace[gen] = {"seq": self.client.last_seq, "sending": self._sending, "sent": self._sent, "replied": time.monotonic_ns()}
        return gen

    def close(self) -> None:
        self.client.close()


# --- the devices take turns -----------------------------------------------------------------------


def device_process(endpoint: str, mode: str, keys: str, attach: dict[str, Any] | None, commands: Any, results: Any, profile: str | None = None) -> None:
    """Raise on command: ("latency", n, period) one at a time, spaced; ("throughput", seconds)
    back to back; ("stop",). `profile`: where an irqbus device writes its stage instants."""
    device: RelayDevice | IrqbusDevice = RelayDevice(endpoint, mode, keys) if attach is None else IrqbusDevice(endpoint, mode, keys, attach, profile is not None)
    time.sleep(0.3)
    while True:
        command = commands.get()
        if command[0] == "latency":
            _, n, period = command
            sent: dict[int, float] = {}
            start = time.monotonic()
            for k in range(n):
                t = time.monotonic()  # before building the message, on both sides
                sent[device.raise_once()] = t
                _sleep_until(start + (k + 1) * period)
            results.put((sent, [i for i in sent if i in device.waited]))
        elif command[0] == "throughput":
            t0 = time.monotonic()
            first = last = device.raise_once()
            while time.monotonic() - t0 < command[1]:
                last = device.raise_once()
            results.put((first, last, time.monotonic() - t0))
        else:
            break
    device.close()
    if profile is not None and isinstance(device, IrqbusDevice):
        Path(profile).write_text(json.dumps(device.trace))


def _wait_for(path: Path, seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < give_up:
        time.sleep(0.05)
    time.sleep(0.1)


def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


@dataclass
class Side:
    """One setup (relay or irqbus, in one mode) with its device, and what its device sent so far."""

    name: str
    mode: str
    commands: Any
    results: Any
    device: Any
    sent: dict[int, float] = field(default_factory=dict)
    block_sent: list[dict[int, float]] = field(default_factory=list)
    waited: set[int] = field(default_factory=set)  # samples whose raise waited for the line's EOI
    throughput: list[tuple[int, int, float]] = field(default_factory=list)

    def latency_block(self, n: int, period: float) -> None:
        self.commands.put(("latency", n, period))
        block, waited = self.results.get(timeout=600)
        self.waited.update(waited)
        self.sent.update(block)
        self.block_sent.append(block)

    def throughput_block(self, seconds: float) -> None:
        self.commands.put(("throughput", seconds))
        self.throughput.append(self.results.get(timeout=600))


# --- measuring ------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(sent: dict[int, float], seen: dict[int, float]) -> list[float]:
    return [(seen[i] - t) * 1e6 for i, t in sent.items() if i in seen]


def rate(side: Side, seen: dict[int, float]) -> float:
    """Raises per second whose handler saw them, over the side's throughput blocks."""
    delivered = sum(sum(1 for i in range(first, last + 1) if i in seen) for first, last, _ in side.throughput)
    return delivered / sum(took for _, _, took in side.throughput)


def summarise(side: Side, seen: dict[int, float]) -> dict[str, float]:
    values = latencies(side.sent, seen)
    at_once = [(seen[i] - t) * 1e6 for i, t in side.sent.items() if i in seen and i not in side.waited]
    return {
        "p50": statistics.median(values),
        "p99": _percentile(values, 0.99),
        "unseen": len(side.sent) - len(values),
        "rate": rate(side, seen),
        "waited": len(values) - len(at_once),
        "p50 at once": statistics.median(at_once) if at_once else float("nan"),
    }


@dataclass
class Measured:
    """One path in one mode: the relay's figures, irqbus's, the per-block p50 ratios, and the
    ceiling's rate (what the semantics allow with no work: the acked or the held relay)."""

    relay: dict[str, float]
    irqbus: dict[str, float]
    blocks: list[float]
    ceiling_rate: float
    sent: dict[int, float] = field(default_factory=dict)  # the irqbus side's latency samples (gen -> sent), for --profile


def measure(tmp: Path, args: argparse.Namespace, name: str) -> dict[str, Measured]:
    """One path, every mode's relay and irqbus taking turns; each mode's figures."""
    spec, attach = PATHS[name]
    keys = str(tmp / "keys")
    stop = mp.Event()
    procs: list[mp.Process] = []
    sides: list[Side] = []
    buses: list[subprocess.Popen[bytes]] = []
    seen_queues: dict[tuple[str, str], Any] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        ready: list[Any] = []
        for mode in args.modes:
            relay_ep, bus_ep = f"ipc://{tmp}/{mode}-relay", f"ipc://{tmp}/{mode}-irqbus"
            flags = ["--keys", keys] if mode == CURVE else ["--insecure"]
            if args.profile:
                flags += ["--profile", str(tmp / f"{mode}-irqbus-stages.json")]
            buses.append(subprocess.Popen(
                [sys.executable, "-m", "irqbus", "serve", "--endpoint", bus_ep, "--log-level", "warning", *flags],
                cwd=REPO, stderr=subprocess.DEVNULL, env=env,
            ))
            seen_queues[mode, "relay"], seen_queues[mode, "irqbus"] = mp.Queue(), mp.Queue()
            relay_ready = mp.Event()
            procs.append(mp.Process(target=relay, args=(relay_ep, mode, keys, relay_ready, stop)))
            procs[-1].start()
            relay_ready.wait(10)
            ready.append(mp.Event())
            procs.append(mp.Process(target=relay_receiver, args=(relay_ep, mode, keys, ready[-1], stop, seen_queues[mode, "relay"])))
            procs[-1].start()
            ceiling_ep = f"ipc://{tmp}/{mode}-ceiling"
            seen_queues[mode, "ceiling"] = mp.Queue()
            relay_ready = mp.Event()
            procs.append(mp.Process(target=relay, args=(ceiling_ep, mode, keys, relay_ready, stop, name in HELD_UNTIL_EOI)))
            procs[-1].start()
            relay_ready.wait(10)
            ready.append(mp.Event())
            procs.append(mp.Process(target=relay_receiver, args=(ceiling_ep, mode, keys, ready[-1], stop, seen_queues[mode, "ceiling"], True)))
            procs[-1].start()
        for mode in args.modes:  # irqbus is up once it bound its socket (seconds on a loaded host)
            _wait_for(Path(f"{tmp}/{mode}-irqbus"), 30)
        for mode in args.modes:
            bus_ep = f"ipc://{tmp}/{mode}-irqbus"
            if mode == CURVE:
                announce_owner(bus_ep, keys)
            ready.append(mp.Event())
            procs.append(mp.Process(target=guest_process, args=(bus_ep, mode, keys, spec, ready[-1], stop, seen_queues[mode, "irqbus"],
                                                                  str(tmp / f"{mode}-guest-stages.json") if args.profile else None)))
            procs[-1].start()
        for event in ready:
            event.wait(20)
        for mode in args.modes:
            for side_name, side_attach in (("relay", None), ("irqbus", attach), ("ceiling", None)):
                commands, results = mp.Queue(), mp.Queue()
                device = mp.Process(target=device_process, args=(f"ipc://{tmp}/{mode}-{side_name}", mode, keys, side_attach, commands, results,
                                                                         str(tmp / f"{mode}-device-stages.json") if args.profile and side_attach else None))
                device.start()
                procs.append(device)
                sides.append(Side(side_name, mode, commands, results, device))
        block = max(1, args.samples // args.rounds)
        timed = [side for side in sides if side.name != "ceiling"]  # its latency is the relay's: only its rate is new
        for r in range(args.rounds):
            for side in timed if r % 2 == 0 else timed[::-1]:  # neither always goes first
                side.latency_block(block, args.period_ms / 1000)
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                side.throughput_block(args.seconds / args.rounds)
        for side in sides:
            side.commands.put(("stop",))
            side.device.join(10)
        time.sleep(0.3)  # the last raises reach their handlers
        stop.set()
        seen = {key: q.get(timeout=60) for key, q in seen_queues.items()}
        measured = {}
        for mode in args.modes:
            base, bus_side, ceiling = [s for s in sides if s.mode == mode]
            seen_relay, seen_guest = seen[mode, "relay"], seen[mode, "irqbus"]
            block_ratios = [
                statistics.median(latencies(b, seen_guest)) / statistics.median(latencies(a, seen_relay))
                for a, b in zip(base.block_sent, bus_side.block_sent)
                if latencies(a, seen_relay) and latencies(b, seen_guest)
            ]
            measured[mode] = Measured(summarise(base, seen_relay), summarise(bus_side, seen_guest), block_ratios,
                                      rate(ceiling, seen[mode, "ceiling"]), dict(bus_side.sent))
        return measured
    finally:
        stop.set()
        for side in sides:
            side.commands.put(("stop",))
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        for bus in buses:
            bus.terminate()
        for bus in buses:
            try:
                bus.wait(10)
            except subprocess.TimeoutExpired:
                bus.kill()
                bus.wait()


# --- --profile: where the time goes -------------------------------------------------------------

IRQBUS_BEFORE_SEND = ("irqbus recv", "irqbus decode", "irqbus replay verdict", "irqbus validate args", "irqbus gate/rights",
                      "irqbus machine/chip model", "irqbus encode event", "irqbus execute (rest)", "irqbus send to guest")


def stage_rows(tmp: Path, mode: str, sent: dict[int, float]) -> list[tuple[str, list[float]]]:
    """Each stage of the latency samples, device send to guest handler and then the way back,
    from the three processes' records joined on the raise's seq (irqbus) and generation (guest)."""
    device = {int(gen): trace for gen, trace in json.loads((tmp / f"{mode}-device-stages.json").read_text()).items()}
    bus_records = json.loads((tmp / f"{mode}-irqbus-stages.json").read_text())
    raises = {r["seq"]: r for r in bus_records if r.get("op") == "raise"}
    chips = {r["seq"]: r for r in bus_records if r.get("op") == "chip"}
    guest = {r["gen"]: r for r in json.loads((tmp / f"{mode}-guest-stages.json").read_text()) if "gen" in r and "handler" in r["stamps"]}
    rows: dict[str, list[float]] = {}

    def add(name: str, ns: float) -> None:
        rows.setdefault(name, []).append(ns / 1000)

    for gen, t0 in sent.items():
        t0_ns = t0 * 1e9
        d = device.get(gen)
        b = raises.get(d["seq"]) if d else None
        g = guest.get(gen)
        if d is None or b is None or g is None:
            continue
        bs, gs = b["stamps"], g["stamps"]
        if "sent to guest" not in bs:
            continue
        add("device: build request + send", d["sent"] - t0_ns)
        add("hop: device -> irqbus (wake, poll)", bs["begin"] - d["sent"])
        before = 0
        for stage in IRQBUS_BEFORE_SEND:
            ns = b["stages"].get(stage, 0)
            before += ns
            add(stage, ns)
        add("irqbus other (shell) before send", bs["sent to guest"] - bs["begin"] - before)
        add("hop: irqbus -> guest (wake, recv)", gs["begin"] - bs["sent to guest"])
        add("guest decode", g["stages"]["guest decode"])
        add("guest genirq up to the handler", gs["handler"] - gs["begin"] - g["stages"]["guest decode"])
        add("= device send -> handler (the latency)", gs["handler"] - t0_ns)
        add("after: irqbus encode reply + record", b["stages"].get("irqbus encode reply + record", 0))
        add("after: irqbus send reply to device", b["stages"].get("irqbus send reply", 0))
        add("after: hop irqbus reply -> device", d["replied"] - bs.get("replied", d["replied"]))
        add("after: irqbus whole raise (recv..reply)", bs["done"] - bs["begin"])
        add("after: guest rest of genirq + post ack", gs.get("acked", gs["handler"]) - gs["handler"])
        c = chips.get(g.get("ack_seq"))
        if c is not None:
            add("after: irqbus whole ack (chip)", c["stamps"]["done"] - c["stamps"]["begin"])
            add("after: irqbus ack's machine/chip model", c["stages"].get("irqbus machine/chip model", 0))
    return list(rows.items())


def print_profile(name: str, mode: str, rows: list[tuple[str, list[float]]]) -> None:
    print(f"\n  stages of irqbus {name} ({mode}), per interrupt (us; the timers add ~1 us each)")
    print(f"  {'stage':<44} {'p50':>7} {'mean':>7}   samples")
    for stage, values in rows:
        print(f"  {stage:<44} {statistics.median(values):>7.1f} {statistics.fmean(values):>7.1f}   {len(values)}")


# --- --busy: a stated background load -------------------------------------------------------------


def start_load(spec: str) -> tuple[list[subprocess.Popen[bytes]], str]:
    """`spec`: N (N CPU hogs) -- stress-ng's when installed (`stress-ng --cpu N`), else N Python spinners."""
    n = int(spec)
    if shutil.which("stress-ng"):
        cmd = ["stress-ng", "--cpu", str(n), "--quiet"]
        return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)], " ".join(cmd)
    spin = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)], f"{n} x python -c '{spin}'"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def modes(text: str) -> list[str]:
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen) or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(MODES)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000, help="latency samples per side and path")
    parser.add_argument("--rounds", type=int, default=100, help="turns each side takes; samples and seconds are split among them")
    parser.add_argument("--period-ms", type=float, default=1.0, help="spacing of latency samples")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput run per side and path")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ", ".join(PATHS))
    parser.add_argument("--modes", type=modes, default=list(MODES), help="the security modes that take turns (default: insecure,curve)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where each path's time goes, stage by stage (irqbus serve --profile and timers in "
                             "the bench's guest and device; the timers add a little to the irqbus figures)")
    parser.add_argument("--busy", metavar="N", nargs="?", const="2", default=None,
                        help="run under a stated background load: N CPU hogs (stress-ng --cpu N if installed, else Python "
                             "spinners); default N: 2")
    args = parser.parse_args()
    load: list[subprocess.Popen[bytes]] = []
    if args.busy is not None:
        load, what = start_load(args.busy)
        print(f"background load: {what}")
        time.sleep(1.0)
    try:
        return run(args)
    finally:
        for proc in load:
            proc.terminate()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    print(f"load average at start: {load_average()}")
    print(f"{'path':<28} {'mode':<9} {'p50 us':>8} {'p99 us':>8} {'unseen':>6} {'irq/s':>8}   {'p50 x':>6} {'p99 x':>6} {'rate x':>6}   per-block p50 x")
    results: list[tuple[str, str, Measured]] = []
    with tempfile.TemporaryDirectory(prefix="bn-ib-") as tmp:
        provision(Path(tmp) / "keys")
        for name in [p.strip() for p in args.paths.split(",") if p.strip()]:
            by_mode = measure(Path(tmp), args, name)
            for mode, m in by_mode.items():
                base, bus = m.relay, m.irqbus
                r50, r99, rr = bus["p50"] / base["p50"], bus["p99"] / base["p99"], bus["rate"] / base["rate"]
                spread = f"{min(m.blocks):.2f} / {statistics.median(m.blocks):.2f} / {max(m.blocks):.2f} (min/median/max)" if m.blocks else ""
                print(f"{'raw relay (baseline)':<28} {mode:<9} {base['p50']:>8.0f} {base['p99']:>8.0f} {base['unseen']:>6.0f} {base['rate']:>8.0f}")
                print(f"{'irqbus ' + name:<28} {mode:<9} {bus['p50']:>8.0f} {bus['p99']:>8.0f} {bus['unseen']:>6.0f} {bus['rate']:>8.0f}   "
                      f"{r50:>6.2f} {r99:>6.2f} {rr:>6.2f}   {spread}")
                label = "held relay (ceiling)" if name in HELD_UNTIL_EOI else "acked relay (ceiling)"
                print(f"{label:<28} {mode:<9} {'-':>8} {'-':>8} {'-':>6} {m.ceiling_rate:>8.0f}   "
                      f"{'':>6} {'':>6} {m.ceiling_rate / base['rate']:>6.2f}")
                results.append((name, mode, m))
            if args.profile:
                for mode, m in by_mode.items():
                    print_profile(name, mode, stage_rows(Path(tmp), mode, m.sent))
    print()
    print(f"{'mode':<9} {'path':<20} {'relay p50':>9} {'irqbus p50':>10} {'p50 x':>6} {'p99 x':>6} {'rate x':>6} {'ceil x':>6} {'of ceil':>7}   "
          f"goal ({P50_GOAL}/{P99_GOAL}/{RATE_GOAL})   floor ({P50_FLOOR}/{P99_FLOOR})")  # 3 decimals: 1.304 is not met
    for name, mode, m in sorted(results, key=lambda row: args.modes.index(row[1])):
        r50, r99, rr = m.irqbus["p50"] / m.relay["p50"], m.irqbus["p99"] / m.relay["p99"], m.irqbus["rate"] / m.relay["rate"]
        goal = r50 <= P50_GOAL and r99 <= P99_GOAL and rr >= RATE_GOAL
        floor = r50 <= P50_FLOOR and r99 <= P99_FLOOR
        print(f"{mode:<9} {name:<20} {m.relay['p50']:>9.0f} {m.irqbus['p50']:>10.0f} {r50:>6.3f} {r99:>6.3f} {rr:>6.3f} "
              f"{m.ceiling_rate / m.relay['rate']:>6.3f} {m.irqbus['rate'] / m.ceiling_rate if m.ceiling_rate else float('nan'):>7.3f}   "
              f"{'met' if goal else 'NOT met':<19}   {'met' if floor else 'NOT met'}")
        if m.irqbus["waited"]:
            print(f"{'':<9} {'':<20} {m.irqbus['waited']:.0f} of {len(m.sent)} samples waited for the line's EOI; "
                  f"the rest: p50 {m.irqbus['p50 at once']:.0f} us, {m.irqbus['p50 at once'] / m.relay['p50']:.3f}x")
    for mode in args.modes:
        rows = [m for _, md, m in results if md == mode]
        goal = all(m.irqbus["p50"] <= P50_GOAL * m.relay["p50"] and m.irqbus["p99"] <= P99_GOAL * m.relay["p99"]
                   and m.irqbus["rate"] >= RATE_GOAL * m.relay["rate"] for m in rows)
        floor = all(m.irqbus["p50"] <= P50_FLOOR * m.relay["p50"] and m.irqbus["p99"] <= P99_FLOOR * m.relay["p99"] for m in rows)
        print(f"{mode}: goal (p50 <= {P50_GOAL}x, p99 <= {P99_GOAL}x, rate >= {RATE_GOAL}x the relay, every path):",
              "met" if goal else "NOT met", f"; floor (p50 <= {P50_FLOOR}x, p99 <= {P99_FLOOR}x):", "met" if floor else "NOT met")
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
