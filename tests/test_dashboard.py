"""``/dashboard``: its data, its event stream, the cluster key, and the page itself in a
real headless browser (Debian's chromium, driven by Selenium through chromedriver:
tests marked ``browser``, skipped only where those are not installed)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as stock_serve

import towtruck
from tests.actors import create_recorder
from tests.helpers import FAST, NETWORK_TEST_SECONDS, TEST_SECONDS, wait_until

KEY = "correct horse battery staple"
KEY_HEADER = {"towtruck-cluster-key": KEY}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
#: What the page shows for a figure it does not have yet (an en dash).
NO_VALUE = "\u2013"
#: Longest the browser is given to show something (wall-clock seconds).
BROWSER_SECONDS = 20


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """The server-sent events of a streamed response, as (event, decoded data)."""
    kind, data = "message", ""
    async with aclosing(response.aiter_lines()) as lines:
        async for line in lines:
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                yield kind, json.loads(data)
                kind, data = "message", ""


async def first_events(url: str, count: int) -> tuple[bytes, list[tuple[str, Any]]]:
    """The head and first ``count`` events of ``/dashboard/events``, read from a raw
    connection (chunked), which is then closed: leaving a stream halfway through is
    what a closed browser tab does."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"GET /dashboard/events HTTP/1.1\r\nhost: t\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some()
        head, _, rest = received.partition(b"\r\n\r\n")
        body, found = b"", []
        while len(found) < count:
            while (line := rest.find(b"\r\n")) < 0 or len(rest) < line + 4 + int(rest[:line], 16):
                rest += await stream.receive_some()
            size = int(rest[:line], 16)
            body += rest[line + 2 : line + 2 + size]
            rest = rest[line + 4 + size :]
            *blocks, body = body.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
                found.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
    return head, found[:count]


async def data(http: httpx.AsyncClient, url: str, **headers: str) -> dict[str, Any]:
    response = await http.get(f"{url}/dashboard/data", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()  # type: ignore[no-any-return]


async def test_the_data_shows_every_node_and_rates_across_two_samples(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=2, **FAST) as cluster:
            for i in range(6):
                await cluster.client.invoke(f"a{i}", "echo")
            first = await data(http, cluster.nodes[0].url)
            forwarded = sum(node.router.forwarded for node in cluster.nodes)
            for i in range(10):
                await cluster.client.invoke(f"a{i}", "echo")
            for i in range(3):
                with pytest.raises(towtruck.ActorError):
                    await cluster.client.invoke(f"a{i}", "fail")
            forwarded = sum(node.router.forwarded for node in cluster.nodes) - forwarded

            async def sampled_again() -> bool:
                nonlocal second
                second = await data(http, cluster.nodes[0].url)
                return bool(second["time"] != first["time"])

            second: dict[str, Any] = {}
            await wait_until(sampled_again)

    addresses = [str(node.address) for node in cluster.nodes]
    assert [n["address"] for n in first["nodes"]] == addresses
    assert [n["state"] for n in first["nodes"]] == ["self", "alive"]
    assert first["totals"]["nodes"] == 2
    assert first["totals"]["actors"] == 6
    assert first["totals"]["calls_per_s"] is None  # nothing to take a rate against
    assert first["history"] == []

    totals, nodes = second["totals"], second["nodes"]
    assert totals["actors"] == 10
    assert totals["max_actors"] == sum(n["max_actors"] for n in nodes)
    assert all(n["answered"] for n in nodes)
    # Each node's rates span its own window; over it, every call counted once.
    assert sum(n["calls_per_s"] * n["window"] for n in nodes) == pytest.approx(13)
    assert sum(n["errors_per_s"] * n["window"] for n in nodes) == pytest.approx(3)
    assert sum(n["forwarded_per_s"] * n["window"] for n in nodes) == pytest.approx(forwarded)
    assert totals["calls_per_s"] == pytest.approx(sum(n["calls_per_s"] for n in nodes))
    assert 0 < totals["forwarded_share"] < 1
    assert 0 < totals["p50"] <= totals["p99"]
    methods = {m["name"]: m for m in second["methods"]}
    assert (methods["echo"]["calls"], methods["echo"]["errors"]) == (16, 0)
    assert (methods["fail"]["calls"], methods["fail"]["errors"]) == (3, 3)
    assert second["methods"][0]["name"] == "echo"  # the busiest first
    assert len(second["history"]) == 1
    assert second["history"][0]["calls_per_s"] == totals["calls_per_s"]
    assert set(second["reminders"]) >= {"scheduled", "delivered", "failed"}


async def test_the_event_stream_sends_views_and_ends_when_the_node_stops(
    http: httpx.AsyncClient,
) -> None:
    # A stop that waited for the open stream would take shutdown_timeout (30 s), past
    # the test's bound.
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, shutdown_timeout=30) as node:
            seen: list[tuple[str, Any]] = []
            async with http.stream("GET", f"{node.url}/dashboard/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                assert response.headers["transfer-encoding"] == "chunked"
                async with trio.open_nursery() as nursery:
                    async for event in events(response):
                        seen.append(event)
                        if len(seen) == 2:
                            nursery.start_soon(node.stop)
    kinds = [kind for kind, _ in seen]
    assert kinds[:2] == ["view", "view"]
    assert seen[-1] == ("end", {"reason": "stopping"})
    assert seen[0][1]["totals"]["nodes"] == 1


@pytest.mark.parametrize("path", ["/dashboard/data", "/dashboard/events"])
async def test_the_data_needs_the_cluster_key(http: httpx.AsyncClient, path: str) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, cluster_key=KEY) as node:
            page = await http.get(f"{node.url}/dashboard")
            missing = await http.get(node.url + path)
            wrong = await http.get(node.url + path, headers={"towtruck-cluster-key": "x" * 20})
            async with http.stream("GET", node.url + path, headers=KEY_HEADER) as right:
                status = right.status_code
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b'data-key-header="towtruck-cluster-key"' in page.content
    assert (missing.status_code, missing.json()["error"]["type"]) == (401, "Unauthorized")
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (403, "Forbidden")
    assert status == 200


