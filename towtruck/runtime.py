"""Everything a node does but HTTP: its actors, their collector, its client.

A :class:`Runtime` is the supervisor of one node's actors. :meth:`Runtime.serve` opens
the nursery that every actor task and the collector live in; :meth:`Runtime.stop`
shuts it down gracefully. The HTTP app, ``open_node`` and the command line are built
on it; it imports nothing of Quart, Hypercorn or httpx.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import trio

from . import tracing
from .calls import CallContext
from .catalog import Catalog, CatalogStatistics, Factory
from .client import Client
from .errors import NodeStopping, Overloaded, ResultTooLarge, TowtruckError, Unavailable
from .reminders import ReminderService
from .settings import MIB, Settings
from .state import StoreOpener
from .watchdog import watch_event_loop

__all__ = ["MAX_ANSWER", "CallPath", "Runtime", "RuntimeStatistics", "open_runtime"]

logger = logging.getLogger("towtruck")

#: Largest answer a call may have (its result as JSON), wherever its actor lives: the
#: most a lane between nodes carries in one frame. Past it, :class:`ResultTooLarge`.
MAX_ANSWER: Final = 64 * MIB


class CallPath(Protocol):
    """Decides where a call runs. The actor table itself is the router of a lone node;
    a clustered node's router (:class:`towtruck.cluster.router.Router`) forwards calls too."""

    async def invoke(self, actor_id: str, method: str, data: Any, context: CallContext) -> bytes:
        """Run the call wherever its actor lives; the answer is its result as JSON."""
        ...


@dataclasses.dataclass(frozen=True)
class RuntimeStatistics:
    """A snapshot of a node's runtime (what ``/health`` reports).

    Attributes:
        node: The node's id (its address once it serves HTTP).
        uptime: Seconds since :meth:`Runtime.serve` started.
        calls: Calls received since then (local and forwarded).
        failed: Those that ended with an error.
        in_flight: Calls received and not yet answered.
        actors: The actor table's statistics.
    """

    node: str
    uptime: float
    calls: int
    failed: int
    in_flight: int
    actors: CatalogStatistics


