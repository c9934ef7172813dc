import pytest
from hypothesis import given
from hypothesis import strategies as st

import towtruck
from towtruck import errors


def _leaves(cls: type[towtruck.TowtruckError]) -> set[type[towtruck.TowtruckError]]:
    subclasses = cls.__subclasses__()
    if not subclasses:
        return {cls}
    return set().union(*(_leaves(sub) for sub in subclasses))


def test_every_leaf_has_a_status() -> None:
    leaves = _leaves(towtruck.TowtruckError)
    assert leaves, "the tree has leaves"
    for leaf in leaves:
        assert leaf in errors.STATUS, f"{leaf.__name__} is missing from errors.STATUS"


def test_every_error_is_exported_and_documented() -> None:
    for cls in errors.STATUS:
        assert getattr(towtruck, cls.__name__) is cls
        assert cls.__name__ in errors.__doc__
        assert cls.__doc__


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (towtruck.InvalidJSON, 400),
        (towtruck.InvalidActorId, 400),
        (towtruck.MethodNotFound, 404),
        (towtruck.PayloadTooLarge, 413),
        (towtruck.ActorError, 500),
        (towtruck.MailboxFull, 503),
        (towtruck.CallTimeout, 504),
        (towtruck.ForwardingLoop, 508),
    ],
)
def test_status(cls: type[towtruck.TowtruckError], status: int) -> None:
    assert cls("x").status == status


def test_payload_round_trip() -> None:
    error = towtruck.ActorError("boom", exception="ValueError", actor="1", method="m")
    payload = error.to_payload()
    assert payload == {
        "error": {
            "type": "ActorError",
            "message": "boom",
            "exception": "ValueError",
            "actor": "1",
            "method": "m",
        }
    }
    again = errors.from_payload(payload)
    assert type(again) is towtruck.ActorError
    assert again.message == "boom"
    assert again.exception_type == "ValueError"


@pytest.mark.parametrize(
    "payload",
    [
        {"error": {"type": "KeyError", "message": "m"}},
        {"error": {"type": "__class__", "message": "m"}},
        {"no": "error"},
        ["not", "a", "dict"],
    ],
)
def test_payload_never_builds_foreign_classes(payload: object) -> None:
    error = errors.from_payload(payload, 502)
    assert type(error) is towtruck.InternalError


def test_unavailable_errors_say_when_to_retry() -> None:
    assert (b"retry-after", b"1") in towtruck.MailboxFull("x").headers


def test_payload_details_named_like_parameters_stay_details() -> None:
    payload = {"error": {"type": "ActorError", "message": "m", "self": 1, "cls": 2}}
    error = errors.from_payload(payload, 500)
    assert type(error) is towtruck.ActorError
    assert error.message == "m"
    assert error.details == {"self": 1, "cls": 2}
    assert error.remote


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "message", "self", "message2", "status", "headers"]) | st.text(),
        _json | st.sampled_from(["ActorError", "PeerUnavailable", "TowtruckError"]),
    )
    | _json,
    st.integers(min_value=0, max_value=65535),
)
def test_any_payload_a_peer_sends_is_rebuilt_as_an_error(body: object, status: int) -> None:
    for payload in (body, {"error": body}):
        error = errors.from_payload(payload, status)
        assert isinstance(error, towtruck.TowtruckError)
        assert isinstance(error.message, str)
        assert error.remote
