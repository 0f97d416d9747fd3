"""What one interrupt costs each process in CPU, in-process: no I/O threads, no wakeups, so
that a profiler or callgrind sees only the Python each side runs (issue 15).

irq_bench.py measures the whole path between processes, where a message costs far more in
wakeups than in Python; this isolates the part our code decides. One thread plays the four
parts in turn over inproc sockets, each with its real code: the device (wire.client.RpcClient
`call("raise")`), irqbus's shell and core (`IrqbusService._drain`: the raise, then the guest's
ack), and the guest's attachment (guest/interrupts.py `on_readable`: decode, genirq, the
driver's handler, the ack it posts). The device's figure is its `call` less the other parts,
which run inside it (right after its send).

The baseline, measured in the same run: the raw relay of irq_bench.py, its three parts
(device: pack, send, receive the ack; relay: receive, forward, ack; receiver: receive, unpack).

    python bench/irq_cost.py [--interrupts 20000] [--paths ...] [--profile PART]

Instruction counts are repeatable where times are not: run under callgrind at two counts and
divide the difference by the difference in interrupts, e.g.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/irq_cost.py --paths MSI-X --interrupts 2000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/irq_cost.py --paths MSI-X --interrupts 12000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import structlog
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from guest.drivers import parse_device  # noqa: E402  (after the path: run from anywhere)
from guest.interrupts import IrqbusAttachment  # noqa: E402
from irqbus.dispatch import IrqBus  # noqa: E402
from irqbus.service import IrqbusService  # noqa: E402
from wire import logsetup, security  # noqa: E402
from wire.client import RpcClient  # noqa: E402
from wire.security import Security, Server  # noqa: E402

PATHS = {  # as irq_bench.py: name -> (guest --device spec, attach_device args)
    "i8259 edge pin 5": ("bench0:pin=5:edge", {"pin": 5, "trigger": "edge"}),
    "IOAPIC edge pin 20": ("bench0:pin=20:edge", {"pin": 20, "trigger": "edge"}),
    "IOAPIC level pin 21": ("bench0:pin=21:level", {"pin": 21, "trigger": "level"}),
    "MSI-X": ("bench0:msi", {"msi": True}),
}
PARTS = ("device", "irqbus raise", "guest", "irqbus ack")
ROUNDS = 5  # each figure is the median of this many rounds


class Timed:
    """Seconds spent in each part, and in the parts nested inside the device's call."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(PARTS, 0.0)
        self.inner = 0.0

    def run(self, part: str, step: Callable[[], Any]) -> None:
        start = time.perf_counter()
        step()
        took = time.perf_counter() - start
        self.spent[part] += took
        self.inner += took


def bring_up(endpoint: str, spec: str, attach: dict[str, Any]) -> tuple[IrqbusService, IrqbusAttachment, RpcClient, dict[str, Any]]:
    """irqbus, the guest attached with its driver up, and the device attached: set up while a
    thread serves irqbus (the setup calls block), which then stops."""
    bus = IrqbusService(IrqBus(), endpoint, structlog.get_logger(), security=Security.insecure_mode())
    stop = threading.Event()
    server = threading.Thread(target=bus.serve, args=(stop.is_set,))
    server.start()
    try:
        guest = IrqbusAttachment(endpoint, [parse_device(spec)], structlog.get_logger())
        guest.started(1, "bench", time.monotonic(), lambda name: None)
        if not guest.attached:
            raise SystemExit("the guest did not attach")
        device = RpcClient(endpoint, server=Server.IRQBUS, timeout=5.0)
        target = {"guest": "bench", "device": "bench0"}
        device.call("attach_device", {**target, **attach})
    finally:
        stop.set()
        server.join()
    return bus, guest, device, target


