"""Lanes: calls between nodes on persistent upgraded connections."""

from __future__ import annotations

import itertools
import math
import os
import secrets
import socket
from collections.abc import Callable
from functools import partial
from typing import Any
from unittest.mock import ANY

import httpx
import orjson
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve as stock_serve

import towtruck
from tests.actors import create_counter, create_recorder
from tests.fake_peer import FakePeer, answer
from tests.helpers import FAST, TEST_SECONDS, owned_by, wait_until
from towtruck.cluster import placement, wire
from towtruck.cluster.membership import MemberState
from towtruck.transport.lanes import _Lane
from towtruck.transport.writer import FrameWriter


async def test_calls_to_a_peer_share_one_lane() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            ids = owned_by(second, c.nodes, 50, "lane")
            answers: list[Any] = []

            async def increment(actor_id: str) -> None:
                answers.append(await first.client.invoke(actor_id, "increment"))

            async with trio.open_nursery() as nursery:
                for actor_id in ids * 4:
                    nursery.start_soon(increment, actor_id)
            assert sorted(answers) == sorted([1, 2, 3, 4] * len(ids))
            lanes = first.router.directory._peers._lanes  # type: ignore[attr-defined]
            assert list(lanes._lanes) == [str(second.address)]
            assert first.router.forwarded == len(ids) * 4


async def test_a_lane_answers_bursts_and_quiet_calls_alike() -> None:
    # A quiet lane writes each frame from the caller's task and a busy one queues them
    # for its writer; the answering end hands calls to tasks it keeps between bursts
    # (a bounded number of them) and spawns more when a burst needs them.
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            ids = owned_by(second, c.nodes, 100, "burst")
            answers: dict[str, list[int]] = {actor_id: [] for actor_id in ids}

            async def increment(actor_id: str) -> None:
                answers[actor_id].append(await first.client.invoke(actor_id, "increment"))

            for _ in range(3):
                async with trio.open_nursery() as nursery:
                    for actor_id in ids * 2:  # 200 calls at once: more than tasks kept
                        nursery.start_soon(increment, actor_id)
                for actor_id in ids[:10]:  # then one at a time
                    await increment(actor_id)
            for n, actor_id in enumerate(ids):
                expected = 9 if n < 10 else 6
                assert sorted(answers[actor_id]) == list(range(1, expected + 1))
            assert first.router.forwarded == sum(map(len, answers.values()))


async def test_a_broken_lane_fails_its_calls_at_once() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=2, call_timeout=30, **FAST) as c:
            first, second = c.nodes
            (remote,) = owned_by(second, c.nodes, 1, "sleepy")
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    with pytest.raises(towtruck.CallInterrupted):
                        await first.client.invoke(remote, "sleep", 25)

                nursery.start_soon(call)

                async def running() -> bool:
                    return bool(c.holders(remote))

                await wait_until(running)
                start = trio.current_time()
                c.kill(second)
            assert trio.current_time() - start < 25, (
                "failed when the lane broke, not at its deadline"
            )


