"""A guest's heartbeat statistics have a schema at the hypervisor: what a real driver sends is
stored and listed, anything else is refused with a bounded EINVAL and never stored."""

from __future__ import annotations

import msgpack
import pytest

from guest.balloon import Balloon, BalloonConfig, DriverState
from guest.memory import GuestMemory
from hypervisor.dispatch import Hypervisor
from hypervisor.toolstack import format_list
from hypervisor.top import Frame, render
from tests.processes import secure, Host
from wire import envelope
from wire.extent import Extent
from guest.generations import DriverGeneration
from wire.heartbeat import DRIVER_GENERATIONS, DRIVER_STATES, FIELDS, MAX_DELAY_S, MAX_KIB
from wire.operations import Endpoint
from wire.shown import shown

pytestmark = pytest.mark.timeout(10)
G, A = Endpoint.GUEST, Endpoint.ADMIN

GOOD = {
    "target_kb": 8192, "current_kb": 4096, "low_kb": 4096, "high_kb": 0, "schedule_delay": 4.0, "max_schedule_delay": 32.0,
    "retry_count": 3, "max_retry_count": 0, "state": "retrying", "hard_limit_kb": None,
}
ESC = "\x1b[2J\x1b[31mpwned\x1b[0m"
NESTED: list = []
for _ in range(50):  # deeper than any statistic, shallower than any decoder's limit
    NESTED = [NESTED]


class Guest:
    def __init__(self, hv: Hypervisor, name: str = "web") -> None:
        self.hv, self.client, self.seq = hv, f"client-{name}", 0
        assert self.send("register", name=name, memory_pages=1024, max_pages=2048)["ok"]

    def outcome(self, op: str, **args):
        self.seq += 1
        return self.hv.handle(G, envelope.encode(envelope.request(op, self.seq, self.client, args)), float(self.seq))

    def send(self, op: str, **args) -> dict:
        return msgpack.unpackb(self.outcome(op, **args).reply)


def listed(hv: Hypervisor) -> dict:
    frame = hv.handle(A, envelope.encode(envelope.request("list", 1, f"admin-{id(hv)}-{len(hv.table)}", {})), 0.0).reply
    (row,) = msgpack.unpackb(frame)["result"]["domains"]
    return row


def driver(legacy: bool) -> Balloon:
    memory = GuestMemory([Extent(0, 1024)], 0)
    return Balloon(memory, 2048, target_pages=2048, config=BalloonConfig(generation=DriverGeneration.PRE_PATCH if legacy else DriverGeneration.CURRENT))


@pytest.mark.parametrize("legacy", [False, True])
def test_what_the_guest_driver_sends_is_stored_and_listed(legacy):
    hv = Hypervisor(total_pages=4096)
    g = Guest(hv)
    balloon = driver(legacy)
    balloon.set_target(2048, 0.0)
    assert balloon.poll(0.0) is not None
    balloon.increase_done([Extent(1024, 100)] if legacy else [], 0.0)
    stats = balloon.stats().to_dict()
    assert (stats["hard_limit_kb"] is not None) == legacy
    assert g.send("status", balloon=stats)["ok"]
    assert listed(hv)["balloon"] == stats


def test_every_driver_state_is_in_the_schema_and_every_figure_the_driver_reports():
    assert {str(s) for s in DriverState} <= DRIVER_STATES
    assert {str(g) for g in DriverGeneration} == DRIVER_GENERATIONS
    assert set(driver(False).stats().to_dict()) == set(FIELDS)
    # the pre-patch driver has no schedule_delay/retry sysfs files: it sends a subset
    assert set(driver(True).stats().to_dict()) < set(FIELDS)


def test_every_statistic_may_be_left_out():
    hv = Hypervisor(total_pages=4096)
    g = Guest(hv)
    assert g.send("status", balloon={})["ok"] and g.send("status", balloon={"state": "done"})["ok"]
    assert g.send("status")["ok"]
    assert listed(hv)["balloon"] == {"state": "done"}


BAD = [
    ("schedule_delay", "boom"),
    ("schedule_delay", float("nan")),
    ("schedule_delay", float("inf")),
    ("max_schedule_delay", -1.0),
    ("max_schedule_delay", MAX_DELAY_S * 2),
    ("schedule_delay", True),
    ("schedule_delay", None),
    ("retry_count", 1.5),
    ("retry_count", -1),
    ("retry_count", False),
    ("max_retry_count", (1 << 64) - 1),
    ("max_retry_count", "4"),
    ("current_kb", -4096),
    ("current_kb", MAX_KIB + 1),
    ("target_kb", 4096.0),
    ("low_kb", None),
    ("high_kb", [0]),
    ("hard_limit_kb", "none"),
    ("hard_limit_kb", True),
    ("state", ESC),
    ("state", "Done"),
    ("state", "x" * 100_000),
    ("state", 1),
    ("state", None),
    ("state", b"done"),
    ("state", NESTED),
    ("state", {"nested": {"deeper": ESC}}),
]


