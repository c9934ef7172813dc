"""``towtruck serve`` and ``python -m towtruck``, run as child processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import httpx
import pytest
import trio

from tests.processes import PROCESS_SECONDS, child_env, run_to_end, running, towtruck_command

pytestmark = pytest.mark.subprocess

SERVING = r"serving on (http://127\.0\.0\.1:\d+)"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_answers_calls_and_stops_gracefully_on_a_signal(
    http: httpx.AsyncClient, signum: signal.Signals
) -> None:
    argv = [*towtruck_command(), "serve", "tests.served:create_actor", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, output):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            assert (await http.get(f"{url}/invoke/2/hello")).status_code == 200
            assert (await http.get(f"{url}/health")).json()["actors"] == 2
            process.send_signal(signum)
            await process.wait()
            await output.wait_for("deactivate 2")
    assert process.returncode == 0, output.text
    assert "deactivate 1" in output.text
    assert "stopping gracefully" in output.text


async def test_serve_finishes_the_calls_in_flight_and_refuses_new_ones_when_signalled(
    http: httpx.AsyncClient,
) -> None:
    from tests.helpers import wait_until

    argv = [*towtruck_command(), "serve", "tests.served:create_actor", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, output):
            url = match.group(1)
            slow: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:

                async def call_in_flight() -> None:
                    slow.append(await http.get(f"{url}/invoke/s/sleep/3"))

                nursery.start_soon(call_in_flight)

                async def in_flight() -> bool:
                    return bool((await http.get(f"{url}/health")).json()["in_flight"] == 1)

                await wait_until(in_flight)
                process.send_signal(signal.SIGTERM)
                await output.wait_for("stopping: refusing new calls")
                late = await http.get(f"{url}/invoke/late/hello")
                assert late.status_code == 503, late.text
                assert late.json()["error"]["type"] == "NodeStopping"
                assert late.headers["retry-after"] == "1"
            assert slow[0].json() == "slept"
            await process.wait()
    assert process.returncode == 0, output.text
    assert "deactivate s" in output.text
    assert "activate late" not in output.text


async def test_python_m_towtruck_and_settings_from_the_environment(http: httpx.AsyncClient) -> None:
    argv = [sys.executable, "-m", "towtruck", "serve", "examples.greeter", "--port", "0"]
    env = child_env(TOWTRUCK_MAX_ACTORS="7", TOWTRUCK_CALL_TIMEOUT="3.5")
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING, env=env) as (process, match, _):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            health = (await http.get(f"{url}/health")).json()
            assert health["catalog"]["max_actors"] == 7
            process.send_signal(signal.SIGTERM)


@pytest.mark.parser_free  # refused at start: no request is read
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-actors", "many"], {}, "--max-actors: expected a whole number"),
        (["--call-timeout", "0"], {}, "--call-timeout: expected a positive number"),
        (["--port", "99999"], {}, "--port: expected a port"),
        (["--peer", "nohost"], {}, "--peer: 'nohost' is not an address"),
        ([], {"TOWTRUCK_GC_INTERVAL": "soon"}, "TOWTRUCK_GC_INTERVAL: expected a number"),
        ([], {"TOWTRUCK_LOG_LEVEL": "loud"}, "TOWTRUCK_LOG_LEVEL: expected one of"),
        (["--log-level", "loud"], {}, "--log-level: expected one of"),
    ],
)
async def test_bad_settings_are_refused_at_start(
    args: list[str], env: dict[str, str], message: str
) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", *args]
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end(argv, env=child_env(**env))
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parser_free  # refused at start: no request is read
@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no.such.module", "cannot import 'no.such.module'"),
        ("examples.greeter:nothing", "'examples.greeter' has no callable 'nothing'"),
    ],
)
async def test_a_factory_that_cannot_be_found_is_refused(factory: str, message: str) -> None:
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*towtruck_command(), "serve", factory])
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parser_free  # refused at start: no request is read
async def test_help_lists_every_setting() -> None:
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*towtruck_command(), "serve", "--help"])
    assert result.returncode == 0
    for flag in [
        "--host",
        "--port",
        "--peer",
        "--max-actors",
        "--max-inactivity",
        "--gc-interval",
        "--call-timeout",
        "--mailbox-size",
        "--max-body",
        "--heartbeat-interval",
        "--heartbeat-misses",
        "--bloom-interval",
        "--advertise",
        "--cluster-key",
        "--max-in-flight",
        "--request-timeout",
        "--shutdown-timeout",
        "--keep-alive-timeout",
        "--workers",
        "--access-log",
        "--debug",
        "--log-level",
        "--log-format",
        "--no-metrics",
        "--blocked-warning",
    ]:
        assert flag in result.stdout


async def test_json_logs_are_one_object_a_line(http: httpx.AsyncClient) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--port", "0"]
    argv += ["--log-format", "json", "--no-metrics"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, output):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).status_code == 200
            metrics = (await http.get(f"{url}/metrics")).text
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    lines = [json.loads(line) for line in output.text.splitlines() if line]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    (start,) = [line for line in lines if "serving on" in line["message"]]
    assert start["level"] == "info"
    assert "state_store=sqlite:///towtruck-state.sqlite3" in start["message"]
    assert "metrics=totals only" in start["message"]
    assert "towtruck_calls_total{" not in metrics


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a start-up mistake prints, checking it is one line, status 2."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("towtruck: error: "), result.stderr
    return result.stderr.removeprefix("towtruck: error: ").rstrip("\n")


WORKERS = pytest.mark.parametrize(
    "workers", [[], ["--workers", "2"]], ids=["one process", "two workers"]
)


@pytest.mark.parser_free  # refused at start: no request is read
@WORKERS
async def test_a_port_in_use_is_one_line_naming_the_flag_and_value(workers: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*towtruck_command(), "serve", "examples.greeter", "--port", str(port), *workers]
        with trio.fail_after(PROCESS_SECONDS):
            result = await run_to_end(argv)
    assert one_line_error(result) == f"--port {port}: address already in use"


@pytest.mark.parser_free  # refused at start: no request is read
@WORKERS
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("10.255.255.1", "not an address of this machine"),
        ("192.0.2.7", "not an address of this machine"),
        ("no-such-host.invalid", "the name does not resolve to an address"),
        ("999.1.1.1", "the name does not resolve to an address"),
    ],
)
async def test_a_host_that_cannot_be_bound_is_one_line_naming_the_flag_and_value(
    host: str, reason: str, workers: list[str]
) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--host", host, "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*argv, *workers])
    assert one_line_error(result) == f"--host {host}: {reason}"


@pytest.mark.parser_free  # refused at start: no request is read
@WORKERS
async def test_an_async_create_actor_is_one_line(workers: list[str]) -> None:
    factory = "tests.actors:create_async_counter"
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*towtruck_command(), "serve", factory, *workers])
    assert one_line_error(result).startswith(
        f"{factory} is an async def: create_actor must be a plain def returning the actor"
    )


@pytest.mark.parser_free  # refused at start: no request is read
@pytest.mark.parametrize(
    ("factory", "hint"),
    [
        ("bad.py", "'bad'"),
        ("examples/greeter.py", "'examples.greeter'"),
        ("./examples/greeter.py:create_actor", "'examples.greeter:create_actor'"),
    ],
)
async def test_a_file_name_for_the_factory_hints_at_the_module_name(
    factory: str, hint: str
) -> None:
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*towtruck_command(), "serve", factory])
    error = one_line_error(result)
    assert error.startswith(f"cannot import {factory.partition(':')[0]!r}")
    assert f"give the module's name, not its file: {hint}" in error
    assert "pkg.module" in error


@pytest.mark.parser_free  # refused at start: no request is read
async def test_a_worker_refusing_to_start_stops_the_supervisor_with_its_one_line() -> None:
    argv = [*towtruck_command(), "serve", "tests.refused_in_workers", "--workers", "2"]
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([*argv, "--port", "0"])
    assert one_line_error(result).endswith("refused in the workers")


async def test_an_unknown_towtruck_variable_is_ignored_with_a_warning(
    http: httpx.AsyncClient,
) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--port", "0"]
    env = child_env(TOWTRUCK_VERSION="1.2", TOWTRUCK_MAX_ACTOR="7")
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING, env=env) as (process, match, output):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    assert output.text.count("TOWTRUCK_VERSION is not a towtruck setting: ignored") == 1
    assert "TOWTRUCK_MAX_ACTOR is not a towtruck setting: ignored" in output.text
    assert "did you mean TOWTRUCK_MAX_ACTORS?" in output.text


@pytest.mark.parser_free  # the supervisor's logging
@pytest.mark.slow
async def test_workers_get_the_log_level_and_do_not_warn_again(http: httpx.AsyncClient) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--port", "0", "--workers", "2"]
    env = child_env(TOWTRUCK_VERSION="1.2", TOWTRUCK_LOG_LEVEL="DEBUG")
    ready = r"2 workers serving on (http://127\.0\.0\.1:\d+)"
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=ready, env=env) as (process, match, output):
            url = match.group(1)
            assert (await http.get(f"{url}/invoke/1/hello")).status_code == 200
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    assert output.text.count("TOWTRUCK_VERSION is not a towtruck setting") == 1, output.text
    assert output.text.count("DEBUG settings: Settings(") == 2, "each worker logs at debug"