@pytest.mark.parametrize("key", [None, "a cluster key of twenty"], ids=["open", "keyed"])
async def test_a_peer_that_takes_no_lanes_gets_calls_over_http(
    http: httpx.AsyncClient, key: str | None
) -> None:
    """A node served by stock Hypercorn (``towtruck.App`` with ``advertise``) answers
    forwarded calls on ``POST /cluster/forward``, with the cluster key if there is one."""
    # Bound here and handed to Hypercorn as it is: a port let go of until Hypercorn
    # binds it again may meanwhile be taken by one of the node's own connections.
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, cluster_key=key, **FAST) as node:
            app = towtruck.App(
                create_counter,
                environ={},
                advertise=f"127.0.0.1:{port}",
                peers=[str(node.address)],
                cluster_key=key,
            )
            config = Config()
            config.bind = [f"fd://{reserved.detach()}"]
            # At the stop, Hypercorn waits this long for the node's keep-alive
            # connections to close (3 s by default): nothing this test looks at.
            config.graceful_timeout = 0.1
            async with trio.open_nursery() as nursery:
                stop = trio.Event()
                await nursery.start(partial(stock_serve, app, config, shutdown_trigger=stop.wait))

                async def joined() -> bool:
                    members = (await http.get(f"{node.url}/health")).json()["members"]
                    return members[1:] == [{"address": f"127.0.0.1:{port}", "state": "alive"}]

                # The App joins once Hypercorn listens: no probe of the node finds it
                # refusing connections, and it is not taken for down after it joined.
                await wait_until(joined)
                names = [str(node.address), f"127.0.0.1:{port}"]

                remote = next(
                    f"s{i}" for i in range(1000) if placement.owner(f"s{i}", names) == names[1]
                )
                assert await node.client.invoke(remote, "increment") == 1
                assert await node.client.invoke(remote, "increment") == 2
                lanes = node.router.directory._peers._lanes  # type: ignore[attr-defined]
                assert set(lanes.refused) == {names[1]}
                assert remote in app.runtime.catalog
                stop.set()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x01x",  # shorter than a frame's head
        b"\xff\xff\xff\xff" + b"x" * 100,  # longer than any frame may be
        wire.frame(1, wire.CALL, b"not an envelope"),
        wire.frame(2, b"Z", b"unknown kind"),
    ],
)
async def test_a_lane_sending_garbage_harms_only_itself(
    http: httpx.AsyncClient, garbage: bytes
) -> None:
    request = (
        b"GET /cluster/lane HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
        b"upgrade: towtruck-lane\r\n\r\n"
    )
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **FAST) as node:
            stream = await trio.open_tcp_stream(node.address.host, node.address.port)
            async with stream:
                await stream.send_all(request)
                received = b""
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
                assert received.startswith(b"HTTP/1.1 101"), received
                await stream.send_all(garbage)
                response = await http.post(f"{node.url}/invoke/a/increment")
                assert response.status_code == 200, response.text
            assert await node.client.invoke("a", "increment") == 2


async def test_an_envelope_that_is_not_a_call_is_refused_and_the_lane_goes_on() -> None:
    request = (
        b"GET /cluster/lane HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
        b"upgrade: towtruck-lane\r\n\r\n"
    )
    call = wire.encode_call("a", "increment", None, (), 5.0, 1, existing=False)
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **FAST) as node:
            stream = await trio.open_tcp_stream(node.address.host, node.address.port)
            async with stream:
                await stream.send_all(request)
                received = b""
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some()
                buffer = bytearray(received.partition(b"\r\n\r\n")[2])
                await stream.send_all(
                    wire.frame(1, wire.CALL, b"not json")
                    + wire.frame(2, wire.CALL, b'{"id": "a", "method": "m"}')
                    + wire.frame(3, wire.CALL, call)
                )
                answers: dict[int, Any] = {}
                while len(answers) < 3:
                    for number, _, body in wire.split(buffer):
                        answers[number] = wire.decode_answer(body)
                    if len(answers) < 3:
                        buffer += await stream.receive_some()
    for number, error in ((1, towtruck.InvalidJSON), (2, towtruck.BadRequest)):
        assert answers[number] == (error("").status, ANY), answers[number]
        assert orjson.loads(answers[number][1])["error"]["type"] == error.__name__
    assert answers[3] == (200, b"1")


async def join_fake(http: httpx.AsyncClient, node: towtruck.Node, fake: FakePeer) -> list[str]:
    """Join ``fake`` to ``node``'s cluster; returns ids the fake owns there."""
    response = await http.get(f"{node.url}/addserver/{fake.address}")
    assert response.status_code == 200, response.text
    names = [str(node.address), fake.address]
    return [i for i in (f"f{n}" for n in range(200)) if placement.owner(i, names) == fake.address]


def own_ids(node: towtruck.Node, count: int) -> list[str]:
    """Ids ``node`` owns in its own view of the cluster."""
    ids = (f"o{n}" for n in itertools.count())
    return list(
        itertools.islice(
            (i for i in ids if node.router.membership.owner(i) == node.router.me), count
        )
    )