@pytest.mark.parametrize(
    "path",
    ["/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/data"],
)
async def test_the_routes_take_get_and_head_only(http: httpx.AsyncClient, path: str) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder) as node:
            get = await http.get(node.url + path)
            head = await http.head(node.url + path)
            post = await http.post(node.url + path)
            health = await http.post(f"{node.url}/health")  # another route that reads
            events_head = await http.head(f"{node.url}/dashboard/events")
    assert get.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert (post.status_code, post.json()["error"]["type"]) == (405, "MethodNotAllowed")
    assert post.headers.get("allow") == health.headers.get("allow")
    assert post.json()["error"]["message"] == f"{path} does not take POST"
    assert events_head.status_code == 200
    assert events_head.headers["content-type"] == "text/event-stream"
    assert events_head.content == b""


@pytest.mark.parser_free  # Hypercorn reads the requests
async def test_the_event_stream_streams_under_hypercorn(http: httpx.AsyncClient) -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    app = towtruck.App(create_recorder)
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            (url,) = await nursery.start(
                partial(stock_serve, app, config, shutdown_trigger=stop.wait)
            )
            await http.get(f"{url}/invoke/a/echo")
            head, seen = await first_events(url, 2)
            stop.set()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert [(kind, view["totals"]["actors"]) for kind, view in seen] == [("view", 1)] * 2


# In a real browser.

needs_browser = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)


def open_browser() -> Any:
    """A headless chromium, driven through Debian's chromedriver; nothing downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_argument("--disable-dev-shm-usage")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def wait_for(driver: Any, check: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, BROWSER_SECONDS, poll_frequency=0.1).until(check)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def watch_the_cluster(url: str, actors: int, node: str, screenshot: Path) -> None:
    """Open the dashboard; wait for a live update showing 3 nodes and ``actors``
    actors, with rates; look ``a0`` up; save a screenshot."""
    from selenium.webdriver.common.by import By

    driver = open_browser()
    try:
        driver.get(f"{url}/dashboard")
        wait_for(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "live",
        )
        wait_for(driver, lambda d: text_of(d, "calls-rate") != NO_VALUE)  # a second sample came
        assert text_of(driver, "nodes-count") == "3"
        assert text_of(driver, "actors-total") == str(actors)
        rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
        assert len(rows) == 3
        driver.find_element(By.ID, "actor-id").send_keys("a0")
        driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
        found = wait_for(driver, lambda d: d.find_elements(By.ID, "actor-facts"))
        assert found[0].get_attribute("data-node") == node
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()


def log_in_to_the_cluster(url: str, key: str) -> None:
    """Open a keyed cluster's dashboard: it asks for the key; a wrong one is refused;
    the right one makes it go live."""
    from selenium.webdriver.common.by import By

    driver = open_browser()
    try:
        driver.get(f"{url}/dashboard")
        wait_for(driver, lambda d: d.find_element(By.ID, "login").is_displayed())
        assert not driver.find_element(By.ID, "board").is_displayed()
        driver.find_element(By.ID, "key").send_keys("x" * 20)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for(driver, lambda d: "not this cluster's key" in text_of(d, "login-error"))
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for(
            driver,
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "live",
        )
        wait_for(driver, lambda d: text_of(d, "calls-rate") != NO_VALUE)  # the stream came
        assert driver.find_element(By.ID, "board").is_displayed()
        assert text_of(driver, "nodes-count") == "3"
    finally:
        driver.quit()


@pytest.mark.parser_free  # the page's script (its routes: the tests above, on both)
@pytest.mark.browser
@needs_browser
async def test_the_page_shows_the_cluster_live(tmp_path: Path) -> None:
    actors = 7
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=3, **FAST) as cluster:
            for i in range(actors):
                await cluster.client.invoke(f"a{i}", "echo")
            (holder,) = cluster.holders("a0")
            screenshot = tmp_path / "dashboard.png"
            await trio.to_thread.run_sync(
                watch_the_cluster, cluster.nodes[0].url, actors, str(holder.address), screenshot
            )
    assert screenshot.stat().st_size > 0


@pytest.mark.parser_free  # the page's script (its routes: the tests above, on both)
@pytest.mark.browser
@needs_browser
async def test_the_page_asks_for_the_cluster_key(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_recorder, size=3, cluster_key=KEY, **FAST) as cluster:
            url = cluster.nodes[0].url
            refused = await http.get(f"{url}/dashboard/data")
            assert refused.status_code == 401
            await trio.to_thread.run_sync(log_in_to_the_cluster, url, KEY)
