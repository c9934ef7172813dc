"""``towtruck serve`` with tracing on: OpenTelemetry's SDK configured before the node starts.

    python benchmarks/_traced_greeter.py serve examples.greeter:create_actor [OPTIONS]

runs the ``towtruck`` command (same arguments) after setting the global tracer provider
to the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` (its defaults) feeding
:class:`DroppingExporter`, which counts the spans it is handed and drops them. So every
call the node receives is a span, made, queued and exported as with a real exporter
but for the network. Once the node has stopped (SIGTERM), the provider is shut down
(flushing what is queued) and ``spans exported: N`` is printed: ``observability.py``
reads it from the server's output to check that the calls were traced.

Importing this module configures nothing: ``observability.py`` uses
:func:`dropping_provider` for its in-process runtimes, set on ``runtime.tracer``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

#: What the traced server prints on its way out, followed by the count.
EXPORTED = "spans exported:"


class DroppingExporter(SpanExporter):
    """Takes every batch of spans, counts them and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def dropping_provider() -> tuple[TracerProvider, DroppingExporter]:
    """An SDK tracer provider exporting through a :class:`DroppingExporter` in batches
    (``BatchSpanProcessor`` with its default queue, batch size and delay), and that
    exporter."""
    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def main(argv: list[str]) -> None:
    """Configure the global provider, then run ``towtruck`` with ``argv``."""
    # The towtruck of this tree (as `python -m towtruck` run from its root would find).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from opentelemetry import trace

    from towtruck.cli import main as towtruck

    provider, exporter = dropping_provider()
    trace.set_tracer_provider(provider)
    try:
        towtruck(argv)
    finally:
        provider.shutdown()
        print(f"{EXPORTED} {exporter.spans}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
