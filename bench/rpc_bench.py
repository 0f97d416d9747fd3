"""Reservation RPC throughput: `hypervisor serve` against a raw pyzmq ROUTER echo server.

Both servers are real processes; the same client processes, with the same loop (encode a
request, send, receive, decode the reply), drive each in turn, so the ratio isolates what the
hypervisor's handling costs over moving the bytes. The machines are shared and noisy: read the
ratio, not the absolute figures.

    python bench/rpc_bench.py [--clients 4] [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

REPO = Path(__file__).resolve().parent.parent
BATCH = 64


def echo_server(endpoint: str, ready: mp.Event, stop: mp.Event) -> None:
    """The baseline: the cheapest possible ROUTER server, returning each frame as it came."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            sock.send_multipart(sock.recv_multipart())
    sock.close(0)
    ctx.term()


def client(endpoint: str, index: int, register: bool, start_at: float, seconds: float, results: mp.Queue) -> None:
    """Alternate increase(64) and decrease(what was granted), as a ballooning guest would."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    cid = f"bench-{os.getpid()}"
    seq = 0

    def call(op: str, args: dict) -> dict:
        nonlocal seq
        seq += 1
        sock.send(msgpack.packb({"v": 1, "op": op, "seq": seq, "client": cid, "args": args}))
        reply = msgpack.unpackb(sock.recv())
        return reply

    if register:
        call("register", {"name": f"bench{index}", "memory_pages": 1024, "max_pages": 1 << 20})
    extents = [[0, BATCH]]
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    deadline = start_at + seconds
    while time.time() < deadline:
        reply = call("increase_reservation", {"nr_pages": BATCH})
        if register:
            extents = reply["result"]["extents"]
        call("decrease_reservation", {"extents": extents})
        done += 2
    results.put(done)
    sock.close()
    ctx.term()


def drive(endpoint: str, clients: int, seconds: float, register: bool) -> float:
    results: mp.Queue = mp.Queue()
    start_at = time.time() + 1.0
    procs = [mp.Process(target=client, args=(endpoint, i, register, start_at, seconds, results)) for i in range(clients)]
    for p in procs:
        p.start()
    total = sum(results.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(10)
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bn-bench-"))

    echo_ep = f"ipc://{tmp}/echo"
    ready, stop = mp.Event(), mp.Event()
    echo = mp.Process(target=echo_server, args=(echo_ep, ready, stop))
    echo.start()
    ready.wait(10)
    try:
        baseline = drive(echo_ep, args.clients, args.seconds, register=False)
    finally:
        stop.set()
        echo.join(10)

    guest_ep, admin_ep = f"ipc://{tmp}/hv", f"ipc://{tmp}/admin"
    hv = subprocess.Popen(
        [sys.executable, "-m", "hypervisor", "serve", "--memory", "4g", "--guest-endpoint", guest_ep,
         "--admin-endpoint", admin_ep, "--log-level", "info"],
        cwd=REPO, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        time.sleep(1.0)
        measured = drive(guest_ep, args.clients, args.seconds, register=True)
        audit = subprocess.run([sys.executable, "-m", "hypervisor", "audit", "--admin-endpoint", admin_ep],
                               cwd=REPO, capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        hv.terminate()
        hv.wait(10)

    print(f"clients                  {args.clients}")
    print(f"raw echo baseline        {baseline:,.0f} req/s")
    print(f"hypervisor reservation   {measured:,.0f} req/s")
    print(f"ratio (goal >= 0.5)      {measured / baseline:.2f}")
    print(f"audit after the run      {audit.stdout.strip() or audit.stderr.strip()}")
    return 0 if audit.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
