import towtruck


def test_all_is_sorted_and_complete() -> None:
    assert towtruck.__all__ == sorted(towtruck.__all__)
    exported = {name for name in dir(towtruck) if not name.startswith("_")}
    modules = {"activation", "address", "app", "calls", "catalog", "client", "codec"}
    modules |= {"errors", "methods", "node", "routes", "runtime", "server", "settings"}
    assert exported - modules == set(towtruck.__all__)


def test_public_api() -> None:
    assert towtruck.__all__ == [
        "ActivationState",
        "ActorError",
        "Address",
        "App",
        "BadRequest",
        "CallTimeout",
        "CatalogStatistics",
        "Client",
        "DeactivationReason",
        "ForwardingLoop",
        "InternalError",
        "InvalidActorId",
        "InvalidAddress",
        "InvalidJSON",
        "MailboxFull",
        "MethodNotAllowed",
        "MethodNotFound",
        "Node",
        "NodeStopping",
        "NotFound",
        "Overloaded",
        "PayloadTooLarge",
        "PeerUnavailable",
        "RouteNotFound",
        "Runtime",
        "RuntimeStatistics",
        "Settings",
        "SettingsError",
        "TowtruckError",
        "Unavailable",
        "open_node",
        "open_runtime",
        "run",
        "serve_node",
    ]
