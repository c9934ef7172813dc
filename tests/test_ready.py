"""``GET /ready``, the readiness probe: 503 until the node serves with a settled view,
and again from the moment a graceful stop begins."""

from __future__ import annotations

import signal

import httpx
import pytest
import trio

import towtruck
from examples import greeter
from tests.helpers import FAST, TEST_SECONDS, wait_until
from tests.processes import PROCESS_SECONDS, running, towtruck_command
from towtruck.server.routes import Routes


async def test_a_serving_node_is_ready_and_a_stopping_one_is_not(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(greeter.create_actor, size=2, **FAST) as c:
            a, b = c.nodes
            assert (await http.get(f"{a.url}/ready")).json() == {"ready": True}
            a.runtime.stop_soon()  # what a graceful stop does first
            refused = await http.get(f"{a.url}/ready")
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "NodeStopping"
            assert (await http.get(f"{a.url}/health")).status_code == 200  # still alive
            assert (await http.get(f"{b.url}/ready")).status_code == 200


def test_a_node_not_serving_yet_is_not_ready() -> None:
    runtime = towtruck.Runtime(greeter.create_actor, towtruck.Settings.load(environ={}))
    with pytest.raises(towtruck.Unavailable) as refused:
        Routes(runtime).ready()
    assert type(refused.value) is towtruck.Unavailable
    assert "joining" in str(refused.value)


@pytest.mark.subprocess
async def test_ready_turns_503_at_sigterm_while_calls_in_flight_finish(
    http: httpx.AsyncClient,
) -> None:
    argv = [*towtruck_command(), "serve", "tests.served:create_actor", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"serving on (http://127\.0\.0\.1:\d+)") as (
            process,
            match,
            output,
        ):
            url = match.group(1)
            assert (await http.get(f"{url}/ready")).status_code == 200
            slow: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:

                async def call_in_flight() -> None:
                    slow.append(await http.get(f"{url}/invoke/s/sleep/2"))

                nursery.start_soon(call_in_flight)

                async def in_flight() -> bool:
                    return bool((await http.get(f"{url}/health")).json()["in_flight"] == 1)

                async def not_ready() -> bool:
                    return (await http.get(f"{url}/ready")).status_code == 503

                await wait_until(in_flight)
                process.send_signal(signal.SIGTERM)
                signalled = trio.current_time()
                await wait_until(not_ready)
                not_ready_after = trio.current_time() - signalled
            assert slow[0].json() == "slept"
            await process.wait()
    assert process.returncode == 0, output.text
    # Not a timing assertion on speed: the probe must turn before the call in flight
    # (2 s) ends, which the stop waits for.
    assert not_ready_after < 1.0
