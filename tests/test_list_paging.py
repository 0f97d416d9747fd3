"""`list` pages like `irqbus show`: a full host never makes a reply over the frame limit, and
every caller (the toolstack, `hypervisor list` and `top`, the scenario runner) reads every page."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from hypervisor.dispatch import LIST_PAGE_BYTES, Hypervisor
from tests.processes import secure, Host
from wire import envelope
from wire.envelope import MAX_MESSAGE_BYTES
from wire.errors import RemoteError
from wire.operations import Endpoint
from wire.pages import every_page

G, A = Endpoint.GUEST, Endpoint.ADMIN
DOMAINS = 4096


def full_stats(i: int) -> dict:
    """A heartbeat as large as a real driver sends: every key, large values."""
    return {
        "target_kb": 17_179_869_184 - i, "current_kb": 17_179_869_184 - 2 * i, "low_kb": 4_294_967_296 + i, "high_kb": 0,
        "schedule_delay": 31.999999999, "max_schedule_delay": 32.123456789, "retry_count": (1 << 40) + i,
        "max_retry_count": (1 << 40), "state": "hard-limited", "hard_limit_kb": 17_179_869_184 - 3 * i,
    }


def name(i: int) -> str:
    return f"guest-{i:05d}-" + "x" * 52  # 64 characters, the longest a name may be


class Admin:
    """The toolstack's side of the sans-I/O hypervisor."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv, self.seq, self.replies = hv, 0, []
        self.client = f"toolstack-{id(self)}"

    def call(self, op: str, args: dict | None = None) -> dict:
        self.seq += 1
        frame = self.hv.handle(A, envelope.encode(envelope.request(op, self.seq, self.client, args or {})), 0.0).reply
        self.replies.append(frame)
        reply = msgpack.unpackb(frame)
        if not reply["ok"]:
            raise RemoteError(reply["error"], reply["message"])
        return reply["result"]


def register(hv: Hypervisor, i: int, stats: dict | None = None) -> None:
    client = f"client-{i}"
    frame = envelope.encode(envelope.request("register", 1, client, {"name": name(i), "memory_pages": 1, "max_pages": 1}))
    assert msgpack.unpackb(hv.handle(G, frame, 0.0).reply)["ok"]
    frame = envelope.encode(envelope.request("status", 2, client, {"balloon": stats or full_stats(i)}))
    assert msgpack.unpackb(hv.handle(G, frame, 0.0).reply)["ok"]


@pytest.fixture(scope="module")
def full_host() -> Hypervisor:
    hv = Hypervisor(total_pages=DOMAINS)
    for i in range(DOMAINS):
        register(hv, i)
    return hv


@pytest.mark.timeout(60)
def test_4096_domains_with_full_statistics_come_in_pages_under_the_frame_limit(full_host):
    admin = Admin(full_host)
    domains = every_page(admin.call, "list", "domains")["domains"]
    assert [d["domid"] for d in domains] == list(range(1, DOMAINS + 1))
    assert domains[-1]["balloon"] == full_stats(DOMAINS - 1) and domains[-1]["name"] == name(DOMAINS - 1)
    assert len(admin.replies) > 2  # all of it in one reply would be over the limit
    assert sum(len(r) for r in admin.replies) > MAX_MESSAGE_BYTES
    for frame in admin.replies:
        assert len(frame) < LIST_PAGE_BYTES + 4096 < MAX_MESSAGE_BYTES


@pytest.mark.timeout(10)
def test_a_page_starts_after_the_cursor_and_the_last_says_so(full_host):
    admin = Admin(full_host)
    first = admin.call("list")
    assert first["next"] == first["domains"][-1]["domid"]
    after = admin.call("list", {"after": DOMAINS - 2})
    assert [d["domid"] for d in after["domains"]] == [DOMAINS - 1, DOMAINS] and after["next"] is None
    assert admin.call("list", {"after": DOMAINS}) == {"domains": [], "next": None}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("after", [-2, 0x7FF0, "1", True, 1.0, None])
def test_a_bad_cursor_is_einval(full_host, after):
    with pytest.raises(RemoteError) as err:
        Admin(full_host).call("list", {"after": after})
    assert err.value.code == "EINVAL" and "after" in err.value.message


@pytest.mark.timeout(30)
def test_domains_that_come_and_go_between_pages_skip_none_of_the_others():
    """A cursor, not an offset: domains destroyed before the cursor do not shift the next page
    (which would skip as many others), nobody is listed twice, and a domain created meanwhile
    (it takes a higher domid) is on a later page."""
    hv = Hypervisor(total_pages=DOMAINS)
    for i in range(3000):
        register(hv, i)
    admin = Admin(hv)
    churned: list[int] = []

    def call_and_churn(op: str, args: dict) -> dict:
        result = admin.call(op, args)
        if not churned:  # between the first and the second page
            seen = result["domains"][-1]["domid"]
            churned.extend([1, 2, 3, seen + 5])  # three already read, one not yet
            for domid in churned:
                admin.call("destroy", {"domain": domid})
            register(hv, 5000)
        return result

    domids = [d["domid"] for d in every_page(call_and_churn, "list", "domains")["domains"]]
    assert len(admin.replies) > 4 + 2  # destroys and at least two pages
    assert domids == [d for d in range(1, 3001) if d != churned[-1]] + [3001]


@pytest.mark.timeout(10)
def test_a_server_whose_cursor_does_not_move_is_an_error_not_a_loop():
    with pytest.raises(RemoteError) as err:
        every_page(lambda op, args: {"domains": [{"domid": 1}], "next": 1}, "list", "domains")
    assert err.value.code == "EPROTO"


@pytest.mark.timeout(120)
def test_hypervisor_list_reads_every_page_of_4096_domains(procs):
    host = Host(procs, memory="64m", log_level="info")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, host.guest_endpoint).connect(host.guest_endpoint)
    try:
        requests = [("register", {"name": name(i), "memory_pages": 1, "max_pages": 1}, i) for i in range(DOMAINS)]
        requests += [("status", {"balloon": full_stats(i)}, i) for i in range(DOMAINS)]
        for start in range(0, len(requests), 500):  # under ZeroMQ's queue limits, which drop replies
            batch = requests[start:start + 500]
            for op, args, i in batch:  # distinct client ids: one request in flight per client
                sock.send(msgpack.packb({"v": 1, "op": op, "seq": 1 if op == "register" else 2, "client": f"c{i}", "args": args}))
            for _ in batch:
                assert sock.poll(10_000), "the hypervisor stopped answering"
                assert msgpack.unpackb(sock.recv())["ok"]
    finally:
        sock.close()
        ctx.term()
    listed = host.json("list")
    assert len(listed) == DOMAINS
    assert {d["name"]: d["balloon"] for d in listed} == {name(i): full_stats(i) for i in range(DOMAINS)}
    table = host.tool("list")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == DOMAINS + 1
    top = host.tool("top", "-i", "1")
    assert top.returncode == 0, top.stderr
    assert sum(1 for line in top.stdout.splitlines() if line.startswith("guest-")) == DOMAINS
