"""``GET /dashboard``: a live page of the cluster, served by the node itself.

The page (``static/``: HTML, CSS and JavaScript, no build step, nothing from elsewhere)
is fed by two routes:

- ``GET /dashboard/data``: the cluster's view as JSON, gathered from this node's
  ``/cluster/snapshot`` and every live peer's, with rates taken against the previous
  sample (:class:`Sampler`);
- ``GET /dashboard/events``: the same view as server-sent events, one ``view`` event
  per :data:`INTERVAL`. The stream ends with an ``end`` event when the node's runtime
  stops, or after :data:`STREAM_SECONDS` (the page opens a new one); the server cuts it
  when it stops (see :mod:`towtruck.server.bridge`).

Both need the cluster key when one is set, as the other cluster routes do. The page
itself does not: it asks for the key, keeps it in the tab's ``sessionStorage`` and
sends it as a header on every request. That is why it reads the events with
``fetch()`` rather than ``EventSource``, which cannot send headers; a key in the query
string instead would land in access logs and the browser's history.

Rates and latency quantiles come from differences between two snapshots of the same
node (its counters and latency histogram since it started), over that node's own clock.
Each call is counted once, on the node that runs it: a node's calls are those its
actors ran (its methods' counts) plus those it refused with 503 (``rejected``); its
errors are its methods' failures plus those refusals; latency is measured where the
actor runs. The cluster's figures are the sums of its nodes', and its forwarded share
is the calls that took a hop (each node's ``forwarded``) over all calls. A node that
restarted between two samples has no rates in the second.
"""

from __future__ import annotations

import collections
import importlib.resources
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio
from quart import Response, request

from .. import codec
from ..cluster.credentials import check_cluster_key
from ..cluster.router import Router
from ..cluster.wire import CLUSTER_KEY_HEADER
from .cluster_view import Snapshot, cluster_view
from .fanout import ask_peers

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..runtime import Runtime
    from .routes import Routes

__all__ = ["INTERVAL", "STREAM_SECONDS", "Sampler", "add_dashboard"]

#: Seconds between two events of ``/dashboard/events``.
INTERVAL: Final = 1.0
#: Longest an event stream lasts; the page then opens another. Bounds a stream under
#: a server that does not tell it when it stops (Hypercorn: it cuts streams after its
#: ``graceful_timeout``), and Quart's own response timeout is set past it.
STREAM_SECONDS: Final = 300.0
#: A sample younger than this is served again rather than taken anew, so that many
#: open pages cost the cluster one sample per interval, not one each.
_FRESH: Final = INTERVAL / 2
#: A previous sample older than this gives no rates: an average over minutes, shown
#: as "now", would mislead.
_STALE: Final = 30.0
#: Points of the sparklines kept (two minutes, at one per interval).
_HISTORY: Final = 120
_READ: Final = ["GET", "HEAD"]
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_ASSETS: Final = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}

AskPeers = Callable[[Router, str], Awaitable[list[Any]]]


def add_dashboard(app: QuartTrio, runtime: Runtime, routes: Routes) -> None:
    """Add the dashboard's routes to ``app``: the page and its files, ``/dashboard/data``
    and ``/dashboard/events`` (see the module's docstring)."""
    # Imported here, not above: routes.py imports this module while it loads.

    settings = runtime.settings
    sampler = Sampler(runtime, routes.snapshot, ask_peers)
    assets = _load_assets()

    def check_key() -> None:
        source = f"{request.remote_addr} ({request.path})"
        check_cluster_key(settings.cluster_key, request.scope["headers"], source=source)

    def asset(name: str) -> Response:
        return Response(assets[name], content_type=_ASSETS[name], headers=_PAGE_HEADERS)

    @app.route("/dashboard", methods=_READ)
    async def dashboard_page() -> Response:
        return asset("dashboard.html")

    @app.route("/dashboard/dashboard.css", methods=_READ)
    async def dashboard_css() -> Response:
        return asset("dashboard.css")

    @app.route("/dashboard/dashboard.js", methods=_READ)
    async def dashboard_js() -> Response:
        return asset("dashboard.js")

    @app.route("/dashboard/data", methods=_READ)
    async def dashboard_data() -> Response:
        check_key()
        view = await sampler.view()
        return Response(codec.dumps(view), content_type="application/json")

    @app.route("/dashboard/events", methods=_READ)
    async def dashboard_events() -> Response:
        check_key()
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the head of the stream, and no stream behind it
            return Response(b"", content_type="text/event-stream", headers=headers)
        response = Response(
            event_stream(sampler, runtime), content_type="text/event-stream", headers=headers
        )
        response.timeout = STREAM_SECONDS + 10 * INTERVAL
        return response


