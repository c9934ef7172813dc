"""The ``towtruck`` command: ``towtruck serve module:create_actor --port 8080``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import NoReturn

import trio

from . import __version__
from .catalog import Factory
from .errors import SettingsError
from .node import configure_logging, serve_node
from .settings import ENV_PREFIX, Settings
from .workers import supervise

__all__ = ["main"]

# (flag, setting, help). Every flag also reads TOWTRUCK_<SETTING> from the environment.
_VALUE_FLAGS = [
    ("--host", "host", "interface to bind (default 127.0.0.1)"),
    ("--port", "port", "TCP port to bind (default 8080; 0 picks a free one)"),
    ("--max-actors", "max_actors", "most actors in memory (default 1000)"),
    ("--max-inactivity", "max_inactivity", "seconds idle before an actor is collected (60)"),
    ("--gc-interval", "gc_interval", "seconds between collector runs (10)"),
    ("--call-timeout", "call_timeout", "seconds a call may take (30)"),
    ("--mailbox-size", "mailbox_size", "most calls waiting for one actor (1000)"),
    ("--max-body", "max_body", "largest request body, in bytes (1048576)"),
    ("--shutdown-timeout", "shutdown_timeout", "seconds for each phase of shutdown (5)"),
    ("--keep-alive-timeout", "keep_alive_timeout", "seconds an idle connection stays open (5)"),
    ("--advertise", "advertise", "host:port peers reach this node at (default: the bound one)"),
    ("--heartbeat-interval", "heartbeat_interval", "seconds between heartbeats to each peer (1)"),
    ("--heartbeat-misses", "heartbeat_misses", "missed heartbeats that take a peer out (3)"),
    ("--bloom-interval", "bloom_interval", "seconds between fetches of peers' bloom filters (1)"),
    ("--cluster-key", "cluster_key", "shared secret the nodes of a cluster prove themselves with"),
    ("--max-in-flight", "max_in_flight", "most calls from outside under way at once (10000)"),
    ("--request-timeout", "request_timeout", "seconds a client may take to send a request (30)"),
    ("--workers", "workers", "node processes behind the one port, or auto: one per core (1)"),
    (
        "--blocked-warning",
        "blocked_warning",
        "seconds a turn may hold the event loop before it is logged (1)",
    ),
    ("--log-level", "log_level", "how much to log to stderr: debug, info, warning, error (info)"),
    ("--http-parser", "http_parser", "how to read HTTP: httptools, h11, or auto (auto)"),
]
_SWITCHES = [
    ("--access-log", "access_log", "log every request (costs throughput)"),
    ("--debug", "debug", "put tracebacks in error responses"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towtruck", description="towtruck: a virtual actor runtime for Python on trio."
    )
    parser.add_argument("--version", action="version", version=f"towtruck {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a node",
        description="Run a towtruck node until Ctrl-C or SIGTERM. Every option can also"
        " be set with an environment variable TOWTRUCK_<NAME>, e.g. TOWTRUCK_MAX_ACTORS.",
    )
    serve.add_argument(
        "factory",
        metavar="MODULE:FACTORY",
        help="the create_actor function, e.g. examples.greeter:create_actor"
        " (':create_actor' may be left out); the current directory is importable",
    )
    serve.add_argument(
        "--peer",
        dest="peers",
        action="append",
        metavar="HOST:PORT",
        help="a node to join at start (repeatable; TOWTRUCK_PEERS=a:1,b:2)",
    )
    for flag, name, text in _VALUE_FLAGS:
        serve.add_argument(flag, dest=name, help=text)
    for flag, name, text in _SWITCHES:
        serve.add_argument(flag, dest=name, action="store_const", const=True, help=text)
    serve.add_argument("--listen-fds", help=argparse.SUPPRESS)  # from --workers' supervisor
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)  # likewise
    serve.add_argument("--local-lanes", help=argparse.SUPPRESS)  # likewise
    return parser


def load_factory(spec: str) -> Factory:
    """Import ``module:attribute`` (attribute defaults to ``create_actor``).

    Raises:
        SettingsError: the module or attribute cannot be found, is not callable, or is
            an ``async def``.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "create_actor"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    hint = _module_hint(module_name, attribute if ":" in spec else "")
    if hint and not _is_module_name(module_name):
        raise SettingsError(f"cannot import {module_name!r}: {hint}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(f"cannot import {module_name!r}: {hint or exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SettingsError(f"{module_name!r} has no callable {attribute!r}")
    if inspect.iscoroutinefunction(factory):
        raise SettingsError(
            f"{module_name}:{attribute} is an async def: create_actor must be a plain def"
            " returning the actor (do async set-up in the actor's activate method)"
        )
    return factory  # type: ignore[no-any-return]


def _is_module_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _module_hint(name: str, attribute: str) -> str:
    """What to say to ``towtruck serve bad.py`` (or ``pkg/module.py``): the module
    name to give instead; nothing if ``name`` does not look like a file."""
    if not (name.endswith(".py") or "/" in name or os.sep in name):
        return ""
    path = os.path.relpath(os.path.abspath(name.removesuffix(".py")))
    dotted = path.replace(os.sep, ".")
    suffix = f":{attribute}" if attribute else ""
    if _is_module_name(dotted):
        example = f"{dotted + suffix!r} (or 'pkg.module' for pkg/module.py)"
    else:  # outside the current directory
        example = "'pkg.module' for pkg/module.py, importable from the current directory"
    return f"give the module's name, not its file: {example}"


def _start_up_error(exc: BaseException) -> SettingsError | None:
    """The :class:`SettingsError` that stopped a node starting, if that is what ``exc``
    is, alone or in exception groups (how errors leave ``trio.run``)."""
    leaves = list(_leaves(exc))
    errors = [leaf for leaf in leaves if isinstance(leaf, SettingsError)]
    return errors[0] if len(errors) == len(leaves) else None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _one_line(exc: SettingsError) -> str:
    """The error's message, naming the flag of the setting at fault where it names a
    setting and its value (a host and port the node cannot listen on)."""
    setting, reason = exc.details.get("setting"), exc.details.get("reason")
    if reason is not None and setting in _FLAG_OF:
        return f"{_FLAG_OF[setting]} {exc.details.get('value')}: {reason}"
    return exc.message


_FLAG_OF = {name: flag for flag, name, _ in _VALUE_FLAGS + _SWITCHES}


def _local_lanes(text: str | None) -> dict[str, str]:
    """``--local-lanes address=path,...``: the Unix domain sockets of a worker's peers."""
    pairs = (item.partition("=") for item in (text or "").split(",") if item)
    return {address: path for address, _, path in pairs}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``towtruck`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    flags = {name: getattr(args, name) for _, name, _ in _VALUE_FLAGS + _SWITCHES}
    flags["peers"] = args.peers
    worker = bool(args.listen_fds)  # started by a --workers supervisor
    configure_logging("warning")  # until the settings say: their own warnings show
    try:
        settings = Settings.load(flags=flags, environ=_environment(worker))
        factory = load_factory(args.factory)
        if settings.workers > 1 and settings.advertise and not worker:
            raise SettingsError("--advertise: each worker advertises its own port; give --host")
    except SettingsError as exc:
        parser.exit(2, f"towtruck: error: {_one_line(exc)}\n")
    configure_logging(settings.log_level)
    try:
        if settings.workers > 1 and not worker:
            sys.exit(trio.run(supervise, args.factory, settings))
        fds = [int(fd) for fd in args.listen_fds.split(",")] if worker else []
        trio.run(
            partial(
                serve_node,
                factory,
                listen_fds=fds,
                parent_fd=args.parent_fd,
                local_lanes=_local_lanes(args.local_lanes),
                environ={},  # read once, above
                **dataclasses.asdict(settings),
            )
        )
    except (SettingsError, BaseExceptionGroup) as exc:
        error = _start_up_error(exc)
        if error is None:
            raise
        parser.exit(2, f"towtruck: error: {_one_line(error)}\n")
    sys.exit(0)


def _environment(worker: bool) -> dict[str, str]:
    """The variables to read settings from. A worker reads only those of settings: its
    supervisor warned about the others already (they reach the worker all the same,
    for the actors' code)."""
    if not worker:
        return dict(os.environ)
    known = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) or k in known}
