"""The examples do what their docstrings say."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

import towtruck
from examples import position
from tests.helpers import NETWORK_TEST_SECONDS


async def test_position_remembers_and_logs_its_lifecycle(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="examples.position")
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(position.create_actor) as node:
            url = f"{node.url}/invoke/1"
            assert (await http.get(f"{url}/setposition/-29.4758/-100.4162")).json() is None
            assert (await http.get(f"{url}/getposition")).json() == {
                "lat": -29.4758,
                "lon": -100.4162,
            }
            await http.post(f"{url}/setposition", json={"lat": 1, "lon": 2})
            assert (await http.get(f"{url}/getposition")).json() == {"lat": 1.0, "lon": 2.0}
            assert (await http.get(f"{node.url}/invoke/2/getposition")).json() == {
                "lat": 0.0,
                "lon": 0.0,
            }
    messages = [r.getMessage() for r in caplog.records if r.name == "examples.position"]
    assert messages[:2] == ["actor 1: getting ready", "actor 2: getting ready"]
    assert sorted(messages[2:]) == ["actor 1: bye bye", "actor 2: bye bye"]
