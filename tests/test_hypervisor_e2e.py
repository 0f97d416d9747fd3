"""`hypervisor serve` as a real process, driven by the toolstack CLI and by a raw pyzmq client
written from docs/protocol.md alone."""

from __future__ import annotations

import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from tests.processes import secure, REPO, Host

pytestmark = pytest.mark.timeout(60)


class RawClient:
    """Speaks the protocol with nothing but pyzmq and msgpack, as a C client would."""

    def __init__(self, endpoint: str, client: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure(self.sock, endpoint).connect(endpoint)
        self.client, self.seq = client, 0

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def send_raw(self, *frames: bytes) -> dict:
        self.sock.send_multipart(list(frames))
        while True:
            assert self.sock.poll(5000), "no reply within 5 s"
            body = msgpack.unpackb(self.sock.recv_multipart()[-1])
            if "event" not in body:  # pushed events (a new target) may come before the reply
                return body

    def call(self, op: str, seq: int | None = None, **args) -> dict:
        if seq is None:
            self.seq += 1
            seq = self.seq
        reply = self.send_raw(msgpack.packb({"v": 1, "op": op, "seq": seq, "client": self.client, "args": args}))
        assert reply["seq"] == seq
        return reply


@pytest.fixture
def host(procs):
    return Host(procs, memory="64m")


@pytest.fixture
def raw(host):
    clients = []

    def make(endpoint: str, client: str) -> RawClient:
        clients.append(RawClient(endpoint, client))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_toolstack_commands_against_a_running_hypervisor(host, raw):
    info = host.json("info")
    assert info == {"total_pages": 16384, "free_pages": 16384, "allocated_pages": 0, "domains": 0}
    g = raw(host.guest_endpoint, "guest-web")
    reply = g.call("register", name="web", memory_pages=4096, max_pages=8192)
    assert reply["ok"] and reply["result"]["domid"] == 1

    table = host.tool("list")
    assert table.returncode == 0
    assert "web" in table.stdout and "16" in table.stdout  # 4096 pages = 16 MiB
    (row,) = host.json("list")
    assert (row["current_pages"], row["target_pages"], row["max_pages"]) == (4096, 4096, 8192)
    snap = host.json("snapshot")
    assert (snap["total_pages"], snap["free_pages"], [d["name"] for d in snap["domains"]]) == (16384, 12288, ["web"])
    assert "12288 + 4096 = 16384 of 16384 pages" in host.tool("snapshot").stdout

    assert host.tool("mem-set", "web", "24m").returncode == 0
    assert host.domains()["web"]["target_pages"] == 6144
    assert g.call("get_target")["result"]["target_pages"] == 6144
    assert host.tool("mem-set", "1", "20480").returncode == 0  # a domid, and a bare number is KiB
    assert host.domains()["web"]["target_pages"] == 5120
    assert host.tool("mem-max", "web", "30m").returncode == 0
    assert host.domains()["web"]["max_pages"] == 7680
    # xl mem-max is libxl_domain_setmaxmem: refused below the target (20m), with libxl's reason
    refused = host.tool("mem-max", "web", "16m")
    assert refused.returncode == 1 and "memory_static_max must be greater than or equal to memory_dynamic_max" in refused.stderr
    assert host.domains()["web"]["max_pages"] == 7680
    # the bare XEN_DOMCTL_max_mem takes it, below the current 16 MiB too; the target stays
    assert host.tool("mem-max", "--domctl", "web", "8m").returncode == 0
    assert (host.domains()["web"]["max_pages"], host.domains()["web"]["target_pages"]) == (2048, 5120)
    assert host.tool("mem-max", "--domctl", "web", "30m").returncode == 0

    audit = host.tool("audit")
    assert audit.returncode == 0 and "balance" in audit.stdout
    assert host.tool("destroy", "web").returncode == 0
    assert host.json("list") == [] and host.json("info")["free_pages"] == 16384


def test_the_guest_is_told_its_new_target(host, raw):
    g = raw(host.guest_endpoint, "guest-db")
    g.call("register", name="db", memory_pages=100, max_pages=1000)
    assert host.tool("mem-set", "db", "2m").returncode == 0
    assert g.sock.poll(5000)
    event = msgpack.unpackb(g.sock.recv())
    assert event == {"v": 1, "event": "target", "args": {"target_pages": 512, "max_pages": 1000, "target_writes": 1}}


@pytest.mark.parametrize(
    "args, message",
    [
        (("mem-set", "nosuch", "1m"), "ESRCH"),
        (("mem-set", "web", "lots"), "invalid size"),
        (("mem-set", "web", "1t"), "EINVAL"),
        (("mem-max", "web", "1k"), "EINVAL"),
        (("destroy", "99"), "ESRCH"),
    ],
)
def test_wrong_domain_or_size_fails_clearly(host, raw, args, message):
    raw(host.guest_endpoint, "g").call("register", name="web", memory_pages=100, max_pages=200)
    result = host.tool(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert host.domains()["web"]["target_pages"] == 100


def test_client_commands_fail_fast_when_no_hypervisor_answers(procs):
    start = time.monotonic()
    result = procs.run("hypervisor", "list", "--admin-endpoint", procs.ipc("nobody-here"), "--timeout", "0.5")
    assert result.returncode != 0 and "no hypervisor answered" in result.stderr
    assert time.monotonic() - start < 10


def test_bad_input_over_the_wire_is_answered_and_the_server_keeps_serving(host, raw):
    g = raw(host.guest_endpoint, "guest-a")
    assert g.call("register", name="a", memory_pages=1000, max_pages=2000)["ok"]
    other = raw(host.guest_endpoint, "guest-b")
    b_extents = other.call("register", name="b", memory_pages=1000, max_pages=2000)["result"]["extents"]
    before = host.json("info")

    assert g.send_raw(b"\xc1 not msgpack")["error"] == "EPROTO"
    assert g.send_raw(msgpack.packb([1, 2]))["error"] == "EPROTO"
    assert g.send_raw(b"a", b"b")["error"] == "EPROTO"  # one frame per message
    assert g.send_raw(b"\x00" * ((1 << 20) + 1))["error"] == "EMSGSIZE"
    assert g.call("increase_reservation", nr_pages="many")["error"] == "EINVAL"
    assert g.call("increase_reservation", nr_pages=-3)["error"] == "EINVAL"
    assert g.call("increase_reservation", nr_pages=0)["error"] == "EINVAL"
    assert g.call("increase_reservation", nr_pages=2**64 - 1)["error"] == "EINVAL"
    assert g.call("decrease_reservation", extents=[b_extents[0][:1] + [1]])["error"] == "EPERM"
    assert g.call("summon_pages")["error"] == "ENOSYS"
    assert g.call("mem_set", domain="b", target_pages=1)["error"] == "EPERM"

    assert host.json("info") == before
    assert host.tool("audit").returncode == 0
    assert g.call("increase_reservation", nr_pages=5)["result"]["granted"] == 5
    warnings = [e for e in host.procs.log_events("hypervisor") if e.get("event") == "request refused"]
    assert len(warnings) >= 10 and all("error" in e for e in warnings)


def test_a_retried_request_is_not_executed_twice(host, raw):
    g = raw(host.guest_endpoint, "guest-r")
    g.call("register", name="r", memory_pages=10, max_pages=1000)
    first = g.call("increase_reservation", seq=77, nr_pages=100)
    again = g.call("increase_reservation", seq=77, nr_pages=100)
    assert first == again
    assert host.domains()["r"]["current_pages"] == 110


def test_a_req_socket_client_is_served_too(host):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, host.admin_endpoint).connect(host.admin_endpoint)
    try:
        sock.send(msgpack.packb({"v": 1, "op": "info", "seq": 1, "client": "req-client", "args": {}}))
        assert sock.poll(5000)
        assert msgpack.unpackb(sock.recv())["result"]["total_pages"] == 16384
    finally:
        sock.close()
        ctx.term()


def test_sigterm_stops_the_hypervisor_cleanly(host):
    assert host.procs.stop(host.proc) == 0
    assert any(e.get("event") == "stopped" for e in host.procs.log_events("hypervisor"))


def test_console_script_and_module_entry_points_agree():
    for cmd in ([sys.executable, "-m", "hypervisor", "--help"], [sys.executable, "-m", "hypervisor", "serve", "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        assert result.returncode == 0 and "usage" in result.stdout
