"""What the hypervisor's handling of one reservation request costs, in-process: no sockets,
no other processes, so that a profiler or callgrind sees only that.

rpc_bench.py measures the same thing end to end, but on a shared machine its ratio moves by
a third from run to run. Here the service's per-message step (`_serve_one`: handle, route
bookkeeping; then the turn's `_commit` and `_flush`: the log call, the reply's send, as a turn
of one request) runs on rpc_bench's workload -- guests that
alternate increase_reservation(64) and decrease_reservation of what was granted -- against
the echo server's step (send the request back), with the client's side (pack the request,
unpack the reply) the same in both. The difference is the hypervisor's cost per request.

    python bench/handle_cost.py [--requests 20000] [--mode both|hypervisor|echo] [--profile] [--state]

--state gives the hypervisor a journal (hypervisor/journal.py) in a temporary directory: every
request is then a turn with its own commit, the worst case of group commit.

Instruction counts are repeatable where times are not: run one mode under callgrind at two
request counts and divide the difference by the difference in requests, e.g.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/handle_cost.py --mode hypervisor --requests 2000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/handle_cost.py --mode hypervisor --requests 12000

"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypervisor.dispatch import Hypervisor  # noqa: E402  (after the path: run from anywhere)
from hypervisor.journal import Journal  # noqa: E402
from hypervisor.service import HypervisorService  # noqa: E402
from wire import logsetup, multipart  # noqa: E402
from wire.keys import KeyDir, Role  # noqa: E402
from wire.operations import Endpoint  # noqa: E402
from wire.security import Security  # noqa: E402
from wire.sizes import size_to_pages  # noqa: E402

BATCH = 64  # as rpc_bench
CLIENTS = 4


class _Socket:
    """Takes the reply frames, so the loop can read the last one back (both modes alike)."""

    last = b""

    def send(self, frame: bytes, flags: int = 0) -> None:
        self.last = frame


class _Guest:
    def __init__(self, index: int) -> None:
        self.client_id = f"bench-{index}"
        self.identity = f"peer-{index}".encode()
        self.pack = msgpack.Packer().pack
        self.seq = 0
        self.extents: list[list[int]] = [[0, BATCH]]
        self.holding = False

    def frame(self, op: str, args: dict) -> bytes:
        self.seq += 1
        return self.pack({"v": 1, "op": op, "seq": self.seq, "client": self.client_id, "args": args})

    def next_frame(self) -> bytes:
        if self.holding:
            return self.frame("decrease_reservation", {"extents": self.extents})
        return self.frame("increase_reservation", {"nr_pages": BATCH})


def run(mode: str, requests: int, profile: bool = False, state: bool = False) -> float:
    """Seconds per request of `mode`'s loop (client side included)."""
    log = logsetup.configure("info", "hypervisor")  # as `hypervisor serve` in rpc_bench: debug filtered
    with tempfile.TemporaryDirectory(prefix="bn-handle-") as tmp:
        journal = Journal(f"{tmp}/hypervisor.db") if state else None
        hv = journal.start(size_to_pages("4g"), 10.0, 0.0)[0] if journal else Hypervisor(size_to_pages("4g"))
        # its sockets are bound as `hypervisor serve` binds them, CURVE with a key of this run's
        # own (never the user's key directory); the loop then bypasses them
        security = Security.curve(KeyDir(f"{tmp}/keys"), "hypervisor", Role.HYPERVISOR)
        service = HypervisorService(hv, f"ipc://{tmp}/g", f"ipc://{tmp}/a", log, journal=journal, security=security)
        commit, flush = service._commit, service._flush
        sock = _Socket()  # the loop's stand-in for the guest socket
        # the key the guests' connections authenticated with, as `_drain` hands it on (CURVE):
        # the per-message peer lookup and the client scoped by it are part of the cost
        own = service.security.own
        user = own.public.decode() if own is not None else None
        guests, service.guests, service._endpoints = service.guests, sock, {sock: Endpoint.GUEST}
        try:
            clients = [_Guest(i) for i in range(CLIENTS)]
            for i, g in enumerate(clients):
                service._serve_one(sock, g.identity, [g.frame("register", {"name": f"bench{i}", "memory_pages": 1024, "max_pages": 1 << 20})], False, user)
                commit()
                flush()
                if not msgpack.unpackb(sock.last)["ok"]:
                    raise SystemExit(f"register refused: {msgpack.unpackb(sock.last)}")
            serve_one, send = service._serve_one, multipart.send
            hypervisor = mode == "hypervisor"
            profiler = cProfile.Profile() if profile else None
            if profiler:
                profiler.enable()
            t0 = time.perf_counter()
            for k in range(requests):
                g = clients[k % CLIENTS]
                frame = g.next_frame()
                if hypervisor:
                    serve_one(sock, g.identity, [frame], False, user)
                    commit()
                    flush()
                else:
                    send(sock, [g.identity, frame])
                reply = msgpack.unpackb(sock.last)
                if hypervisor and not g.holding:
                    g.extents = reply["result"]["extents"]
                g.holding = not g.holding
            took = time.perf_counter() - t0
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            if hypervisor:
                problems = service.hypervisor.table.audit()
                if problems:
                    raise SystemExit(f"the books do not balance: {problems[:3]}")
        finally:
            service.guests = guests
            service.close()
            if journal is not None:
                journal.close()
    return took / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--mode", choices=["both", "hypervisor", "echo"], default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile the hypervisor loop")
    parser.add_argument("--state", action="store_true", help="the hypervisor with a journal: a commit per request")
    args = parser.parse_args()
    if args.mode != "both":
        per = run(args.mode, args.requests, args.profile, args.state)
        print(f"{args.mode}: {per * 1e6:.2f} us a request")
        return 0
    echo = min(run("echo", args.requests) for _ in range(3))
    hv = min(run("hypervisor", args.requests, args.profile, args.state) for _ in range(3))
    print(f"echo step        {echo * 1e6:6.2f} us a request (client side included)")
    print(f"hypervisor step  {hv * 1e6:6.2f} us a request")
    print(f"handling cost    {(hv - echo) * 1e6:6.2f} us a request ({hv / echo:.2f}x the echo step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
