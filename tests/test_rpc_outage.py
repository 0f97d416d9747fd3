"""RpcClient while its server is away: the same frame again, each wait twice the last up to the
cap (retries without limit only), and one `on_outage` and one `on_back` per outage, not one per
try (issue 12: guests across a hypervisor restart)."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest
import zmq

from wire import envelope, multipart
from wire.security import Security
from wire.client import RpcClient, Unreachable

pytestmark = pytest.mark.timeout(20)


class Server:
    """A ROUTER that ignores the first `deaf` frames it gets and answers the rest."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.bind(endpoint)
        self.frames: list[bytes] = []

    def serve(self, deaf: int, answered: int) -> threading.Thread:
        def run() -> None:
            while len(self.frames) < deaf + answered and self.sock.poll(5000):
                identity, frames, _, _ = multipart.receive_routed(self.sock)
                self.frames.append(frames[0])
                if len(self.frames) > deaf:
                    seq = msgpack.unpackb(frames[0])["seq"]
                    multipart.send(self.sock, [identity, envelope.encode(envelope.ok_reply(seq, {"n": len(self.frames)}))])

        thread = threading.Thread(target=run)
        thread.start()
        return thread


def record_waits(client: RpcClient) -> list[float]:
    """How long the client waits for each attempt's reply, as it sets the deadline."""
    waits: list[float] = []
    real = client._await_reply

    def timed(seq: int, deadline: float):
        waits.append(round(deadline - time.monotonic(), 2))
        return real(seq, deadline)

    client._await_reply = timed
    return waits


@pytest.fixture
def net(tmp_path):
    ctx = zmq.Context()
    server = Server(ctx, f"ipc://{tmp_path}/s")
    yield ctx, server, f"ipc://{tmp_path}/s"
    server.sock.close(0)
    ctx.term()


def test_a_request_retried_without_limit_backs_off_to_the_cap_and_the_outage_is_told_once(net):
    ctx, server, endpoint = net
    told: list[tuple] = []
    client = RpcClient(
        endpoint, server="hypervisor", security=Security.insecure_mode(), context=ctx, timeout=0.05, backoff_cap=0.2,
        on_outage=lambda o: told.append(("gone", o.op, o.seq)), on_back=lambda o, s: told.append(("back", o.op, o.seq, s)),
    )
    waits = record_waits(client)
    try:
        thread = server.serve(deaf=5, answered=1)
        assert client.call("decrease_reservation", {"extents": [[1, 1]]}, retries=-1) == {"n": 6}
        thread.join(5)
        assert len(set(server.frames)) == 1  # the very same frame (client id, seq) every time
        assert waits == [0.05, 0.1, 0.2, 0.2, 0.2, 0.2]  # doubled up to the cap
        assert [t[:3] for t in told] == [("gone", "decrease_reservation", 1), ("back", "decrease_reservation", 1)]
        assert told[1][3] >= 0.7  # the outage's length: the five waits
        assert client.outage is None
    finally:
        client.close()


def test_unanswered_one_shot_requests_make_one_outage_and_have_no_backoff(net):
    ctx, server, endpoint = net
    told: list[str] = []
    client = RpcClient(endpoint, server="hypervisor", security=Security.insecure_mode(), context=ctx, timeout=0.05, backoff_cap=5.0, on_outage=lambda o: told.append(f"gone {o.seq}"),
                       on_back=lambda o, s: told.append(f"back {o.seq}"))
    waits = record_waits(client)
    try:
        thread = server.serve(deaf=3, answered=1)
        for _ in range(3):  # heartbeats: one try each, a new seq each
            with pytest.raises(Unreachable):
                client.call("status", retries=0)
        assert waits == [0.05, 0.05, 0.05]  # the timeout each: backoff is for retries without limit
        assert told == ["gone 1"]
        assert client.call("status", retries=0) == {"n": 4}
        thread.join(5)
        assert told == ["gone 1", "back 1"]
    finally:
        client.close()


def test_a_reply_already_queued_is_taken_even_past_the_deadline(net):
    """A guest stopped (SIGSTOP) while it waited runs again past its deadline: the reply that
    came meanwhile is there, and is no outage."""
    ctx, server, endpoint = net
    told: list[str] = []
    client = RpcClient(endpoint, server="hypervisor", security=Security.insecure_mode(), context=ctx, timeout=0.05, on_outage=lambda o: told.append("gone"))
    try:
        thread = server.serve(deaf=0, answered=1)
        seq = client.post("status")
        thread.join(5)
        assert client.socket.poll(2000)  # the reply is queued
        assert client._await_reply(seq, time.monotonic() - 1.0)["result"] == {"n": 1}
        assert told == []
    finally:
        client.close()

