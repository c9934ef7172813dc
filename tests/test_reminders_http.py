"""Reminders over HTTP and across processes and nodes: the cart example's reminder
fires after its node was killed -9 and restarted, and from another node when its
owner is killed; the routes list and forget reminders."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import trio

import towtruck
from examples import cart

from .helpers import FAST, NETWORK_TEST_SECONDS, TEST_SECONDS, wait_until
from .processes import PROCESS_SECONDS, running, towtruck_command

SERVING = r"serving on (http://127\.0\.0\.1:\d+)"


async def test_the_routes_list_and_forget_an_actors_reminders(http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(cart.create_actor, port=0, state_store="memory:") as node:
            added = await http.post(f"{node.url}/invoke/c1/add", json={"item": "tea"})
            assert added.json() == {"items": ["tea"], "expired": 0}
            (listed,) = (await http.get(f"{node.url}/actors/c1/reminders")).json()
            assert listed["name"] == "expire"
            assert listed["period"] is None
            assert listed["data"] == {"reason": "idle cart"}
            forgot = await http.delete(f"{node.url}/actors/c1/reminders/expire")
            assert forgot.json() == {"forgotten": True}
            assert (await http.get(f"{node.url}/actors/c1/reminders")).json() == []
            again = await http.delete(f"{node.url}/actors/c1/reminders/expire")
            assert again.json() == {"forgotten": False}
            health = (await http.get(f"{node.url}/health")).json()
            assert set(health["reminders"]) >= {"due", "late", "delivered"}
            assert health["timers"]["scheduled"] >= 1
            refused = await http.post(f"{node.url}/invoke/c1/receive_reminder", json={})
            assert refused.status_code == 404


@pytest.mark.subprocess
@pytest.mark.parser_free  # reminders' delivery (their routes run on both parsers)
async def test_a_reminder_fires_after_its_node_is_killed_and_restarted(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    argv = [*towtruck_command(), "serve", "examples.cart:create_actor", "--port", "0"]
    argv += ["--state-store", f"sqlite:///{tmp_path / 'state.sqlite3'}"]
    argv += ["--reminder-refresh", "0.2"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, _):
            url = match.group(1)
            added = await http.post(f"{url}/invoke/c9/add", json={"item": "x", "expire_after": 2})
            assert added.status_code == 200, added.text
            process.kill()  # kill -9, long before it is due
            await process.wait()
        async with running(argv, ready=SERVING) as (process, match, _):
            url = match.group(1)

            async def expired() -> bool:
                items = (await http.get(f"{url}/invoke/c9/items")).json()
                return items == {"items": [], "expired": 1}

            await wait_until(expired)
            process.send_signal(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parser_free  # reminders' delivery (their routes run on both parsers)
async def test_killing_the_node_that_delivers_a_reminder_moves_it(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(cart.create_actor, size=3, reminder_refresh=0.2, **FAST) as c:
            ids = [f"moving{i}" for i in range(30)]
            for actor_id in ids:
                await c.client.invoke(actor_id, "add", {"item": "x", "expire_after": 3})
            # Kill the node that delivers the most of them before they fall due.
            victim = max(
                c.nodes, key=lambda n: sum(n.runtime.reminders.owns(b) for b in range(256))
            )
            c.kill(victim)

            async def all_expired() -> bool:
                for actor_id in ids:
                    try:
                        items = await c.client.invoke(actor_id, "items")
                    except (towtruck.CallInterrupted, towtruck.Unavailable):
                        return False  # this check's own call, cut off by the kill
                    if items["expired"] != 1:
                        return False
                return True

            await wait_until(all_expired)
            delivered = sum(n.runtime.reminders.delivered for n in c.live)
            assert delivered >= 1
            assert c.store is not None
            for actor_id in ids:
                assert await c.store.reminders(actor_id) == []


class TickLedger:
    """Keeps the tick ids of its reminder's ticks in its persistent state."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.context = context
        self.state = context.persistent(default=list)

    async def start(self, every: float) -> None:
        await self.context.remind("beat", every=every)

    def ticks(self) -> list[str]:
        return list(self.state.value)

    async def receive_reminder(self, reminder: towtruck.Reminder) -> None:
        self.state.value.append(reminder.tick_id)
        await self.state.write()


@pytest.mark.slow
@pytest.mark.parser_free  # reminders' delivery (their routes run on both parsers)
async def test_every_tick_comes_exactly_once_while_no_node_fails() -> None:
    """Three nodes, then a fourth joins and takes buckets over."""
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(
            TickLedger, size=3, reminder_refresh=0.2, min_reminder_period=0.5, **FAST
        ) as c:
            ids = [f"steady{i}" for i in range(20)]
            for actor_id in ids:
                await c.client.invoke(actor_id, "start", 0.5)

            async def each_has(count: int) -> bool:
                counts = [len(await c.client.invoke(i, "ticks")) for i in ids]
                return min(counts) >= count

            await wait_until(lambda: each_has(5))
            await c.add_node()  # buckets move to it: no tick may come from two nodes
            await wait_until(lambda: each_has(10))
            for actor_id in ids:
                ticks = await c.client.invoke(actor_id, "ticks")
                assert len(ticks) == len(set(ticks)), f"{actor_id}: a tick came twice"
            assert sum(n.runtime.reminders.failed for n in c.nodes) == 0
