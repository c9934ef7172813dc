"""The client for code outside the cluster (``towtruck.connect``, ``towtruck.SyncClient``),
against real nodes, and against a fake node for the answers a real one seldom gives."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import towtruck
from examples.greeter import create_actor as create_greeter
from tests.actors import create_recorder
from tests.helpers import FAST, NETWORK_TEST_SECONDS, TEST_SECONDS, owned_by, wait_until
from towtruck.remote.view import View

KEY = "a cluster key, 16+ chars"
#: What the fake node answers to a call: (status, JSON body, headers), or "hang"
#: (never answer) or "close" (drop the connection once the request is read).
Answer = tuple[int, Any, dict[str, str]] | str


class FakeNode:
    """A node that lists itself alone in ``/health`` and answers ``/invoke`` from a
    script (the last answer repeats). Serve with ``await nursery.start(fake.serve)``."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.address = ""

    @property
    def invokes(self) -> list[str]:
        return [target for target, _ in self.requests if target.startswith("/invoke/")]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not (chunk := await stream.receive_some()):
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (item.partition(":") for item in lines)
                }
                while len(buffer) < int(headers.get("content-length", "0")):
                    buffer += await stream.receive_some()
                buffer = buffer[int(headers.get("content-length", "0")) :]
                target = line.split(" ")[1]
                self.requests.append((target, headers))
                if target == "/health":
                    answer: Answer = (
                        200,
                        {"members": [{"address": self.address, "state": "self"}]},
                        {},
                    )
                else:
                    answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                if answer == "hang":
                    await trio.sleep_forever()
                if isinstance(answer, str):
                    return
                status, body, extra = answer
                content = json.dumps(body).encode()
                head_lines = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}"]
                head_lines += [f"{name}: {value}" for name, value in extra.items()]
                await stream.send_all(("\r\n".join(head_lines) + "\r\n\r\n").encode() + content)


def error(name: str, message: str = "no") -> dict[str, Any]:
    return {"error": {"type": name, "message": message}}


async def forwarded(http: httpx.AsyncClient, c: towtruck.Cluster) -> int:
    """Calls the live nodes have sent on to another, from their ``/health``."""
    total = 0
    for node in c.live:
        total += (await http.get(f"{node.url}/health")).json()["forwarded"]
    return total


async def settled(http: httpx.AsyncClient, c: towtruck.Cluster) -> None:
    """Wait until every live node places actors on every live node."""
    everyone = {str(node.address) for node in c.live}

    async def agreed() -> bool:
        for node in c.live:
            members = (await http.get(f"{node.url}/health")).json()["members"]
            if {m["address"] for m in members if m["state"] in ("self", "alive")} != everyone:
                return False
        return True

    await wait_until(agreed)


