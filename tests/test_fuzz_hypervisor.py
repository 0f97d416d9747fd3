"""Properties of the hypervisor's core under any input (Hypothesis): every frame, well-formed or
mangled (tests/strategies.py), is answered with a valid reply under 1 MiB and never an
exception; a refused request changes nothing; and the sequence rule of docs/protocol.md holds
(a retry is answered as the first time, a reused or older seq is EPROTO)."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from tests.populated import HOST_RECORDED, HOST_WORLD, NOW, host_fingerprint, populated_host
from tests.replies import check_pushed, check_reply
from tests.strategies import (
    FUZZ_SETTINGS,
    FUZZ_SETTINGS_SMALL,
    HOST_OPS,
    MANY_KEYS,
    NO_REQUIRED_ARGS,
    SEQ,
    UNICODE_DIGITS,
    Deep,
    Draft,
    Pairs,
    envelope_draft,
    host_readable,
    host_requests,
    host_well_formed,
    many_keys,
    peers_without,
)
from wire import envelope
from wire.envelope import MAX_MESSAGE_BYTES
from wire.identity import scoped
from wire.keys import Role
from wire.operations import OPERATIONS, Endpoint

pytestmark = pytest.mark.timeout(120)
G, A = Endpoint.GUEST, Endpoint.ADMIN

requests = host_requests(HOST_WORLD)
well_formed = host_well_formed(HOST_WORLD)
readable = host_readable(HOST_WORLD)  # the server learns their client and seq


def _check_outcome(out, seq: int | None) -> dict:
    reply = check_reply(out.reply, seq)
    for note in out.notifications:
        if note.event is not None:
            check_pushed(envelope.encode(note.event))
    return reply


def _on_client(draft: Draft, client: str) -> Draft:
    return replace(draft, body={**draft.body, "client": client}, client=client)


# Crashes and holes known on the day these tests were written (issue 11 items 1, 2, 5, 8).
KNOWN = [
    pytest.param(envelope_draft(G, "fresh-1", "register", {"name": Deep(1000), "memory_pages": 1, "max_pages": 1}), id="deep-name"),
    pytest.param(envelope_draft(G, "guest-web", "decrease_reservation", {"extents": [Deep(1000)]}), id="deep-extent"),
    pytest.param(envelope_draft(A, "toolstack", "mem_set", {"domain": Deep(990, "map"), "target_pages": 1}), id="deep-map-domain"),
    pytest.param(envelope_draft(A, "toolstack", "mem_set", {"domain": "²", "target_pages": 1}), id="superscript-domain"),
    pytest.param(envelope_draft(A, "toolstack", "mem_max", {"domain": "①", "max_pages": 1}), id="circled-domain"),
    pytest.param(envelope_draft(A, "toolstack", "destroy", {"domain": "٣"}), id="arabic-indic-domain"),
    pytest.param(envelope_draft(A, "toolstack", "list", many_keys(MANY_KEYS)), id="130k-unknown-args"),
    pytest.param(Draft(A, {"v": 1, "op": "info", "seq": SEQ, "client": "toolstack", "args": {}, "x": Deep(1000)}, "toolstack", "info"), id="deep-envelope-key"),
    pytest.param(Draft(A, {"v": Deep(1020), "op": "info", "seq": SEQ, "client": "toolstack", "args": {}}, "toolstack", "info"), id="deep-v"),
    pytest.param(Draft(A, {"v": 1, "op": "info", "seq": Deep(1020), "client": "toolstack", "args": {}}, None, "info"), id="deep-seq"),
    pytest.param(Draft(A, {"v": 1, "op": "info", "seq": SEQ, "client": Deep(1020), "args": {}}, None, "info"), id="deep-client"),
    pytest.param(Draft(G, {"v": 1, "op": Deep(1020), "seq": SEQ, "client": "fresh-1", "args": {}}, "fresh-1", None), id="deep-op"),
]


def _answers_every_frame(drafts: list[Draft]) -> None:
    hv, _, sender = populated_host()
    for draft in drafts:
        before = host_fingerprint(hv)
        out, seq = sender.send(draft)
        reply = _check_outcome(out, draft.readable_seq(seq))
        if not reply["ok"]:
            assert host_fingerprint(hv) == before, f"refused {draft.op} ({draft.mutation}) changed the state: {reply['message']}"
            assert not out.notifications


@FUZZ_SETTINGS
@given(st.lists(requests, min_size=1, max_size=4))
def test_every_frame_gets_a_valid_reply_and_a_refusal_changes_nothing(drafts):
    _answers_every_frame(drafts)


@pytest.mark.parametrize("draft", KNOWN)
def test_known_bad_requests_get_a_valid_reply_and_change_nothing(draft):
    _answers_every_frame([draft])


@FUZZ_SETTINGS
@given(requests)
def test_a_retry_is_answered_as_the_first_time_and_changes_nothing(draft):
    hv, _, sender = populated_host()
    first, seq = sender.send(draft)
    after_first = host_fingerprint(hv)
    again = sender.resend(draft, seq)
    assert again.reply == first.reply, (msgpack.unpackb(first.reply), msgpack.unpackb(again.reply))
    assert host_fingerprint(hv) == after_first
    assert not again.notifications


@FUZZ_SETTINGS
@given(readable, st.sampled_from(HOST_RECORDED), st.data())
def test_a_seq_reused_for_another_frame_is_refused_and_changes_nothing(first, client, data):
    hv, _, sender = populated_host()
    first = _on_client(first, client)
    out, seq = sender.send(first)
    if msgpack.unpackb(out.reply)["seq"] != seq:
        return  # too large, or a value the decoder refuses: the server never read its seq
    second = _on_client(replace(data.draw(readable, "second"), endpoint=first.endpoint), first.client)
    frame = second.frame(seq)
    if frame == first.frame(seq) or len(frame) > MAX_MESSAGE_BYTES:
        return
    before = host_fingerprint(hv)
    again = hv.handle(second.endpoint, frame, NOW)
    reply = check_reply(again.reply, seq)
    assert (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert host_fingerprint(hv) == before
    assert not again.notifications


@FUZZ_SETTINGS
@given(readable, st.sampled_from(HOST_RECORDED), readable, st.integers(1, 100))
def test_an_older_seq_is_refused_and_changes_nothing(first, client, second, back):
    hv, _, sender = populated_host()
    first = _on_client(first, client)
    out, seq = sender.send(first)
    if msgpack.unpackb(out.reply)["seq"] != seq:
        return  # too large, or a value the decoder refuses: the server never read its seq
    second = _on_client(replace(second, endpoint=first.endpoint), first.client)
    frame = second.frame(seq - back)
    if len(frame) > MAX_MESSAGE_BYTES:
        return  # moved to another client and seq, a frame near the limit can go over it
    before = host_fingerprint(hv)
    again = hv.handle(second.endpoint, frame, NOW)
    reply = check_reply(again.reply, seq - back)
    assert (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert host_fingerprint(hv) == before
    assert not again.notifications


@pytest.mark.parametrize("op", HOST_OPS)
def test_the_strategies_reach_every_operation_and_get_it_accepted(op):
    """A well-formed draw of each operation is accepted at least once in a few hundred: the
    strategies follow the schemas, so the properties above see acceptances, not only refusals."""

    def accepted(draft: Draft) -> bool:
        hv, _, sender = populated_host()
        out, _ = sender.send(draft)
        return msgpack.unpackb(out.reply)["ok"]

    find(host_well_formed(HOST_WORLD, (op,)), accepted, settings=settings(FUZZ_SETTINGS, max_examples=300, phases=[Phase.generate]))  # found is enough: no shrinking


# --- the envelope's edges (issue 11 item 8), for every operation ------------------------------


@FUZZ_SETTINGS_SMALL
@given(well_formed, st.sampled_from([True, 1.0, False, 0.0]))
def test_version_is_the_integer_1_not_true_nor_1_0(draft, v):
    hv, _, sender = populated_host()
    before = host_fingerprint(hv)
    out, seq = sender.send(replace(draft, body={**draft.body, "v": v}))
    reply = check_reply(out.reply, seq)
    assert (reply["ok"], reply.get("error")) == (False, "EPROTO"), reply
    assert host_fingerprint(hv) == before


@FUZZ_SETTINGS_SMALL
@given(host_well_formed(HOST_WORLD, NO_REQUIRED_ARGS), st.sampled_from(["nil", "absent"]))
def test_args_nil_or_absent_is_the_empty_map(draft, how):
    """docs/protocol.md: args "may be omitted when empty"; an encoder may write nil for it."""
    draft = replace(draft, body={**draft.body, "args": {}})
    body = {k: v for k, v in draft.body.items() if k != "args"}
    if how == "nil":
        body["args"] = None
    hv_a, _, sender_a = populated_host()
    hv_b, _, sender_b = populated_host()
    with_map, _ = sender_a.send(draft)
    without, _ = sender_b.send(replace(draft, body=body))
    assert msgpack.unpackb(without.reply) == msgpack.unpackb(with_map.reply)
    assert host_fingerprint(hv_b) == host_fingerprint(hv_a)


@FUZZ_SETTINGS_SMALL
@given(well_formed, st.sampled_from([1, -1, None, 1.5, True, b"args", (1, 2)]), st.booleans())
def test_a_map_key_that_is_not_a_string_is_refused_saying_so(draft, key, in_envelope):
    hv, _, sender = populated_host()
    before = host_fingerprint(hv)
    if in_envelope:
        body = Pairs((*draft.body.items(), (key, 1)))
    else:
        body = {**draft.body, "args": Pairs((*draft.body["args"].items(), (key, 1)))}
    out, _ = sender.send(replace(draft, body=body))
    reply = check_reply(out.reply)
    assert not reply["ok"] and reply["error"] in ("EPROTO", "EINVAL"), reply
    if not isinstance(key, bytes):  # msgpack-python lets bytes keys through as bytes; they are then unknown keys
        assert "key" in reply["message"], reply["message"]  # not just "not a msgpack message"
    assert host_fingerprint(hv) == before


@FUZZ_SETTINGS_SMALL
@given(st.sampled_from(["mem_set", "mem_max", "destroy"]), st.sampled_from(UNICODE_DIGITS), st.sampled_from(["toolstack", "xl-2"]))
def test_a_domain_is_never_found_by_digits_that_are_not_ascii(op, text, client):
    """Domains 1..3 exist and none is named `text`: "٣" or "²" is not domid 3 or 2."""
    hv, _, sender = populated_host()
    call = {"domain": text, **{"mem_set": {"target_pages": 1}, "mem_max": {"max_pages": 4096}, "destroy": {}}[op]}
    before = host_fingerprint(hv)
    out, seq = sender.send(envelope_draft(A, client, op, call))
    reply = check_reply(out.reply, seq)
    assert not reply["ok"], f"{op} {text!r} acted on domain {reply['result'].get('domid')}"
    assert host_fingerprint(hv) == before


# --- rights (hypervisor/rights.py): who calls is the key, never a field --------------------------


GUEST_OPS_BUT_REGISTER = tuple(name for name, op in OPERATIONS.items() if op.endpoint is G and name != "register")


def _record(hv) -> tuple:
    """What the replay record holds: a refused caller must not even get a record."""
    return len(hv.record), hv.record.unbound_bytes


@FUZZ_SETTINGS
@given(requests, peers_without(Role.TOOLSTACK))
def test_the_admin_endpoint_changes_nothing_for_a_key_without_role_toolstack(draft, peer):
    """Anything, well-formed or not, of either endpoint's operations, sent to the admin
    endpoint by a key that is no toolstack key: refused, and nothing changes."""
    hv, _, sender = populated_host()
    before, record = host_fingerprint(hv), _record(hv)
    seq = sender.next_seq(draft.client)
    out = hv.handle(A, draft.frame(seq), NOW, peer)
    reply = check_reply(out.reply, draft.readable_seq(seq))
    assert not reply["ok"], reply
    if draft.readable_seq(seq) is not None and reply["error"] not in ("EPROTO", "EMSGSIZE"):
        assert reply["error"] == "EACCES", reply
    assert host_fingerprint(hv) == before and _record(hv) == record
    assert not out.notifications


@FUZZ_SETTINGS
@given(host_well_formed(HOST_WORLD, GUEST_OPS_BUT_REGISTER), peers_without(Role.TOOLSTACK), st.data())
def test_a_guests_client_string_under_another_key_touches_no_domain(draft, peer, data):
    """A guest operation naming a victim's client (its string stolen from a log) with the
    thief's own key: the victim's domain, pages and record are as they were."""
    hv, world, sender = populated_host()
    victim = data.draw(st.sampled_from(world.domains), "victim")
    draft = _on_client(replace(draft, endpoint=G), victim.client)
    before = host_fingerprint(hv)
    seq = sender.next_seq(draft.client)
    out = hv.handle(G, draft.frame(seq), NOW, peer)
    reply = check_reply(out.reply, seq)
    assert (reply["ok"], reply["error"]) == (False, "ESRCH"), reply
    assert host_fingerprint(hv) == before
    assert out.client == scoped(peer.key, victim.client) and hv.record.latest(out.client) is None
    assert not out.notifications
