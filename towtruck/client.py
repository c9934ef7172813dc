"""The client actors and embedding code call actors with."""

from __future__ import annotations

from typing import Any, Protocol

import trio

from . import codec
from .calls import CallContext, ScopedCallContext, current_context
from .ids import check_actor_id

__all__ = ["Client", "Invoker"]


class Invoker(Protocol):
    """What a :class:`Client` sends its calls to (the node's runtime)."""

    async def invoke(self, actor_id: str, method: str, data: Any, context: CallContext) -> bytes:
        """Run the call wherever the actor lives; the answer is its result as JSON."""
        ...


class Client:
    """Calls actors by id: from inside an actor (the ``client`` its factory got) or
    from the trio program that embeds the node (``node.client``).

    A call made inside an actor's turn carries that turn's call chain and deadline, so
    an actor may call back into an actor already waiting on it (``A -> B -> A``) and a
    whole tree of nested calls gives up when its first caller does.
    """

    def __init__(self, invoker: Invoker, *, call_timeout: float) -> None:
        self._invoker = invoker
        self._call_timeout = call_timeout

    async def invoke(self, actor_id: str | int, method: str, data: Any = None) -> Any:
        """Call ``method`` on actor ``actor_id`` and return its result.

        ``data`` and the result are copied through JSON, so caller and actor never
        share mutable objects, as when the actor lives on another node.

        The call's deadline is ``call_timeout`` from now, or sooner if the caller's
        cancel scopes end sooner (``with trio.move_on_after(2): await client.invoke(...)``)
        or if this runs inside a turn whose own call ends sooner. The deadline travels
        with the call to the actor and on to the calls it makes in turn, so a whole
        tree of nested calls gives up together.

        A checkpoint. If cancelled while waiting, the call is abandoned: skipped if
        its turn has not started, left to finish (its answer dropped) if it has.

        Args:
            actor_id: The actor's id; an int is turned into its decimal string.
            method: A public method of the actor.
            data: A JSON-able value, handed to the method.

        Raises:
            TowtruckError: a subclass saying what went wrong; :class:`ActorError` if the
                method raised, :class:`CallTimeout` past ``call_timeout``.
            TypeError: ``data`` is not JSON-able (the message says which part, and
                what to use instead; see :mod:`towtruck.codec`).
        """
        actor_id = check_actor_id(actor_id)
        # The caller's cancel scopes may end sooner: the context asks trio for them
        # only if the deadline is needed (see ScopedCallContext).
        deadline = trio.current_time() + self._call_timeout
        parent = current_context.get()
        if parent is None:
            context = ScopedCallContext((), deadline)
        else:
            context = ScopedCallContext(
                parent.chain, min(deadline, parent.deadline), trace=parent.trace
            )
        try:
            data = codec.copy(data)
        except TypeError as exc:
            raise TypeError(
                f"data for {method[:100]!r} on actor {actor_id!r} cannot be sent as JSON: {exc}"
            ) from None
        answer = await self._invoker.invoke(actor_id, method, data, context)
        return codec.loads_answer(answer)
