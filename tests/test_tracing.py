"""OpenTelemetry spans of calls, carried across nodes inside the calls (see
``towtruck.tracing``), recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import towtruck
from examples import chain
from tests.helpers import FAST, TEST_SECONDS, owned_by
from towtruck import tracing

CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Nodes started in the test trace to an in-memory exporter (a provider of the
    test's own: the process-wide one can be set only once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "configured_tracer", lambda: provider.get_tracer("towtruck"))
    yield exporter
    provider.shutdown()


def by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


async def test_a_call_across_three_nodes_is_one_trace(spans: InMemorySpanExporter) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(chain.create_actor, size=3, **FAST) as c,
            httpx.AsyncClient(timeout=10) as http,
        ):
            a, b, cc = c.nodes
            (on_b,) = owned_by(b, c.nodes, 1, "b")
            (on_c,) = owned_by(cc, c.nodes, 1, "c")
            traceparent = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"
            response = await http.get(
                f"{a.url}/invoke/{on_b}/ask/{on_c}", headers={"traceparent": traceparent}
            )
            assert response.status_code == 200, response.text

    recorded = spans.get_finished_spans()
    # A's entry -> B runs ask -> B's call to C -> C runs answer -> C's call back to B
    # -> B runs goodbye (inside ask's turn: the chain holds it).
    assert {span.context.trace_id for span in recorded} == {CLIENT_TRACE}
    assert len(recorded) == 6, [(s.name, s.attributes) for s in recorded]
    known = by_id(recorded)
    (root,) = [s for s in recorded if s.parent is not None and s.parent.span_id == CLIENT_SPAN]
    assert root.parent is not None
    assert root.parent.is_remote
    assert root.kind is SpanKind.SERVER
    assert root.attributes is not None
    assert root.attributes["towtruck.node"] == str(a.address)
    path = [root]
    while children := [
        s for s in recorded if s.parent and s.parent.span_id == path[-1].context.span_id
    ]:
        (child,) = children
        path.append(child)
    assert [(s.name, s.attributes["towtruck.node"]) for s in path if s.attributes] == [
        ("invoke ask", str(a.address)),
        ("invoke ask", str(b.address)),
        ("invoke answer", str(b.address)),
        ("invoke answer", str(cc.address)),
        ("invoke goodbye", str(cc.address)),
        ("invoke goodbye", str(b.address)),
    ]
    assert all(span.parent.span_id in known for span in path[1:] if span.parent)
    assert all(span.status.status_code is StatusCode.UNSET for span in recorded)


async def test_a_failed_call_is_a_failed_span(spans: InMemorySpanExporter) -> None:
    async with towtruck.open_runtime(chain.create_actor) as runtime:
        with pytest.raises(towtruck.MethodNotFound):
            await runtime.client.invoke("1", "nothing")
        await runtime.client.invoke("1", "hello")
    first, *rest = spans.get_finished_spans()
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None
    assert first.attributes["towtruck.outcome"] == "MethodNotFound"
    assert first.parent is None  # a new trace: nothing inherited from the test's task
    hello, goodbye = sorted(rest, key=lambda s: s.start_time or 0)
    assert goodbye.parent is not None
    assert goodbye.parent.span_id == hello.context.span_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00-0-0-01",
        f"01-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01",
        f"00-{0:032x}-{CLIENT_SPAN:016x}-01",
        f"00-{CLIENT_TRACE:032x}-{0:016x}-01",
        "00-" + "g" * 32 + f"-{CLIENT_SPAN:016x}-01",
        None,
        17,
    ],
)
def test_a_traceparent_that_names_no_span_is_ignored(text: object) -> None:
    assert tracing.from_traceparent(text) is None


def test_traceparent_round_trips() -> None:
    text = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"
    parsed = tracing.from_traceparent(text)
    assert parsed is not None
    assert parsed.trace_id == CLIENT_TRACE
    assert tracing.to_traceparent(parsed) == text


async def test_no_tracer_without_a_configured_provider() -> None:
    async with towtruck.open_runtime(chain.create_actor) as runtime:
        await runtime.client.invoke("1", "hello")
        assert runtime.tracer is None


def test_the_global_provider_is_used_when_one_is_configured() -> None:
    """In a process of its own: the process-wide provider can be set only once."""
    program = """
import trio, towtruck
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from examples import chain
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
async def main():
    async with towtruck.open_runtime(chain.create_actor) as runtime:
        await runtime.client.invoke("1", "hello")
trio.run(main)
print(sorted(span.name for span in exporter.get_finished_spans()))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "['invoke goodbye', 'invoke hello']"
