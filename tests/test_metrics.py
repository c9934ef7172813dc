"""``GET /metrics``: the node's figures in Prometheus' text format, bounded labels, the
store's figures, and one scrape for a whole ``--workers`` group."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import towtruck
from examples import account, greeter
from tests.actors import create_counter
from tests.helpers import wait_until
from tests.processes import PROCESS_SECONDS, running, towtruck_command
from towtruck.figures import BUCKETS, CallFigures, Histogram

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape by name and labels (the text must parse)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def names(found: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in found if sample == name}


async def scrape(http: httpx.AsyncClient, url: str, **headers: str) -> Samples:
    response = await http.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


async def test_calls_are_counted_by_method_and_outcome(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(create_counter) as node:
        for i in range(3):
            assert (await http.post(f"{node.url}/invoke/m{i}/increment")).status_code == 200
        await http.get(f"{node.url}/invoke/m0/get")
        assert (await http.get(f"{node.url}/invoke/m0/no_such_method")).status_code == 404
        assert (await http.get(f"{node.url}/invoke/m0/_private")).status_code == 404
        found = await scrape(http, node.url)
    assert value(found, "towtruck_calls_total", method="increment", outcome="ok") == 3
    assert value(found, "towtruck_calls_total", method="get", outcome="ok") == 1
    # Labels only for methods the actor defines: what a client made up is not one.
    assert names(found, "towtruck_calls_total", "method") == {"increment", "get"}
    assert value(found, "towtruck_call_duration_seconds_count", method="increment") == 3
    assert value(found, "towtruck_call_duration_seconds_bucket", method="get", le="+Inf") == 1
    assert value(found, "towtruck_requests_total") == 6
    assert value(found, "towtruck_actors") == 3
    assert value(found, "towtruck_activations_total") == 3
    assert value(found, "towtruck_max_actors") == 1000
    assert value(found, "towtruck_members", state="self") == 1
    assert ("process_cpu_seconds_total", ()) in found


async def test_an_actor_error_is_an_outcome_and_refusals_are_counted_by_type(
    http: httpx.AsyncClient,
) -> None:
    def create(id: str, client: towtruck.Client) -> dict[str, Any]:
        def fail(data: Any) -> None:
            raise ValueError("no")

        return {"fail": fail}

    async with towtruck.open_node(create, max_in_flight=1) as node:
        assert (await http.get(f"{node.url}/invoke/x/fail")).status_code == 500
        node.runtime.in_flight += 1  # as if a call were under way: the next is refused
        try:
            assert (await http.get(f"{node.url}/invoke/x/fail")).status_code == 503
        finally:
            node.runtime.in_flight -= 1
        found = await scrape(http, node.url)
    assert value(found, "towtruck_calls_total", method="fail", outcome="ActorError") == 1
    assert value(found, "towtruck_rejected_total", type="Overloaded") == 1


async def test_a_full_mailbox_is_a_refusal_and_the_queue_is_a_gauge(
    http: httpx.AsyncClient,
) -> None:
    entered, release = trio.Event(), trio.Event()

    class Gate:
        async def wait(self) -> str:
            entered.set()
            await release.wait()
            return "done"

    async with towtruck.open_node(lambda id, client: Gate(), mailbox_size=1) as node:

        async def queued_one() -> bool:
            return node.runtime.catalog.statistics().queued == 1

        url = f"{node.url}/invoke/g/wait"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.get, url)
            with trio.fail_after(10):
                await entered.wait()
                nursery.start_soon(http.get, url)
                await wait_until(queued_one)
            assert (await http.get(url)).status_code == 503
            found = await scrape(http, node.url)
            release.set()
    assert value(found, "towtruck_mailbox_queued") == 1
    assert value(found, "towtruck_busy_actors") == 1
    assert value(found, "towtruck_rejected_total", type="MailboxFull") == 1
    assert value(found, "towtruck_calls_total", method="wait", outcome="MailboxFull") == 1


async def test_with_metrics_off_only_the_totals_are_kept(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(greeter.create_actor, metrics=False) as node:
        await http.get(f"{node.url}/invoke/1/hello")
        found = await scrape(http, node.url)
    assert not names(found, "towtruck_calls_total", "method")
    assert value(found, "towtruck_requests_total") == 1


async def test_openmetrics_when_the_scraper_asks_for_it(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(greeter.create_actor) as node:
        await http.get(f"{node.url}/invoke/1/hello")
        response = await http.get(
            f"{node.url}/metrics", headers={"accept": "application/openmetrics-text"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_the_store_is_timed_by_operation(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(account.create_actor, state_store="memory:") as node:
        response = await http.post(f"{node.url}/invoke/acc/deposit", json={"amount": 5})
        assert response.status_code == 200, response.text
        found = await scrape(http, node.url)
    assert value(found, "towtruck_store_duration_seconds_count", operation="claim") == 1
    assert value(found, "towtruck_store_duration_seconds_count", operation="write") == 1
    assert value(found, "towtruck_state_conflicts_total") == 0
    assert value(found, "towtruck_store_failures_total") == 0


async def test_deactivations_are_counted_by_reason(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(greeter.create_actor, max_actors=1) as node:
        await http.get(f"{node.url}/invoke/1/hello")
        await http.get(f"{node.url}/invoke/2/hello")  # 1 makes room
        await http.get(f"{node.url}/rungc")
        found = await scrape(http, node.url)
    assert value(found, "towtruck_deactivations_total", reason="capacity") == 1


def test_histogram_quantiles_interpolate_within_a_bucket() -> None:
    histogram = Histogram()
    assert histogram.quantile(0.5) is None
    for _ in range(100):
        histogram.observe(0.0002)  # in (0.0001, 0.00025]
    earlier = histogram.copy()
    histogram.observe(100.0)  # past the last bound
    assert histogram.quantile(0.5) == pytest.approx(0.0001 + 0.00015 * 50.5 / 100)
    assert histogram.quantile(1.0) == BUCKETS[-1]
    assert histogram.since(earlier).count == 1
    figures = CallFigures()
    figures.done("a", 0.001)
    figures.failed("a", 0.002, ValueError())
    figures.done("b", 0.003)
    assert figures.methods["a"].calls == 2
    assert figures.methods["a"].errors == 1
    assert figures.latency().count == 3
    assert figures.latency(["b"]).count == 1
    assert Histogram.from_payload(histogram.to_payload()).counts == histogram.counts
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_payload({"counts": [1], "sum": 0})


@pytest.mark.parser_free  # metrics gathered from workers (the route: the tests above, on both)
@pytest.mark.subprocess
async def test_one_scrape_answers_for_every_worker() -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--workers", "2", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"2 workers serving on (http://127\.0\.0\.1:\d+)") as (
            supervisor,
            match,
            _,
        ):
            url = match.group(1)
            nodes: set[str] = set()
            for i in range(20):
                async with httpx.AsyncClient(timeout=10) as client:  # either worker
                    assert (await client.get(f"{url}/invoke/w{i}/hello")).status_code == 200
                    nodes.add((await client.get(f"{url}/health")).json()["node"])
            assert len(nodes) == 2
            async with httpx.AsyncClient(timeout=10) as client:
                found = await scrape(client, url)
                members = (await client.get(f"{url}/health")).json()["members"]
                own = samples(
                    (await client.get(f"http://{members[0]['address']}/metrics?worker=1")).text
                )
            supervisor.send_signal(signal.SIGTERM)
            await supervisor.wait()
    assert value(found, "towtruck_workers_missing") == 0
    assert len(names(found, "towtruck_node", "node")) == 2
    assert value(found, "towtruck_calls_total", method="hello", outcome="ok") == 20
    assert value(found, "towtruck_actors") == 20
    assert value(found, "towtruck_max_actors") == 2000
    assert value(own, "towtruck_actors") < 20
    assert len(names(own, "towtruck_node", "node")) == 1
