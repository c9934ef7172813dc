"""Every route but the fast paths of :mod:`towtruck.server.app`, as a Quart-Trio app, and the
node's ASGI lifespan.

Served by Hypercorn directly (``hypercorn --worker-class trio module:app``), the app's
lifespan is what starts the node's runtime: ``before_serving`` runs it in Quart-Trio's
lifespan nursery (clustered if ``advertise`` is set, since only then does the node know
the address its peers reach it at, and joined once the server listens there) and
``after_serving`` stops it gracefully. Under ``open_node`` the runtime already runs
beside the server, and the lifespan leaves it alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
import time
from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import quote

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import codec
from ..cluster.credentials import check_cluster_key, key_headers
from ..cluster.router import Router
from ..errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NodeStopping,
    NotActive,
    PayloadTooLarge,
    RouteNotFound,
    SettingsError,
    TowtruckError,
    Unavailable,
)
from ..figures import BUCKETS, Histogram
from ..ids import Address, check_actor_id
from ..runtime import Runtime
from ..transport.peers import open_router, stop_member
from .dashboard import add_dashboard
from .fanout import ask_peers
from .limits import body_too_large
from .metrics import Metrics
from .openapi import DOCS_HEADERS, ApiDocument, docs_asset

__all__ = ["Routes", "build_routes"]

logger = logging.getLogger("towtruck.http")

ALL_VERBS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_READ: Final = ["GET", "HEAD"]
_ACT: Final = ["GET", "POST"]
#: The routes that act (``_ACT``), by endpoint.
_ACTIONS: Final = frozenset({"rungc", "addserver", "removeserver", "updateblooms"})

#: Routes that read or change the cluster: with a cluster key set, only for its nodes.
_CLUSTER_ROUTES: Final = (
    "/addserver/",
    "/removeserver/",
    "/getbloom",
    "/updateblooms",
    "/rungc",
    "/cluster/",
    "/actors",
)

_HTTP_ERRORS: Final[dict[int, type[TowtruckError]]] = {
    400: BadRequest,
    404: RouteNotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


#: Most actors one page of ``/actors`` lists.
MAX_PAGE: Final = 1000


def _count_argument(text: str | None, name: str, *, default: int, most: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {text[:50]!r}") from None
    if not 1 <= value <= most:
        raise BadRequest(f"{name} must be between 1 and {most}, not {value}")
    return value


def json_response(value: Any, status: int = 200) -> Response:
    """A JSON response, encoded like every other towtruck answer."""
    return Response(codec.dumps(value), status=status, content_type="application/json")


#: How long a clustered App waits for its server to listen before it joins regardless.
_LISTEN_WAIT: Final = 10.0


async def _join_once_listening(router: Router, peers: tuple[str, ...]) -> None:
    """Join the cluster once this node's advertised address takes connections.

    The server that runs the App (Hypercorn) starts its lifespan before it listens: a
    node that joined then would be probed by its peers meanwhile, refuse them, and be
    taken for down a moment after it joined. Calls wait for the join meanwhile, as for
    any node that has not settled its view. An address this host cannot reach itself
    at (behind NAT, say) is given ``_LISTEN_WAIT`` seconds, then joined through all
    the same. A peer refusing the cluster key ends the app, as it would have at start.
    """
    me = Address.parse(router.me)
    with trio.move_on_after(_LISTEN_WAIT) as waiting:
        while True:
            try:
                stream = await trio.open_tcp_stream(me.host, me.port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            break
    if waiting.cancelled_caught:
        logger.warning(
            "%s took no connection within %g s: joining the cluster all the same",
            router.me,
            _LISTEN_WAIT,
        )
    await router.gossip.start(peers)


def build_routes(runtime: Runtime) -> QuartTrio:
    """The Quart-Trio app serving the node's routes other than ``/invoke``."""
    settings = runtime.settings
    app = QuartTrio("towtruck")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    # Quart-Trio gives background work this long at shutdown: a graceful stop's.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.shutdown_budget

    lifespan = contextlib.AsyncExitStack()

    @app.before_serving
    async def start_runtime() -> None:
        if runtime.serving:
            return  # open_node runs it beside the server
        router = None
        if settings.peers or settings.advertise:
            if settings.advertise is None:
                raise SettingsError(
                    "a clustered App served by another server needs advertise: the"
                    " host:port its peers reach it at"
                )
            router = await lifespan.enter_async_context(
                open_router(runtime, settings.advertise, settings.cluster_key)
            )
            runtime.node_id = settings.advertise
        await app.nursery.start(runtime.serve)

        lifespan.push_async_callback(stop_member, runtime, router)
        if router is not None:
            app.nursery.start_soon(_join_once_listening, router, settings.peers)

    @app.after_serving
    async def stop_runtime() -> None:
        await lifespan.aclose()

    @app.before_request
    async def check_request() -> None:
        rule = request.url_rule
        if request.method == "HEAD" and rule is not None and rule.endpoint in _ACTIONS:
            # Werkzeug answers HEAD wherever GET is; a HEAD must never act.
            raise MethodNotAllowed(f"{request.path} does not take HEAD; it takes GET, POST")
        if request.path.startswith(_CLUSTER_ROUTES):
            source = f"{request.remote_addr} ({request.path})"
            check_cluster_key(settings.cluster_key, request.scope["headers"], source=source)
        length = request.content_length
        if length is not None and (
            error := body_too_large(length, settings.max_body, declared=True)
        ):
            raise error

    handlers = Routes(runtime)

    @app.route("/ping", methods=ALL_VERBS)
    @app.route("/ping/<path:rest>", methods=ALL_VERBS)
    async def ping(rest: str = "") -> Response:
        return json_response(handlers.ping(rest))

    @app.route("/health", methods=_READ)
    async def health() -> Response:
        return json_response(handlers.health())

    @app.route("/ready", methods=_READ)
    async def ready() -> Response:
        return json_response(handlers.ready())

    @app.route("/metrics", methods=_READ)
    async def metrics() -> Response:
        own_only = bool(request.args.get("worker"))
        body, content_type = await handlers.metrics(request.headers.get("Accept", ""), own_only)
        return Response(body, status=200, content_type=content_type)

    @app.route("/cluster/snapshot", methods=_READ)
    async def snapshot() -> Response:
        return json_response(handlers.snapshot())

    @app.route("/query/<path:actor_id>", methods=_READ)
    async def query(actor_id: str) -> Response:
        return json_response(handlers.query(actor_id))

    @app.route("/actors", methods=_READ)
    async def actors() -> Response:
        args = request.args
        limit = _count_argument(args.get("limit"), "limit", default=100, most=MAX_PAGE)
        after, cluster = args.get("after"), bool(args.get("cluster"))
        return json_response(await handlers.actors(limit, after, cluster=cluster))

    @app.route("/actors/<path:actor_id>", methods=_READ)
    async def actor(actor_id: str) -> Response:
        return json_response(await handlers.actor(actor_id, here=bool(request.args.get("here"))))

    @app.route("/actors/<path:actor_id>/state", methods=_READ)
    async def actor_state(actor_id: str) -> Response:
        return json_response(await handlers.actor_state(actor_id))

    @app.route("/actors/<path:actor_id>/reminders", methods=_READ)
    async def actor_reminders(actor_id: str) -> Response:
        return json_response(await handlers.reminders(actor_id))

    @app.route("/actors/<path:actor_id>/reminders/<name>", methods=["DELETE"])
    async def forget_reminder(actor_id: str, name: str) -> Response:
        return json_response(await handlers.forget_reminder(actor_id, name))

    @app.route("/rungc", methods=_ACT)
    async def rungc() -> Response:
        return json_response(await handlers.rungc())

    @app.route("/addserver/<address>", methods=_ACT)
    async def addserver(address: str) -> Response:
        return json_response(await handlers.addserver(address))

    @app.route("/removeserver/<address>", methods=_ACT)
    async def removeserver(address: str) -> Response:
        return json_response(await handlers.removeserver(address))

    @app.route("/getservers", methods=_READ)
    async def getservers() -> Response:
        return json_response(handlers.getservers())

    @app.route("/getbloom", methods=_READ)
    async def getbloom() -> Response:
        since, fresh = request.args.get("since"), bool(request.args.get("fresh"))
        return json_response(handlers.getbloom(since, fresh=fresh))

    @app.route("/updateblooms", methods=_ACT)
    async def updateblooms() -> Response:
        return json_response(await handlers.updateblooms())

    @app.route("/cluster/heartbeat", methods=["POST"])
    async def heartbeat() -> Response:
        return json_response(await handlers.heartbeat(codec.loads(await request.get_data())))

    add_dashboard(app, runtime, handlers)

    described = ApiDocument(app, runtime, handlers, _CLUSTER_ROUTES)

    @app.route("/openapi.json", methods=_READ)
    async def openapi() -> Response:
        return Response(described.json(), content_type="application/json")

    @app.route("/docs", methods=_READ)
    @app.route("/docs/docs.css", methods=_READ)
    @app.route("/docs/docs.js", methods=_READ)
    async def docs() -> Response:
        body, content_type = docs_asset(request.path)
        return Response(body, content_type=content_type, headers=DOCS_HEADERS)

    @app.errorhandler(TowtruckError)
    async def towtruck_error(error: TowtruckError) -> Response:
        response = Response(
            codec.error_body(error, debug=settings.debug),
            status=error.status,
            content_type="application/json",
        )
        for name, value in error.headers:
            response.headers[name.decode()] = value.decode()
        if isinstance(error, MethodNotAllowed) and request.url_rule is not None:
            allowed = request.url_rule.methods or set()
            response.headers["Allow"] = ", ".join(sorted(allowed - {"HEAD", "OPTIONS"}))
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        cls = _HTTP_ERRORS.get(code, BadRequest if code < 500 else InternalError)
        if code == 404:
            message = f"no route {request.method} {request.path}"
        elif code == 405:
            message = f"{request.path} does not take {request.method}"
        else:
            message = error.description or error.name
        wrapped = cls(message)
        payload = codec.error_body(wrapped, debug=settings.debug)
        return Response(payload, status=code, content_type="application/json")

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        logger.error("error answering %s %s", request.method, request.path, exc_info=error)
        wrapped = InternalError(f"towtruck failed answering this request: {type(error).__name__}")
        wrapped.__cause__ = error
        return await towtruck_error(wrapped)

    return app


