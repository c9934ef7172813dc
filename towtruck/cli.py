"""The ``towtruck`` command: ``towtruck serve module:create_actor --port 8080``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

import trio

from . import __version__
from .catalog import Factory
from .errors import SettingsError
from .node import configure_logging, serve_node
from .settings import Settings
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
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default info)",
    )
    return parser


def load_factory(spec: str) -> Factory:
    """Import ``module:attribute`` (attribute defaults to ``create_actor``).

    Raises:
        SettingsError: the module or attribute cannot be found, or is not callable.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "create_actor"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SettingsError(f"{module_name!r} has no callable {attribute!r}")
    return factory  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``towtruck`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    flags = {name: getattr(args, name) for _, name, _ in _VALUE_FLAGS + _SWITCHES}
    flags["peers"] = args.peers
    try:
        settings = Settings.load(flags=flags)
        factory = load_factory(args.factory)
        if settings.workers > 1 and settings.advertise and not args.listen_fds:
            raise SettingsError("--advertise: each worker advertises its own port; give --host")
    except SettingsError as exc:
        parser.exit(2, f"towtruck: error: {exc.message}\n")
    configure_logging(args.log_level)
    if settings.workers > 1 and not args.listen_fds:
        sys.exit(trio.run(supervise, args.factory, settings, args.log_level))
    fds = [int(fd) for fd in args.listen_fds.split(",")] if args.listen_fds else []
    trio.run(
        partial(
            serve_node,
            factory,
            listen_fds=fds,
            parent_fd=args.parent_fd,
            **dataclasses.asdict(settings),
        )
    )
    sys.exit(0)
