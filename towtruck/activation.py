"""One actor in memory: its object, its mailbox, and the task that runs its turns.

An activation runs one turn at a time: a turn ends before the next one starts, even
when the method awaits. A call to an idle actor runs at once, in the caller's own task
(see ``Activation._turn_here``); calls that arrive meanwhile queue in a bounded
mailbox, and a trio task of the actor's own takes them out one at a time. When the
mailbox is empty the task ends and the mailbox is dropped, so an idle actor costs only
its object and a few slots here. Turns stay serial because whoever takes the turn, or
spawns the task, sets ``running`` first, with no checkpoint in between.

The mailbox is a deque checked against ``mailbox_size`` rather than a memory channel:
the actor's task is the only reader and never waits on it (it ends instead), so a
channel's parking machinery would buy nothing and cost a couple of kilobytes per actor.
The bound exists so a hot or stuck actor sheds calls with 503 instead of holding an
unbounded queue; the default 1,000 absorbs a burst from every connection a node
usually has open, while a full mailbox at a few hundred bytes per call stays small.

A count bounds memory, not time: 1,000 calls to a method that takes 100 ms are 100 s
of work, far past any call's deadline. So the mailbox (:class:`~towtruck.calls.Mailbox`)
also keeps a moving average of the actor's turns, and a call that would not start
before its deadline is refused at once with 503 :class:`~towtruck.errors.Backlogged`:
on arrival, and, for calls that arrived before a turn was measured (a burst on an idle
actor) or while turns were quicker, from the back of the mailbox as each turn begins.
Turns are timed where the clock is read anyway (the deadline checks), so the hot path
pays no extra clock reads; the estimate lives and dies with the mailbox, so idle actors
carry none of it.

Whatever the actor's code raises fails that call only, ``SystemExit`` and
``KeyboardInterrupt`` included; only trio's cancellation and a real Ctrl-C pass
through (see :mod:`towtruck.failures`).

Lifecycle (Orleans' ActivationState)::

    ACTIVATING --activate ok--> VALID --collected or shutdown--> DEACTIVATING --> INVALID
        \\--activate raised--> INVALID (the calls waiting fail with its error)
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

import outcome
import trio

from . import codec, failures
from .calls import (
    Call,
    CallContext,
    Mailbox,
    ScopedCallContext,
    backlogged,
    cancelled,
    current_context,
    interrupted,
    late,
    stopped,
)
from .errors import (
    ActorError,
    CallTimeout,
    MailboxFull,
    MethodNotFound,
    ResultNotJSON,
    StateConflict,
    StoreUnavailable,
    TowtruckError,
)
from .methods import Method, hook
from .timers import Tick

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .catalog import Catalog
    from .state import ActorContext
    from .timers import Timer

__all__ = ["Activation", "ActivationState", "DeactivationReason"]

logger = logging.getLogger("towtruck.actor")

# Turns run back to back without yielding when their methods never await (plain def
# methods); after this many, the actor's task yields so other tasks get the CPU.
_TURNS_PER_YIELD = 32


class ActivationState(enum.Enum):
    """Where an activation is in its life."""

    ACTIVATING = "activating"  #: ``activate`` is running; calls wait in the mailbox
    VALID = "valid"  #: serving calls
    DEACTIVATING = "deactivating"  #: finishing its mailbox, then running ``deactivate``
    INVALID = "invalid"  #: gone; the next call for its id activates a fresh one


class DeactivationReason(enum.Enum):
    """Why an activation stopped."""

    IDLE = "idle"  #: idle longer than ``max_inactivity``
    CAPACITY = "capacity"  #: least recently used while the node was at ``max_actors``
    SHUTDOWN = "shutdown"  #: the node is stopping
    FAILED = "failed"  #: ``activate`` raised or timed out
    DUPLICATE = "duplicate"  #: activated on another node while this one was stalled
    SUPERSEDED = "superseded"  #: a newer activation claimed its state (or a write was cut off)
    PARTITION = "partition"  #: the node lost the majority of the cluster (keep-majority)


class _Leaving:
    """Why an activation is leaving, and the event its waiters wait on."""

    __slots__ = ("gone", "reason")

    def __init__(self) -> None:
        self.reason: DeactivationReason | None = None
        self.gone: trio.Event | None = None


class Activation:
    """One actor in memory. Created and owned by the :class:`~towtruck.catalog.Catalog`.

    Attributes:
        id: The actor's id.
        instance: What ``create_actor`` returned.
        state: See :class:`ActivationState`.
        touched: When it last received a call, on trio's clock.
        born: When it was activated, on trio's clock, to the second (the activations of
            one second share one number, so that it costs an idle actor nothing).
        calls: Calls that reached it (answered or not).
        running: A task is running (or about to run) its turns.
    """

    __slots__ = (
        "_catalog",
        "_leaving",
        "born",
        "calls",
        "context",
        "id",
        "instance",
        "mailbox",
        "methods",
        "running",
        "state",
        "touched",
    )

    def __init__(
        self, actor_id: str, instance: object, methods: Mapping[str, Method], catalog: Catalog
    ) -> None:
        self.id = actor_id
        self.instance = instance
        self.methods = methods
        self.state = ActivationState.VALID
        self.touched = trio.current_time()
        self.born = catalog.this_second()
        self.calls = 0
        self.running = False
        self.mailbox: Mailbox | None = None
        self._catalog = catalog
        # Why it is leaving and who waits for it to be gone (rarely either: one slot).
        self._leaving: _Leaving | None = None
        #: The actor's context, if its factory takes one (see :mod:`towtruck.state`).
        self.context: ActorContext | None = None

    def __repr__(self) -> str:
        return f"<Activation {self.id!r} {self.state.value}>"

    @property
    def reason(self) -> DeactivationReason | None:
        """Why it stopped (or is stopping); None while it serves."""
        return None if self._leaving is None else self._leaving.reason

    @reason.setter
    def reason(self, reason: DeactivationReason) -> None:
        if self._leaving is None:
            self._leaving = _Leaving()
        self._leaving.reason = reason

    @property
    def idle(self) -> bool:
        """Serving, with no turn running and nothing waiting: safe to collect."""
        return self.state is ActivationState.VALID and not self.running

    def lookup(self, name: str) -> Method:
        """The public method called ``name``.

        Raises:
            MethodNotFound: there is none (private names and hooks never match).
        """
        method = self.methods.get(name)
        if method is None:
            raise MethodNotFound(
                f"actor {self.id!r} has no public method {name[:100]!r}",
                actor=self.id,
                method=name[:100],
                methods=sorted(self.methods),
            )
        return method

    async def call(self, method: Method, data: Any, context: CallContext) -> bytes:
        """Run a call in its turn and return its answer: the result as JSON.

        A checkpoint. Cancelling the caller never cancels a turn that is running: a
        call waiting in the mailbox is abandoned (and skipped), a call running in the
        caller's own task (see :meth:`_turn_here`) finishes first.

        Raises:
            MailboxFull: ``mailbox_size`` calls are already waiting.
            Backlogged: the calls waiting would not let this one start before its
                deadline, at the time the actor's turns take.
            CallTimeout: no answer by ``context.deadline``.
            TowtruckError: the turn's error (:class:`ActorError` if the method raised).
        """
        if not self.running and self.state is ActivationState.VALID:
            return await self._turn_here(method, data, context)
        mailbox = self.mailbox
        if mailbox is None:
            mailbox = self.mailbox = Mailbox()
        else:
            if len(mailbox) >= self._catalog.mailbox_size:
                raise MailboxFull(
                    f"actor {self.id!r} already has {len(mailbox)} calls waiting",
                    actor=self.id,
                    method=method.name,
                )
            if (
                mailbox.turn
                and mailbox.start_of(len(mailbox), self._catalog.now()) >= context.deadline
            ):
                raise backlogged(self.id, method.name, mailbox)
        call = Call(method, data, context)
        mailbox.append(call)
        self._catalog.call_queued()
        if not self.running:
            self._start()
        with trio.CancelScope(deadline=context.deadline):
            return await call.reply.wait()
        waiting = "was still waiting in the mailbox" if call in mailbox else "was running"
        raise CallTimeout(
            f"call to {method.name!r} on actor {self.id!r} timed out: it {waiting}"
            " (calls that wait on each other in a cycle end this way)",
            actor=self.id,
            method=method.name,
        )

    async def _turn_here(self, method: Method, data: Any, context: CallContext) -> bytes:
        """Run an uncontended call in the caller's own task, holding the actor's turn.

        An idle actor has no task; spawning one for a single call, then switching to
        it and back, costs more than the call itself. So when the actor is idle the
        caller runs the turn (``running`` keeps others in the mailbox meanwhile),
        shielded from the caller's cancellation so the turn stays whole; the call's
        deadline and the node stopping still end it. Calls that queued meanwhile go to
        a task of the actor's own afterwards, so one caller never drains another's.
        """
        catalog = self._catalog
        started = catalog.now()
        if method.one_step:
            # It needs no more than the deadline known without asking trio for the
            # caller's cancel scopes (see ScopedCallContext), once the caller is known
            # not to be cancelled already.
            deadline = context.bound
            if type(context) is ScopedCallContext:
                await trio.lowlevel.checkpoint_if_cancelled()
        else:
            deadline = context.deadline
        if started >= deadline:  # nothing may run past its deadline
            await trio.lowlevel.checkpoint_if_cancelled()  # (a cancelled caller: Cancelled)
            raise late(self.id, method.name)
        self.running = True
        catalog.turn_began()
        try:
            result = await self._execute(method, data, context, here=True)
        finally:
            self.running = False
            catalog.turn_ended()
            self.touched = now = catalog.now()
            mailbox = self.mailbox
            if mailbox:  # calls queued meanwhile: now the actor knows how long a turn takes
                if now < deadline:  # (a turn cut at its deadline tells nothing)
                    mailbox.measured(now - started)
                self._start()
            elif self.state is ActivationState.DEACTIVATING:
                self._start()
        if now > deadline:  # the method outlived its deadline
            raise CallTimeout(
                f"call to {method.name!r} on actor {self.id!r} timed out: it was running",
                actor=self.id,
                method=method.name,
            )
        # A checkpoint, as every call must be: the turn may not have yielded at all.
        if context.caller_yields:  # ...unless the caller yields next anyway
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()
        return result

    async def call_inline(self, method: Method, data: Any, context: CallContext) -> bytes:
        """Run a reentrant call now, in the caller's task, inside the turn that is
        already running for the same call chain (it would deadlock in the mailbox)."""
        return await self._execute(method, data, context)

    def arm(self, timer: Timer) -> None:
        """Start ``timer`` on the node's scheduler. Not a checkpoint."""
        timer._arm(self, self._catalog.timers)

    def tick(self, timer: Timer) -> bool:
        """Put a tick of ``timer`` in the mailbox, as a call nobody waits for; False if
        the actor is not serving or its mailbox is full. Not a checkpoint."""
        if self.state is not ActivationState.VALID:
            return False
        mailbox = self.mailbox
        if mailbox is None:
            mailbox = self.mailbox = Mailbox()
        elif len(mailbox) >= self._catalog.mailbox_size:
            return False
        mailbox.append(Tick(timer, self._catalog.now() + self._catalog.call_timeout))
        self._catalog.call_queued()
        if not self.running:
            self._start()
        return True

    def request_deactivation(self, reason: DeactivationReason) -> None:
        """Start deactivating: finish the mailbox, run ``deactivate``, leave the table.

        Not a checkpoint. An actor without a ``deactivate`` hook and with no work
        leaves at once; otherwise its task does it.
        """
        if self.state is ActivationState.DEACTIVATING or self.state is ActivationState.INVALID:
            return
        self.state = ActivationState.DEACTIVATING
        self.reason = reason
        self._catalog.leaving_began()
        if self.running:
            return  # the task deactivates once the mailbox is empty
        if hook(self.instance, "deactivate") is None:
            self._finish()
        else:
            self._start()

    async def wait_gone(self, deadline: float) -> None:
        """Wait until this activation has left the table.

        Raises:
            CallTimeout: it is still deactivating at ``deadline``.
        """
        if self.state is ActivationState.INVALID:
            return
        if self._leaving is None:
            self._leaving = _Leaving()
        if self._leaving.gone is None:
            self._leaving.gone = trio.Event()
        with trio.move_on_at(deadline):
            await self._leaving.gone.wait()
            return
        raise CallTimeout(f"actor {self.id!r} is still deactivating", actor=self.id)

    def _start(self) -> None:
        self.running = True
        self._catalog.turn_began()
        self._catalog.spawn(self._run)

    async def _run(self) -> None:
        """The actor's task: activate if need be, run the waiting turns, then end (or
        deactivate). Cancelled only when the node stops; calls still waiting then fail
        with :class:`NodeStopping`."""
        try:
            if self.state is ActivationState.ACTIVATING and not await self._activate():
                return
            mailbox = self.mailbox
            if mailbox is not None:
                turns = 0
                begun: float | None = None  # when the turn just run began
                called = False  # a call ran (not a tick): the actor is in use
                while mailbox:
                    call = mailbox.popleft()
                    self._catalog.call_unqueued()
                    if call.reply.abandoned:
                        continue
                    if type(call) is not Tick or call.timer.keep_alive:
                        called = True
                    now = self._catalog.now()
                    if begun is not None:
                        mailbox.measured(now - begun)
                        begun = None
                    if now >= call.context.deadline:
                        call.reply.set(outcome.Error(late(self.id, call.method.name)))
                        continue
                    mailbox.started = begun = now
                    if mailbox and mailbox.turn:
                        self._shed(mailbox, now)
                    try:
                        result = await self._execute(call.method, call.data, call.context)
                    except TowtruckError as exc:
                        call.reply.set(outcome.Error(exc))
                        if isinstance(exc, CallTimeout):
                            begun = None  # cut at its deadline: tells nothing of turns
                    except BaseException:  # cancelled: the node is stopping
                        call.reply.set(outcome.Error(interrupted(self.id)))
                        raise
                    else:
                        call.reply.set(outcome.Value(result))
                    turns += 1
                    if turns % _TURNS_PER_YIELD == 0:
                        await trio.lowlevel.checkpoint()
                if called:
                    self.touched = trio.current_time()
            if self.state is ActivationState.DEACTIVATING:
                await self._deactivate()
        finally:
            self.running = False
            self._catalog.turn_ended()
            if self.mailbox:
                self._fail_waiting(stopped(self.id))
            self.mailbox = None

    def _shed(self, mailbox: Mailbox, now: float) -> None:
        """Refuse, from the back, the waiting calls that would not start before their
        deadlines (the call at the back of ``len(mailbox)`` waiting starts after them
        all and after the turn beginning ``now``)."""
        turn = mailbox.turn
        while mailbox:
            call = mailbox[-1]
            if not call.reply.abandoned and now + len(mailbox) * turn < call.context.deadline:
                return
            mailbox.pop()
            self._catalog.call_unqueued()
            call.reply.set(outcome.Error(backlogged(self.id, call.method.name, mailbox)))

    async def _run_persistent(
        self, method: Method, data: Any, context: CallContext, here: bool
    ) -> bytes:
        states = self.context
        assert states is not None
        try:
            answer = await self._execute(method, data, context, here=here, ending=False)
        except BaseException as exc:
            states.turn_failed()
            self._drop_if_superseded(states, exc)
            raise
        if not states.autosaves:
            self._drop_if_superseded(states)  # (the method wrote, and was refused)
            return answer
        try:
            with trio.CancelScope(deadline=context.deadline, shield=here) as scope:
                await states.turn_ended()
        except TypeError as exc:
            states.turn_failed()
            raise self._actor_error(method.name, exc) from exc
        except BaseException as exc:
            states.turn_failed()
            self._drop_if_superseded(states, exc)
            raise
        self._drop_if_superseded(states)
        if scope.cancelled_caught:
            raise cancelled(self.id, method.name, context.deadline)
        return answer

    def _drop_if_superseded(
        self, states: ActorContext, raised: BaseException | None = None
    ) -> None:
        """Drop this activation at once, without ``deactivate``, if its state can no
        longer be trusted: a newer activation claimed the actor, or a write was cut off
        (its outcome unknown). The turn's call fails, with :class:`StateConflict` in
        the first case (whatever the method made of it); the calls waiting, which have
        not run, go to a fresh activation of the actor, which claims it anew."""
        trouble = states.trouble
        if trouble is None:
            return
        if self.state is not ActivationState.INVALID:
            self.reason = DeactivationReason.SUPERSEDED
            waiting, self.mailbox = self.mailbox, None
            self._finish()
            calls = []
            for call in waiting or ():
                self._catalog.call_unqueued()
                if type(call) is Tick or call.reply.abandoned:
                    call.reply.set(outcome.Error(copy.copy(trouble)))  # (timers end here)
                else:
                    calls.append(call)
            if waiting:
                waiting.clear()
            if calls:
                self._catalog.spawn(functools.partial(self._catalog.rerun, self.id, calls))
        if isinstance(trouble, StateConflict) and not isinstance(raised, trio.Cancelled):
            raise copy.copy(trouble) from None

    async def _execute(
        self,
        method: Method,
        data: Any,
        context: CallContext,
        *,
        here: bool = False,
        ending: bool = True,
    ) -> bytes:
        """Run one method within the call's context and deadline: its result as JSON.
        ``here``: in the caller's task, shielded from the caller's cancellation. For an
        actor that keeps persistent state (unless ``ending`` is off), the turn is then
        ended by :meth:`_run_persistent`: what autosaves is saved, and the activation
        is dropped if a newer one has claimed the actor.

        Raises:
            TowtruckError: whatever went wrong: what the method raised as
                :class:`ActorError` (``SystemExit`` and ``KeyboardInterrupt`` too), a
                result JSON cannot carry as :class:`ResultNotJSON`. Only trio's
                cancellation and a real Ctrl-C raise otherwise.
        """
        states = self.context
        if (
            ending
            and states is not None
            and states.keeps_state
            and not (method.one_step and not states.autosaves)
        ):  # (an async def that cannot wait cannot have written: nothing to end)
            return await self._run_persistent(method, data, context, here)
        one_step = method.one_step  # (it can make no call: its deadline is not asked)
        token = current_context.set(
            CallContext(
                (*context.chain, self.id),
                context.bound if one_step else context.deadline,
                trace=context.trace,
            )
        )
        try:
            result = method.call(self.instance, data)
            if one_step:
                # An ``async def`` with no ``await`` in it finishes in one step: no
                # deadline can fall inside it, so it needs no cancel scope (the
                # largest cost of a local call otherwise).
                try:
                    result.send(None)
                except StopIteration as done:
                    result = done.value
                else:  # pragma: no cover (impossible: it has nothing to wait on)
                    raise RuntimeError(f"{method.name} suspended without an await")
            elif method.is_async or inspect.isawaitable(result):
                scope = trio.CancelScope(deadline=context.deadline, shield=here)
                if here:
                    self._catalog.turns_here.add(scope)
                try:
                    with scope:
                        result = await result
                finally:
                    if here:
                        self._catalog.turns_here.discard(scope)
                if scope.cancelled_caught:
                    raise cancelled(self.id, method.name, context.deadline)
        except (TowtruckError, trio.Cancelled):
            raise
        except BaseException as exc:
            raise self._actor_error(method.name, self._own_failure(method.name, exc)) from exc
        finally:
            current_context.reset(token)
        try:
            return codec.dumps(result)
        except TypeError:
            raise self._not_json(method.name, result) from None

    async def _activate(self) -> bool:
        activate = hook(self.instance, "activate")
        deadline = trio.current_time() + self._catalog.call_timeout
        token = current_context.set(CallContext((self.id,), deadline))
        try:
            with trio.fail_after(self._catalog.call_timeout):
                if self.context is not None and self.context.keeps_state:
                    await self.context.claim()
                if activate is not None:
                    result = activate()
                    if inspect.isawaitable(result):
                        await result
        except (StateConflict, StoreUnavailable) as exc:
            self._activation_failed(exc)
            return False
        except trio.TooSlowError:
            self._activation_failed(
                CallTimeout(
                    f"actor {self.id!r}: activate did not finish within call_timeout",
                    actor=self.id,
                    method="activate",
                )
            )
            return False
        except trio.Cancelled:
            raise
        except BaseException as exc:
            own = self._own_failure("activate", exc)
            self._activation_failed(self._actor_error("activate", own))
            return False
        finally:
            current_context.reset(token)
        if self.context is not None and self.context.trouble is not None:
            self._activation_failed(copy.copy(self.context.trouble))  # (activate wrote)
            return False
        if self.state is ActivationState.ACTIVATING:
            self.state = ActivationState.VALID
        return True

    def _activation_failed(self, error: TowtruckError) -> None:
        self.reason = DeactivationReason.FAILED
        self._fail_waiting(error)
        self._finish()

    async def _deactivate(self) -> None:
        deactivate = hook(self.instance, "deactivate")
        token = current_context.set(
            CallContext((self.id,), trio.current_time() + self._catalog.call_timeout)
        )
        try:
            if deactivate is not None:
                with trio.move_on_after(self._catalog.call_timeout) as scope:
                    result = deactivate()
                    if inspect.isawaitable(result):
                        await result
                if scope.cancelled_caught:
                    logger.warning("actor %r: deactivate timed out", self.id)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            self._own_failure("deactivate", exc)
        finally:
            current_context.reset(token)
            self._finish()

    def _finish(self) -> None:
        if self.state is ActivationState.DEACTIVATING:
            self._catalog.leaving_ended()
        self.state = ActivationState.INVALID
        if self.context is not None:
            self.context.ended()
        self._catalog.forget(self)
        if self._leaving is not None and self._leaving.gone is not None:
            self._leaving.gone.set()

    def _fail_waiting(self, error: TowtruckError) -> None:
        """Fail every call waiting, each with a copy of ``error`` (one exception raised
        in several tasks would chain their tracebacks, keeping their frames alive)."""
        mailbox, self.mailbox = self.mailbox, None
        for call in mailbox or ():
            self._catalog.call_unqueued()
            call.reply.set(outcome.Error(copy.copy(error)))
        if mailbox:
            mailbox.clear()

    def _own_failure(self, method: str, exc: BaseException) -> BaseException:
        """Log the part of ``exc`` that is the actor code's own failure and return it;
        raise the part that must pass through (a real Ctrl-C, cancellation), if any."""
        passing, own = failures.split(exc)
        if own is not None:
            self._catalog.failures.failed(self.id, method, own)
        if passing is not None:
            raise passing
        assert own is not None
        return own

    def _not_json(self, method: str, result: Any) -> ResultNotJSON:
        error = ResultNotJSON(
            f"the result of {method!r} on actor {self.id!r} cannot be sent as JSON:"
            f" {codec.why_not_json(result, 'result')}",
            exception="TypeError",
            actor=self.id,
            method=method,
            node=self._catalog.node_id,
        )
        self._catalog.failures.failed(self.id, method, error)
        return error

    def _actor_error(self, method: str, exc: BaseException) -> ActorError:
        error = ActorError(
            failures.describe(exc),
            exception=type(exc).__name__,
            actor=self.id,
            method=method,
            node=self._catalog.node_id,
        )
        error.__cause__ = exc
        return error
