"""JSON in and out of actors: what Python values become, and clear errors for those
JSON cannot carry (results, call data, request bodies)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import towtruck
from tests.helpers import NETWORK_TEST_SECONDS, owned_by
from towtruck import codec

DEADLINE = 10_000


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def cycle() -> list[Any]:
    looped: list[Any] = []
    looped.append(looped)
    return looped


#: What ``give`` returns, by name.
RESULTS: dict[str, Any] = {
    "big_int": {"n": 2**70},
    "tuple_key": {"rows": {(1, 2): "x"}},
    "set": {"tags": {1, 2}},
    "object": [1, object()],
    "bytes": {"raw": b"\x00"},
    "surrogate": {"s": "\ud800"},
    "cycle": cycle(),
    "dataclass_field": [Point(1, {2})],  # type: ignore[arg-type]
    "documented": {
        "nan": math.nan,
        "infinity": -math.inf,
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 1, 2),
        "id": uuid.UUID(int=1),
        "colour": Colour.RED,
        "point": Point(1, 2),
        "pair": (1, 2),
        "keys": {1: "int", None: "none", 2.5: "float"},
        "u64": 2**64 - 1,
        "i64": -(2**63),
    },
}


def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
    def give(data: Any) -> Any:
        return RESULTS[data[0] if isinstance(data, list) else data]

    def echo(data: Any) -> Any:
        return data

    def seen(data: Any) -> str:
        return repr(data)

    return {"give": give, "echo": echo, "seen": seen}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("big_int", ["result['n']", "int", "1180591620717411303424", "64 bits", "use a str"]),
        ("tuple_key", ["result['rows']", "dict key of type tuple", "(1, 2)", "use str keys"]),
        ("set", ["result['tags']", "a set", "use a list"]),
        ("object", ["result[1]", "an object", "use a dict, list, str"]),
        ("bytes", ["result['raw']", "bytes", "use a str"]),
        ("surrogate", ["result['s']", "surrogate"]),
        ("cycle", ["nests deeper than", "contain itself"]),
        ("dataclass_field", ["result[0].y", "a set"]),
    ],
)
async def test_a_result_json_cannot_carry_is_its_own_error_saying_what_to_return(
    autojump_clock: trio.testing.MockClock, name: str, says: list[str]
) -> None:
    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE), pytest.raises(towtruck.ResultNotJSON) as caught:
            await runtime.client.invoke("a", "give", name)
        assert await runtime.client.invoke("a", "echo", "alive") == "alive"
    error = caught.value
    assert isinstance(error, towtruck.ActorError)
    assert error.status == 500
    assert (error.details["actor"], error.details["method"]) == ("a", "give")
    assert error.message.startswith("the result of 'give' on actor 'a' cannot be sent as JSON")
    for text in says:
        assert text in error.message
    assert "OPT_NON_STR_KEYS" not in error.message
    assert "the actor's method raised" not in error.message


async def test_nan_infinity_datetimes_and_friends_encode_as_documented(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            answer = await runtime.client.invoke("a", "give", "documented")
    assert answer == {
        "nan": None,
        "infinity": None,
        "when": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
        "id": "00000000-0000-0000-0000-000000000001",
        "colour": "red",
        "point": {"x": 1, "y": 2},
        "pair": [1, 2],
        "keys": {"1": "int", "null": "none", "2.5": "float"},
        "u64": 2**64 - 1,
        "i64": -(2**63),
    }


@pytest.mark.parametrize(
    "body",
    [
        b"123456789012345678901234567890",
        b'{"n": 18446744073709551616}',
        b"[-9223372036854775809]",
        b'{"deep": [[[-9300000000000000000]]]}',
        b'{"a":\n -9300000000000000000, "b": "1234567890123456789"}',
        "[1,\t12345678901234567890123]",
    ],
)
def test_an_integer_past_64_bits_in_a_body_is_refused_not_rounded(body: bytes | str) -> None:
    with pytest.raises(towtruck.InvalidJSON, match="past 64 bits") as caught:
        codec.loads(body)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b"18446744073709551615", 2**64 - 1),
        (b"[-9223372036854775808]", [-(2**63)]),
        (b'{"id": "12345678901234567890123456789"}', {"id": "12345678901234567890123456789"}),
        ('["-12345678901234567890123456789"]', ["-12345678901234567890123456789"]),
        (b"1234567890123456789012e-3", 1234567890123456789012e-3),
        (b"0.12345678901234567890123", 0.12345678901234567890123),
        (b'{"a": 1, "b": [2.5, null]}', {"a": 1, "b": [2.5, None]}),
    ],
)
def test_integers_within_64_bits_and_long_digits_elsewhere_decode_as_they_are(
    body: bytes, value: Any
) -> None:
    assert codec.loads(body) == value


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"x": {1, 2}}, "data['x'] is a set: use a list"),
        ([2**64], "data[0] is an int past 64 bits"),
        ({(1, 2): 3}, "data has a dict key of type tuple"),
    ],
)
async def test_call_data_json_cannot_carry_is_a_clear_type_error(
    autojump_clock: trio.testing.MockClock, data: Any, says: str
) -> None:
    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE), pytest.raises(TypeError) as caught:
            await runtime.client.invoke("a", "echo", data)
    message = str(caught.value)
    assert message.startswith("data for 'echo' on actor 'a' cannot be sent as JSON")
    assert says in message


async def test_over_http_a_big_integer_is_a_400_and_a_bad_result_a_clear_500(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_actor) as node:
            body = b'{"n": 123456789012345678901234567890}'
            answer = await http.post(f"{node.url}/invoke/1/echo", content=body)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["type"] == "InvalidJSON"
            assert "past 64 bits" in error["message"]
            answer = await http.get(f"{node.url}/invoke/1/give/tuple_key")
            assert answer.status_code == 500, answer.text
            error = answer.json()["error"]
            assert error["type"] == "ResultNotJSON"
            assert "dict key of type tuple" in error["message"]
            answer = await http.post(f"{node.url}/invoke/1/echo", content=b"18446744073709551615")
            assert answer.json() == 2**64 - 1


async def test_a_result_json_cannot_carry_is_the_same_error_from_another_node() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.cluster(create_actor, size=2) as c:
            first, second = c.nodes
            (remote,) = owned_by(second, c.nodes, 1, "r")
            with pytest.raises(towtruck.ResultNotJSON) as caught:
                await first.client.invoke(remote, "give", "big_int")
            assert c.holders(remote) == [second]
    assert "result['n'] is an int past 64 bits" in caught.value.message
    assert caught.value.details["node"] == str(second.address)


async def test_call_data_is_what_the_actor_would_get_from_another_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            assert await runtime.client.invoke("a", "seen", math.nan) == "None"
            assert await runtime.client.invoke("a", "seen", [-math.inf]) == "[None]"
            assert await runtime.client.invoke("a", "seen", (1, "x")) == "[1, 'x']"
            assert await runtime.client.invoke("a", "seen", 2**64 - 1) == repr(2**64 - 1)
