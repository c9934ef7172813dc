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
from .node import serve_node
from .process import configure_logging
from .settings import ENV_PREFIX, Settings, flag
from .workers import supervise

__all__ = ["main"]


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
    for field in dataclasses.fields(Settings):
        _add_flag(serve, field)
    serve.add_argument("--listen-fds", help=argparse.SUPPRESS)  # from --workers' supervisor
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)  # likewise
    serve.add_argument("--local-lanes", help=argparse.SUPPRESS)  # likewise
    return parser


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field[object]) -> None:
    """The flag of one setting, from its field: name, help and default."""
    kind, text = field.metadata["kind"], field.metadata["help"]
    if kind == "flag" and field.default is True:
        parser.add_argument(
            "--no-" + flag(field.name)[2:],
            dest=field.name,
            action="store_const",
            const=False,
            help=text,
        )
    elif kind == "flag":
        parser.add_argument(
            flag(field.name), dest=field.name, action="store_const", const=True, help=text
        )
    elif kind == "addresses":
        parser.add_argument(
            flag(field.name),
            dest=field.name,
            action="append",
            metavar="HOST:PORT",
            help=text + " Repeatable.",
        )
    else:
        if field.default is not None:
            default = field.default
            text += (
                f" (default: {default:g})"
                if isinstance(default, float)
                else f" (default: {default})"
            )
        metavar = _METAVARS.get(kind, kind.upper())
        parser.add_argument(flag(field.name), dest=field.name, metavar=metavar, help=text)


_METAVARS = {
    "seconds": "SECONDS",
    "seconds_or_auto": "SECONDS",
    "count": "N",
    "workers": "N",
    "address": "HOST:PORT",
    "secret": "KEY",
    "http_parser": "PARSER",
    "log_level": "LEVEL",
    "log_format": "FORMAT",
    "membership_url": "URL",
}


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
    if reason is not None and isinstance(setting, str):
        return f"{flag(setting)} {exc.details.get('value')}: {reason}"
    return exc.message


def _local_lanes(text: str | None) -> dict[str, str]:
    """``--local-lanes address=path,...``: the Unix domain sockets of a worker's peers."""
    pairs = (item.partition("=") for item in (text or "").split(",") if item)
    return {address: path for address, _, path in pairs}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``towtruck`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    flags = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}
    worker = bool(args.listen_fds)  # started by a --workers supervisor
    configure_logging("warning")  # until the settings say: their own warnings show
    try:
        settings = Settings.load(flags=flags, environ=_environment(worker))
        factory = load_factory(args.factory)
    except SettingsError as exc:
        parser.exit(2, f"towtruck: error: {_one_line(exc)}\n")
    configure_logging(settings.log_level, settings.log_format)
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
