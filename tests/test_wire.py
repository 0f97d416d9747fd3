"""The envelope, the operation schemas and xl sizes: every malformed input is refused by name."""

from __future__ import annotations

import msgpack
import pytest

from wire import envelope
from wire.errors import ErrorCode, WireError
from wire.extent import Extent
from wire.operations import MAX_BATCH_PAGES, Endpoint, lookup
from wire.sizes import parse_size, size_to_pages

pytestmark = pytest.mark.timeout(10)


def frame(**overrides):
    body = {"v": 1, "op": "info", "seq": 1, "client": "c1", "args": {}}
    body.update(overrides)
    return msgpack.packb({k: v for k, v in body.items() if v is not ...}, use_bin_type=True)


def test_a_good_request_decodes():
    req = envelope.decode_request(frame(args={"x": 1}))
    assert (req.op, req.seq, req.client, req.args) == ("info", 1, "c1", {"x": 1})


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"\xc1", ErrorCode.EPROTO),  # 0xc1 is never valid msgpack
        (b"", ErrorCode.EPROTO),
        (msgpack.packb([1, 2, 3]), ErrorCode.EPROTO),
        (msgpack.packb("hello"), ErrorCode.EPROTO),
        (b"\x81\xa1", ErrorCode.EPROTO),  # truncated map
        (b"x" * (envelope.MAX_MESSAGE_BYTES + 1), ErrorCode.EMSGSIZE),
    ],
)
def test_bytes_that_are_not_a_request_are_refused(raw, code):
    with pytest.raises(envelope.EnvelopeError) as err:
        envelope.decode_request(raw)
    assert err.value.code is code


@pytest.mark.parametrize(
    "overrides, seq_echoed",
    [
        ({"v": 2}, 1),
        ({"v": ...}, 1),
        ({"seq": -1}, None),
        ({"seq": "1"}, None),
        ({"seq": True}, None),
        ({"seq": 1 << 63}, None),
        ({"client": ""}, 1),
        ({"client": 7}, 1),
        ({"client": "x" * 65}, 1),
        ({"op": 3}, 1),
        ({"args": [1]}, 1),
        ({"extra": 1}, 1),
    ],
)
def test_broken_envelopes_are_eproto_and_echo_the_seq_when_readable(overrides, seq_echoed):
    with pytest.raises(envelope.EnvelopeError) as err:
        envelope.decode_request(frame(**overrides))
    assert err.value.code is ErrorCode.EPROTO
    assert err.value.seq == seq_echoed


def test_unknown_operation_is_enosys_and_wrong_endpoint_is_eperm():
    with pytest.raises(WireError) as err:
        lookup("format_disk", Endpoint.GUEST)
    assert err.value.code is ErrorCode.ENOSYS
    with pytest.raises(WireError) as err:
        lookup("mem_set", Endpoint.GUEST)  # a guest cannot set targets
    assert err.value.code is ErrorCode.EPERM


@pytest.mark.parametrize(
    "op, args",
    [
        ("increase_reservation", {}),
        ("increase_reservation", {"nr_pages": 0}),
        ("increase_reservation", {"nr_pages": -5}),
        ("increase_reservation", {"nr_pages": MAX_BATCH_PAGES + 1}),
        ("increase_reservation", {"nr_pages": 1 << 70}),
        ("increase_reservation", {"nr_pages": "10"}),
        ("increase_reservation", {"nr_pages": 1.5}),
        ("increase_reservation", {"nr_pages": True}),
        ("increase_reservation", {"nr_pages": 1, "bonus": 2}),
        ("decrease_reservation", {"extents": []}),
        ("decrease_reservation", {"extents": [[0]]}),
        ("decrease_reservation", {"extents": [[0, 0]]}),
        ("decrease_reservation", {"extents": [[-1, 4]]}),
        ("decrease_reservation", {"extents": [[0, "4"]]}),
        ("decrease_reservation", {"extents": [[0, 400], [1000, 200]]}),
        ("decrease_reservation", {"extents": "0-4"}),
        ("register", {"name": "", "memory_pages": 1, "max_pages": 1}),
        ("register", {"name": "a\x00b", "memory_pages": 1, "max_pages": 1}),
        ("register", {"name": "a", "memory_pages": 0, "max_pages": 1}),
        ("register", {"name": "a", "memory_pages": 1}),
        ("status", {"balloon": {"state": ["done"]}}),
        ("status", {"balloon": [1]}),
        ("mem_set", {"domain": 1.0, "target_pages": 5}),
        ("mem_set", {"domain": 40000, "target_pages": 5}),
        ("mem_set", {"domain": "a", "target_pages": -1}),
    ],
)
def test_bad_arguments_are_einval(op, args):
    operation = lookup(op, Endpoint.GUEST if op in {"register", "increase_reservation", "decrease_reservation", "status"} else Endpoint.ADMIN)
    with pytest.raises(WireError) as err:
        operation.validate(args)
    assert err.value.code is ErrorCode.EINVAL
    assert err.value.message


