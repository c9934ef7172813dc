"""The access log: one line per request on ``towtruck.server.access``, however the node is
served (``open_node``, ``towtruck serve --access-log``, ``App(access_log=True)`` under
the ``hypercorn`` command), whichever path answers the request."""

from __future__ import annotations

import logging
import re
import signal
import sys

import httpx
import pytest
import trio

import towtruck
from tests.actors import create_counter
from tests.helpers import NETWORK_TEST_SECONDS, wait_until
from tests.processes import PROCESS_SECONDS, running, towtruck_command

#: An access line: client, "METHOD target", status, body bytes, milliseconds.
LINE = re.compile(r'(\S+) "(\S+) (\S+)" (\S+) (\d+) (\d+\.\d+)ms$')

BIG_HEAD = b"GET /invoke/c/get HTTP/1.1\r\nhost: t\r\nx-big: " + b"x" * 20_000 + b"\r\n\r\n"
MALFORMED = b"GET /invoke/c/get HTTP/1.1\r\nbad header\r\n\r\n"

#: What :func:`send_requests` sends, as the access log should show it. The two last
#: are refused by the HTTP parser before they are requests (no method, no target).
EXPECTED = [
    ("POST", "/invoke/c/increment", "200"),
    ("GET", "/invoke/c/get?x=1", "200"),
    ("PUT", "/invoke/c/nope", "404"),
    ("HEAD", "/invoke/c/get", "405"),
    ("OPTIONS", "/invoke/c/get", "200"),
    ("POST", "/cluster/forward", "400"),
    ("GET", "/health", "200"),
    ("POST", "/health", "405"),
    ("GET", "/ping/a", "200"),
    ("GET", "/nothing", "404"),
    ("GET", "/ping/curl", "200"),
    ("GET", "/invoke/c/get", "431"),
]
REFUSED_BY_THE_PARSER = [("-", "-", "400")]


async def raw(url: str, request: bytes) -> bytes:
    """Send one raw request; read until the server closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(request)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received


async def like_curl(url: str, path: str) -> bytes:
    """GET ``path`` as curl does: read the answer, then close at once (Hypercorn's
    own access log wrote two lines for such a request, one of them without status)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        received = b""
        while not re.search(rb"\r\n\r\n.", received, re.DOTALL):
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
        return received


async def send_requests(url: str, http: httpx.AsyncClient, *, raw_requests: bool = True) -> None:
    """One request of every kind, fast path and Quart, answered and refused."""
    assert (await http.post(f"{url}/invoke/c/increment")).status_code == 200
    assert (await http.get(f"{url}/invoke/c/get?x=1")).status_code == 200
    assert (await http.put(f"{url}/invoke/c/nope")).status_code == 404
    assert (await http.head(f"{url}/invoke/c/get")).status_code == 405
    assert (await http.options(f"{url}/invoke/c/get")).status_code == 200
    assert (await http.post(f"{url}/cluster/forward", content=b"{}")).status_code == 400
    assert (await http.get(f"{url}/health")).status_code == 200
    assert (await http.post(f"{url}/health")).status_code == 405
    assert (await http.get(f"{url}/ping/a")).status_code == 200
    assert (await http.get(f"{url}/nothing")).status_code == 404
    assert (await like_curl(url, "/ping/curl")).startswith(b"HTTP/1.1 200")
    if raw_requests:
        assert (await raw(url, BIG_HEAD)).startswith(b"HTTP/1.1 431")
        assert (await raw(url, MALFORMED)).startswith(b"HTTP/1.1 400")


def parsed(messages: list[str]) -> list[tuple[str, str, str]]:
    """Method, target and status of each access line (each must be well formed)."""
    lines = []
    for message in messages:
        match = LINE.match(message)
        assert match, message
        lines.append((match.group(2), match.group(3), match.group(4)))
    return lines


async def test_open_node_logs_one_line_per_request(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="towtruck.access")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "towtruck.access"]

    async def all_logged() -> bool:
        return len(logged()) >= len(EXPECTED) + len(REFUSED_BY_THE_PARSER)

    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_counter, access_log=True) as node:
            await send_requests(node.url, http)
            await wait_until(all_logged)  # each line is written once its answer is sent
            await http.get(f"{node.url}/ping/last")
            await wait_until(all_logged)
    assert parsed(logged()) == [*EXPECTED, *REFUSED_BY_THE_PARSER, ("GET", "/ping/last", "200")]
    assert all(m.startswith("127.0.0.1:") for m in logged())


async def test_nothing_is_logged_unless_asked(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="towtruck.access")
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_counter) as node:
            await send_requests(node.url, http)
    assert [r for r in caplog.records if r.name == "towtruck.access"] == []


def access_lines(output: str) -> list[str]:
    return [
        line.partition(" towtruck.access INFO ")[2]
        for line in output.splitlines()
        if " towtruck.access INFO " in line
    ]


@pytest.mark.subprocess
async def test_serve_with_access_log_logs_one_line_per_request(http: httpx.AsyncClient) -> None:
    argv = [
        *towtruck_command(),
        "serve",
        "tests.actors:create_counter",
        "--port",
        "0",
        "--access-log",
    ]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"serving on (http://127\.0\.0\.1:\d+)") as (
            process,
            match,
            output,
        ):
            await send_requests(match.group(1), http)
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    assert parsed(access_lines(output.text)) == [*EXPECTED, *REFUSED_BY_THE_PARSER], output.text


@pytest.mark.parser_free  # Hypercorn reads the requests
@pytest.mark.subprocess
async def test_app_with_access_log_under_the_hypercorn_command_logs_one_line_per_request(
    http: httpx.AsyncClient,
) -> None:
    argv = [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "trio",
        "--bind",
        "127.0.0.1:0",
        "tests.served:logged_app",
    ]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"Running on (http://127\.0\.0\.1:\d+)") as (
            process,
            match,
            output,
        ):
            # Hypercorn's own parser answers (or not) oversized and malformed heads,
            # without the app.
            await send_requests(match.group(1), http, raw_requests=False)
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    assert parsed(access_lines(output.text)) == EXPECTED[:-1], output.text
