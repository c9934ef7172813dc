"""The calls other nodes forward to this one, as ``POST /cluster/forward`` or on a lane:
each rebuilt from its envelope (:mod:`towtruck.cluster.wire`) and run on this node.

A lane's calls come here straight from its reader, not through the HTTP answer
(:meth:`towtruck.App.respond`): the lane's cluster key was checked once, when it was
opened, so a call on it has no path, headers or key to look at, and its answer no
headers to build (going through the HTTP answer cost about a tenth of a forwarded call).
"""

from __future__ import annotations

import logging

import trio

from .. import codec, tracing
from ..calls import CallContext, HookContext
from ..cluster import wire
from ..errors import InternalError, TowtruckError
from ..runtime import Runtime

__all__ = ["ForwardedCalls"]

logger = logging.getLogger("towtruck.http")


class ForwardedCalls:
    """Runs the calls peers forward to this node and answers them (for a lane: see
    :func:`towtruck.transport.lane_server.serve_lane`).

    Args:
        runtime: The node's runtime.
        debug: Error answers carry their traceback.
    """

    def __init__(self, runtime: Runtime, *, debug: bool) -> None:
        self._runtime = runtime
        self._catalog = runtime.catalog
        self._call_timeout = runtime.settings.call_timeout
        self._debug = debug

    async def run(self, call: wire.Call) -> bytes:
        """Run a forwarded call in the context its envelope gives; the answer is its
        result as JSON. A checkpoint.

        Raises:
            TowtruckError: the call failed.
        """
        timeout = min(call.timeout, self._call_timeout)
        kind = HookContext if call.hook else CallContext
        context = kind(call.chain, trio.current_time() + timeout, call.hops, caller_yields=True)
        if call.traceparent is not None:
            context.trace = tracing.from_traceparent(call.traceparent)
        return await self._runtime.invoke(
            call.actor_id, call.method, call.data, context, existing=call.existing
        )

    async def answer(self, call: wire.Call) -> tuple[int, bytes]:
        """Run a call that came on a lane: the HTTP status and body ``POST
        /cluster/forward`` would answer with (errors as JSON). A checkpoint; if it is
        cancelled, the call is."""
        try:
            return 200, await self.run(call)
        except TowtruckError as exc:
            return self.refuse(exc)
        except Exception as exc:
            logger.exception("error answering %r on a lane", call.method)
            return self.refuse(_failure(exc))

    def refuse(self, error: TowtruckError) -> tuple[int, bytes]:
        """The status and JSON body that answer with ``error``."""
        return error.status, codec.error_body(error, debug=self._debug)

    def answers_at_once(self, call: wire.Call) -> bool:
        """Whether ``call`` will be answered without waiting for anything (see
        :meth:`towtruck.catalog.Catalog.answers_at_once`). Not a checkpoint."""
        return self._catalog.answers_at_once(call.actor_id, call.method)


def _failure(exc: Exception) -> InternalError:
    # Built here, not in ForwardedCalls.answer, so that answer's frame (which exc's
    # traceback holds) holds no reference back to exc.
    failure = InternalError(f"towtruck failed answering this call: {type(exc).__name__}")
    failure.__cause__ = exc
    return failure
