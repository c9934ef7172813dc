"""JSON in and out of towtruck: request bodies, results, errors, copies of messages.

orjson rather than the standard library's ``json``: it is several times faster on the
small documents calls carry, it refuses nesting deeper than 1,024 levels with an
ordinary decode error (``json`` recurses until Python's stack gives out), and its
output is bytes, which is what the HTTP layer sends.

What Python values become (orjson's rules, kept because they are what a JavaScript
client expects): dicts, lists and tuples, str, int, float, bool and None as JSON has
them; dict keys that are not strings (int, float, bool, None, dates, UUIDs, enums) as
strings, as ``json.dumps`` writes them; datetimes, dates and times as ISO 8601
strings, UUIDs as strings, enums as their values, dataclasses as objects; NaN and
the infinities as ``null``, as JavaScript's ``JSON.stringify`` writes them (the Node
project does the same). Integers must fit in 64 bits (-2**63 to 2**64 - 1) both ways:
past that, a JSON parser rounds them to a float without a word (orjson decodes
``123456789012345678901234567890`` as ``1.2345678901234568e+29``), so towtruck refuses
them instead: a result with one is :class:`~towtruck.errors.ResultNotJSON`, a body with
one :class:`~towtruck.errors.InvalidJSON`.

Everything else (sets, bytes, tuples as dict keys, arbitrary objects) is refused with
a message that names the part JSON cannot carry and what to use instead. Finding that
part is the slow path (:func:`why_not_json`): encoding itself costs what orjson costs.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import traceback
from typing import Any, Final

import orjson

from .errors import InternalError, InvalidJSON, TowtruckError

__all__ = [
    "copy",
    "dumps",
    "error_answer",
    "error_body",
    "loads",
    "loads_answer",
    "loads_envelope",
    "why_not_json",
]

_DUMPS_OPTIONS: Final = orjson.OPT_NON_STR_KEYS
# Values that cannot be changed after the call, so a local call may hand them over
# as they are instead of copying them.
_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None)})

# The integers orjson reads and writes exactly: i64 and u64.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# orjson turns an integer literal past 64 bits into a float. Every such literal has at
# least 19 digits (the shortest is -9223372036854775809), so only a body with a run of
# 19 digits needs a second look. The others pay one translation, every digit to "0",
# and one substring search for nineteen of them: a regex search for ``[0-9]{19}`` cost
# several times that (a pattern that also looks at what comes before the run, several
# times more again). A run that follows something a number cannot follow (a quote: a
# long numeric id in a string; a point: a float's fraction) is passed over. The second
# look parses again with the standard library's parser, whose ``parse_int`` hook sees
# each integer literal as text. (Walking orjson's result for large floats cannot tell
# ``1e30``, a float, from ``1000000000000000000000000000000``, an integer.)
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS: Final = b"0" * 19
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT: Final = re.compile(r"[0-9]{19}")
_BEFORE_A_NUMBER: Final = frozenset(b"[,: \t\n\r-")
# orjson refuses to encode containers nested deeper than this.
_MAX_NESTING: Final = 254


def loads(body: bytes | str) -> Any:
    """Decode a JSON document that came from outside (a request body).

    Raises:
        InvalidJSON: the document is not JSON, is empty, nests too deep, or holds an
            integer past 64 bits (it would be rounded).
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from exc
    if len(body) >= 19 and (
        _NINETEEN_DIGITS in body.translate(_DIGITS_TO_ZERO)
        if isinstance(body, bytes)
        else _LONG_DIGITS_TEXT.search(body)
    ):
        _check_integers(body)
    return value


def loads_envelope(envelope: bytes) -> Any:
    """Decode a forwarded call's envelope, which a peer's :func:`dumps` wrote: without
    the check for integers past 64 bits (:func:`dumps` writes none, and the data in it
    was checked on the node the call entered by).

    Raises:
        InvalidJSON: it is not JSON.
    """
    try:
        return orjson.loads(envelope)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from exc


def loads_answer(answer: bytes) -> Any:
    """Decode an answer :func:`dumps` wrote, on this node or a peer: without the check
    for integers past 64 bits, since :func:`dumps` never writes them.

    Raises:
        InternalError: it is not JSON (a broken peer sent it).
    """
    try:
        return orjson.loads(answer)
    except orjson.JSONDecodeError as exc:
        raise InternalError(f"an answer that is not JSON came back: {exc}") from None