@pytest.mark.parametrize(
    "reply",
    [
        lambda n: answer(n, 500, b'{"error": {"type": "ActorError", "message": "m", "self": 1}}'),
        lambda n: answer(n, 503, b'{"error": {"type": ["x"], "message": {"a": 1}}}'),
        lambda n: answer(n, 200, b"not json"),
        lambda n: answer(n, 0, b"\xff\xfe"),
        lambda n: wire.frame(n, b"A", b"x"),
        lambda n: wire.frame(n + 1000, b"A", b"\x00\xc8{}") + answer(n, 404, b"[]"),
    ],
    ids=["detail-named-self", "odd-types", "not-json", "status-0", "short", "unknown-number"],
)
async def test_whatever_a_peer_answers_on_a_lane_fails_only_that_call(
    http: httpx.AsyncClient, reply: Callable[[int], bytes]
) -> None:
    fake = FakePeer(lambda number, envelope: reply(number))
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, **FAST) as node:
                ids = await join_fake(http, node, fake)
                for actor_id in ids[:3]:
                    with pytest.raises(towtruck.TowtruckError):
                        await node.client.invoke(actor_id, "increment")
                assert len(fake.calls) == 3
                assert fake.lanes_opened == 1, "the lane lives on"
                (here,) = own_ids(node, 1)
                response = await http.post(f"{node.url}/invoke/{here}/increment")
                assert response.status_code == 200, response.text
            nursery.cancel_scope.cancel()


async def test_a_peer_that_never_answers_a_lane_fails_calls_before_their_deadline(
    http: httpx.AsyncClient,
) -> None:
    """It takes the connection, answers heartbeats, and never answers the upgrade: the
    calls sent its way fail (they did not run) once the opening outlasts the failure
    detector's bound, not at their deadline."""
    fake = FakePeer(hang_lanes=True)
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, call_timeout=30, **FAST) as node:
                ids = await join_fake(http, node, fake)
                with pytest.raises(towtruck.PeerUnavailable, match="opened no lane"):
                    await node.client.invoke(ids[0], "increment")
                assert fake.lanes_opened == 1
            nursery.cancel_scope.cancel()


async def test_giving_up_on_a_peer_cuts_short_the_opening_of_its_lane(
    http: httpx.AsyncClient,
) -> None:
    fake = FakePeer(hang_lanes=True)
    patient = {**FAST, "heartbeat_interval": 10}  # opening a lane may take 30 s
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, call_timeout=20, **patient) as node:
                ids = await join_fake(http, node, fake)
                failed: list[BaseException] = []

                async def call() -> None:
                    try:
                        await node.client.invoke(ids[0], "increment")
                    except towtruck.TowtruckError as exc:
                        failed.append(exc)

                async with trio.open_nursery() as calls:
                    calls.start_soon(call)

                    async def opening() -> bool:
                        return fake.lanes_opened == 1

                    await wait_until(opening)
                    node.router._peers.interrupt(fake.address)  # what the detector does
                assert len(failed) == 1
                assert isinstance(failed[0], towtruck.PeerUnavailable), failed
                assert "stopped answering" in failed[0].message
            nursery.cancel_scope.cancel()


async def test_a_peer_that_answers_heartbeats_but_swallows_calls_is_taken_out(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakePeer()  # reads every call on its lane, answers none
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, call_timeout=30, **FAST) as node:
                ids = await join_fake(http, node, fake)
                with pytest.raises(towtruck.CallInterrupted):
                    await node.client.invoke(ids[0], "increment")
                assert fake.calls, "the call reached it"
                assert "answers heartbeats but nothing on its lane" in caplog.text
                assert fake.heartbeats > 0
            nursery.cancel_scope.cancel()


