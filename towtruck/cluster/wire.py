"""What nodes say to each other, as bytes: the forwarded call's envelope, lane frames,
the paths and header names of the cluster's protocol, and its version.

No I/O and no trio here (as Hypercorn keeps its ``protocol`` package I/O-free): the
lanes (:mod:`towtruck.transport.lanes`) and the HTTP paths between nodes use these
functions, and tests fuzz them directly. Every decoder takes whatever a peer sent and
either returns something well-formed or raises the one error it documents.

A forwarded call's envelope is JSON (what ``POST /cluster/forward`` takes and a lane's
call frame carries)::

    {"id": actor id, "method": name, "data": JSON, "chain": [actor ids],
     "timeout": seconds left, "hops": times forwarded, "existing": bool,
     "hook": true (only for towtruck's own call of a hook: a reminder's tick)}

A heartbeat (``POST /cluster/heartbeat``), and the answer to one::

    {"from": the sender's host:port, "protocol": PROTOCOL_VERSION,
     "digest": hash of its decisions, "gossip": [records and liveness rumours],
     "incarnation": its own, "bloom": its filter's version, "actors": ids in it,
     "members": [every decision] (only when the digests differ, or to join),
     "downs": times it took the receiver for down,
     "sync": true (every decision back, if the digests differ),
     "probe": host:port to probe for the sender (the answer says "reached": bool)}

A lane frame::

    frame  = length (4 bytes, big-endian: what follows) | number (8) | kind (1) | body
    call   : kind "C", body = the call's envelope
    answer : kind "A", body = HTTP status (2 bytes) | the answer (JSON: result or error)
    probe  : kind "P", empty; the answering end sends back at once, from its reader,
    reply  : kind "Q", empty (older nodes ignore kinds they do not know)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from .. import codec
from ..errors import BadRequest, InvalidAddress
from ..ids import Address, check_actor_id
from ..runtime import MAX_ANSWER

__all__ = [
    "ANSWER",
    "CALL",
    "CLUSTER_KEY_HEADER",
    "FORWARD_PATH",
    "LANE_PATH",
    "MAX_FRAME",
    "PROBE",
    "PROBED",
    "PROTOCOL_VERSION",
    "UPGRADE",
    "BadFrame",
    "Call",
    "answer_frame",
    "decode_answer",
    "decode_call",
    "encode_call",
    "frame",
    "hello",
    "hello_downs",
    "hello_gossip",
    "hello_int",
    "hello_name",
    "hello_records",
    "hello_sender",
    "hello_str",
    "split",
]

#: The version of the protocol between nodes, sent with every heartbeat. A node
#: ignores what it does not know (keys, frame kinds), so a change that only adds stays
#: at this version; one that changes a meaning takes the next.
PROTOCOL_VERSION: Final = 1
#: The header that carries the cluster key between nodes.
CLUSTER_KEY_HEADER: Final = "towtruck-cluster-key"
#: Where a node posts a call it forwards, when it has no lane to the peer.
FORWARD_PATH: Final = b"/cluster/forward"
#: The path a node asks a peer to upgrade to a lane, and the protocol it asks for.
LANE_PATH: Final = b"/cluster/lane"
UPGRADE: Final = b"towtruck-lane"

CALL: Final = b"C"
ANSWER: Final = b"A"
PROBE: Final = b"P"
PROBED: Final = b"Q"
_HEAD: Final = struct.Struct(">IQc")  # length, number, kind
_LENGTH: Final = struct.Struct(">I")
_STATUS: Final = struct.Struct(">H")
#: Largest frame body a lane carries: an answer of ``MAX_ANSWER`` and its status. A
#: call's envelope past it is refused with 413, an answer past it is answered as an
#: error instead, and a peer announcing a larger frame is cut off (its lane closed).
MAX_FRAME: Final = MAX_ANSWER + _STATUS.size


class Call(NamedTuple):
    """A forwarded call, as its envelope says."""

    actor_id: str
    method: str
    data: Any
    chain: tuple[str, ...]
    #: Seconds it has left, as the sender counted them.
    timeout: float
    #: Times it has been forwarded, this time included.
    hops: int
    #: Whether the sender found the actor active here (do not activate it afresh).
    existing: bool
    #: towtruck's own call of a hook (see ``CallContext.hook``).
    hook: bool = False
    #: The W3C ``traceparent`` of the call it was made from (see :mod:`towtruck.tracing`).
    traceparent: str | None = None


def encode_call(
    actor_id: str,
    method: str,
    data: Any,
    chain: Sequence[str],
    timeout: float,
    hops: int,
    *,
    existing: bool,
    hook: bool = False,
    traceparent: str | None = None,
) -> bytes:
    """The envelope of a call being forwarded (``hops`` counts this forward)."""
    envelope = {
        "id": actor_id,
        "method": method,
        "data": data,
        "chain": chain,
        "timeout": timeout,
        "hops": hops,
        "existing": existing,
    }
    if hook:
        envelope["hook"] = True
    if traceparent is not None:
        envelope["traceparent"] = traceparent
    return codec.dumps(envelope)


def decode_call(envelope: bytes) -> Call:
    """The call in an envelope a peer sent.

    Raises:
        InvalidJSON: it is not JSON.
        InvalidActorId: an actor id in it is not one.
        BadRequest: it is JSON, but not a call's envelope.
    """
    call = codec.loads_envelope(envelope)
    try:
        actor_id = check_actor_id(call["id"])
        method = call["method"]
        links = call["chain"]
        chain = () if links == [] else tuple(check_actor_id(link) for link in links)
        timeout = float(call["timeout"])
        hops = int(call["hops"])
        existing = call["existing"]
        if not isinstance(method, str) or not isinstance(existing, bool):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise BadRequest("not a forwarded call's envelope") from None
    hook = call.get("hook") is True
    traceparent = call.get("traceparent")
    if not isinstance(traceparent, str):
        traceparent = None
    return Call(
        actor_id, method, call.get("data"), chain, timeout, hops, existing, hook, traceparent
    )


def frame(number: int, kind: bytes, body: bytes) -> bytes:
    """One lane frame."""
    return _HEAD.pack(len(body) + 9, number, kind) + body


def answer_frame(number: int, status: int, answer: bytes) -> bytes:
    """The frame that answers call ``number``."""
    return frame(number, ANSWER, _STATUS.pack(status) + answer)


class BadFrame(Exception):
    """The peer sent something that is not a lane frame: the lane is closed."""


def split(buffer: bytearray) -> list[tuple[int, bytes, bytes]]:
    """Take the complete frames (number, kind, body) off the front of ``buffer``.

    Raises:
        BadFrame: a frame's length is impossible.
    """
    frames = []
    start, size = 0, len(buffer)
    while size - start >= 4:
        (length,) = _LENGTH.unpack_from(buffer, start)
        if not 9 <= length <= MAX_FRAME + 9:
            raise BadFrame(f"a frame of {length} bytes")
        end = start + 4 + length
        if end > size:
            break
        _, number, kind = _HEAD.unpack_from(buffer, start)
        frames.append((number, kind, bytes(buffer[start + 13 : end])))
        start = end
    del buffer[:start]
    return frames


def decode_answer(body: bytes) -> tuple[int, bytes] | None:
    """The status and answer in an answer frame's body; None if it is too short."""
    if len(body) < _STATUS.size:
        return None
    (status,) = _STATUS.unpack_from(body)
    return status, body[_STATUS.size :]


