"""Every error towtruck raises, and the HTTP status each one answers with.

The whole tree::

    TowtruckError                 base: something went wrong in or around a call
    ├── BadRequest                400: the request could not be understood
    │   ├── InvalidJSON           the body is not JSON (nests too deep, an int past 64 bits)
    │   ├── InvalidActorId        the actor id is empty, too long, or not text
    │   ├── InvalidAddress        a peer address is not a usable host:port
    │   ├── SettingsError         a setting has an unknown name or a bad value
    │   └── HeadersTooLarge       431: the request's line and headers are too long
    ├── NotFound                  404: there is nothing by that name
    │   ├── RouteNotFound         no route at that path
    │   ├── MethodNotFound        the actor has no public method by that name
    │   └── NotActive             the actor is not active on that node (it was collected)
    ├── Unauthorized              401: a cluster route, called without the cluster key
    ├── Forbidden                 403: a cluster route, called with a wrong cluster key
    ├── MethodNotAllowed          405: the route exists, but not for that HTTP verb
    ├── PayloadTooLarge           413: the body is larger than ``max_body``
    ├── StateConflict             409: a newer activation of the actor claimed its state
    ├── ActorError                500: the actor's own code raised
    │   ├── ResultNotJSON         the method returned a value JSON cannot carry
    │   └── ResultTooLarge        the method's answer is too large to send (over 64 MiB)
    ├── InternalError             500: towtruck itself failed (a bug: please report it)
    ├── CallInterrupted           502: cut off under way: it may or may not have run
    ├── Unavailable               503: the call was refused; trying again later may work
    │   ├── MailboxFull           the actor already has ``mailbox_size`` calls waiting
    │   ├── Backlogged            the actor's waiting calls would not let this one start in time
    │   ├── Overloaded            a limit is reached: ``max_actors`` (none idle), ``max_in_flight``
    │   ├── NodeStopping          the node is shutting down and takes no new calls
    │   ├── PeerUnavailable       the node that owns the actor did not answer
    │   ├── MinorityPartition     this node reaches fewer than half of the cluster: it activates nothing
    │   └── StoreUnavailable      the state store failed or timed out: nothing was written
    ├── CallTimeout               504: no answer within the call's deadline
    └── ForwardingLoop            508: the call was forwarded too many times

Errors cross the network as data, ``{"error": {"type": ..., "message": ..., ...}}``,
and :func:`from_payload` turns that back into the class of the same name from this
tree. An exception the actor's code raised becomes :class:`ActorError` carrying the
original type name and message; arbitrary exception classes are never rebuilt from the
wire, and tracebacks are never sent unless the node runs with ``debug``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "STATUS",
    "ActorError",
    "Backlogged",
    "BadRequest",
    "CallInterrupted",
    "CallTimeout",
    "Forbidden",
    "ForwardingLoop",
    "HeadersTooLarge",
    "InternalError",
    "InvalidActorId",
    "InvalidAddress",
    "InvalidJSON",
    "MailboxFull",
    "MethodNotAllowed",
    "MethodNotFound",
    "MinorityPartition",
    "NodeStopping",
    "NotActive",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PeerUnavailable",
    "ResultNotJSON",
    "ResultTooLarge",
    "RouteNotFound",
    "SettingsError",
    "StateConflict",
    "StoreUnavailable",
    "TowtruckError",
    "Unauthorized",
    "Unavailable",
    "from_payload",
    "status_of",
]


class TowtruckError(Exception):
    """Something went wrong in or around a call.

    Args:
        message: What happened, in one sentence a user can act on.
        **details: JSON-able facts that help (``actor``, ``method``, ``node``...);
            they travel with the error and are readable as ``error.details``.
    """

    #: Extra response headers, e.g. ``Retry-After`` for 503s.
    headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()
    #: Rebuilt from another node's answer (:func:`from_payload`): it says what that
    #: node saw, so its details (``peer``, ``delivered``...) are about that node's own
    #: peers, never about the connection this node made.
    remote: bool = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        """The HTTP status this error answers with."""
        return status_of(type(self))

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of the error response: ``{"error": {...}}``."""
        return {"error": {"type": type(self).__name__, "message": self.message, **self.details}}


class BadRequest(TowtruckError):
    """The request could not be understood."""


class InvalidJSON(BadRequest):
    """The body is not JSON, nests deeper than the parser accepts, or holds an integer
    past 64 bits (which JSON parsers round without a word)."""


class InvalidActorId(BadRequest):
    """The actor id is empty, too long, or not text."""


class InvalidAddress(BadRequest):
    """A peer address is not a usable ``host:port``."""


class SettingsError(BadRequest, ValueError):
    """A setting has an unknown name or a bad value (the message names it)."""


class HeadersTooLarge(BadRequest):
    """The request's line and headers are longer than the server accepts."""


class Unauthorized(TowtruckError):
    """A cluster route was called without the cluster key."""


class Forbidden(TowtruckError):
    """A cluster route was called with a wrong cluster key."""


class NotFound(TowtruckError):
    """There is nothing by that name."""


class RouteNotFound(NotFound):
    """No route at that path."""


class MethodNotFound(NotFound):
    """The actor has no public method by that name."""


class NotActive(NotFound):
    """The actor is not active on the node a call was sent to (it has been collected)."""


