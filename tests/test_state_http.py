"""Persistent state over HTTP and across processes: the account example behind real
nodes, fencing between nodes that share a store but not a cluster, and state that
outlives a graceful restart and a ``kill -9``."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import trio

import towtruck
from examples import account

from .helpers import NETWORK_TEST_SECONDS, wait_until
from .processes import PROCESS_SECONDS, running, towtruck_command
from .stores import PostgresServer, RedisServer, postgres_server, redis_server

__all__ = ["postgres_server", "redis_server"]  # fixtures, used by name

SERVING = r"serving on (http://127\.0\.0\.1:\d+)"


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    server: RedisServer | PostgresServer = request.getfixturevalue(f"{request.param}_server")
    return server.url


async def test_the_state_route_shows_what_the_store_holds(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(
            account.create_actor, port=0, state_store=url, max_inactivity=0.01
        ) as node:
            deposit = await http.post(f"{node.url}/invoke/alice/deposit", json={"amount": 5})
            assert deposit.json() == {"balance": 5}
            state = (await http.get(f"{node.url}/actors/alice/state")).json()
            assert state == {
                "actor": "alice",
                "store": url,
                "epoch": 1,
                "states": {
                    "state": {"etag": state["states"]["state"]["etag"], "value": {"balance": 5}}
                },
            }
            assert (await http.get(f"{node.url}/actors/nobody/state")).json()["epoch"] == 0
            refused = await http.post(f"{node.url}/invoke/alice/deposit", json={"amount": "x"})
            assert refused.status_code == 500
            assert (await http.get(f"{node.url}/invoke/alice/balance")).json() == {"balance": 5}

            async def collected() -> bool:
                await http.get(f"{node.url}/rungc")
                return "alice" not in node.runtime.catalog

            await wait_until(collected)
            assert (await http.get(f"{node.url}/invoke/alice/balance")).json() == {"balance": 5}
            assert (await http.get(f"{node.url}/actors/alice/state")).json()["epoch"] == 2


@pytest.mark.parser_free  # the stores' contract (the state route: the tests above, on both)
async def test_a_redis_server_stopped_mid_run_fails_writes_with_503_and_the_node_serves_on(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    await trio.to_thread.run_sync(server.start)
    try:
        with trio.fail_after(NETWORK_TEST_SECONDS):
            async with towtruck.open_node(
                account.create_actor, port=0, state_store=server.url, store_timeout=2
            ) as node:
                alice = f"{node.url}/invoke/alice"
                assert (await http.post(f"{alice}/deposit", json={"amount": 5})).status_code == 200
                await trio.to_thread.run_sync(server.stop)

                refused = await http.post(f"{alice}/deposit", json={"amount": 1})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["type"] == "StoreUnavailable"
                assert refused.headers["retry-after"] == "1"
                assert (await http.get(f"{alice}/balance")).json() == {"balance": 5}
                unclaimed = await http.get(f"{node.url}/invoke/bob/balance")
                assert unclaimed.json()["error"]["type"] == "StoreUnavailable"
                assert (await http.get(f"{node.url}/health")).status_code == 200

                await trio.to_thread.run_sync(server.start)  # same port; the AOF reloads

                async def deposited() -> bool:
                    answer = await http.post(f"{alice}/deposit", json={"amount": 1})
                    assert answer.status_code in (200, 503), answer.text
                    return answer.status_code == 200

                await wait_until(deposited)
                assert (await http.get(f"{alice}/balance")).json() == {"balance": 6}
                assert (await http.get(f"{node.url}/invoke/bob/balance")).json() == {}
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_the_state_route_needs_the_cluster_key(http: httpx.AsyncClient) -> None:
    key = "k" * 32
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(
            account.create_actor, port=0, state_store="memory:", cluster_key=key
        ) as node:
            assert (await http.get(f"{node.url}/actors/a/state")).status_code == 401
            answer = await http.get(
                f"{node.url}/actors/a/state", headers={"towtruck-cluster-key": key}
            )
            assert answer.status_code == 200


@pytest.mark.parser_free  # the stores' contract (the state route: the tests above, on both)
async def test_two_nodes_sharing_a_store_fence_each_other(
    http: httpx.AsyncClient, store_url: str
) -> None:
    """Two nodes that do not know each other (a partition, a misconfiguration) both
    activate X: the later claim wins, the earlier one's write answers 409 and is gone."""
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            towtruck.open_node(account.create_actor, port=0, state_store=store_url) as first,
            towtruck.open_node(account.create_actor, port=0, state_store=store_url) as second,
        ):
            actor = f"x-{id(first)}"
            one = await http.post(f"{first.url}/invoke/{actor}/deposit", json={"amount": 1})
            assert one.json() == {"balance": 1}
            two = await http.post(f"{second.url}/invoke/{actor}/deposit", json={"amount": 10})
            assert two.json() == {"balance": 11}
            stale = await http.post(f"{first.url}/invoke/{actor}/deposit", json={"amount": 100})
            assert stale.status_code == 409
            error = stale.json()["error"]
            assert error["type"] == "StateConflict"
            assert error["actor"] == actor
            assert actor not in first.runtime.catalog
            state = (await http.get(f"{second.url}/actors/{actor}/state")).json()
            assert state["epoch"] == 2
            assert state["states"]["state"]["value"] == {"balance": 11}
            # The next call through the first node claims afresh and sees 11.
            again = await http.post(f"{first.url}/invoke/{actor}/deposit", json={"amount": 100})
            assert again.json() == {"balance": 111}


@pytest.mark.parser_free  # the stores' contract (the state route: the tests above, on both)
@pytest.mark.subprocess
@pytest.mark.parametrize("stop", ["graceful", "kill -9"])
async def test_every_write_that_answered_200_survives_a_restart(
    http: httpx.AsyncClient, tmp_path: Path, stop: str
) -> None:
    argv = [
        *towtruck_command(),
        "serve",
        "examples.account:create_actor",
        "--port",
        "0",
        "--state-store",
        f"sqlite:///{tmp_path / 'state.sqlite3'}",
    ]
    answered: dict[str, int] = {}
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, _):
            url = match.group(1)

            async def deposit(actor: str) -> None:
                for _ in range(20):
                    response = await http.post(f"{url}/invoke/{actor}/deposit", json={"amount": 1})
                    assert response.status_code == 200, response.text
                    answered[actor] = answered.get(actor, 0) + 1

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(deposit, f"a{n}")
            if stop == "graceful":
                process.send_signal(signal.SIGTERM)
            else:
                process.kill()
            await process.wait()
        async with running(argv, ready=SERVING) as (process, match, _):
            url = match.group(1)
            for actor, count in answered.items():
                balance = await http.get(f"{url}/invoke/{actor}/balance")
                assert balance.json() == {"balance": count}
            process.send_signal(signal.SIGTERM)
    assert sum(answered.values()) == 200