def test_extents_decode_to_records():
    args = lookup("decrease_reservation", Endpoint.GUEST).validate({"extents": [[10, 2], [40, 510]]})
    assert args["extents"] == [Extent(10, 2), Extent(40, 510)]


@pytest.mark.parametrize(
    "text, size",
    [("1024", 1 << 20), ("4k", 4096), ("512m", 512 << 20), ("2g", 2 << 30), ("1t", 1 << 40), ("100b", 100), ("1.5g", 3 << 29), ("1GiB", 1 << 30), ("64MB", 64 << 20)],
)
def test_xl_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1g", "1x", "g"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_round_up_to_pages():
    assert size_to_pages("1") == 1 and size_to_pages("4") == 1 and size_to_pages("5") == 2


def test_multipart_send_and_receive_keep_a_message_whole():
    import zmq

    from wire import multipart

    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind("inproc://multipart")
        dealer.connect("inproc://multipart")
        multipart.send(dealer, [b"", b"two", b"three"])
        multipart.send(dealer, [b"single"])
        assert router.poll(2000)
        identity, *rest = multipart.receive(router, multipart.NOBLOCK)
        assert rest == [b"", b"two", b"three"]
        assert multipart.receive(router, multipart.NOBLOCK)[1:] == [b"single"]
        with pytest.raises(zmq.Again):
            multipart.receive(router, multipart.NOBLOCK)
        multipart.send(router, [identity, b"back"], multipart.NOBLOCK)
        assert dealer.poll(2000) and multipart.receive(dealer) == [b"back"]
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_receive_routed_tells_req_from_a_dealers_two_frames(tmp_path):
    """The peer type comes from the connection (ZMTP metadata), not from the frames' shape."""
    import zmq

    from wire import multipart

    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/routed"
    router, req, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.REQ), ctx.socket(zmq.DEALER)
    try:
        router.bind(endpoint)
        req.connect(endpoint)
        dealer.connect(endpoint)
        req.send(b"from req")
        assert router.poll(2000)
        identity, frames, is_req, _ = multipart.receive_routed(router)
        assert (frames, is_req) == ([b"from req"], True)
        multipart.send(router, [*multipart.envelope_of(identity, is_req), b"answer"])
        assert req.poll(2000) and req.recv() == b"answer"
        dealer.send_multipart([b"", b"payload"])
        assert router.poll(2000)
        _, frames, is_req, _ = multipart.receive_routed(router)
        assert (frames, is_req) == ([b"", b"payload"], False)
    finally:
        for sock in (router, req, dealer):
            sock.close(0)
        ctx.term()


def test_receive_routed_names_the_key_a_curve_peer_authenticated_with(tmp_path):
    """On a CURVE ROUTER the message carries its connection's key (the ZAP handler's User-Id):
    each client's own public key, Z85; None when the caller does not ask (an insecure server)."""
    import zmq

    from wire import multipart
    from wire.keys import KeyDir, Role
    from wire.security import Security, Server

    keys = KeyDir(tmp_path / "keys")
    server_side = Security.curve(keys, "hypervisor", Role.HYPERVISOR)
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/curve"
    router = ctx.socket(zmq.ROUTER)
    clients = {name: ctx.socket(zmq.DEALER) for name in ("guest-a", "guest-b")}
    try:
        server_side.secure_server(router)
        router.bind(endpoint)
        for name, sock in clients.items():
            Security.curve(keys, name, Role.GUEST).secure_client(sock, Server.HYPERVISOR)
            sock.connect(endpoint)
        seen = {}
        for name, sock in clients.items():
            sock.send(name.encode())
            assert router.poll(5000)
            _, frames, _, user = multipart.receive_routed(router, 0, authenticated=True)
            seen[frames[0].decode()] = user
        assert seen == {name: keys.public(name).decode() for name in clients}
        clients["guest-a"].send(b"again")
        assert router.poll(5000)
        assert multipart.receive_routed(router)[3] is None
    finally:
        for sock in (router, *clients.values()):
            sock.close(0)
        ctx.destroy(0)


