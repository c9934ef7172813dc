"""The failure detector's own health: a node whose timers fire late stretches its
timeouts instead of taking its peers for down (towtruck/cluster/health.py)."""

from __future__ import annotations

import time

import httpx
import pytest
import trio
import trio.lowlevel
from prometheus_client.parser import text_string_to_metric_families

import towtruck
from tests.actors import create_counter
from tests.helpers import FAST, TEST_SECONDS
from towtruck.cluster.health import MOST, LocalHealth
from towtruck.cluster.membership import MemberState

pytestmark = pytest.mark.parser_free  # the failure detector's own timers


def test_late_timers_raise_the_score_and_rounds_on_time_lower_it() -> None:
    health = LocalHealth(interval=1.0)
    health.fired(0.2)  # within a quarter of an interval: on time
    assert health.multiplier == 1
    health.fired(0.3)
    assert health.multiplier == 2
    health.fired(2.5)  # late by two intervals and more
    assert health.multiplier == 5
    health.fired(0.0)  # on time, but not the heartbeat round's timer
    assert health.multiplier == 5
    health.fired(0.0, round_=True)
    assert health.multiplier == 4
    assert health.late == 2


def test_the_score_stops_at_its_most_and_falls_back_to_nothing() -> None:
    health = LocalHealth(interval=0.2)
    for _ in range(10):
        health.fired(5.0)
    assert health.multiplier == MOST
    for _ in range(MOST + 3):
        health.fired(0.01, round_=True)
    assert health.multiplier == 1


async def test_a_congested_event_loop_takes_none_of_its_nodes_for_down(
    http: httpx.AsyncClient,
) -> None:
    """Three nodes in this process, whose event loop is then congested for 6 s: 40
    tasks each take 5 ms of every scheduling round, so every step of every heartbeat
    waits ~0.2 s, and a heartbeat takes longer than FAST's 0.2 s timeout. The nodes'
    own timers fire late too: none takes another for down."""
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **FAST) as c:
            gossips = [node.router.gossip for node in c.nodes]

            async def hog() -> None:
                while True:
                    busy_until = time.perf_counter() + 0.005
                    while time.perf_counter() < busy_until:
                        pass
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(hog)
                await trio.sleep(6)
                nursery.cancel_scope.cancel()
            for gossip in gossips:
                for peer in gossip.membership.peers():
                    assert gossip.membership.downs(peer) == 0, (gossip.me, peer)
                    assert gossip.membership.state(peer) is MemberState.ALIVE
            for node in c.nodes:
                response = await http.get(f"{node.url}/metrics")
                found = {
                    sample.name: sample.value
                    for family in text_string_to_metric_families(response.text)
                    for sample in family.samples
                }
                assert found["towtruck_detector_late_timers_total"] > 0, node.url
                assert found["towtruck_detector_multiplier"] >= 1
