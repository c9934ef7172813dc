"""What towtruck logs: one JSON object a line with ``log_format=json``, and the cluster's
notable events."""

from __future__ import annotations

import json
import logging

import pytest
import trio

import towtruck
from examples import greeter
from tests.helpers import FAST, TEST_SECONDS
from towtruck.process import JsonFormatter


def test_a_json_line_has_the_record_its_extras_and_its_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger("towtruck.x").makeRecord(
            "towtruck.x", logging.ERROR, __file__, 1, "actor %r failed", ("a\\n1",), None
        )
        import sys

        record.exc_info = sys.exc_info()
    record.actor = "a1"
    record.node = object()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["logger"] == "towtruck.x"
    assert entry["message"] == "actor 'a\\\\n1' failed"
    assert entry["actor"] == "a1"
    assert entry["node"].startswith("<object")
    assert "ValueError: bad" in entry["exception"]
    assert entry["time"].endswith("+00:00")


async def test_joins_leaves_and_downs_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="towtruck")
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(greeter.create_actor, size=2, **FAST) as c:
            await c.add_node()
            third = c.nodes[2]
            await c.stop(third)
    text = caplog.text
    assert f"joined the cluster: {third.address}" in text
    assert "leaving the cluster" in text
    assert f"left the cluster: {third.address}" in text