def _load_assets() -> dict[str, bytes]:
    folder = importlib.resources.files(__package__ or "towtruck.server") / "static"
    assets = {name: (folder / name).read_bytes() for name in _ASSETS}
    assets["dashboard.html"] = assets["dashboard.html"].replace(
        b"__KEY_HEADER__", CLUSTER_KEY_HEADER.encode()
    )
    return assets


async def event_stream(sampler: Sampler, runtime: Runtime) -> AsyncIterator[bytes]:
    """The events of ``/dashboard/events``: a ``view`` each :data:`INTERVAL`, then an
    ``end`` (``{"reason": "stopping"}`` once the runtime has stopped, ``"renew"`` after
    :data:`STREAM_SECONDS`). Each wait is bounded: a sample by the peers' deadline, the
    pause by the interval."""
    ends = trio.current_time() + STREAM_SECONDS
    reason = None
    while reason is None:
        yield _event("view", await sampler.view())
        with trio.move_on_at(min(trio.current_time() + INTERVAL, ends)) as pause:
            await runtime.wait_stopped()
        if not pause.cancelled_caught:
            reason = "stopping"
        elif trio.current_time() >= ends:
            reason = "renew"
    yield _event("end", {"reason": reason})


def _event(kind: str, value: Any) -> bytes:
    # orjson writes no newline inside a document, so one data line holds it.
    return b"event: " + kind.encode() + b"\ndata: " + codec.dumps(value) + b"\n\n"


class _Sample:
    __slots__ = ("snapshots", "taken", "view")

    def __init__(self, taken: float, snapshots: dict[str, Snapshot], view: dict[str, Any]):
        self.taken, self.snapshots, self.view = taken, snapshots, view


class Sampler:
    """Takes samples of the cluster (every live node's snapshot) and makes the
    dashboard's view of each, against the previous one (see :func:`cluster_view`).
    Callers that ask within :data:`_FRESH` of a sample share it; one sample is taken
    at a time.

    Args:
        runtime: This node's runtime (its router, if clustered, names the peers).
        snapshot: This node's ``/cluster/snapshot``.
        ask_peers: GETs a path from every live peer within a deadline; the answers.
    """

    def __init__(
        self, runtime: Runtime, snapshot: Callable[[], Snapshot], ask_peers: AskPeers
    ) -> None:
        self._runtime = runtime
        self._snapshot = snapshot
        self._ask_peers = ask_peers
        self._lock = trio.Lock()
        self._last: _Sample | None = None
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=_HISTORY)

    async def view(self) -> dict[str, Any]:
        """The cluster's view now (at most :data:`_FRESH` old). A checkpoint; waits at
        most the peers' deadline (a peer that has not answered by then is shown so)."""
        async with self._lock:
            last = self._last
            if last is not None and trio.current_time() - last.taken < _FRESH:
                return last.view
            snapshots = await self._gather()
            now = trio.current_time()
            fresh = last is not None and now - last.taken <= _STALE
            previous = last.snapshots if last is not None and fresh else {}
            if not fresh:
                self._history.clear()
            view = cluster_view(self._runtime.node_id, snapshots, previous, INTERVAL)
            totals = view["totals"]
            if totals["calls_per_s"] is not None:
                point = {k: totals[k] for k in ("calls_per_s", "errors_per_s", "p50", "p99")}
                self._history.append({"time": view["time"], **point})
            view["history"] = list(self._history)
            self._last = _Sample(now, snapshots, view)
            return view

    async def _gather(self) -> dict[str, Snapshot]:
        """This node's snapshot and those of the live peers that answer in time."""
        own = self._snapshot()
        snapshots = {str(own["node"]): own}
        router = self._runtime.router
        if isinstance(router, Router):
            for answer in await self._ask_peers(router, "/cluster/snapshot"):
                if isinstance(answer, dict) and isinstance(answer.get("node"), str):
                    snapshots.setdefault(answer["node"], answer)
        return snapshots
