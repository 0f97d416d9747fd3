"""Properties of irqbus's core under any input (Hypothesis): every frame, well-formed or mangled
(tests/strategies.py), is answered with a valid reply under 1 MiB (or, for a forwarded query,
held), every frame pushed to another client is a valid event or reply, nothing raises, a
refused request changes nothing, and the sequence rule of docs/protocol.md holds."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from tests.populated import BUS_PEERS, BUS_RECORDED, BUS_WORLD, NOW, bus_fingerprint, populated_bus
from tests.replies import check_pushed, check_reply
from tests.strategies import (
    BUS_OPS,
    FUZZ_SETTINGS,
    FUZZ_SETTINGS_SMALL,
    MANY_KEYS,
    NO_REQUIRED_ARGS,
    SEQ,
    UNICODE_DIGITS,
    Deep,
    Draft,
    Pairs,
    bus_readable,
    bus_requests,
    bus_well_formed,
    envelope_draft,
    many_keys,
)
from wire.envelope import MAX_MESSAGE_BYTES
from wire.operations import Endpoint

pytestmark = pytest.mark.timeout(120)
B = Endpoint.IRQBUS

requests = bus_requests(BUS_WORLD)
well_formed = bus_well_formed(BUS_WORLD)
readable = bus_readable(BUS_WORLD)  # the server learns their client and seq


def _check_outcome(out, seq: int | None) -> dict | None:
    """The reply (None while a forwarded query is open) and every frame pushed elsewhere."""
    for send in out.sends:
        check_pushed(send.frame)
    if out.reply is None:
        assert out.op == "interrupts" and out.error is None, f"no reply to {out.op!r}"
        return None
    return check_reply(out.reply, seq)


def _seq_read(out, seq: int) -> bool:
    return out.reply is None or msgpack.unpackb(out.reply)["seq"] == seq


def _on_client(draft: Draft, client: str) -> Draft:
    return replace(draft, body={**draft.body, "client": client}, client=client)


# Crashes and holes known on the day these tests were written (issue 11 items 1, 2, 5).
KNOWN = [
    pytest.param(envelope_draft(B, "irq-vm1", "chip", {"ops": [Deep(1000)]}), id="deep-chip-op"),
    pytest.param(envelope_draft(B, "fresh-1", "attach", {"name": Deep(1000), "domid": 1}), id="deep-name"),
    pytest.param(envelope_draft(B, "tool", "raise", {"guest": "vm1", "device": Deep(1000, "map")}), id="deep-map-device"),
    pytest.param(envelope_draft(B, "irq-vm1", "answer", {"query": 1, "rows": Deep(1000)}), id="deep-rows"),
    pytest.param(envelope_draft(B, "tool", "raise", {"guest": "²", "device": "nic0"}), id="superscript-guest"),
    pytest.param(envelope_draft(B, "tool", "show", many_keys(MANY_KEYS)), id="130k-unknown-args"),
    pytest.param(Draft(B, {"v": Deep(1020), "op": "show", "seq": SEQ, "client": "tool", "args": {}}, "tool", "show"), id="deep-v"),
    pytest.param(Draft(B, {"v": 1, "op": "show", "seq": Deep(1020), "client": "tool", "args": {}}, None, "show"), id="deep-seq"),
]


def _answers_every_frame(calls: list[tuple[Draft, str | None]], secure: bool = False) -> None:
    """Each draft sent with the key of BUS_PEERS[who] (None: its own client's key, or none)."""
    bus, _, sender = populated_bus(secure=secure)
    for draft, who in calls:
        sender.peer = BUS_PEERS[who] if who else None
        before = bus_fingerprint(bus)
        out, seq = sender.send(draft)
        reply = _check_outcome(out, draft.readable_seq(seq))
        if reply is not None and not reply["ok"]:
            assert bus_fingerprint(bus) == before, f"refused {draft.op} ({draft.mutation}) changed the state: {reply['message']}"
            assert not out.sends


@FUZZ_SETTINGS
@given(st.lists(requests, min_size=1, max_size=4))
def test_every_frame_gets_a_valid_reply_and_a_refusal_changes_nothing(drafts):
    _answers_every_frame([(draft, None) for draft in drafts])


# --- with keys (irqbus.rights): each client calls with its own key, or with anyone's --------------

SECURE_WORLD = populated_bus(secure=True)[1]
secure_requests = bus_requests(SECURE_WORLD)
_WHO = st.sampled_from((None, None, None, *BUS_PEERS))  # None: the client's own key


@FUZZ_SETTINGS
@given(st.lists(st.tuples(secure_requests, _WHO), min_size=1, max_size=4))
def test_with_keys_every_frame_gets_a_valid_reply_and_a_refusal_changes_nothing(calls):
    _answers_every_frame(calls, secure=True)


@FUZZ_SETTINGS
@given(st.lists(secure_requests, min_size=1, max_size=4))
def test_a_key_with_no_role_and_no_domain_is_refused_everything_and_changes_nothing(drafts):
    """Whatever client string it writes (a guest's, the toolstack's), a stranger's key owns
    nothing on the bus: every request is refused, nothing is sent to anyone."""
    bus, _, sender = populated_bus(secure=True)
    sender.peer = BUS_PEERS["stranger"]
    before = bus_fingerprint(bus)
    for draft in drafts:
        out, seq = sender.send(draft)
        reply = _check_outcome(out, draft.readable_seq(seq))
        assert reply is not None and not reply["ok"], f"a stranger's {draft.op} was accepted: {reply}"
        assert not out.sends
    assert bus_fingerprint(bus) == before


@pytest.mark.parametrize("draft", KNOWN)
def test_known_bad_requests_get_a_valid_reply_and_change_nothing(draft):
    _answers_every_frame([(draft, None)])


@FUZZ_SETTINGS
@given(requests)
def test_a_retry_is_answered_as_the_first_time_and_changes_nothing(draft):
    bus, _, sender = populated_bus()
    first, seq = sender.send(draft)
    after_first = bus_fingerprint(bus)
    again = sender.resend(draft, seq)
    assert again.reply == first.reply
    assert bus_fingerprint(bus) == after_first
    assert not again.sends


@FUZZ_SETTINGS
@given(readable, st.sampled_from(BUS_RECORDED), st.data())
def test_a_seq_reused_for_another_frame_is_refused_and_changes_nothing(first, client, data):
    bus, _, sender = populated_bus()
    first = _on_client(first, client)
    out, seq = sender.send(first)
    if not _seq_read(out, seq):
        return  # too large, or a value the decoder refuses: the server never read its seq
    second = _on_client(data.draw(readable, "second"), first.client)
    frame = second.frame(seq)
    if frame == first.frame(seq) or len(frame) > MAX_MESSAGE_BYTES:
        return
    before = bus_fingerprint(bus)
    again = bus.handle(frame, NOW)
    assert again.reply is not None, "a reused seq was taken for a retry of the open query"
    reply = check_reply(again.reply, seq)
    assert (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert bus_fingerprint(bus) == before
    assert not again.sends


@FUZZ_SETTINGS
@given(readable, st.sampled_from(BUS_RECORDED), readable, st.integers(1, 100))
def test_an_older_seq_is_refused_and_changes_nothing(first, client, second, back):
    bus, _, sender = populated_bus()
    first = _on_client(first, client)
    out, seq = sender.send(first)
    if not _seq_read(out, seq):
        return
    second = _on_client(second, first.client)
    frame = second.frame(seq - back)
    if len(frame) > MAX_MESSAGE_BYTES:
        return  # moved to another client and seq, a frame near the limit can go over it
    before = bus_fingerprint(bus)
    again = bus.handle(frame, NOW)
    assert again.reply is not None, "an older seq was taken for a retry of an open query"
    reply = check_reply(again.reply, seq - back)
    assert (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert bus_fingerprint(bus) == before
    assert not again.sends


@pytest.mark.parametrize("op", BUS_OPS)
def test_the_strategies_reach_every_operation_and_get_it_accepted(op):
    """A well-formed draw of each operation is accepted at least once in a few hundred: the
    strategies follow the schemas, so the properties above see acceptances, not only refusals."""

    def accepted(draft: Draft) -> bool:
        bus, _, sender = populated_bus()
        out, _ = sender.send(draft)
        return out.reply is None or msgpack.unpackb(out.reply)["ok"]  # None: a query held open

    find(bus_well_formed(BUS_WORLD, (op,)), accepted, settings=settings(FUZZ_SETTINGS, max_examples=300, phases=[Phase.generate]))  # found is enough: no shrinking


# --- the envelope's edges (issue 11 item 8), for every operation ------------------------------


@FUZZ_SETTINGS_SMALL
@given(well_formed, st.sampled_from([True, 1.0, False, 0.0]))
def test_version_is_the_integer_1_not_true_nor_1_0(draft, v):
    bus, _, sender = populated_bus()
    before = bus_fingerprint(bus)
    out, seq = sender.send(replace(draft, body={**draft.body, "v": v}))
    reply = _check_outcome(out, seq)
    assert reply is not None and (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert bus_fingerprint(bus) == before


@FUZZ_SETTINGS_SMALL
@given(bus_well_formed(BUS_WORLD, NO_REQUIRED_ARGS), st.sampled_from(["nil", "absent"]))
def test_args_nil_or_absent_is_the_empty_map(draft, how):
    draft = replace(draft, body={**draft.body, "args": {}})
    body = {k: v for k, v in draft.body.items() if k != "args"}
    if how == "nil":
        body["args"] = None
    bus_a, _, sender_a = populated_bus()
    bus_b, _, sender_b = populated_bus()
    with_map, _ = sender_a.send(draft)
    without, _ = sender_b.send(replace(draft, body=body))
    assert (without.reply and msgpack.unpackb(without.reply)) == (with_map.reply and msgpack.unpackb(with_map.reply))
    assert bus_fingerprint(bus_b) == bus_fingerprint(bus_a)


@FUZZ_SETTINGS_SMALL
@given(well_formed, st.sampled_from([1, -1, None, 1.5, True, b"args", (1, 2)]), st.booleans())
def test_a_map_key_that_is_not_a_string_is_refused_saying_so(draft, key, in_envelope):
    bus, _, sender = populated_bus()
    before = bus_fingerprint(bus)
    if in_envelope:
        body = Pairs((*draft.body.items(), (key, 1)))
    else:
        body = {**draft.body, "args": Pairs((*draft.body["args"].items(), (key, 1)))}
    out, _ = sender.send(replace(draft, body=body))
    reply = _check_outcome(out, None)
    assert reply is not None and not reply["ok"] and reply["error"] in ("EPROTO", "EINVAL"), reply
    if not isinstance(key, bytes):
        assert "key" in reply["message"], reply["message"]  # not just "not a msgpack message"
    assert bus_fingerprint(bus) == before


@FUZZ_SETTINGS_SMALL
@given(st.sampled_from(["raise", "lower", "pulse", "detach_device", "send_virq", "show", "interrupts", "attach_device"]), st.sampled_from(UNICODE_DIGITS))
def test_a_guest_is_never_found_by_digits_that_are_not_ascii(op, text):
    """Guests 1 and 2 are attached and none is named `text`: "²" or "①" is not domid 2 or 1."""
    bus, _, sender = populated_bus()
    extra = {"send_virq": {"virq": "target"}, "show": {}, "interrupts": {}, "attach_device": {"device": "nic9", "pin": 9}}
    args = {"guest": text, **extra.get(op, {"device": "net2" if text in ("²", "٢", "①") else "nic0"})}
    before = bus_fingerprint(bus)
    out, seq = sender.send(envelope_draft(B, "tool", op, args))
    reply = _check_outcome(out, seq)
    assert reply is not None and not reply["ok"], f"{op} {text!r} found a guest: {reply}"
    assert bus_fingerprint(bus) == before
