"""``GET /openapi.json``: the node's HTTP surface as an OpenAPI 3.1 document, made from
what the node serves rather than written by hand, and ``GET /docs``, a page that shows it.

Where each part comes from:

- The Quart-Trio routes: the app's ``url_map``, one path per rule and one operation per
  verb (``HEAD`` and ``OPTIONS``, which Werkzeug answers for every route, are left
  out). Each operation's text is its handler's docstring (the :class:`Routes` method of
  the same name), its 200 schema the handler's return annotation, and the errors it
  lists those its docstring's ``Raises:`` section names. Quart's own ``static`` rule is
  left out: towtruck has no static folder, so it never answers anything but 404.
- The fast routes answered outside Quart (:mod:`towtruck.server.app`):
  ``/invoke/{id}/{method}`` and ``POST /cluster/forward``. The lane upgrade
  (``GET /cluster/lane`` with ``Upgrade: towtruck-lane``) is left out: it is a switch
  to another protocol, answered only by towtruck's own server (never under Hypercorn),
  which OpenAPI cannot describe past the 101.
- The actor's methods: one ``/invoke/{id}/{method}`` path per public method, when the
  actor class can be known without calling ``create_actor`` (see
  :func:`actor_class`); otherwise the one generic path. A method's request schema comes
  from its data parameter's type hint, its response schema from its return annotation
  (see :class:`Schemas`).
- Errors: one shared schema (``{"error": {"type", "message", ...}}``), and one response
  per status of :data:`towtruck.errors.STATUS`, naming the error types that answer
  with it.
- Security: the routes that need the cluster key when the node has one (those that
  ``build_routes`` checks, and the dashboard's data) declare the key's header.

The document does not change while the node serves, so :class:`ApiDocument` makes it on
the first request and keeps its bytes.
"""

from __future__ import annotations

import http
import importlib.resources
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .. import __version__, codec
from ..cluster.wire import CLUSTER_KEY_HEADER, FORWARD_PATH
from ..errors import STATUS, TowtruckError, status_of
from ..methods import Method, class_methods
from .json_schema import Schemas

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..catalog import Factory
    from ..runtime import Runtime

__all__ = ["DOCS_HEADERS", "ApiDocument", "Schemas", "actor_class", "describe", "docs_asset"]

OPENAPI_VERSION: Final = "3.1.0"
#: Verbs that call an actor's method (``towtruck.server.app.CALL_VERBS``; a test
#: checks they agree) and those of them whose JSON body is the data.
_CALL_VERBS: Final = ("get", "post", "put", "patch", "delete")
_BODY_VERBS: Final = frozenset({"post", "put", "patch"})
#: Verbs Werkzeug answers on every route by itself: not operations of their own.
_IMPLIED_VERBS: Final = frozenset({"HEAD", "OPTIONS"})
#: Routes outside ``build_routes``' cluster prefixes that check the cluster key too.
_KEYED_ENDPOINTS: Final = frozenset({"dashboard_data", "dashboard_events"})
#: Handlers whose name is not their endpoint's.
_HANDLER_NAMES: Final = {"actor_reminders": "reminders"}
#: Statuses a call of an actor can never answer: the cluster key is not asked, and a
#: verb that does not call answers outside the documented operations.
_NOT_FROM_CALLS: Final = frozenset({401, 403, 405})
#: Answers that are not JSON, by path.
_MEDIA: Final = {
    "/metrics": "text/plain",
    "/dashboard": "text/html",
    "/dashboard/dashboard.css": "text/css",
    "/dashboard/dashboard.js": "text/javascript",
    "/dashboard/events": "text/event-stream",
    "/docs": "text/html",
    "/docs/docs.css": "text/css",
    "/docs/docs.js": "text/javascript",
}
#: What routes without a handler docstring answer.
_TEXT: Final = {
    "dashboard_page": "The dashboard: a live page of the cluster.",
    "dashboard_css": "The dashboard's style sheet.",
    "dashboard_js": "The dashboard's script.",
    "dashboard_data": "The dashboard's view of the cluster, as JSON.",
    "dashboard_events": "The dashboard's view as server-sent events, one a second.",
    "openapi": "This document.",
    "docs": "A page that shows this document (its style sheet and script).",
}
#: Query parameters, by endpoint: read by the route functions, not declared anywhere.
_QUERY: Final[dict[str, list[tuple[str, str, dict[str, Any]]]]] = {
    "metrics": [("worker", "Any value: this worker's figures only.", {"type": "string"})],
    "actors": [
        ("limit", "Most actors in the page.", {"type": "integer", "minimum": 1}),
        ("after", "List ids after this one (the last page's `next`).", {"type": "string"}),
        ("cluster", "Any value: list every live node's actors.", {"type": "string"}),
    ],
    "actor": [("here", "Any value: look on this node only.", {"type": "string"})],
    "getbloom": [
        ("since", "A filter version: `unchanged` if it is still that.", {"type": "string"}),
        ("fresh", "Any value: take the filter now, not a cached one.", {"type": "string"}),
    ],
}
_ENVELOPE: Final = {
    "type": "object",
    "required": ["id", "method"],
    "properties": {
        "id": {"type": "string"},
        "method": {"type": "string"},
        "data": {},
        "chain": {"type": "array", "items": {"type": "string"}},
        "timeout": {"type": "number"},
        "hops": {"type": "integer"},
        "existing": {"type": "boolean"},
        "hook": {"type": "boolean"},
    },
}
_RULE_ARGUMENT: Final = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTED: Final = {"int": {"type": "integer"}, "float": {"type": "number"}}


