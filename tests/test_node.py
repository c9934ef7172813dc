"""Starting a node: embedded with open_node, under Hypercorn, and with towtruck.run."""

from __future__ import annotations

import contextlib
import signal
import sys

import httpx
import pytest
import trio

import towtruck
from tests.actors import create_recorder
from tests.helpers import NETWORK_TEST_SECONDS
from tests.processes import PROCESS_SECONDS, child_env, running, towtruck_command


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of this trio run."""
    tasks: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is not None:
            tasks.add(task)
            todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return tasks


async def test_leaving_open_node_leaves_no_task_behind(http: httpx.AsyncClient) -> None:
    before = all_tasks()
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder) as node:
            for actor_id in range(20):
                await http.get(f"{node.url}/invoke/{actor_id}/echo")
            await http.get(f"{node.url}/health")
            during = all_tasks()
    assert len(during) > len(before)
    assert all_tasks() == before


async def test_a_crash_in_the_node_takes_it_down_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_collect() -> int:
        raise RuntimeError("collector bug")

    with (
        trio.fail_after(NETWORK_TEST_SECONDS),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="collector bug"), flatten_subgroups=True
        ),
    ):
        async with towtruck.open_node(create_recorder, gc_interval=0.01) as node:
            monkeypatch.setattr(node.runtime.catalog, "collect", broken_collect)
            await trio.sleep_forever()


async def test_node_client_calls_actors(http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder) as node:
            assert await node.client.invoke(1, "plain", "x") == "plain 'x'"
            assert (await http.get(f"{node.url}/query/1")).json() == {"exists": True}
    assert node.url == f"http://127.0.0.1:{node.address.port}"


@pytest.mark.parser_free  # Hypercorn reads the requests
@pytest.mark.subprocess
async def test_app_under_the_hypercorn_command(http: httpx.AsyncClient) -> None:
    argv = [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "trio",
        "--bind",
        "127.0.0.1:0",
        "tests.served:app",
    ]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"Running on (http://127\.0\.0\.1:\d+)") as (
            process,
            match,
            output,
        ):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            assert (await http.get(f"{url}/health")).json()["actors"] == 1
            process.send_signal(signal.SIGTERM)
            await process.wait()
            await output.wait_for("deactivate 1")
    assert process.returncode == 0, output.text


SCRIPT = """
import towtruck
from examples.greeter import create_actor
towtruck.run(create_actor{})
"""


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("arguments", "env"),
    [(", port=0", {}), ("", {"TOWTRUCK_PORT": "0", "TOWTRUCK_MAX_ACTORS": "3"})],
    ids=["keyword", "environment"],
)
async def test_towtruck_run_serves_until_ctrl_c(
    http: httpx.AsyncClient, arguments: str, env: dict[str, str]
) -> None:
    with trio.fail_after(PROCESS_SECONDS):
        async with running(
            [sys.executable, "-c", SCRIPT.format(arguments)],
            ready=r"serving on (http://127\.0\.0\.1:\d+)",
            env=child_env(**env),
        ) as (process, match, output):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            health = (await http.get(f"{url}/health")).json()
            assert health["catalog"]["max_actors"] == int(env.get("TOWTRUCK_MAX_ACTORS", 1000))
            process.send_signal(signal.SIGINT)
            await process.wait()
    assert process.returncode == 0, output.text


@pytest.mark.parser_free  # signals
@pytest.mark.subprocess
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_exits_at_once_while_a_method_holds_the_event_loop(
    http: httpx.AsyncClient, signum: signal.Signals
) -> None:
    argv = [*towtruck_command(), "serve", "tests.actors:create_blocker", "--port", "0"]
    argv += ["--blocked-warning", "0.5"]
    with trio.fail_after(PROCESS_SECONDS):
        async with (
            running(argv, ready=r"serving on (http://127\.0\.0\.1:\d+)") as (
                process,
                match,
                output,
            ),
            trio.open_nursery() as nursery,
        ):
            url = match.group(1)

            async def spin() -> None:  # never answered: the process exits meanwhile
                with contextlib.suppress(httpx.TransportError):
                    await http.get(f"{url}/invoke/spinner/spin")

            nursery.start_soon(spin)
            await output.wait_for("actor 'spinner' method 'spin' has held it")
            process.send_signal(signum)
            await output.wait_for("stopping gracefully")  # said though the loop is stuck
            with trio.fail_after(10):
                process.send_signal(signum)
                await process.wait()
    assert process.returncode == 1, output.text
    assert "again: exiting at once" in output.text