class MethodNotAllowed(TowtruckError):
    """The route exists, but not for that HTTP verb."""


class PayloadTooLarge(TowtruckError):
    """The request body is larger than ``max_body``."""


class StateConflict(TowtruckError):
    """A newer activation of the actor has claimed its state (see
    :mod:`towtruck.storage`): this activation's write was refused, nothing of it was
    stored, and the activation is gone. The next call activates the actor afresh
    with the newer state, so the call may be retried."""


class ActorError(TowtruckError):
    """The actor's own code raised.

    ``details["exception"]`` names the original exception type (``"ValueError"``);
    the message is the original message. The actor lives on: only that call failed.
    """

    @property
    def exception_type(self) -> str:
        """The name of the exception class the actor's code raised."""
        return str(self.details.get("exception", ""))


class ResultNotJSON(ActorError):
    """The method returned a value JSON cannot carry (an int past 64 bits, a set, a
    tuple as a dict key...); the message says which part, and what to return instead.
    ``details["exception"]`` is ``"TypeError"``, what the encoder raised."""


class ResultTooLarge(ActorError):
    """The method ran, but its answer is larger than any call may carry (64 MiB, the
    most a lane between nodes takes), so it is not sent: the same wherever the actor
    lives. ``details`` give the ``size`` and the ``limit``, in bytes."""


class InternalError(TowtruckError):
    """towtruck itself failed; this is a bug, please report it."""


class CallInterrupted(TowtruckError):
    """The call was cut off under way (its node went down, or the connection to it was
    lost, after the call reached it): it may or may not have run, so it is not safe to
    retry blindly, unlike a 503."""


class Unavailable(TowtruckError):
    """The call was refused for now and did not run; trying again later may work."""

    headers = ((b"retry-after", b"1"),)


class MailboxFull(Unavailable):
    """The actor already has ``mailbox_size`` calls waiting."""


class Backlogged(Unavailable):
    """The calls already waiting for the actor, at the time its recent turns took,
    would not let this call start before its deadline: it is refused at once rather
    than left to time out in the mailbox."""


class Overloaded(Unavailable):
    """A limit of the node is reached: it holds ``max_actors`` actors and none is idle,
    or it has ``max_in_flight`` calls under way."""


class NodeStopping(Unavailable):
    """The node is shutting down and takes no new calls."""


class PeerUnavailable(Unavailable):
    """The node that owns the actor did not answer."""


class MinorityPartition(Unavailable):
    """This node reaches fewer than half of the cluster's last agreed view (a partition,
    or most nodes lost): with ``partition="keep-majority"`` it activates no actor until
    it reaches a majority again, so that no id is active on both sides."""


class StoreUnavailable(Unavailable):
    """The state store failed or did not answer in time: the read did not happen or
    the write did not commit, and the actor's memory is as the store has it. The call
    may be retried."""


class CallTimeout(TowtruckError):
    """No answer came within the call's deadline."""


class ForwardingLoop(TowtruckError):
    """The call was forwarded between nodes more times than the hop limit allows."""


#: The HTTP status of each error class. :func:`status_of` walks the class's bases, so
#: a subclass answers like its parent unless it is listed itself; a test checks that
#: every leaf of the tree is listed.
STATUS: dict[type[TowtruckError], int] = {
    TowtruckError: 500,
    BadRequest: 400,
    InvalidJSON: 400,
    InvalidActorId: 400,
    InvalidAddress: 400,
    SettingsError: 400,
    HeadersTooLarge: 431,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    RouteNotFound: 404,
    MethodNotFound: 404,
    NotActive: 404,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    StateConflict: 409,
    ActorError: 500,
    ResultNotJSON: 500,
    ResultTooLarge: 500,
    InternalError: 500,
    CallInterrupted: 502,
    Unavailable: 503,
    MailboxFull: 503,
    Backlogged: 503,
    Overloaded: 503,
    NodeStopping: 503,
    PeerUnavailable: 503,
    MinorityPartition: 503,
    StoreUnavailable: 503,
    CallTimeout: 504,
    ForwardingLoop: 508,
}

_BY_NAME: dict[str, type[TowtruckError]] = {cls.__name__: cls for cls in STATUS}


def status_of(cls: type[TowtruckError]) -> int:
    """The HTTP status for an error class: its own entry in :data:`STATUS`, or its
    nearest listed base's."""
    for base in cls.__mro__:
        status = STATUS.get(base)
        if status is not None:
            return status
    return 500


def from_payload(payload: object, status: int = 500) -> TowtruckError:
    """Rebuild an error from the JSON body another node answered with.

    Only classes of this module's tree are rebuilt, by name; anything else, including
    a body that is not an error at all, becomes :class:`InternalError` saying what came
    back, so a caller always gets one of towtruck's errors. Whatever the body holds,
    this never raises: details are kept as data (a detail named ``message`` or ``self``
    is only a detail), and the error is marked :attr:`~TowtruckError.remote`.
    """
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        error: TowtruckError = InternalError(
            f"a peer answered HTTP {status} without a towtruck error body"
        )
    else:
        message, name = body.get("message"), body.get("type")
        cls = _BY_NAME.get(name, InternalError) if isinstance(name, str) else InternalError
        error = cls(message if isinstance(message, str) else str(message))
        error.details = {k: v for k, v in body.items() if k not in ("type", "message")}
    error.remote = True
    return error