def irqbus_cost(endpoint: str, spec: str, attach: dict[str, Any], n: int) -> dict[str, float]:
    """Microseconds per interrupt in each part, the device's `call` wrapping the rest."""
    bus, guest, device, target = bring_up(endpoint, spec, attach)
    timed = Timed()
    send = device._send

    def send_then_deliver(frame: bytes) -> None:
        send(frame)
        timed.run("irqbus raise", bus._drain)
        timed.run("guest", lambda: guest.on_readable(time.monotonic()))
        timed.run("irqbus ack", bus._drain)

    device._send = send_then_deliver  # type: ignore[method-assign]
    handled = guest.link.delivered
    for _ in range(200):  # warm: every lane and cache as in steady state
        device.call("raise", target)
    timed.spent = dict.fromkeys(PARTS, 0.0)
    start = time.perf_counter()
    timed.inner = 0.0
    for _ in range(n):
        device.call("raise", target)
    whole = time.perf_counter() - start
    timed.spent["device"] = whole - timed.inner
    if guest.link.delivered - handled != n + 200:
        raise SystemExit(f"the guest handled {guest.link.delivered - handled} of {n + 200} interrupts")
    device.close()
    guest.client.close()
    bus.close()
    return {part: s / n * 1e6 for part, s in timed.spent.items()}


def relay_cost(endpoint: str, n: int) -> dict[str, float]:
    """The raw relay's three parts, as irq_bench.py runs them, per message (us)."""
    ctx = zmq.Context.instance()
    relay = ctx.socket(zmq.ROUTER)
    relay.bind(endpoint)
    receiver = ctx.socket(zmq.DEALER)
    receiver.connect(endpoint)
    device = ctx.socket(zmq.DEALER)
    device.connect(endpoint)
    receiver.send(b"receiver")
    receiver_id, _ = relay.recv_multipart()
    spent = {"device": 0.0, "relay": 0.0, "receiver": 0.0}
    for i in range(n + 200):
        if i == 200:
            spent = dict.fromkeys(spent, 0.0)
        t0 = time.perf_counter()
        device.send(msgpack.packb({"i": i, "op": "raise"}))
        t1 = time.perf_counter()
        identity, frame = relay.recv_multipart(zmq.NOBLOCK)
        relay.send_multipart([receiver_id, frame])
        relay.send_multipart([identity, b"ack"])
        t2 = time.perf_counter()
        msgpack.unpackb(receiver.recv())
        t3 = time.perf_counter()
        device.recv()
        t4 = time.perf_counter()
        spent["device"] += (t1 - t0) + (t4 - t3)
        spent["relay"] += t2 - t1
        spent["receiver"] += t3 - t2
    for sock in (relay, receiver, device):
        sock.close(0)
    return {part: s / n * 1e6 for part, s in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interrupts", type=int, default=20000, help="per round; the figure is the median of 5 rounds")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ", ".join(PATHS))
    parser.add_argument("--profile", choices=("all",), help="cProfile one round of each path, the top functions by own time")
    args = parser.parse_args()
    logsetup.configure("warning", "irq-cost")
    security.configure(Security.insecure_mode())
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    relay = [relay_cost(f"inproc://relay-{r}", args.interrupts) for r in range(ROUNDS)]
    relay_total = statistics.median(sum(r.values()) for r in relay)
    print(f"raw relay: {relay_total:.1f} us per message in all  (" +
          ", ".join(f"{k} {statistics.median(r[k] for r in relay):.1f}" for k in relay[0]) + ")")
    print(f"{'path':<22} " + " ".join(f"{p:>13}" for p in PARTS) + f" {'all':>8} {'x relay':>8}")
    for k, name in enumerate(paths):
        spec, attach = PATHS[name]
        rounds = [irqbus_cost(f"inproc://irqbus-{k}-{r}", spec, attach, args.interrupts) for r in range(ROUNDS)]
        parts = {p: statistics.median(r[p] for r in rounds) for p in PARTS}
        total = statistics.median(sum(r.values()) for r in rounds)
        print(f"{name:<22} " + " ".join(f"{parts[p]:>13.1f}" for p in PARTS) + f" {total:>8.1f} {total / relay_total:>8.2f}")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            irqbus_cost(f"inproc://irqbus-{k}-profile", spec, attach, args.interrupts)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
