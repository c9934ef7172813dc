"""OpenTelemetry spans for calls, carried across nodes inside the calls themselves.

Optional: with ``opentelemetry-api`` installed (``pip install towtruck[otel]``) and a
tracer provider configured before the node starts, every call a node receives is a
span (its actor id, method, node and outcome). Without either, a node has no tracer
and a call pays one attribute check.

A span's parent is the call it was made from, never whatever OpenTelemetry context
the running task happens to have: a turn may run in the actor's own task, started by
an unrelated call. So the parent travels with the call: in its
:class:`~towtruck.calls.CallContext` within a node (``trace``: the span context of the
call whose turn is running), and across nodes as a W3C ``traceparent`` inside the
forwarded call's envelope, on lanes and over HTTP alike. A request to ``/invoke`` with
a ``traceparent`` header continues the client's trace.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .calls import CallContext

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel
except ImportError:  # pragma: no cover (the otel extra is not installed)
    otel = None  # type: ignore[assignment]

__all__ = ["configured_tracer", "failed", "from_traceparent", "start", "to_traceparent"]

_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def configured_tracer() -> Any | None:
    """towtruck's tracer from the global provider, or None if OpenTelemetry is not
    installed or no provider has been configured (its default provider records
    nothing)."""
    if otel is None:
        return None
    provider = otel.get_tracer_provider()
    if isinstance(provider, (otel.ProxyTracerProvider, otel.NoOpTracerProvider)):
        return None
    from . import __version__

    return provider.get_tracer("towtruck", __version__)


def start(
    tracer: Any, actor_id: str, method: str, context: CallContext, node: str
) -> tuple[Any, CallContext]:
    """Start the span of a call a node received, as a child of the call it came from
    (``context.trace``) or as a new trace. Returns the span and the context to run the
    call with, which carries the span as the parent of the calls it makes."""
    parent = context.trace
    if parent is not None:
        parent_context = otel.set_span_in_context(otel.NonRecordingSpan(parent))
    else:
        parent_context = otel_context.Context()  # a new trace, not the task's
    span = tracer.start_span(
        f"invoke {method[:100]}",
        context=parent_context,
        kind=otel.SpanKind.SERVER if not context.chain else otel.SpanKind.INTERNAL,
        attributes={
            "towtruck.actor.id": actor_id,
            "towtruck.method": method[:100],
            "towtruck.node": node,
            "towtruck.hops": context.hops,
        },
    )
    traced = context.with_trace(span.get_span_context())
    return span, traced


def failed(span: Any, error: BaseException) -> None:
    """Mark ``span`` failed with ``error`` (a towtruck error: its type is the outcome)."""
    outcome = type(error).__name__
    span.set_attribute("towtruck.outcome", outcome)
    span.set_status(otel.Status(otel.StatusCode.ERROR, outcome))


def to_traceparent(span_context: Any) -> str:
    """The W3C ``traceparent`` of a span context."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )


def from_traceparent(text: object) -> Any | None:
    """The span context a W3C ``traceparent`` names, or None if it names none (not
    version 00, malformed, all-zero ids) or OpenTelemetry is not installed."""
    if otel is None or not isinstance(text, str):
        return None
    match = _TRACEPARENT.fullmatch(text.strip().lower())
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return otel.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=otel.TraceFlags(int(match[3], 16))
    )
