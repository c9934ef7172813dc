"""Persistent counters on a cluster of three ``towtruck serve`` processes sharing one
SQLite file, under load, while a node is killed (-9) and restarted and another is
stalled (SIGSTOP) past failure detection: nothing that answered 200 is lost, nothing
lands twice, and nothing refused (409, 503) lands at all."""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.churn import Load, Node, membership, processes, wait_joined
from tests.stores import etcd_server, postgres_server, redis_server
from towtruck.codec import loads
from towtruck.storage import open_store

from .helpers import wait_until

# State through kills and stalls: test_state_http writes through both parsers.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.parser_free]

__all__ = ["etcd_server", "membership", "postgres_server", "redis_server"]  # fixtures

#: Outcomes after which an increment may or may not have landed: the call was cut off
#: under way (a node killed or stalled), so no system could say.
UNKNOWN = ("hung", "transport", "502", "504")


class LedgerLoad(Load):
    """Increments that name their operation (``GET .../increment/{op}``), retried once
    on 503 and 409; the outcome of every attempt is kept."""

    retried = (503, 409)

    def __init__(self, ids: list[str], up: list[Node]) -> None:
        super().__init__(ids, up)
        self._numbers = itertools.count()
        self._sent: dict[object, str] = {}  # the operation each client's call carries
        self.outcome_of: dict[str, str] = {}

    async def send(self, http: httpx.AsyncClient, node: Node, actor_id: str) -> httpx.Response:
        op = self._sent[trio.lowlevel.current_task()] = f"{actor_id}.{next(self._numbers)}"
        return await http.get(f"{node.url}/invoke/{actor_id}/increment/{op}")

    def answered(self, actor_id: str, outcome: str) -> None:
        self.outcome_of[self._sent[trio.lowlevel.current_task()]] = outcome


async def test_persistent_counters_survive_kill_and_stall_exactly(
    tmp_path: Path, membership: tuple[str, ...]
) -> None:
    ids = [f"ledger{i}" for i in range(40)]
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    factory = "tests.actors:create_ledger_counter"
    # A node stopped while it holds SQLite's write lock stops every write to the file
    # until it resumes; the others' writes then fail (503, nothing written) once they
    # have waited the store's timeout for the lock. At 1 s rather than 5 the load goes
    # on counting calls through such a stall, and the refusals are checked as any.
    flags = ("--state-store", url, "--store-timeout", "1", *membership)
    with trio.fail_after(300):
        async with (
            processes(tmp_path, factory, flags) as cluster,
            httpx.AsyncClient(timeout=10) as http,
        ):
            a = await cluster.add(None)
            b, c = await cluster.add(a), await cluster.add(a)
            up = [a, b, c]
            await wait_joined(http, up)
            load = LedgerLoad(ids, up)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run, 6)
                await load.wait_calls(200)

                up.remove(c)  # kill -9, and back
                await c.kill()
                await load.wait_calls(150)
                await c.start(a)
                up.append(c)
                await wait_joined(http, [a, b, c])
                await load.wait_calls(200)

                up.remove(b)  # stalled past failure detection, then back
                assert b.process is not None
                b.process.send_signal(signal.SIGSTOP)
                try:

                    async def b_down() -> bool:
                        members = (await http.get(f"{a.url}/health")).json()["members"]
                        return any(
                            m["address"] == b.address and m["state"] == "down" for m in members
                        )

                    with trio.fail_after(20):
                        await wait_until(b_down)
                    await load.wait_calls(200)
                finally:
                    b.process.send_signal(signal.SIGCONT)
                await wait_joined(http, [a, b, c])
                up.append(b)
                await load.wait_calls(200)
                load.stop()
            for node in (a, b, c):
                assert await node.stop() == 0, node.output.text

    store = await open_store(url)
    try:
        stored = {i: (await store.read(i)).states.get("state") for i in ids}
    finally:
        await store.aclose()
    print("persistent churn:", dict(load.outcomes))  # the figures for the record
    landed_unknown: Counter[str] = Counter()
    for actor_id in ids:
        found = stored[actor_id]
        value = loads(found.value) if found is not None else {"count": 0, "ops": []}
        ops = value["ops"]
        assert value["count"] == len(ops)
        assert len(set(ops)) == len(ops), f"{actor_id}: an increment landed twice"
        mine = {op: o for op, o in load.outcome_of.items() if op.startswith(f"{actor_id}.")}
        answered_200 = {op for op, o in mine.items() if o == "200"}
        assert answered_200 <= set(ops), f"{actor_id}: lost {answered_200 - set(ops)}"
        refused = {op for op, o in mine.items() if o.startswith(("409", "503"))}
        assert not refused & set(ops), f"{actor_id}: refused yet landed {refused & set(ops)}"
        unknown = set(ops) - answered_200
        assert all(mine[op].startswith(UNKNOWN) for op in unknown), {op: mine[op] for op in unknown}
        landed_unknown[actor_id] = len(unknown)
        assert value["count"] == load.successes[actor_id] + landed_unknown[actor_id]
    print("cut off under way, yet landed:", sum(landed_unknown.values()))
    assert sum(load.successes.values()) >= 800
    assert load.outcomes.get("200 after 409 StateConflict", 0) + load.outcomes["200"] > 0
