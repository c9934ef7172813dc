"""``towtruck serve --workers 2``: two node processes behind one port."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from tests.processes import PROCESS_SECONDS, running, towtruck_command

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

TWO_COUNTERS = ["serve", "tests.actors:create_counter", "--workers", "2", "--port", "0"]
TWO_COUNTERS += ["--heartbeat-interval", "0.2"]
READY = r"2 workers serving on (http://127\.0\.0\.1:\d+)"


async def test_two_workers_serve_one_port_as_one_cluster() -> None:
    argv = [*towtruck_command(), *TWO_COUNTERS]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=READY) as (
            supervisor,
            match,
            output,
        ):
            url = match.group(1)
            nodes: set[str] = set()
            # A new connection each time, so calls land on either worker.
            for round_ in range(1, 4):
                for i in range(20):
                    async with httpx.AsyncClient(timeout=10) as client:
                        response = await client.post(f"{url}/invoke/w{i}/increment")
                        assert response.json() == round_, output.text
                        nodes.add((await client.get(f"{url}/health")).json()["node"])
            assert len(nodes) == 2, "both workers answered"
            supervisor.send_signal(signal.SIGTERM)
            await supervisor.wait()
    assert supervisor.returncode == 0, output.text
    assert output.text.count("stopping gracefully") >= 2


@pytest.mark.parser_free  # the supervisor (workers' HTTP: the test above, on both)
async def test_workers_stop_when_the_supervisor_is_killed() -> None:
    from tests.helpers import wait_until

    argv = [*towtruck_command(), "serve", "examples.greeter", "--workers", "2", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=READY) as (
            supervisor,
            match,
            _,
        ):
            url = match.group(1)
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(f"{url}/invoke/1/hello")).status_code == 200
                supervisor.kill()
                await supervisor.wait()

                async def refused() -> bool:
                    try:
                        await client.get(f"{url}/ping")
                    except httpx.ConnectError:
                        return True
                    except httpx.TransportError:
                        pass  # a worker closed a connection as it stopped: ask again
                    return False

                with trio.fail_after(15):
                    await wait_until(refused)


def _children(pid: int) -> set[int]:
    """The child processes of ``pid`` (trio starts them from its threads: ask each)."""
    children: set[int] = set()
    for thread in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the thread ended meanwhile
            children.update(map(int, (thread / "children").read_text().split()))
    return children


@pytest.mark.parser_free  # the supervisor (workers' HTTP: the test above, on both)
async def test_a_worker_that_dies_is_restarted() -> None:
    from tests.helpers import wait_until

    argv = [*towtruck_command(), *TWO_COUNTERS]
    ids = [f"r{i}" for i in range(20)]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=READY) as (
            supervisor,
            match,
            output,
        ):
            url = match.group(1)
            workers = _children(supervisor.pid)
            assert len(workers) == 2
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            await output.wait_for(r"worker \d \(process \d+\) exited with status -9")
            await output.wait_for(r"worker \d restarted \(process \d+\)")
            after = _children(supervisor.pid)
            assert victim not in after
            assert len(after & workers) == 1, "the other worker lived on"
            assert len(after) == 2

            answered: set[str] = set()

            async def every_id_answers() -> bool:
                # A new connection each time, so calls land on either worker.
                async with httpx.AsyncClient(timeout=10) as client:
                    for actor_id in ids:
                        response = await client.post(f"{url}/invoke/{actor_id}/increment")
                        if response.status_code != 200:
                            return False  # the cluster is still taking the new one in
                    answered.add((await client.get(f"{url}/health")).json()["node"])
                return len(answered) == 2

            with trio.fail_after(15):
                await wait_until(every_id_answers)
            supervisor.send_signal(signal.SIGTERM)
            await supervisor.wait()
    assert supervisor.returncode == 0, output.text


@pytest.mark.parser_free  # the supervisor (workers' HTTP: the test above, on both)
async def test_two_workers_share_one_sqlite_file(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    argv = [*towtruck_command(), "serve", "examples.account:create_actor", "--workers", "2"]
    argv += ["--port", "0", "--state-store", store]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=READY) as (supervisor, match, output):
            url = match.group(1)
            nodes: set[str] = set()

            async def deposit(i: int) -> None:
                async with httpx.AsyncClient(timeout=10) as client:  # a connection each
                    for _ in range(5):
                        response = await client.post(
                            f"{url}/invoke/acct{i}/deposit", json={"amount": 1}
                        )
                        assert response.status_code == 200, response.text
                    nodes.add((await client.get(f"{url}/health")).json()["node"])

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(deposit, i)
            assert len(nodes) == 2, "both workers answered"
            supervisor.send_signal(signal.SIGTERM)
            await supervisor.wait()
    assert supervisor.returncode == 0, output.text
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db:
        rows = db.execute("SELECT actor, value FROM towtruck_states").fetchall()
    assert sorted(rows) == sorted((f"acct{i}", b'{"balance":5}') for i in range(20))