@pytest.mark.parser_free  # the lanes' stall detector
async def test_a_long_turn_on_a_peer_is_not_taken_for_a_stalled_lane() -> None:
    with trio.fail_after(TEST_SECONDS):
        # Heartbeats at 0.5 s rather than FAST's 0.2: a lane quiet for half the stall
        # bound is probed, and the reply has the other half to come in: 0.75 s here,
        # where FAST's 0.3 s is a margin a busy CI machine can miss.
        settings = {**FAST, "heartbeat_interval": 0.5}
        async with towtruck.cluster(create_recorder, size=2, **settings) as c:
            first, second = c.nodes
            (remote,) = owned_by(second, c.nodes, 1, "long")
            # Three times the bound after which a silent lane counts as stalled (3
            # intervals): the peer's replies to probes keep it alive.
            assert await first.client.invoke(remote, "sleep", 4.5) == "slept"
            assert first.router.membership.placement() == tuple(
                sorted(str(n.address) for n in c.nodes)
            )


async def test_a_probe_on_a_quiet_lane_has_half_the_stall_bound_to_be_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A peer that takes a call and answers nothing, checked as the heartbeats would
    # (the bound is 3 s): probed once quiet for 1.5 s, here at 2.9 s, it is stalled
    # only 1.5 s after the probe, not at the next check past the bound (3.1 s).
    ours, theirs = trio.socket.socketpair()
    lane = _Lane("peer", trio.SocketStream(ours))
    kinds: list[bytes] = []

    async def swallow() -> None:
        buffer = bytearray()
        while chunk := await theirs.recv(65536):
            buffer += chunk
            kinds.extend(kind for _, kind, _ in wire.split(buffer))

    checks = {}
    with theirs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lane.run, b"")
            nursery.start_soon(swallow)
            nursery.start_soon(lane.call, b"{}", math.inf)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            for at in (0, 1.4, 2.9, 3.1, 4.3, 4.5):
                await trio.sleep_until(start + at)
                checks[at] = (lane.stalled(3.0), kinds.count(wire.PROBE))
            nursery.cancel_scope.cancel()
    assert kinds[0] == wire.CALL
    assert checks == {
        0: (False, 0),
        1.4: (False, 0),
        2.9: (False, 0),  # probed now: the probe is on its way
        3.1: (False, 1),
        4.3: (False, 1),
        4.5: (True, 1),
    }


def create_sizable(id: str, client: towtruck.Client) -> dict[str, Any]:
    async def sized(size: int) -> str:
        return "x" * size

    async def sleep(seconds: float) -> str:
        await trio.sleep(seconds)
        return "slept"

    return {"sized": sized, "sleep": sleep}


async def test_an_answer_too_large_to_send_fails_that_call_alone_wherever_it_runs(
    http: httpx.AsyncClient,
) -> None:
    too_large = towtruck.runtime.MAX_ANSWER + 1_000_000
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_sizable, size=2, **FAST) as c:
            first, second = c.nodes
            big, slow = owned_by(second, c.nodes, 2, "sizable")
            for node in (second, first):  # where it runs, then through a lane
                response = await http.post(f"{node.url}/invoke/{big}/sized", json=too_large)
                assert response.status_code == 500, response.text[:200]
                error = response.json()["error"]
                assert error["type"] == "ResultTooLarge"
                assert error["limit"] == towtruck.runtime.MAX_ANSWER
            lanes = first.router.directory._peers._lanes  # type: ignore[attr-defined]
            lane = lanes._lanes[str(second.address)]
            async with trio.open_nursery() as nursery:
                slept: list[str] = []

                async def sleep() -> None:
                    slept.append(await first.client.invoke(slow, "sleep", 0.5))

                nursery.start_soon(sleep)
                with pytest.raises(towtruck.ResultTooLarge):
                    await first.client.invoke(big, "sized", too_large)
            assert slept == ["slept"], "the call sharing the lane was answered"
            assert lanes._lanes[str(second.address)] is lane
            assert not lane.broken
            assert await first.client.invoke(big, "sized", 3) == "xxx"