def dead_address() -> str:
    """A loopback port nothing listens on (bound, never listened, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_calls_go_straight_to_the_owner(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_greeter, size=3, **FAST) as c:
            await settled(http, c)
            ids = [f"r{random.randrange(10**9)}" for _ in range(60)]
            async with towtruck.connect([str(c.nodes[0].address)]) as client:
                for actor_id in ids:
                    answer = await client.invoke(actor_id, "hello")
                    assert answer == {"hello": f"from actor {actor_id}"}
                assert client.statistics().members == tuple(
                    sorted(str(node.address) for node in c.nodes)
                )
            assert await forwarded(http, c) == 0
            assert sorted(len(node.runtime.catalog) for node in c.nodes)[0] > 0


async def test_ids_reach_their_actor_unchanged() -> None:
    ids = ["a/b", ".", "..", "a b?c#d%2F", "é∂", "..%", 7]
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_greeter, size=1) as c,
            towtruck.connect([str(c.nodes[0].address)]) as client,
        ):
            for actor_id in ids:
                assert await client.invoke(actor_id, "hello") == {"hello": f"from actor {actor_id}"}
            with pytest.raises(towtruck.InvalidActorId):
                await client.invoke("", "hello")
            assert client.statistics().calls == len(ids)  # the bad id was never sent


async def test_errors_come_back_as_their_classes() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_recorder, size=1) as c,
            towtruck.connect([str(c.nodes[0].address)]) as client,
        ):
            assert await client.invoke("e", "echo", {"x": [1]}) == {
                "data": {"x": [1]},
                "activated": True,
            }
            with pytest.raises(towtruck.MethodNotFound) as missing:
                await client.invoke("e", "nope")
            assert missing.value.status == 404
            assert missing.value.remote
            with pytest.raises(towtruck.ActorError) as failed:
                await client.invoke("e", "fail", 3)
            assert failed.value.status == 500
            assert failed.value.exception_type == "ValueError"
            assert failed.value.message == "bad value 3"
            with pytest.raises(towtruck.ResultNotJSON):
                await client.invoke("e", "not_json")
            with pytest.raises(TypeError):
                await client.invoke("e", "echo", {1, 2})


async def test_a_refused_call_is_sent_again_after_retry_after() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_recorder, size=1, max_in_flight=1) as c,
            towtruck.connect([str(c.nodes[0].address)], timeout=10) as client,
            trio.open_nursery() as nursery,
        ):
            await client.invoke("warm", "echo")  # the view is learned
            nursery.start_soon(client.invoke, "busy", "sleep", 0.3)
            await wait_until(lambda: _in_flight(c.nodes[0], 1))
            started = trio.current_time()
            assert await client.invoke("other", "plain", 1) == "plain 1"
            assert trio.current_time() - started >= 1  # the node's Retry-After: 1
            assert client.statistics().retries == 1


async def _in_flight(node: towtruck.Node, count: int) -> bool:
    return node.runtime.statistics().in_flight == count


async def test_refusals_are_retried_and_nothing_else_is() -> None:
    overloaded = (503, error("Overloaded"), {"retry-after": "0.05"})
    cases: list[tuple[list[Answer], type[towtruck.TowtruckError] | None, int]] = [
        ([overloaded, overloaded, (200, "done", {})], None, 3),
        ([(503, "not towtruck's", {"retry-after": "0.05"}), (200, "done", {})], None, 2),
        ([(502, error("CallInterrupted"), {})], towtruck.CallInterrupted, 1),
        ([(504, error("CallTimeout"), {})], towtruck.CallTimeout, 1),
        ([(508, error("ForwardingLoop"), {})], towtruck.ForwardingLoop, 1),
        ([(503, error("MailboxFull"), {"retry-after": "60"})], towtruck.MailboxFull, 1),
        (["close"], towtruck.CallInterrupted, 1),
        (["hang"], towtruck.CallTimeout, 1),
    ]
    with trio.fail_after(NETWORK_TEST_SECONDS):
        for answers, raised, sent in cases:
            fake = FakeNode(*answers)
            async with trio.open_nursery() as nursery:
                await nursery.start(fake.serve)
                async with towtruck.connect([fake.address], timeout=1) as client:
                    if raised is None:
                        assert await client.invoke("a", "m") == "done"
                    else:
                        with pytest.raises(raised) as caught:
                            await client.invoke("a", "m")
                        assert caught.value.remote == (answers[0] not in ("close", "hang"))
                assert len(fake.invokes) == sent, answers
                nursery.cancel_scope.cancel()


async def test_a_refusal_retried_until_the_deadline_raises_it() -> None:
    fake = FakeNode((503, error("Overloaded"), {"retry-after": "0.1"}))
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.connect([fake.address]) as client:
                started = trio.current_time()
                with pytest.raises(towtruck.Overloaded):
                    await client.invoke("a", "m", timeout=0.5)
                assert trio.current_time() - started < 0.5
                assert 3 <= len(fake.invokes) <= 5
            nursery.cancel_scope.cancel()


async def test_the_deadline_travels_with_the_call() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_recorder, size=1) as c,
            towtruck.connect([str(c.nodes[0].address)]) as client,
        ):
            await client.invoke("slow", "echo")
            started = trio.current_time()
            with pytest.raises(towtruck.CallTimeout) as caught:
                await client.invoke("slow", "sleep", 5, timeout=0.2)
            assert trio.current_time() - started < 0.6  # the node's 504, before the grace
            assert caught.value.remote


async def test_the_cluster_key_and_the_deadline_are_sent() -> None:
    fake = FakeNode((200, "done", {}))
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.connect([fake.address], cluster_key="sesame") as client:
                await client.invoke("a/b", "m", {"x": 1}, timeout=7)
            (health, health_headers), (call, call_headers) = fake.requests
            assert (health, call) == ("/health", "/invoke/a%2Fb/m")
            assert health_headers["towtruck-cluster-key"] == "sesame"
            assert call_headers["towtruck-cluster-key"] == "sesame"
            assert 6 < float(call_headers["towtruck-timeout"]) <= 7
            nursery.cancel_scope.cancel()


async def test_a_cluster_with_a_key_answers_the_client(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_greeter, size=2, cluster_key=KEY, **FAST) as c:
            await settled(http, c)
            async with towtruck.connect([str(c.nodes[1].address)], cluster_key=KEY) as client:
                for n in range(20):
                    assert await client.invoke(n, "hello") == {"hello": f"from actor {n}"}
            assert await forwarded(http, c) == 0


async def test_a_dead_seed_is_skipped(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_greeter, size=2, **FAST) as c:
            await settled(http, c)
            seeds = [dead_address(), str(c.nodes[0].address)]
            async with towtruck.connect(seeds) as client:
                for n in range(20):
                    assert await client.invoke(n, "hello") == {"hello": f"from actor {n}"}
                assert client.statistics().refused == 1
            assert await forwarded(http, c) == 0


async def test_no_node_answering_is_peer_unavailable() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.connect([dead_address(), dead_address()]) as client:
            with pytest.raises(towtruck.PeerUnavailable) as caught:
                await client.invoke("a", "m")
            assert len(caught.value.details["tried"]) == 2


async def test_a_killed_node_is_routed_around(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_greeter, size=3, **FAST) as c:
            await settled(http, c)
            victim = c.nodes[2]
            victims_ids = owned_by(victim, c.nodes, 10, "v")
            seeds = [str(node.address) for node in c.nodes]
            # The client's view outlives the test unless a refusal renews it, so the
            # first call for the victim's ids after the kill finds it refusing, however
            # fast the nodes see it gone.
            async with towtruck.connect(seeds, refresh_interval=600, timeout=10) as client:
                for actor_id in victims_ids:
                    await client.invoke(actor_id, "hello")
                assert len(victim.runtime.catalog) == len(victims_ids)
                c.kill(victim)
                # Its connections close once its tasks have run; a call already sent on
                # one of them would be CallInterrupted (it may have run), not retried.
                await trio.testing.wait_all_tasks_blocked()
                for actor_id in victims_ids:  # while the client still thinks it alive
                    assert await client.invoke(actor_id, "hello")
                assert client.statistics().refused >= 1
                await settled(http, c)

                async def client_sees_it_gone() -> bool:
                    await client.refresh()
                    return str(victim.address) not in client.statistics().members

                await wait_until(client_sees_it_gone)
                before = await forwarded(http, c)
                for n in range(40):
                    assert await client.invoke(f"after{n}", "hello")
                assert await forwarded(http, c) == before


async def test_views_that_disagree_still_work(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_greeter, size=2, **FAST) as c:
            await settled(http, c)
            async with towtruck.connect([str(c.nodes[0].address)], refresh_interval=3600) as client:
                await client.invoke("first", "hello")
                newcomer = await c.add_node()
                await settled(http, c)
                moved = owned_by(newcomer, c.nodes, 10, "m")
                for actor_id in moved:  # the client's view is the old one
                    assert await client.invoke(actor_id, "hello")
                assert await forwarded(http, c) == len(moved)
                await client.refresh()
                for actor_id in owned_by(newcomer, c.nodes, 20, "n"):
                    assert await client.invoke(actor_id, "hello")
                assert await forwarded(http, c) == len(moved)


async def test_the_sync_client(http: httpx.AsyncClient) -> None:
    def calls(seeds: list[str]) -> list[Any]:
        with towtruck.SyncClient(seeds, timeout=10) as client:
            answers = [client.invoke(f"s{n}", "echo", n) for n in range(30)]
            with pytest.raises(towtruck.MethodNotFound):
                client.invoke("s1", "nope")
            with pytest.raises(towtruck.CallTimeout):
                client.invoke("s1", "sleep", 5, timeout=0.2)
            assert client.statistics().refused == 1
            return answers

    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=3, **FAST) as c:
            await settled(http, c)
            seeds = [dead_address(), str(c.nodes[1].address)]
            answers = await trio.to_thread.run_sync(calls, seeds)
            assert answers == [{"data": n, "activated": True} for n in range(30)]
            assert await forwarded(http, c) == 0


async def test_the_client_on_asyncio(http: httpx.AsyncClient) -> None:
    async def calls(seeds: list[str]) -> list[Any]:
        async with towtruck.connect(seeds, timeout=10) as client:
            answers = await asyncio.gather(*(client.invoke(f"a{n}", "echo", n) for n in range(30)))
            with pytest.raises(towtruck.ActorError):
                await client.invoke("a1", "fail")
            started = time.monotonic()
            with pytest.raises(towtruck.CallTimeout):
                await client.invoke("a1", "sleep", 5, timeout=0.2)
            assert time.monotonic() - started < 0.6
            return list(answers)

    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=3, **FAST) as c:
            await settled(http, c)
            seeds = [str(node.address) for node in c.nodes]
            answers = await trio.to_thread.run_sync(asyncio.run, calls(seeds))
            assert answers == [{"data": n, "activated": True} for n in range(30)]
            assert await forwarded(http, c) == 0


def test_the_view_places_as_the_nodes_do() -> None:
    view = View(["127.0.0.1:1"], 5.0, None)
    assert view.learned(
        {
            "members": [
                {"address": "127.0.0.1:3", "state": "alive"},
                {"address": "127.0.0.1:1", "state": "self"},
                {"address": "127.0.0.1:2", "state": "down"},
                {"address": "127.0.0.1:4", "state": "alive"},
            ]
        },
        now=0.0,
    )
    assert view.members == ("127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:4")
    from towtruck.cluster import placement

    for n in range(200):
        assert view.target(str(n), [], 0.0) == placement.owner(str(n), view.members)
    owner = view.target("x", [], 0.0)
    assert owner is not None
    view.refused(owner, 1.0)
    rest = [m for m in view.members if m != owner]
    assert view.target("x", [], 1.0) == placement.owner("x", rest)
    assert view.target("x", [], 6.0) == owner  # skipped for one refresh interval
    assert not view.learned({"members": []}, 0.0)
    assert not view.learned("nonsense", 0.0)


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(towtruck.InvalidAddress):
        towtruck.SyncClient(["nowhere"])
    with pytest.raises(ValueError, match="seed"):
        towtruck.SyncClient([])
    with pytest.raises(ValueError, match="refresh_interval"):
        towtruck.SyncClient(["127.0.0.1:1"], refresh_interval=0)
    with towtruck.SyncClient(["127.0.0.1:1"]) as client:
        with pytest.raises(ValueError, match="timeout"):
            client.invoke("a", "m", timeout=0)
        with pytest.raises(ValueError, match="method"):
            client.invoke("a", "")