def dumps(value: Any) -> bytes:
    """Encode a value as JSON (see the module's docstring for what becomes what).

    Raises:
        TypeError: the value holds something JSON cannot carry; the message says
            which part (see :func:`why_not_json`).
    """
    try:
        return orjson.dumps(value, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError:
        raise TypeError(why_not_json(value, "value")) from None


def copy(value: Any) -> Any:
    """A deep copy of a call's data made through JSON, as a call between nodes would
    make.

    Local calls copy their data so that caller and callee never share mutable state,
    and so that what works on one node works across nodes too.

    Raises:
        TypeError: the value is not JSON-able; the message says which part.
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        if kind is int and not _INT_MIN <= value <= _INT_MAX:
            raise TypeError(why_not_json(value, "data"))
        if kind is float and not math.isfinite(value):
            return None  # as JSON carries it
        return value
    try:
        return orjson.loads(orjson.dumps(value, option=_DUMPS_OPTIONS))
    except orjson.JSONEncodeError:
        raise TypeError(why_not_json(value, "data")) from None


def error_body(error: TowtruckError, *, debug: bool = False) -> bytes:
    """The JSON body of an error response; with ``debug``, the traceback too."""
    payload = error.to_payload()
    if debug:
        payload["error"]["traceback"] = traceback.format_exception(error)
    return dumps(payload)


def error_answer(
    error: TowtruckError, *, debug: bool = False
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as an HTTP answer: its status, headers and JSON body (see
    :func:`error_body`). Every error towtruck answers is rendered here."""
    body = error_body(error, debug=debug)
    length = (b"content-length", str(len(body)).encode())
    return error.status, [(b"content-type", b"application/json"), *error.headers, length], body


def why_not_json(value: Any, name: str) -> str:
    """Say which part of ``value`` JSON cannot carry, and what to use instead, naming
    the part as a Python expression from ``name`` (``result['tags'] is a set: use a
    list``). For the error path only: it encodes parts one by one to find the culprit.
    """
    return _find(value, name, 0) or f"{name} ({_kind(value)}) cannot be encoded as JSON"


def _check_integers(body: bytes | str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    if not any(
        match.start() == 0 or raw[match.start() - 1] in _BEFORE_A_NUMBER
        for match in _LONG_DIGITS.finditer(raw)
    ):
        return
    try:
        json.loads(body, parse_int=_int_within_64_bits)
    except _IntegerTooLarge as exc:
        raise InvalidJSON(
            f"the body holds the integer {exc.args[0]}, past 64 bits: JSON parsers round"
            " such numbers, so send it as a string",
            integer=exc.args[0],
        ) from None
    except RecursionError:
        raise InvalidJSON(
            "the body nests too deep to be checked for integers past 64 bits"
        ) from None


class _IntegerTooLarge(Exception):
    pass


def _int_within_64_bits(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits >= 19 and (digits > 20 or not _INT_MIN <= int(text) <= _INT_MAX):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-6:]} ({digits} digits)"
        raise _IntegerTooLarge(shown)
    return 0  # the second look only checks; orjson's result is the one used


def _fits(value: Any) -> bool:
    try:
        orjson.dumps(value, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError:
        return False
    return True


def _find(value: Any, where: str, depth: int) -> str | None:
    """The first part of ``value`` that does not encode, described; None if all do."""
    if depth > _MAX_NESTING:
        root = re.split(r"[\[.]", where, maxsplit=1)[0]
        return f"{root} nests deeper than {_MAX_NESTING} levels: does it contain itself?"
    if isinstance(value, dict):
        for key, item in value.items():
            if not _fits({key: None}):
                if isinstance(key, str):
                    return (
                        f"{where} has a dict key with a lone surrogate ({_short(key)}):"
                        " use valid Unicode text"
                    )
                return (
                    f"{where} has a dict key of type {type(key).__name__} ({_short(key)}):"
                    " use str keys"
                )
            if not _fits(item):
                return _find(item, f"{where}[{_short(key)}]", depth + 1)
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if not _fits(item):
                return _find(item, f"{where}[{index}]", depth + 1)
        return None
    if isinstance(value, enum.Enum):
        return _find(value.value, f"{where}.value", depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            item = getattr(value, field.name, None)
            if not _fits(item):
                return _find(item, f"{where}.{field.name}", depth + 1)
        return None
    if _fits(value):
        return None
    if isinstance(value, int):
        return f"{where} is an int past 64 bits ({_short(value)}): use a str"
    if isinstance(value, str):
        return f"{where} is a str with a lone surrogate ({_short(value)}): use valid Unicode text"
    if isinstance(value, (set, frozenset)):
        return f"{where} is {_kind(value)}: use a list"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{where} is {type(value).__name__}: use a str (base64, say)"
    return f"{where} is {_kind(value)}: use a dict, list, str, int, float, bool or None"


def _kind(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _short(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a repr that fails: name the type instead
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else f"{text[:57]}..."