async def test_each_call_on_a_broken_lane_gets_an_error_of_its_own() -> None:
    """One exception raised in several tasks would chain their tracebacks (and keep
    their frames alive)."""
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=2, **FAST) as c:
            first, second = c.nodes
            remote = owned_by(second, c.nodes, 3, "broken")
            errors: list[towtruck.CallInterrupted] = []

            async def call(actor_id: str) -> None:
                try:
                    await first.client.invoke(actor_id, "sleep", 25)
                except towtruck.CallInterrupted as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for actor_id in remote:
                    nursery.start_soon(call, actor_id)

                async def running() -> bool:
                    return all(c.holders(actor_id) for actor_id in remote)

                await wait_until(running)
                c.kill(second)
            assert len(errors) == 3
            assert len({id(error) for error in errors}) == 3


async def test_lanes_to_a_peer_of_this_host_go_over_its_unix_domain_socket() -> None:
    """As between ``--workers``: the peer listens on a Unix domain socket too."""
    name = f"@towtruck-test-{os.getpid()}-{secrets.token_hex(4)}"
    with (
        socket.socket() as tcp,
        socket.socket(socket.AF_UNIX) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind("\0" + name[1:])
        unix.listen()
        address = f"127.0.0.1:{tcp.getsockname()[1]}"
        with trio.fail_after(TEST_SECONDS):
            async with towtruck.open_node(
                create_counter, listen_fds=[tcp.fileno(), unix.fileno()], **FAST
            ) as second:
                tcp.detach()
                unix.detach()  # the node owns them now
                async with towtruck.open_node(
                    create_counter, peers=[address], local_lanes={address: name}, **FAST
                ) as first:
                    names = [str(first.address), address]
                    remote = next(
                        f"u{i}" for i in range(1000) if placement.owner(f"u{i}", names) == address
                    )
                    assert await first.client.invoke(remote, "increment") == 1
                    assert remote in second.runtime.catalog
                    lanes = first.router.directory._peers._lanes  # type: ignore[attr-defined]
                    assert lanes._lanes[address]._stream.socket.family == socket.AF_UNIX


async def test_a_peer_that_answers_probes_but_not_calls_times_them_out_at_their_deadline(
    http: httpx.AsyncClient,
) -> None:
    """Its lane looks alive, so only the calls' deadlines can end them."""
    fake = FakePeer(answer_probes=True)
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, call_timeout=1.5, **FAST) as node:
                ids = await join_fake(http, node, fake)
                with pytest.raises(towtruck.CallTimeout):
                    await node.client.invoke(ids[0], "increment")
                assert fake.calls
                assert node.router.membership.state(fake.address) is MemberState.ALIVE
            nursery.cancel_scope.cancel()


async def test_quick_calls_on_a_lane_are_answered_while_a_slow_one_runs() -> None:
    """The peer's reader answers a call to an idle actor's plain method itself, and
    hands the others to tasks: neither kind waits for the other."""
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=2, **FAST) as c:
            first, second = c.nodes
            slow, quick = owned_by(second, c.nodes, 2, "mixed")
            await first.client.invoke(quick, "plain", 0)  # in memory, idle: quick from now
            done: list[str] = []
            async with trio.open_nursery() as nursery:

                async def sleep() -> None:
                    done.append(await first.client.invoke(slow, "sleep", 2))

                nursery.start_soon(sleep)

                async def running() -> bool:
                    return bool(c.holders(slow))

                await wait_until(running)
                for n in range(20):
                    assert await first.client.invoke(quick, "plain", n) == f"plain {n!r}"
                assert done == [], "the quick calls did not wait for the slow one"
            assert done == ["slept"]


async def test_frames_held_and_never_flushed_go_out_at_drain() -> None:
    left, right = trio.socket.socketpair()
    with left, right, trio.fail_after(TEST_SECONDS):
        writer = FrameWriter(trio.SocketStream(left))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await trio.testing.wait_all_tasks_blocked()
            writer.hold(b"held")  # by a reader stopped before it flushed
            await writer.drain()
            nursery.cancel_scope.cancel()
        assert await right.recv(100) == b"held"