class Routes:
    """What each route answers, as JSON-able values: one method per route, taking the
    route's parameters, so each can be tested without HTTP. :func:`build_routes` puts
    them behind Quart-Trio.

    Args:
        runtime: The node's runtime (clustered or not).
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._metrics = Metrics(
            runtime, runtime.siblings, key_headers(runtime.settings.cluster_key)
        )

    def ping(self, rest: str = "") -> list[str]:
        """``/ping[/...]``: echo the path's segments, for liveness checks."""
        return ["ping", *(part for part in rest.split("/") if part)]

    def health(self) -> dict[str, Any]:
        """``/health``: the Node project's ``actors`` and ``time``, plus the runtime's
        statistics."""
        runtime = self._runtime
        stats = runtime.statistics()
        router = self._router_if_any()
        return {
            "actors": stats.actors.actors,
            "time": time.time_ns() // 1_000_000,
            "node": stats.node,
            "members": self._members(router, stats.node),
            "uptime": round(stats.uptime, 3),
            "calls": stats.calls,
            "errors": stats.failed,
            "in_flight": stats.in_flight,
            "forwarded": router.forwarded if router is not None else 0,
            "catalog": dataclasses.asdict(stats.actors),
            "timers": {
                "scheduled": len(runtime.catalog.timers),
                "fired": runtime.catalog.timers.fired,
            },
            "reminders": runtime.reminders.statistics(),
        }

    async def metrics(self, accept: str = "", own_only: bool = False) -> tuple[bytes, str]:
        """``/metrics``: the node's figures in Prometheus' text format (OpenMetrics if
        ``accept`` asks for it); under ``--workers``, summed over the workers unless
        ``own_only`` (see :mod:`towtruck.server.metrics`)."""
        return await self._metrics.render(accept, own_only=own_only)

    def snapshot(self) -> dict[str, Any]:
        """``/cluster/snapshot``: this node's figures as counters since it started (the
        dashboard takes rates from two of them): calls, errors, forwarded, latency
        histogram over all methods, and per method."""
        runtime = self._runtime
        stats = runtime.statistics()
        router = self._router_if_any()
        figures = runtime.catalog.figures
        methods = figures.methods if figures is not None else {}
        return {
            "node": stats.node,
            "time": time.time(),
            "uptime": round(stats.uptime, 3),
            "members": self._members(router, stats.node),
            "actors": stats.actors.actors,
            "max_actors": stats.actors.max_actors,
            "busy": stats.actors.busy,
            "queued": stats.actors.queued,
            "in_flight": stats.in_flight,
            "requests": stats.calls,
            "failed": stats.failed,
            "rejected": dict(runtime.rejected),
            "forwarded": router.forwarded if router is not None else 0,
            "latency": (figures.latency() if figures else Histogram()).to_payload(),
            "buckets": list(BUCKETS),
            "methods": {
                name: {
                    "calls": method.calls,
                    "errors": method.errors,
                    "latency": method.latency.to_payload(),
                }
                for name, method in methods.items()
            },
            "reminders": runtime.reminders.statistics(),
            "timers": len(runtime.catalog.timers),
        }

    def ready(self) -> dict[str, bool]:
        """``/ready``, the readiness probe: ``{"ready": true}`` once the node serves and
        its view of the cluster is settled; 503 before, and from the moment a graceful
        stop begins (``/health`` stays the liveness probe).

        Raises:
            NodeStopping: it is stopping.
            Unavailable: it is not serving yet, or still settling its view.
        """
        runtime = self._runtime
        if runtime.stopping:
            raise NodeStopping("the node is stopping", node=runtime.node_id)
        router = runtime.router
        if not runtime.serving or (isinstance(router, Router) and not router.gossip.settled):
            raise Unavailable(
                "the node is still joining the cluster and settling its view",
                node=runtime.node_id,
            )
        return {"ready": True}

    def query(self, actor_id: str) -> dict[str, bool]:
        """``/query/{id}``: ``{"exists": true}`` if the actor is in memory here."""
        return {"exists": check_actor_id(actor_id) in self._runtime.catalog}

    async def actors(
        self, limit: int = 100, after: str | None = None, *, cluster: bool = False
    ) -> dict[str, Any]:
        """``/actors?limit=&after=[&cluster=1]``: a page of the actors in memory here
        (``cluster``: on every live node), in order of id after ``after``; ``next`` is
        the ``after`` of the next page (None on the last), ``total`` how many there are
        in all."""
        runtime = self._runtime
        catalog = runtime.catalog
        ids = (i for i in catalog.ids() if after is None or i > after)
        page = [describe_actor(runtime, i) for i in heapq.nsmallest(limit + 1, ids)]
        found: dict[str, Any] = {"actors": page, "total": len(catalog), "nodes": [runtime.node_id]}
        router = runtime.router
        more = False  # a peer has more than its page holds
        if cluster and isinstance(router, Router):
            query = f"/actors?limit={limit}" + (f"&after={quote(after, safe='')}" if after else "")
            for answer in await ask_peers(router, query):
                found["actors"] += answer["actors"]
                found["total"] += answer["total"]
                found["nodes"] += answer["nodes"]
                more = more or answer["next"] is not None
            found["actors"].sort(key=lambda actor: actor["id"])
        actors = found["actors"]
        found["next"] = actors[limit - 1]["id"] if more or len(actors) > limit else None
        del actors[limit:]
        return found

    async def actor(self, actor_id: str, *, here: bool = False) -> dict[str, Any]:
        """``/actors/{id}``: the actor as the node that holds it in memory sees it (this
        one or, unless ``here``, any live node), with that node's address.

        Raises:
            NotActive: it is in memory nowhere (it will be activated by its next call).
        """
        actor_id = check_actor_id(actor_id)
        runtime = self._runtime
        if actor_id in runtime.catalog:
            return describe_actor(runtime, actor_id)
        router = runtime.router
        if not here and isinstance(router, Router):
            path = f"/actors/{quote(actor_id, safe='')}?here=1"
            for answer in await ask_peers(router, path):
                return dict(answer)
        where = "here" if here or not isinstance(router, Router) else "on any live node"
        raise NotActive(f"actor {actor_id!r} is not in memory {where}", actor=actor_id)

    async def actor_state(self, actor_id: str) -> dict[str, Any]:
        """``/actors/{id}/state``: the actor's states as the store holds them, with its
        epoch and their etags (``epoch`` 0: never activated with persistent state)."""
        actor_id = check_actor_id(actor_id)
        store = await self._runtime.store.get()
        found = await store.read(actor_id)
        return {
            "actor": actor_id,
            "store": store.url,
            "epoch": found.epoch,
            "states": {
                name: {"etag": stored.etag, "value": codec.loads(stored.value)}
                for name, stored in sorted(found.states.items())
            },
        }

    async def reminders(self, actor_id: str) -> list[dict[str, Any]]:
        """``/actors/{id}/reminders``: the actor's durable reminders, as the store holds
        them: name, next due time (seconds since the Unix epoch), period, data."""
        store = await self._runtime.store.get()
        return [
            {
                "name": row.name,
                "due": row.due,
                "period": row.period,
                "data": codec.loads(row.data),
            }
            for row in await store.reminders(check_actor_id(actor_id))
        ]

    async def forget_reminder(self, actor_id: str, name: str) -> dict[str, bool]:
        """``DELETE /actors/{id}/reminders/{name}``: forget one; once answered, no tick
        of it starts anywhere."""
        actor_id = check_actor_id(actor_id)
        store = await self._runtime.store.get()
        forgotten = await store.forget_reminder(actor_id, name)
        self._runtime.reminders.unschedule(actor_id, name)
        return {"forgotten": forgotten}

    async def rungc(self) -> dict[str, int]:
        """``/rungc``: run the collector now."""
        return {"garbageCollected": await self._runtime.collect()}

    async def addserver(self, address: str) -> list[str]:
        """``/addserver/{host:port}``: bring a node, and every node it knows, into this
        node's cluster; the peers after."""
        router = self._router()
        await router.gossip.add_peer(str(Address.parse(address)))
        return router.membership.peers()

    async def removeserver(self, address: str) -> list[str]:
        """``/removeserver/{host:port}``: take a node out of the cluster, everywhere;
        the peers after."""
        router = self._router()
        await router.gossip.remove_peer(str(Address.parse(address)))
        return router.membership.peers()

    def getservers(self) -> list[str]:
        """``/getservers``: the peers' ``host:port``, up or down."""
        return self._router().membership.peers()

    def getbloom(self, since: str | None = None, *, fresh: bool = False) -> dict[str, Any]:
        """``/getbloom``: this node's bloom filter of active ids (``since=VERSION``:
        ``{"unchanged": true}`` if it has not changed; ``fresh``: taken now, not
        cached)."""
        directory = self._router().directory
        if since is not None and since == str(directory.bloom.version):
            return {"unchanged": True}
        max_age = 0.0 if fresh else self._runtime.settings.bloom_interval / 2
        return directory.snapshot(max_age=max_age).to_payload()

    async def updateblooms(self) -> dict[str, list[str]]:
        """``/updateblooms``: fetch the peers' bloom filters now."""
        return {"updated": await self._router().gossip.refresh_filters()}

    def heartbeat(self, hello: Any) -> Awaitable[dict[str, Any]]:
        """``POST /cluster/heartbeat``: a peer's view of the membership in, this
        node's out (see :meth:`Gossip.handle_heartbeat`)."""
        return self._router().gossip.handle_heartbeat(hello)

    def _router_if_any(self) -> Router | None:
        router = self._runtime.router
        return router if isinstance(router, Router) else None

    @staticmethod
    def _members(router: Router | None, node: str) -> list[dict[str, str]]:
        """This node and its peers with their state (``self`` alone when not clustered)."""
        return (
            router.gossip.members() if router is not None else [{"address": node, "state": "self"}]
        )

    def _router(self) -> Router:
        router = self._runtime.router
        if not isinstance(router, Router):
            raise RouteNotFound("clustering is off on this node: serve it with advertise")
        return router


def describe_actor(runtime: Runtime, actor_id: str) -> dict[str, Any]:
    """What ``/actors`` tells of an actor in memory here. Times are milliseconds since
    the Unix epoch."""
    catalog = runtime.catalog
    activation = catalog.get(actor_id)
    assert activation is not None
    now, wall = catalog.now(), time.time()
    described: dict[str, Any] = {
        "id": actor_id,
        "node": runtime.node_id,
        "state": activation.state.value,
        "activated": round(1000 * (wall - (now - activation.born))),
        "last_call": round(1000 * (wall - (now - activation.touched))),
        "calls": activation.calls,
        "errors": catalog.errors.get(actor_id, 0),
        "queued": len(activation.mailbox or ()),
    }
    context = activation.context
    if context is not None:
        described["epoch"] = context.epoch
        described["timers"] = sorted(context.timers)
    return described