class ApiDocument:
    """A node's OpenAPI document, made on first use and kept (it does not change while
    the node serves: the routes are fixed once ``build_routes`` returns).

    Args:
        app: The node's Quart-Trio app, its routes all added.
        runtime: The node's runtime (its actors' factory).
        handlers: The object whose methods answer the routes, for their docstrings and
            return annotations.
        cluster_routes: Path prefixes that need the cluster key.
    """

    def __init__(
        self, app: QuartTrio, runtime: Runtime, handlers: object, cluster_routes: Iterable[str]
    ) -> None:
        self._app = app
        self._runtime = runtime
        self._handlers = handlers
        self._cluster_routes = tuple(cluster_routes)
        self._json: bytes | None = None

    def json(self) -> bytes:
        """The document as JSON bytes. Not a checkpoint."""
        if self._json is None:
            # The catalog keeps the factory private; this is the one place read from.
            factory = self._runtime.catalog.factory
            document = describe(
                self._app, factory, self._handlers, cluster_routes=self._cluster_routes
            )
            self._json = codec.dumps(document)
        return self._json


def describe(
    app: QuartTrio, factory: Factory, handlers: object, *, cluster_routes: tuple[str, ...]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a node serving ``app`` and actors made by ``factory``
    (see the module's docstring). Calls nothing of the actors'."""
    schemas = Schemas()
    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if rule.endpoint == "static":
            continue
        path, parameters = _path_of(rule.rule)
        handler = getattr(handlers, _HANDLER_NAMES.get(rule.endpoint, rule.endpoint), None)
        keyed = path.startswith(cluster_routes) or rule.endpoint in _KEYED_ENDPOINTS
        for verb in sorted((rule.methods or set()) - _IMPLIED_VERBS):
            operation = _route_operation(path, rule.endpoint, handler, schemas, keyed=keyed)
            operation["operationId"] = _unique(ids, f"{rule.endpoint}_{verb.lower()}")
            if parameters:
                operation["parameters"] = parameters + operation.get("parameters", [])
            paths.setdefault(path, {})[verb.lower()] = operation
    for path, item in _invoke_paths(factory, schemas, ids).items():
        paths[path] = item
    paths[FORWARD_PATH.decode()] = {"post": _forward_operation()}
    cls = actor_class(factory)
    served = f"`{cls.__qualname__}`" if cls is not None else "an actor whose class is not known"
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "towtruck node",
            "version": __version__,
            "description": (
                f"A towtruck node serving {served}. Every error answer is JSON,"
                ' `{"error": {"type", "message", ...}}`, with the status its type has.'
            ),
        },
        "tags": [
            {"name": "actors", "description": "Calls of the actors' methods."},
            {"name": "node", "description": "This node's own routes."},
            {"name": "cluster", "description": "Routes for the cluster's nodes and admins."},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA, **dict(sorted(schemas.named.items()))},
            "responses": _error_responses(),
            "securitySchemes": {
                "clusterKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": CLUSTER_KEY_HEADER,
                    "description": "The cluster key, when the node is served with one.",
                }
            },
        },
    }


def actor_class(factory: Factory) -> type | None:
    """The class of the actors ``factory`` makes, if it can be known without calling it.

    The rule: ``factory`` is itself a class, or its return annotation names one. The
    class must be concrete: not ``object``, not a mapping, not a ``Protocol`` or an
    abstract class (the factory may then return a subclass with other methods). A
    factory returning a mapping, a union, ``Any`` or nothing annotated gives None, and
    the document then has the one generic ``/invoke/{id}/{method}`` path. The
    annotation is trusted: a factory that names a class and returns another is
    described wrongly.
    """
    cls: object = factory
    if not inspect.isclass(factory):
        try:
            cls = typing.get_type_hints(factory).get("return")
        except Exception:  # a partial, a callable object, a name that does not resolve
            return None
    if (
        not isinstance(cls, type)
        or cls is object
        or issubclass(cls, Mapping)
        or getattr(cls, "_is_protocol", False)
        or inspect.isabstract(cls)
    ):
        return None
    return cls


def docs_asset(path: str) -> tuple[bytes, str]:
    """The file ``/docs`` serves at ``path`` (``/docs``, ``/docs/docs.css`` or
    ``/docs/docs.js``) and its content type."""
    name = "docs.html" if path == "/docs" else path.removeprefix("/docs/")
    if name not in _DOCS_FILES:
        raise KeyError(path)
    body = _DOCS_FILES[name]
    if body is None:
        folder = importlib.resources.files(__package__ or "towtruck.server") / "static" / "docs"
        body = _DOCS_FILES[name] = (folder / name).read_bytes()
    return body, _MEDIA[path] + "; charset=utf-8"


_DOCS_FILES: dict[str, bytes | None] = {"docs.html": None, "docs.css": None, "docs.js": None}
#: The headers of the docs page's files: its script is its own, and it frames nothing.
DOCS_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def _path_of(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Werkzeug rule as an OpenAPI path, and its path parameters."""
    parameters = []
    for converter, name in _RULE_ARGUMENT.findall(rule):
        parameter: dict[str, Any] = {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _CONVERTED.get(converter, {"type": "string"}),
        }
        if converter == "path":
            parameter["description"] = "May hold `/`."
        parameters.append(parameter)
    return _RULE_ARGUMENT.sub(r"{\2}", rule), parameters


def _route_operation(
    path: str,
    endpoint: str,
    handler: Callable[..., Any] | None,
    schemas: Schemas,
    *,
    keyed: bool,
) -> dict[str, Any]:
    """One verb of a Quart-Trio route."""
    text = inspect.getdoc(handler) if handler is not None else None
    media = _MEDIA.get(path, "application/json")
    content: dict[str, Any] = {}
    if media == "application/json":
        content["schema"] = _return_schema(handler, schemas) or {}
    description = _prose(text or _TEXT.get(endpoint, ""))
    operation: dict[str, Any] = {
        "tags": ["cluster" if keyed else "node"],
        "summary": _first_line(description),
        "description": description,
        "responses": {"200": {"description": "OK", "content": {media: content}}},
    }
    raised = [status_of(cls) for cls in _raised(text or "")]
    if keyed:
        operation["security"] = [{"clusterKey": []}]
        raised += [401, 403]
    if "{" in path:
        raised.append(400)
    _add_errors(operation, [*raised, 500])
    if endpoint == "heartbeat":
        operation["requestBody"] = _json_body({"type": "object"}, "The sender's view.")
    query = _QUERY.get(endpoint)
    if query:
        operation["parameters"] = [
            {"name": name, "in": "query", "description": text, "schema": schema}
            for name, text, schema in query
        ]
    return operation


def _invoke_paths(factory: Factory, schemas: Schemas, ids: set[str]) -> dict[str, Any]:
    """The ``/invoke`` paths: one per method of the actor class, or the generic one."""
    cls = actor_class(factory)
    methods = class_methods(cls) if cls is not None else None
    if not methods:
        method = {"name": "method", "in": "path", "required": True, "schema": {"type": "string"}}
        item = _invoke_item(None, schemas, ids)
        item["parameters"].append(method)
        return {"/invoke/{id}/{method}": item}
    return {
        f"/invoke/{{id}}/{name}": _invoke_item(methods[name], schemas, ids)
        for name in sorted(methods)
    }


def _invoke_item(method: Method | None, schemas: Schemas, ids: set[str]) -> dict[str, Any]:
    """The path item of ``/invoke/{id}/{method}``, for one method or any."""
    hints = _hints(method.function) if method is not None else {}
    data = _data_parameter(method) if method is not None else None
    data_schema = schemas.of(hints[data]) if data in hints else None
    answer = schemas.of(hints["return"]) if "return" in hints else None
    text = _prose(inspect.getdoc(method.function) or "") if method is not None else ""
    item: dict[str, Any] = {
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "towtruck-timeout",
                "in": "header",
                "description": "Seconds the caller waits: the call's deadline, if sooner.",
                "schema": {"type": "number", "exclusiveMinimum": 0},
            },
        ]
    }
    name = method.name if method is not None else "method"
    for verb in _CALL_VERBS:
        if verb in _BODY_VERBS:
            how = "The JSON body is the method's data."
        else:
            how = (
                "The data is the list of the path segments after the method"
                " (`/invoke/{id}/{method}/{arg}/...`), as strings."
            )
        operation: dict[str, Any] = {
            "tags": ["actors"],
            "summary": _first_line(text) or f"Call the actor's `{name}` method.",
            "operationId": _unique(ids, f"invoke_{name}_{verb}"),
            "description": "\n\n".join(part for part in (text, how) if part),
            "responses": {
                "200": {
                    "description": "What the method returned.",
                    "content": {"application/json": {"schema": answer or {}}},
                }
            },
        }
        if verb in _BODY_VERBS and (method is None or method.takes_data):
            operation["requestBody"] = _json_body(data_schema or {}, "The method's data.")
        _add_errors(operation, set(STATUS.values()) - _NOT_FROM_CALLS)
        item[verb] = operation
    return item


