"""towtruck: a virtual actor runtime for Python on trio.

Write one factory, ``create_actor(id, client)`` (or ``create_actor(id, client, context)``
for actors that keep persistent state); towtruck activates an actor the first
time its id is called, runs its calls one turn at a time, and collects it when idle.

The public API is what this module exports. Names are re-exported as
``from .x import Name as Name`` so that type checkers treat them as public, as trio's
``__init__`` explains; ``tests/test_exported_members.py`` pins ``__all__``.
"""

__version__ = "0.1.0"

from .activation import ActivationState as ActivationState
from .activation import DeactivationReason as DeactivationReason
from .catalog import CatalogStatistics as CatalogStatistics
from .client import Client as Client
from .errors import ActorError as ActorError
from .errors import Backlogged as Backlogged
from .errors import BadRequest as BadRequest
from .errors import CallInterrupted as CallInterrupted
from .errors import CallTimeout as CallTimeout
from .errors import Forbidden as Forbidden
from .errors import ForwardingLoop as ForwardingLoop
from .errors import HeadersTooLarge as HeadersTooLarge
from .errors import InternalError as InternalError
from .errors import InvalidActorId as InvalidActorId
from .errors import InvalidAddress as InvalidAddress
from .errors import InvalidJSON as InvalidJSON
from .errors import MailboxFull as MailboxFull
from .errors import MethodNotAllowed as MethodNotAllowed
from .errors import MethodNotFound as MethodNotFound
from .errors import MinorityPartition as MinorityPartition
from .errors import NodeStopping as NodeStopping
from .errors import NotActive as NotActive
from .errors import NotFound as NotFound
from .errors import Overloaded as Overloaded
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import PeerUnavailable as PeerUnavailable
from .errors import ResultNotJSON as ResultNotJSON
from .errors import ResultTooLarge as ResultTooLarge
from .errors import RouteNotFound as RouteNotFound
from .errors import SettingsError as SettingsError
from .errors import StateConflict as StateConflict
from .errors import StoreUnavailable as StoreUnavailable
from .errors import TowtruckError as TowtruckError
from .errors import Unauthorized as Unauthorized
from .errors import Unavailable as Unavailable
from .ids import Address as Address
from .node import Node as Node
from .node import open_node as open_node
from .node import run as run
from .node import serve_node as serve_node
from .reminders import Reminder as Reminder
from .remote import RemoteClient as RemoteClient
from .remote import RemoteStatistics as RemoteStatistics
from .remote import SyncClient as SyncClient
from .remote import connect as connect
from .runtime import Runtime as Runtime
from .runtime import RuntimeStatistics as RuntimeStatistics
from .runtime import open_runtime as open_runtime
from .server.app import App as App
from .settings import Settings as Settings
from .state import ActorContext as ActorContext
from .state import PersistentState as PersistentState
from .testing import Cluster as Cluster
from .testing import ClusterClient as ClusterClient
from .testing import cluster as cluster
from .timers import Timer as Timer

__all__ = [
    "ActivationState",
    "ActorContext",
    "ActorError",
    "Address",
    "App",
    "Backlogged",
    "BadRequest",
    "CallInterrupted",
    "CallTimeout",
    "CatalogStatistics",
    "Client",
    "Cluster",
    "ClusterClient",
    "DeactivationReason",
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
    "Node",
    "NodeStopping",
    "NotActive",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PeerUnavailable",
    "PersistentState",
    "Reminder",
    "RemoteClient",
    "RemoteStatistics",
    "ResultNotJSON",
    "ResultTooLarge",
    "RouteNotFound",
    "Runtime",
    "RuntimeStatistics",
    "Settings",
    "SettingsError",
    "StateConflict",
    "StoreUnavailable",
    "SyncClient",
    "Timer",
    "TowtruckError",
    "Unauthorized",
    "Unavailable",
    "cluster",
    "connect",
    "open_node",
    "open_runtime",
    "run",
    "serve_node",
]