def bad_heartbeats() -> list:
    cases = [pytest.param({**GOOD, key: value}, id=f"{key}={shown(value, 24)}") for key, value in BAD]
    cases += [
        pytest.param({**GOOD, "surprise": 1}, id="unknown key"),
        pytest.param({**GOOD, "x" * 100_000: 1}, id="huge unknown key"),
        pytest.param({**GOOD, ESC: 1}, id="escape in a key"),
        pytest.param({f"k{i}": i for i in range(1000)}, id="1000 keys"),
        pytest.param([GOOD], id="a list"),
        pytest.param("done", id="a string"),
        pytest.param(NESTED, id="nested 50 deep"),
        pytest.param(None, id="nil"),
    ]
    return cases


@pytest.mark.parametrize("balloon", bad_heartbeats())
def test_a_bad_heartbeat_is_refused_with_a_bounded_message_and_never_stored(balloon):
    hv = Hypervisor(total_pages=4096)
    g = Guest(hv)
    assert g.send("status", balloon=GOOD)["ok"]
    seen = hv.table.find_client(g.client).last_seen
    out = g.outcome("status", balloon=balloon)
    reply = msgpack.unpackb(out.reply)
    assert reply["ok"] is False and reply["error"] == "EINVAL"
    assert "balloon" in reply["message"] and len(reply["message"]) <= 400
    assert "\x1b" not in reply["message"]
    assert out.error == "EINVAL" and out.fields.get("domid") == 1  # the refusal is logged against the domain
    assert listed(hv)["balloon"] == GOOD
    assert hv.table.find_client(g.client).last_seen == seen  # a refused request is not a sign of life either


def test_the_toolstack_prints_what_it_lists():
    row = {"domid": 1, "name": "web", "current_pages": 1024, "target_pages": 2048, "max_pages": 2048, "state": "running",
           "last_seen_s": 0.1, "balloon": GOOD}
    assert format_list([row]).splitlines()[1].split()[-3:] == ["retrying", "4", "3"]
    assert render(Frame(0.0, {"total_pages": 4096, "free_pages": 0, "allocated_pages": 4096, "domains": 1}, [row]), None)


@pytest.mark.timeout(60)
def test_list_and_top_survive_a_guest_that_sends_garbage(procs):
    """The bug: `schedule_delay: "boom"` was stored, and list and top died with ValueError."""
    import zmq

    host = Host(procs, memory="64m", log_level="info")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure(sock, host.guest_endpoint).connect(host.guest_endpoint)

    def call(seq: int, op: str, **args) -> dict:
        sock.send(msgpack.packb({"v": 1, "op": op, "seq": seq, "client": "evil", "args": args}))
        assert sock.poll(5000)
        return msgpack.unpackb(sock.recv())

    try:
        assert call(1, "register", name="evil", memory_pages=16, max_pages=16)["ok"]
        assert call(2, "status", balloon=GOOD)["ok"]
        for seq, (key, value) in enumerate([("schedule_delay", "boom"), ("state", ESC)], start=3):
            reply = call(seq, "status", balloon={**GOOD, key: value})
            assert reply["error"] == "EINVAL", reply
    finally:
        sock.close()
        ctx.term()
    assert host.domains()["evil"]["balloon"] == GOOD
    for command in (("list",), ("top", "-i", "1")):
        result = host.tool(*command)
        assert result.returncode == 0, result.stderr
        assert "evil" in result.stdout and "\x1b" not in result.stdout
    refused = [e for e in procs.log_events("hypervisor") if e.get("event") == "request refused" and e.get("op") == "status"]
    assert len(refused) == 2 and all(e["domid"] == 1 and e["error"] == "EINVAL" for e in refused)


def test_a_guest_sends_its_statistics_only_when_they_changed_or_after_an_unanswered_request(monkeypatch):
    """A host of a thousand guests at rest: nearly every heartbeat is bare (docs/protocol.md,
    `status`); a hypervisor back from an outage may have restarted, so it hears them again."""
    import structlog.testing

    from guest.service import GuestService, GuestSettings
    from wire.client import Outage

    log = structlog.wrap_logger(structlog.testing.CapturingLogger())
    service = GuestService(GuestSettings("web", 16, 16, "ipc:///nonexistent/hv"), log)
    sent: list[dict] = []
    target = {"target_pages": 16, "max_pages": 16, "target_writes": 0, "control": {}}

    def call(op, args=None, **kwargs):
        if op == "register":
            return {"domid": 1, "extents": [[0, 16]], "next": None, "boot_id": "b", **target}
        sent.append(dict(args))
        return target

    monkeypatch.setattr(service.client, "call", call)
    try:
        service.register(lambda: False)
        for _ in range(3):
            service._heartbeat(lambda: False)
        assert "balloon" in sent[0] and sent[1:] == [{}, {}]
        service.balloon.set_target(8, 0.0)  # the driver's figures change
        service._heartbeat(lambda: False)
        assert sent[-1]["balloon"]["target_kb"] == 8 * 4
        service._heartbeat(lambda: False)
        assert sent[-1] == {}
        service._hypervisor_unreachable(Outage("status", 9, 0.0, 0.0))
        service._heartbeat(lambda: False)
        assert "balloon" in sent[-1]
    finally:
        service.close()
