"""A cluster of ``towtruck serve`` processes, as users run one."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack

import httpx
import pytest
import trio

from tests.helpers import wait_until
from tests.processes import PROCESS_SECONDS, run_to_end, running, towtruck_command
from towtruck.cluster import placement

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

SERVING = r"serving on (http://127\.0\.0\.1:\d+)"
FAST = ["--heartbeat-interval", "0.2", "--bloom-interval", "0.2", "--port", "0"]


async def test_serve_processes_form_a_cluster_and_survive_kill_9(http: httpx.AsyncClient) -> None:
    serve = [*towtruck_command(), "serve", "tests.actors:create_counter", *FAST]
    with trio.fail_after(PROCESS_SECONDS * 2):
        async with AsyncExitStack() as stack:
            first, match, _ = await stack.enter_async_context(running(serve, ready=SERVING))
            urls = [match.group(1)]
            processes = [first]
            for _ in range(2):
                peer = urls[0].removeprefix("http://")
                process, match, _ = await stack.enter_async_context(
                    running([*serve, "--peer", peer], ready=SERVING)
                )
                processes.append(process)
                urls.append(match.group(1))
            addresses = [url.removeprefix("http://") for url in urls]

            async def joined() -> bool:
                for url, me in zip(urls, addresses, strict=True):
                    others = sorted(a for a in addresses if a != me)
                    if (await http.get(f"{url}/getservers")).json() != others:
                        return False
                return True

            with trio.fail_after(5):
                await wait_until(joined)
            ids = [f"p{i}" for i in range(30)]
            for round_ in range(3):
                for actor_id in ids:
                    response = await http.post(f"{urls[round_]}/invoke/{actor_id}/increment")
                    assert response.json() == round_ + 1
            holders = {
                actor_id: [
                    url
                    for url in urls
                    if (await http.get(f"{url}/query/{actor_id}")).json()["exists"]
                ]
                for actor_id in ids
            }
            assert all(len(h) == 1 for h in holders.values()), holders
            assert any(h == [urls[2]] for h in holders.values())

            processes[2].send_signal(signal.SIGKILL)
            await processes[2].wait()

            async def survivors_answer_for_everyone() -> bool:
                for actor_id in ids:
                    response = await http.post(f"{urls[0]}/invoke/{actor_id}/increment")
                    if response.status_code != 200:
                        # Refused by the dead node (503), or sent on a connection to it
                        # that had not yet been seen to break (502: it may have run).
                        error = response.json()["error"]["type"]
                        assert error in ("PeerUnavailable", "CallInterrupted"), response.text
                        return False
                return True

            with trio.fail_after(0.2 * 3 + 1):
                await wait_until(survivors_answer_for_everyone)
            for process in processes[:2]:
                process.send_signal(signal.SIGTERM)
            for process in processes[:2]:
                await process.wait()
                assert process.returncode == 0


@pytest.mark.parametrize(
    ("flags", "stall"),
    [
        # The stall made long enough for the node to notice it itself when it wakes
        # (more than heartbeat_interval x (heartbeat_misses + 2)).
        ([], 1.5),
        # A stall shorter than that (3 s x 3), yet long enough for its peer to take it
        # for down (3 s x 1) and activate its actor afresh: only the peer knows.
        (["--heartbeat-interval", "3", "--heartbeat-misses", "1"], 0.0),
    ],
    ids=["noticed-by-the-node", "noticed-by-its-peer-only"],
)
@pytest.mark.parser_free  # failure detection (the lanes' parsing: test_lanes, on both)
async def test_a_hung_node_fails_its_calls_at_failure_detection_and_comes_back_alone(
    flags: list[str], stall: float
) -> None:
    # SIGSTOP: the process holds its sockets open and answers nothing, like a hung
    # process or a host lost from the network (a killed one refuses at once instead).
    # Two nodes, one cut off: with keep-majority the other might be the minority, and
    # would wait for the suspicion time anyway; this is the behaviour of serve.
    serve = [
        *towtruck_command(),
        "serve",
        "tests.actors:create_counter",
        *FAST,
        *flags,
        "--partition",
        "serve",
    ]
    with trio.fail_after(PROCESS_SECONDS * 2):
        async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=60) as http:
            first, match, _ = await stack.enter_async_context(running(serve, ready=SERVING))
            url = match.group(1)
            me = url.removeprefix("http://")
            second, match, _ = await stack.enter_async_context(
                running([*serve, "--peer", me], ready=SERVING)
            )
            other = match.group(1).removeprefix("http://")

            async def states() -> dict[str, str]:
                health = (await http.get(f"{url}/health")).json()
                return {m["address"]: m["state"] for m in health["members"]}

            async def second_alive() -> bool:
                return (await states()).get(other) == "alive"

            with trio.fail_after(5):
                await wait_until(second_alive)
            actor_id = next(
                i
                for i in (f"h{n}" for n in range(1000))
                if placement.owner(i, [me, other]) == other
            )
            assert (await http.post(f"{url}/invoke/{actor_id}/increment")).json() == 1

            second.send_signal(signal.SIGSTOP)
            stopped_at = trio.current_time()
            try:
                # The call timeout is 30 s; failure detection takes 3 x 0.2 s (3 x 1).
                with trio.fail_after(10):
                    response = await http.post(f"{url}/invoke/{actor_id}/increment")
                assert response.status_code == 502, response.text
                assert response.json()["error"]["type"] == "CallInterrupted"
                assert (await states())[other] == "down"

                async def placed_afresh() -> bool:
                    response = await http.post(f"{url}/invoke/{actor_id}/increment")
                    return response.status_code == 200

                with trio.fail_after(10):
                    await wait_until(placed_afresh)
                count = (await http.get(f"{url}/invoke/{actor_id}/get")).json()
                await trio.sleep_until(stopped_at + stall)  # the stall itself
            finally:
                second.send_signal(signal.SIGCONT)
            with trio.fail_after(10):
                await wait_until(second_alive)

            # Waking up, the node gives up its stale activation: the one activated
            # meanwhile keeps serving, whichever node is asked.
            async def one_holder() -> bool:
                held = [
                    u
                    for u in (url, f"http://{other}")
                    if (await http.get(f"{u}/query/{actor_id}")).json()["exists"]
                ]
                return held == [url]

            with trio.fail_after(10):
                await wait_until(one_holder)
            response = await http.post(f"http://{other}/invoke/{actor_id}/increment")
            assert response.json() == count + 1
            for process in (first, second):
                process.send_signal(signal.SIGTERM)
            for process in (first, second):
                await process.wait()
                assert process.returncode == 0


@pytest.mark.parametrize(
    "key", [[], ["--cluster-key", "another key, as long"]], ids=["none", "other"]
)
async def test_a_node_whose_key_its_peer_refuses_does_not_start_and_both_say_why(
    key: list[str],
) -> None:
    serve = [*towtruck_command(), "serve", "tests.actors:create_counter", *FAST]
    keyed = [*serve, "--cluster-key", "the cluster's own key"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(keyed, ready=SERVING) as (first, match, output):
            peer = match.group(1).removeprefix("http://")
            result = await run_to_end([*serve, "--peer", peer, *key])
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            last = result.stderr.rstrip("\n").splitlines()[-1]
            assert last.startswith(
                f"towtruck: error: --cluster-key: every peer refused this node's cluster key: {peer}"
            ), result.stderr
            assert f"{peer} refused this node's cluster key" in result.stderr
            await output.wait_for("refused a request for the cluster from 127.0.0.1")
            first.send_signal(signal.SIGTERM)