class Runtime:
    """The actors of one node and the work that keeps them.

    Args:
        create_actor: ``create_actor(id, client)``, a plain function returning the
            actor's object or a mapping of names to callables.
        settings: The node's settings.

    Raises:
        TypeError: ``create_actor`` is not a plain callable.
    """

    def __init__(self, create_actor: Factory, settings: Settings) -> None:
        if not callable(create_actor):
            raise TypeError(f"create_actor must be callable, not {create_actor!r}")
        if inspect.iscoroutinefunction(create_actor):
            raise TypeError(
                "create_actor must be a plain def returning the actor; do async set-up"
                " in the actor's activate() method"
            )
        self.settings = settings
        self.client = Client(self, call_timeout=settings.call_timeout)
        #: Where actors keep persistent state: opened when one first asks for it.
        self.store = StoreOpener(settings.state_store, timeout=settings.store_timeout)
        self.catalog = Catalog(create_actor, self.client, settings, self.store)
        #: The node's part of the durable reminders (see :mod:`towtruck.reminders`).
        self.reminders = self.catalog.reminders = ReminderService(
            self.catalog,
            self.store,
            self._tick,
            refresh=settings.reminder_refresh,
            call_timeout=settings.call_timeout,
            min_period=settings.min_reminder_period,
        )
        #: Where calls go; a clustered node replaces it.
        self.router: CallPath = self.catalog
        self._services: list[Callable[[], Awaitable[None]]] = [
            self._collect_periodically,
            self.catalog.failures.flush_periodically,
            self.catalog.timers.run,
            self.reminders.run,
        ]
        self.node_id = f"{socket.gethostname()}:{os.getpid()}"
        self.calls = 0
        self.failed = 0
        #: Makes a span of every call (see :mod:`towtruck.tracing`): the configured
        #: OpenTelemetry provider's, found when the runtime starts serving, or None.
        self.tracer: Any = None
        #: The private addresses of the other workers of a ``--workers`` group.
        self.siblings: list[str] = []
        #: Calls refused without running (503s), by error type.
        self.rejected: dict[str, int] = {}
        self._max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self._started_at: float | None = None
        self._running = False
        self._taking_calls = True
        self._stop_announced = False
        self._routing_elsewhere = False
        self._idle: trio.Event | None = None
        self._stopped = trio.Event()

    @property
    def node_id(self) -> str:
        """How this node names itself: its ``host:port`` once it serves HTTP."""
        return self.catalog.node_id

    @node_id.setter
    def node_id(self, value: str) -> None:
        self.catalog.node_id = value

    @property
    def serving(self) -> bool:
        """:meth:`serve` is running."""
        return self._running

    @property
    def stopping(self) -> bool:
        """A graceful stop has begun (see :meth:`stop_soon`)."""
        return self._stop_announced or not self._taking_calls

    def stop_soon(self) -> None:
        """Say that a graceful stop is beginning (``/ready`` answers 503 from now on),
        before whatever comes first (leaving the cluster). Not a checkpoint."""
        self._stop_announced = True

    def statistics(self) -> RuntimeStatistics:
        """Counts describing the node now. Not a checkpoint."""
        started = self._started_at
        return RuntimeStatistics(
            node=self.node_id,
            uptime=0.0 if started is None else trio.current_time() - started,
            calls=self.calls,
            failed=self.failed,
            in_flight=self.in_flight,
            actors=self.catalog.statistics(),
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node's actors until :meth:`stop` has finished.

        Use as ``await nursery.start(runtime.serve)``: it returns to the caller of
        ``start`` once calls can be made. Every actor task, the collector and the
        event loop's watchdog (:mod:`towtruck.watchdog`) run in a nursery inside this
        call; an error escaping one of them (a bug in towtruck, not
        in an actor: those are caught per call) propagates out of here and takes the
        node down. Cancelling it cancels every turn in progress without ``deactivate``.
        """
        if self._started_at is not None:
            raise RuntimeError("this runtime has already served")
        self._running = True
        if self.tracer is None:
            self.tracer = tracing.configured_tracer()
        try:
            async with trio.open_nursery() as nursery:
                self.catalog.attach(nursery)
                self._started_at = trio.current_time()
                await nursery.start(watch_event_loop, self.settings.blocked_warning)
                for service in self._services:
                    nursery.start_soon(service)
                task_status.started()
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._running = False
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.settings.store_timeout
                await self.store.aclose()

    async def wait_stopped(self) -> None:
        """Wait until the runtime has stopped (gracefully or by :meth:`abort`)."""
        await self._stopped.wait()

    def add_service(self, service: Callable[[], Awaitable[None]]) -> None:
        """Run ``service`` in the node's nursery, beside the actors, from :meth:`serve`
        until the node stops (heartbeats, bloom refresh). Call before :meth:`serve`."""
        if self._started_at is not None:
            raise RuntimeError("add services before the runtime serves")
        self._services.append(service)

    def abort(self) -> None:
        """Stop at once: refuse calls and cancel every turn, with no ``deactivate``.
        What a crash or ``kill -9`` would do, for tests of failure. Not a checkpoint."""
        self._taking_calls = False
        self.catalog.cancel_turns_here()
        self._stopped.set()

    async def stop(self, *, route_elsewhere: bool = False) -> None:
        """Stop gracefully, then end :meth:`serve`. Safe to call more than once; later
        calls wait for the first.

        A lone node refuses new calls from outside (:class:`NodeStopping`), lets the
        calls in flight finish (actors may still call each other meanwhile), then
        deactivates every actor: each finishes its mailbox and runs ``deactivate``.

        A node leaving a cluster (``route_elsewhere``: its router has sent it out of
        placement) keeps taking calls and sends them on to their new owners. It
        deactivates its actors at once, each after its mailbox; a call for one that
        arrives meanwhile waits for it to be gone, then goes to the node that now owns
        it (which loads what ``deactivate`` saved). Then it lets the calls in flight
        finish. Nothing is refused, so no call fails.

        Each phase gets ``shutdown_timeout``; what has not finished by then is
        cancelled.
        """
        if not self._taking_calls:
            await self._stopped.wait()
            return
        self._taking_calls = False
        self._routing_elsewhere = route_elsewhere
        logger.info(
            "stopping: %s new calls; %d calls in flight, %d actors to deactivate",
            "sending on" if route_elsewhere else "refusing",
            self.in_flight,
            len(self.catalog),
        )
        if not self._running:  # never served, or crashed: nothing left to stop
            self._stopped.set()
            return
        if route_elsewhere:
            await self._deactivate_all()
            await self._wait_no_calls()
        else:
            await self._wait_no_calls()
            await self._deactivate_all()
        self.catalog.cancel_turns_here()
        self.catalog.failures.flush(everything=True)
        self._stopped.set()

    async def _wait_no_calls(self) -> None:
        with trio.move_on_after(self.settings.shutdown_timeout) as scope:
            while self.in_flight:
                self._idle = trio.Event()
                await self._idle.wait()
        if scope.cancelled_caught:
            logger.warning("%d calls still in flight at shutdown; cancelling", self.in_flight)

    async def _deactivate_all(self) -> None:
        with trio.move_on_after(self.settings.shutdown_timeout) as scope:
            await self.catalog.deactivate_all()
        if scope.cancelled_caught:
            logger.warning(
                "%d actors still deactivating at shutdown; cancelling", len(self.catalog)
            )

    async def invoke(
        self,
        actor_id: str,
        method: str,
        data: Any,
        context: CallContext,
        *,
        existing: bool = False,
    ) -> bytes:
        """Run a call (see :meth:`Client.invoke`); the answer is its result as JSON.

        A checkpoint. Once :meth:`stop` has begun, calls from outside any actor are
        refused with :class:`NodeStopping`.

        Args:
            existing: Only if the actor is active here (a peer found it here); raise
                :class:`NotActive` rather than activate or forward it.
        """
        if not context.chain:  # from outside any actor: the node's limits apply
            # A stopping node still answers calls a peer sends to its actors (they are
            # draining; once gone, the peer activates them elsewhere).
            if not (self._taking_calls or self._routing_elsewhere or existing):
                raise self._refused(NodeStopping("the node is shutting down", node=self.node_id))
            if self.in_flight >= self._max_in_flight:
                raise self._refused(
                    Overloaded(
                        f"the node has max_in_flight ({self._max_in_flight}) calls under way",
                        node=self.node_id,
                    )
                )
        self.calls += 1
        self.in_flight += 1
        span = None
        if self.tracer is not None:
            span, context = tracing.start(self.tracer, actor_id, method, context, self.node_id)
        try:
            if existing:
                answer = await self.catalog.invoke(actor_id, method, data, context, create=False)
            else:
                answer = await self.router.invoke(actor_id, method, data, context)
            if len(answer) > MAX_ANSWER:
                raise ResultTooLarge(
                    f"{method[:100]!r} on actor {actor_id!r} answered {len(answer)} bytes:"
                    f" over the {MAX_ANSWER} a call may carry; return less (a page of it,"
                    " say) or keep large data outside the actor",
                    actor=actor_id,
                    method=method[:100],
                    size=len(answer),
                    limit=MAX_ANSWER,
                )
            return answer
        except TowtruckError as exc:
            self.failed += 1
            if isinstance(exc, Unavailable):
                self._refused(exc)
            if span is not None:
                tracing.failed(span, exc)
            raise
        finally:
            if span is not None:
                span.end()
            self.in_flight -= 1
            if self._idle is not None and not self.in_flight:
                self._idle.set()

    def _refused(self, error: Unavailable) -> Unavailable:
        """Count a call refused without running; returns ``error``."""
        kind = type(error).__name__
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        return error

    async def _tick(self, actor_id: str, method: str, data: Any, context: CallContext) -> bytes:
        """A reminder's tick, on its way to the actor wherever it lives (a stopping
        node takes none)."""
        if not self._taking_calls:
            raise NodeStopping("the node is shutting down", node=self.node_id)
        return await self.router.invoke(actor_id, method, data, context)

    async def collect(self) -> int:
        """Run the collector now; returns how many actors it deactivated."""
        return await self.catalog.collect()

    async def _collect_periodically(self) -> None:
        while True:
            await trio.sleep(self.settings.gc_interval)
            collected = await self.catalog.collect()
            if collected:
                logger.debug("collected %d actors", collected)


@asynccontextmanager
async def open_runtime(create_actor: Factory, **settings: Any) -> AsyncIterator[Runtime]:
    """Run a node's actors without HTTP for the duration of the block.

    For tests of actor code (it runs on trio's autojump clock, where a real server
    cannot) and for programs that only call actors in-process. Call actors with
    ``runtime.client``. Leaving the block stops the runtime gracefully (see
    :meth:`Runtime.stop`), even when the block is left by cancellation.

    Args:
        create_actor: ``create_actor(id, client)``.
        **settings: :class:`~towtruck.Settings` names; the defaults fill in the rest
            (no ``TOWTRUCK_*`` variable is read: a test decides), but for
            ``state_store``, ``memory:`` here.
    """
    settings.setdefault("state_store", "memory:")
    runtime = Runtime(create_actor, Settings.load(environ={}, **settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.serve)
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + runtime.settings.shutdown_budget
                await runtime.stop()