def _forward_operation() -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["cluster"],
        "operationId": "cluster_forward_post",
        "summary": "A call another node forwards.",
        "description": (
            "A call another node forwards, with its context (a node with a lane to this"
            " one sends it on the lane instead)."
        ),
        "security": [{"clusterKey": []}],
        "requestBody": _json_body(_ENVELOPE, "The call's envelope."),
        "responses": {
            "200": {
                "description": "What the method returned.",
                "content": {"application/json": {"schema": {}}},
            }
        },
    }
    _add_errors(operation, set(STATUS.values()) - {405})
    return operation


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _add_errors(operation: dict[str, Any], statuses: Iterable[int]) -> None:
    responses = operation["responses"]
    for status in sorted(set(statuses)):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}


_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "description": "The error's class in towtruck."},
                "message": {"type": "string"},
                "traceback": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Only from a node in debug mode.",
                },
            },
            "additionalProperties": True,
        }
    },
}


def _error_responses() -> dict[str, Any]:
    """One response per status of the error table, with the types that answer it."""
    by_status: dict[int, list[type[TowtruckError]]] = {}
    for cls in STATUS:
        by_status.setdefault(status_of(cls), []).append(cls)
    responses: dict[str, Any] = {
        "Error": {
            "description": "An error of towtruck's table.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    }
    for status, classes in sorted(by_status.items()):
        classes.sort(key=lambda cls: cls.__name__)
        lines = [f"- `{cls.__name__}`: {_first_line(cls.__doc__)}" for cls in classes]
        schema = {
            "allOf": [
                {"$ref": "#/components/schemas/Error"},
                {
                    "properties": {
                        "error": {
                            "properties": {"type": {"enum": [cls.__name__ for cls in classes]}}
                        }
                    }
                },
            ]
        }
        response: dict[str, Any] = {
            "description": f"{http.HTTPStatus(status).phrase}:\n\n" + "\n".join(lines),
            "content": {"application/json": {"schema": schema}},
        }
        shared = set.intersection(*(set(cls.headers) for cls in classes))
        if shared:
            response["headers"] = {
                name.decode(): {"schema": {"type": "string", "const": value.decode()}}
                for name, value in sorted(shared)
            }
        responses[f"Error{status}"] = response
    return responses


def _raised(text: str) -> list[type[TowtruckError]]:
    """The error classes a Google-style ``Raises:`` section names."""
    by_name = {cls.__name__: cls for cls in STATUS}
    section = text.partition("Raises:")[2]
    return [by_name[name] for name in re.findall(r"^\s+(\w+):", section, re.M) if name in by_name]


def _return_schema(function: Callable[..., Any] | None, schemas: Schemas) -> dict[str, Any] | None:
    hints = _hints(function) if function is not None else {}
    return schemas.of(hints["return"]) if "return" in hints else None


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # a name that does not resolve: no schemas, rather than no document
        return {}


def _data_parameter(method: Method) -> str | None:
    """The name of the parameter that takes a method's data, if it takes it."""
    if not method.takes_data:
        return None
    try:
        parameters = list(inspect.signature(method.function).parameters)
    except (TypeError, ValueError):
        return None
    index = int(method.bound)
    return parameters[index] if len(parameters) > index else None


def _unique(ids: set[str], wanted: str) -> str:
    name, number = wanted, 1
    while name in ids:
        number += 1
        name = f"{wanted}_{number}"
    ids.add(name)
    return name


def _first_line(text: str | None) -> str:
    return _markdown(inspect.cleandoc(text or "").partition("\n\n")[0].replace("\n", " "))


def _prose(docstring: str) -> str:
    """A docstring without its Google-style sections, as Markdown."""
    paragraphs = docstring.split("\n\n")
    kept = [p for p in paragraphs if not p.startswith(_SECTIONS)]
    return _markdown("\n\n".join(kept))


_SECTIONS: Final = ("Args:", "Raises:", "Returns:", "Attributes:", "Yields:")


def _markdown(text: str) -> str:
    """A docstring's reStructuredText literals and roles as Markdown code."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")
