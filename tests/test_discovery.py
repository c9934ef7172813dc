"""Peers found by DNS (``--peer-dns``), with the resolver replaced by the test's."""

from __future__ import annotations

import contextlib

import pytest
import trio

import towtruck
from examples import greeter
from tests.helpers import FAST, TEST_SECONDS, wait_until
from towtruck.cluster import discovery
from towtruck.cluster.membership import MemberState


async def test_nodes_found_by_dns_join_one_cluster_and_a_fourth_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records: list[str] = []  # what the name resolves to: the nodes started so far
    asked: list[tuple[str, int]] = []

    async def resolve(name: str, port: int) -> list[str]:
        asked.append((name, port))
        await trio.lowlevel.checkpoint()
        return list(records)

    monkeypatch.setattr(discovery, "resolve", resolve)
    settings = {**FAST, "peer_dns": "towtruck.default.svc.cluster.local:8080"}
    with trio.fail_after(TEST_SECONDS):
        async with contextlib.AsyncExitStack() as stack:
            nodes: list[towtruck.Node] = []

            async def start() -> None:
                node = await stack.enter_async_context(
                    towtruck.open_node(greeter.create_actor, **settings)
                )
                nodes.append(node)
                records.append(str(node.address))

            async def one_cluster() -> bool:
                everyone = {str(n.address) for n in nodes}
                return all(
                    set(n.router.membership.peers(MemberState.ALIVE)) == everyone - {str(n.address)}
                    for n in nodes
                )

            for _ in range(3):
                await start()
            await wait_until(one_cluster)
            await start()
            await wait_until(one_cluster)
            placements = {tuple(n.router.membership.placement()) for n in nodes}
            assert len(placements) == 1
            assert len(next(iter(placements))) == 4
    assert ("towtruck.default.svc.cluster.local", 8080) in asked


async def test_a_name_that_does_not_resolve_is_retried_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def resolve(name: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        raise OSError("Name or service not known")

    monkeypatch.setattr(discovery, "resolve", resolve)
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(greeter.create_actor, **FAST, peer_dns="nowhere.test:1"):

            async def tried_thrice() -> bool:
                return calls >= 3

            await wait_until(tried_thrice)
    assert caplog.text.count("does not resolve") == 1


async def test_the_real_resolver_finds_localhost() -> None:
    with trio.fail_after(TEST_SECONDS):
        found = await discovery.resolve("localhost", 8080)
    assert "127.0.0.1:8080" in found or "[::1]:8080" in found


async def test_a_node_joins_what_dns_names_before_it_settles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records: list[str] = []

    async def resolve(name: str, port: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(records)

    monkeypatch.setattr(discovery, "resolve", resolve)
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(greeter.create_actor, **FAST) as first:
            records.append(str(first.address))
            async with towtruck.open_node(
                greeter.create_actor, **FAST, peer_dns="svc.test:8080"
            ) as second:
                # Once open_node returns the view has settled: with the first node in it.
                assert str(first.address) in second.router.membership.placement()