def hello(
    sender: str,
    *,
    digest: str,
    gossip: list[dict[str, Any]],
    incarnation: int,
    bloom: int,
    actors: int,
    records: list[dict[str, Any]] | None = None,
    downs: int | None = None,
    sync: bool = False,
    probe: str | None = None,
) -> dict[str, Any]:
    """A heartbeat, or the answer to one: the sender's name, the digest of its
    decisions, the rumours it passes on, its incarnation, its filter's version and how
    many ids it holds; all
    its decisions (``records``) when the two digests differ or it joins; how many times
    it took the receiver for down (``None``: an answer to a stranger); whether it wants
    every decision back if the digests differ (``sync``); the peer to probe on the
    sender's behalf (``probe``)."""
    message: dict[str, Any] = {
        "from": sender,
        "protocol": PROTOCOL_VERSION,
        "digest": digest,
        "gossip": gossip,
        "incarnation": incarnation,
        "bloom": bloom,
        "actors": actors,
    }
    if records is not None:
        message["members"] = records
    if downs is not None:
        message["downs"] = downs
    if sync:
        message["sync"] = True
    if probe is not None:
        message["probe"] = probe
    return message


def hello_int(message: Any, key: str) -> int | None:
    """An integer field of a heartbeat (``incarnation``, ``bloom``, ``downs``), or None."""
    value = message.get(key) if isinstance(message, dict) else None
    return value if type(value) is int else None


def hello_str(message: Any, key: str) -> str | None:
    """A string field of a heartbeat (``digest``, ``probe``), or None."""
    value = message.get(key) if isinstance(message, dict) else None
    return value if isinstance(value, str) else None


def hello_gossip(message: Any) -> list[Any]:
    """The rumours piggybacked on a heartbeat (none if malformed; each is checked as it
    is taken in)."""
    gossip = message.get("gossip") if isinstance(message, dict) else None
    return gossip if isinstance(gossip, list) else []


def hello_sender(message: Any) -> str | None:
    """Who sent a heartbeat, as it says (unchecked), or None."""
    sender = message.get("from") if isinstance(message, dict) else None
    return sender if isinstance(sender, str) else None


def hello_name(peer: str, reply: Any) -> str:
    """The name ``peer`` goes by, from its answer to a heartbeat (``peer`` itself if
    the answer names none, or names no address)."""
    name = hello_sender(reply)
    try:
        return str(Address.parse(name)) if name is not None else peer
    except InvalidAddress:
        return peer


def hello_records(message: Any) -> list[Any]:
    """The membership records in a heartbeat or its answer (none if malformed; each
    record is checked as it is merged)."""
    members = message.get("members") if isinstance(message, dict) else None
    return members if isinstance(members, list) else []


def hello_downs(message: Any) -> int | None:
    """How many times the sender of a heartbeat took the receiver for down, or None."""
    return hello_int(message, "downs")
