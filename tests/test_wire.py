"""The protocol between nodes as bytes (towtruck.cluster.wire): what encodes decodes,
and whatever a peer sends decodes to something well-formed or the documented error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from towtruck.cluster import wire
from towtruck.errors import BadRequest, InvalidActorId, InvalidJSON


def test_a_call_decodes_as_it_was_encoded() -> None:
    envelope = wire.encode_call("a1", "add", {"x": [1, 2]}, ("caller",), 2.5, 2, existing=True)
    assert wire.decode_call(envelope) == wire.Call(
        "a1", "add", {"x": [1, 2]}, ("caller",), 2.5, 2, True
    )


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        (b"not json", InvalidJSON),
        (b"[]", BadRequest),
        (b'{"id": "a", "method": "m"}', BadRequest),
        (
            b'{"id": "a", "method": 3, "chain": [], "timeout": 1, "hops": 1, "existing": false}',
            BadRequest,
        ),
        (
            b'{"id": "a", "method": "m", "chain": [], "timeout": "x", "hops": 1, "existing": false}',
            BadRequest,
        ),
        (
            b'{"id": "", "method": "m", "chain": [], "timeout": 1, "hops": 1, "existing": false}',
            InvalidActorId,
        ),
        (
            b'{"id": "a", "method": "m", "chain": null, "timeout": 1, "hops": 1, "existing": false}',
            BadRequest,
        ),
        (
            b'{"id": "a", "method": "m", "chain": [""], "timeout": 1, "hops": 1, "existing": false}',
            InvalidActorId,
        ),
    ],
)
def test_a_broken_envelope_is_refused_as_documented(envelope: bytes, error: type) -> None:
    with pytest.raises(error):
        wire.decode_call(envelope)


@settings(max_examples=200, derandomize=True)
@given(st.binary(max_size=200) | st.from_regex(rb'\{"id": .{0,20}, "method": .{0,20}\}'))
def test_any_bytes_decode_or_raise_the_documented_errors(envelope: bytes) -> None:
    try:
        call = wire.decode_call(envelope)
    except (InvalidJSON, BadRequest, InvalidActorId):
        return
    assert isinstance(call.method, str)
    assert isinstance(call.existing, bool)


def test_frames_split_at_their_boundaries_only() -> None:
    data = wire.frame(1, wire.CALL, b"hello") + wire.answer_frame(2, 200, b"{}")
    buffer = bytearray(data[:7])
    assert wire.split(buffer) == []
    assert buffer == data[:7]
    buffer += data[7:-1]
    assert wire.split(buffer) == [(1, b"C", b"hello")]
    buffer += data[-1:]
    assert wire.split(buffer) == [(2, b"A", b"\x00\xc8{}")]
    assert buffer == b""
    assert wire.decode_answer(b"\x00\xc8{}") == (200, b"{}")
    assert wire.decode_answer(b"\x00") is None


@settings(max_examples=200, derandomize=True)
@given(st.binary(max_size=100))
def test_any_bytes_split_into_frames_or_raise_bad_frame(data: bytes) -> None:
    buffer = bytearray(data)
    try:
        frames = wire.split(buffer)
    except wire.BadFrame:
        return
    rebuilt = b"".join(wire.frame(number, kind, body) for number, kind, body in frames)
    assert rebuilt + bytes(buffer) == data


def test_a_heartbeat_reads_back_and_garbage_reads_as_nothing() -> None:
    rumour = {"address": "b:1", "live": "suspect", "incarnation": 0, "born": 1}
    fields = {"digest": "d", "gossip": [rumour], "incarnation": 4, "bloom": 7, "actors": 0}
    message = wire.hello("a:1", records=[{"address": "a:1"}], downs=2, probe="c:1", **fields)
    assert message["protocol"] == wire.PROTOCOL_VERSION
    assert wire.hello_sender(message) == "a:1"
    assert wire.hello_name("b:1", message) == "a:1"
    assert wire.hello_records(message) == [{"address": "a:1"}]
    assert wire.hello_downs(message) == 2
    assert wire.hello_gossip(message) == [rumour]
    assert wire.hello_int(message, "bloom") == 7
    assert wire.hello_str(message, "probe") == "c:1"
    assert wire.hello_str(message, "digest") == "d"
    bare = wire.hello("a:1", **fields)
    assert not {"downs", "members", "probe", "sync"} & set(bare)
    for garbage in [None, [], "x", {"from": 3, "members": {}, "downs": True}, {"from": "::"}]:
        assert wire.hello_name("b:1", garbage) == "b:1"
        assert wire.hello_records(garbage) == []
        assert wire.hello_downs(garbage) is None
        assert wire.hello_gossip(garbage) == []
        assert wire.hello_int(garbage, "bloom") is None
        assert wire.hello_str(garbage, "digest") is None