@pytest.mark.timeout(20)
def test_the_client_resends_a_request_the_server_could_not_take_yet(tmp_path):
    """EAGAIN means "not executed": the same frame goes again after a pause, within the budget."""
    import threading

    import zmq

    from wire import multipart
    from wire.client import RpcClient
    from wire.security import Security, Server
    from wire.errors import RemoteError

    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/eagain"
    server = ctx.socket(zmq.ROUTER)
    server.bind(endpoint)
    seen: list[bytes] = []

    def serve(answers: list[dict]) -> None:
        for answer in answers:
            assert server.poll(5000)
            identity, frames, _, _ = multipart.receive_routed(server)
            seen.append(frames[0])
            seq = msgpack.unpackb(frames[0])["seq"]
            multipart.send(server, [identity, envelope.encode({"v": 1, "seq": seq, **answer})])

    busy = {"ok": False, "error": "EAGAIN", "message": "full"}
    try:
        thread = threading.Thread(target=serve, args=([busy, busy, {"ok": True, "result": {"x": 1}}],))
        thread.start()
        with RpcClient(endpoint, server=Server.HYPERVISOR, security=Security.insecure_mode(), context=ctx, timeout=1.0, retries=3) as client:
            assert client.call("mem_set", {"domain": "a", "target_pages": 1}) == {"x": 1}
        thread.join(5)
        assert len(seen) == 3 and len(set(seen)) == 1  # the very same frame, three times
        thread = threading.Thread(target=serve, args=([busy, busy],))
        thread.start()
        with RpcClient(endpoint, server=Server.HYPERVISOR, security=Security.insecure_mode(), context=ctx, timeout=1.0, retries=1) as client, pytest.raises(RemoteError) as err:
            client.call("mem_set", {"domain": "a", "target_pages": 1})
        assert err.value.code == "EAGAIN"
        thread.join(5)
    finally:
        server.close(0)
        ctx.term()


# -- chip_commands: the table of pin commands against the rule it stands for -----------------------

from hypothesis import given as _given, settings as _settings, strategies as _st  # noqa: E402

from wire.operations import CASCADE_PIN, CHIP_KINDS, IRQBUS_PINS, MAX_CHIP_OPS, ChipCommand, chip_commands  # noqa: E402

_odd_kinds = _st.sampled_from((*CHIP_KINDS, "bogus", "", ["mask"], b"mask", None, 1))
_odd_pins = _st.sampled_from((0, 1, 2, 15, 16, 23, 24, -1, True, False, 1.0, "1", [1], None))
_chip_items = _st.one_of(
    _st.fixed_dictionaries({"kind": _odd_kinds, "pin": _odd_pins}),
    _st.fixed_dictionaries({"kind": _odd_kinds, "device": _st.sampled_from(("nic", "bad name", 3))}),
    _st.fixed_dictionaries({"kind": _odd_kinds}),
    _st.just([]),
)


@pytest.mark.timeout(30)
@_settings(max_examples=400, deadline=None)
@_given(_st.one_of(_st.lists(_chip_items, max_size=MAX_CHIP_OPS + 2), _st.just("ops"), _st.none()))
def test_chip_commands_accept_exactly_the_valid_operations(value):
    """A pin command is accepted iff its kind is one of CHIP_KINDS (a str) and its pin an int
    (not a bool) of 0..23 but the cascade; anything else is a WireError, never another error."""
    def valid(item):
        if type(item) is not dict or len(item) != 2 or type(item.get("kind")) is not str or item["kind"] not in CHIP_KINDS:
            return False
        if "pin" in item:
            return type(item["pin"]) is int and 0 <= item["pin"] < IRQBUS_PINS and item["pin"] != CASCADE_PIN
        return item.get("device") == "nic"
    ok = type(value) is list and len(value) <= MAX_CHIP_OPS and all(valid(i) for i in value)
    if not ok:
        with pytest.raises(WireError):
            chip_commands("ops", value)
        return
    expected = [ChipCommand(i["kind"], i.get("pin"), i.get("device")) for i in value]
    got = chip_commands("ops", value)
    assert got == expected and [type(c.pin) for c in got] == [type(c.pin) for c in expected]


_msgpack_values = _st.recursive(
    _st.none() | _st.booleans() | _st.integers(-(1 << 63), (1 << 64) - 1) | _st.text(max_size=20) | _st.binary(max_size=20),
    lambda inner: _st.lists(inner, max_size=3) | _st.dictionaries(_st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.timeout(30)
@_settings(max_examples=300, deadline=None)
@_given(_st.text(max_size=70), _st.integers(0, envelope.MAX_SEQ), _st.text(min_size=1, max_size=64),
        _st.dictionaries(_st.text(max_size=10), _msgpack_values, max_size=4))
def test_encode_request_packs_the_bytes_encode_of_request_does(op, seq, client, args):
    """A client's requests are packed from parts cached per op and per client: the same bytes as
    the whole map packed each time, so a server (and the replay record's digest) sees no difference."""
    part = envelope.client_part(client)
    for _ in range(2):  # the second time from the cached head
        assert envelope.encode_request(op, seq, part, args) == envelope.encode(envelope.request(op, seq, client, args))
