"""What the hypervisor tells irqbus about which key owns which domain (irqbus's `owners`):
the feed's logic without sockets (hypervisor/owners.py), then VirqSender's messages as a fake
irqbus (a plain ROUTER over ipc://, CURVE with the run's irqbus key) receives them."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
import structlog
import zmq

from hypervisor.owners import CHUNK, OwnersFeed
from hypervisor.virq import VirqSender
from wire import envelope
from wire.keys import KeyDir
from wire.security import Security

pytestmark = pytest.mark.timeout(20)

KEY_A, KEY_B = "A" * 40, "B" * 40


def live(*pairs: tuple[int, str]):
    table = list(pairs)
    return lambda: table


# --- the feed ----------------------------------------------------------------------------------


def test_a_ping_every_period_and_the_full_list_once_irqbus_is_first_heard():
    feed = OwnersFeed(live((1, KEY_A + "|web", "web"), (2, "insecure-client", "plain"), (3, KEY_B + "|db", "db")), ping_s=1.0)
    assert feed.due(0.0) == [{"domains": []}]
    assert feed.due(0.5) == []
    feed.heard({"epoch": 7, "owners": 0})
    # the first chunk replaces; a domain of an insecure client (no key) is not sent
    assert feed.due(0.6) == [{"domains": [[1, KEY_A, "web"], [3, KEY_B, "db"]], "replace": True}]
    assert feed.due(1.0) == []  # the list's own replies carry the epoch: no ping needed yet
    feed.heard({"epoch": 7, "owners": 2})
    assert feed.due(1.6) == [{"domains": []}]
    feed.heard({"epoch": 7, "owners": 2})
    assert feed.due(1.7) == []  # the same epoch: nothing to resend


def test_a_new_epoch_or_a_change_not_sent_brings_the_whole_list_again():
    feed = OwnersFeed(live((4, KEY_A + "|x", "x")), ping_s=1.0)
    feed.due(0.0)
    feed.heard({"epoch": 1})
    feed.due(0.1)
    feed.heard({"epoch": 2})  # irqbus restarted: it knows nothing
    assert feed.due(0.2) == [{"domains": [[4, KEY_A, "x"]], "replace": True}]
    feed.lost()  # a change could not be sent
    feed.heard({"epoch": 2})
    assert feed.due(0.3) == [{"domains": [[4, KEY_A, "x"]], "replace": True}]


@pytest.mark.parametrize("result", [None, {}, {"epoch": 0}, {"epoch": "7"}, {"epoch": True}, {"epoch": 1 << 63}, [1]])
def test_a_reply_without_a_valid_epoch_changes_nothing(result):
    feed = OwnersFeed(live((1, KEY_A + "|x", "x")))
    feed.due(0.0)
    feed.heard(result)
    assert feed.epoch is None and feed.due(0.1) == []


def test_registers_and_ends_are_single_changes_and_an_insecure_client_sends_nothing():
    feed = OwnersFeed(live())
    assert feed.owned(5, KEY_A + "|guest-web", "web") == {"domains": [[5, KEY_A, "web"]]}
    assert feed.owned(6, "guest-insecure", "plain") is None
    assert feed.gone(5) == {"gone": [5]}


def test_an_empty_list_still_replaces_and_a_long_one_comes_in_chunks():
    assert OwnersFeed(live()).full_list() == [{"domains": [], "replace": True}]
    many = [(d, KEY_A + f"|g{d}", f"g{d}") for d in range(1, CHUNK + 11)]
    chunks = OwnersFeed(lambda: many).full_list()
    assert [(len(c["domains"]), c["replace"]) for c in chunks] == [(CHUNK, True), (10, False)]
    assert [p for c in chunks for p in c["domains"]] == [[d, KEY_A, name] for d, _, name in many]


# --- VirqSender against a fake irqbus -----------------------------------------------------------


class FakeIrqbus:
    """A ROUTER with the run's irqbus key: reads requests, answers what the test says."""

    def __init__(self, endpoint: str) -> None:
        keys = KeyDir(os.environ["BALLONET_KEYS"])
        # the process's shared context: a secured server's ZAP handler lives as long as its context
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        Security(keys, keys.pair("irqbus")).secure_server(self.sock)
        self.sock.bind(endpoint)

    def receive(self, timeout_ms: int = 5000) -> tuple[bytes, dict[str, Any]]:
        assert self.sock.poll(timeout_ms), "nothing came"
        identity, frame = self.sock.recv_multipart()
        return identity, msgpack.unpackb(frame)

    def nothing_more(self) -> bool:
        return not self.sock.poll(200)

    def answer(self, identity: bytes, request: dict[str, Any], reply: dict[str, Any]) -> None:
        self.sock.send_multipart([identity, envelope.encode({"v": 1, "seq": request["seq"], **reply})])

    def close(self) -> None:
        self.sock.close(0)


def first_ping(bus: FakeIrqbus, sender: VirqSender, t: float = 0.0) -> tuple[bytes, dict[str, Any]]:
    """The ping that reached the bus: until the CURVE connection is up, nothing is queued
    (ZMQ_IMMEDIATE), so the pings before it are dropped."""
    for _ in range(200):
        sender.tick(t)
        if bus.sock.poll(50):
            return bus.receive()
    raise AssertionError("no ping reached the fake irqbus in 10 s")


def wait_reply(sender: VirqSender) -> None:
    assert sender.socket.poll(5000)
    sender.drain()


@pytest.fixture
def fake(tmp_path):
    bus = FakeIrqbus(f"ipc://{tmp_path}/irq")
    yield bus
    bus.close()


