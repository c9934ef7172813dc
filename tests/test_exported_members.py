import types

import towtruck


def test_all_is_sorted_and_complete() -> None:
    assert towtruck.__all__ == sorted(towtruck.__all__)
    exported = {
        name
        for name, value in vars(towtruck).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(towtruck.__all__)


def test_public_api() -> None:
    assert towtruck.__all__ == [
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