@pytest.fixture
def sender(fake, tmp_path):
    lines: list[dict[str, Any]] = []

    def collect(logger: Any, method: str, event: dict[str, Any]) -> Any:
        lines.append({"level": method, **event})
        raise structlog.DropEvent

    owners = [(1, KEY_A + "|web", "web"), (2, KEY_B + "|db", "db")]
    log = structlog.wrap_logger(None, processors=[collect])
    s = VirqSender(f"ipc://{tmp_path}/irq", log, owners=lambda: owners, ping_s=0.0)
    s.lines, s.owners = lines, owners
    yield s
    s.close()


def test_virq_sender_pings_sends_the_list_then_each_change(fake, sender):
    who, ping = first_ping(fake, sender)
    assert (ping["op"], ping["args"]) == ("owners", {"domains": []})
    fake.answer(who, ping, {"ok": True, "result": {"epoch": 42, "owners": 0}})
    wait_reply(sender)
    sender.tick(0.1)
    _, full = fake.receive()
    assert (full["op"], full["args"]) == ("owners", {"domains": [[1, KEY_A, "web"], [2, KEY_B, "db"]], "replace": True})
    assert full["seq"] > ping["seq"] and full["client"] == ping["client"]
    sender.owned(3, "C" * 40 + "|new", "new")
    sender.gone(1)
    sender.send(2, "target")
    assert [fake.receive()[1]["args"] for _ in range(3)] == [{"domains": [[3, "C" * 40, "new"]]}, {"gone": [1]}, {"guest": 2, "virq": "target"}]
    sender.owned(4, "insecure-client", "plain")  # no key: nothing to tell
    assert fake.nothing_more()


def test_a_virq_refusal_is_not_taken_for_an_owners_reply_and_a_new_epoch_resends_the_list(fake, sender):
    who, ping = first_ping(fake, sender)
    sender.send(1, "memory")
    _, virq = fake.receive()
    fake.answer(who, ping, {"ok": True, "result": {"epoch": 1, "owners": 0}})
    fake.answer(who, virq, {"ok": False, "error": "ESRCH", "message": "no guest attached for domain 1"})
    wait_reply(sender)
    sender.drain()
    assert sender.feed.epoch == 1 and sender.refused == 0
    sender.tick(0.1)
    _, full = fake.receive()
    assert full["args"]["replace"] is True
    fake.answer(who, full, {"ok": True, "result": {"epoch": 1, "owners": 2}})
    wait_reply(sender)
    sender.tick(0.2)
    _, ping = fake.receive()
    assert ping["args"] == {"domains": []}  # the same epoch: only the ping
    fake.answer(who, ping, {"ok": True, "result": {"epoch": 2, "owners": 0}})  # irqbus restarted
    wait_reply(sender)
    sender.tick(0.3)
    _, again = fake.receive()
    assert again["args"] == {"domains": [[1, KEY_A, "web"], [2, KEY_B, "db"]], "replace": True}


def test_an_irqbus_that_refuses_owners_is_logged_once_not_at_every_ping(fake, sender):
    for t in range(3):
        who, ping = first_ping(fake, sender, float(t))
        fake.answer(who, ping, {"ok": False, "error": "ENOSYS", "message": "unknown operation 'owners'"})
        wait_reply(sender)
    warnings = [line for line in sender.lines if line["level"] == "warning"]
    assert [(w["event"], w["error"]) for w in warnings] == [("irqbus refused owners: it cannot check which key owns which guest", "ENOSYS")]
    assert sender.refused == 0 and sender.feed.epoch is None


def test_a_change_made_while_irqbus_was_away_comes_in_the_list_when_it_answers(tmp_path):
    owners: list[tuple[int, str, str]] = []
    sender = VirqSender(f"ipc://{tmp_path}/irq", structlog.get_logger(), owners=lambda: owners, ping_s=0.0)
    try:
        owners.append((7, KEY_A + "|late", "late"))
        sender.owned(7, KEY_A + "|late", "late")  # nobody listens yet: not queued (ZMQ_IMMEDIATE)
        assert sender.feed.epoch is None
        bus = FakeIrqbus(f"ipc://{tmp_path}/irq")
        try:
            who, ping = first_ping(bus, sender)
            assert ping["args"] == {"domains": []}
            bus.answer(who, ping, {"ok": True, "result": {"epoch": 9, "owners": 0}})
            wait_reply(sender)
            sender.tick(5.0)
            _, full = bus.receive()
            assert full["args"] == {"domains": [[7, KEY_A, "late"]], "replace": True}
        finally:
            bus.close()
    finally:
        sender.close()


def test_an_insecure_hypervisor_sends_no_owners(tmp_path):
    bus = zmq.Context.instance().socket(zmq.ROUTER)
    bus.setsockopt(zmq.LINGER, 0)
    bus.bind(f"ipc://{tmp_path}/irq")
    sender = VirqSender(f"ipc://{tmp_path}/irq", structlog.get_logger(), owners=lambda: [(1, "client", "plain")],
                        security_setting=Security.insecure_mode(), ping_s=0.0)
    try:
        for _ in range(200):  # until the connection is up, each round's messages are dropped
            sender.tick(0.0)
            sender.owned(1, "client", "plain")
            sender.gone(1)
            sender.send(1, "target")  # virqs still go
            if bus.poll(50):
                break
        ops = set()
        while bus.poll(200):
            ops.add(msgpack.unpackb(bus.recv_multipart()[-1])["op"])
        assert ops == {"send_virq"}
    finally:
        sender.close()
        bus.close(0)
