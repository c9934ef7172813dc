"""``/openapi.json`` and ``/docs``: the document is valid OpenAPI 3.1, lists every route
the node answers and nothing it does not, describes the actor's methods without
calling ``create_actor``, and names the errors of the table by status."""

from __future__ import annotations

import abc
import dataclasses
import functools
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypedDict

import httpx
import pytest
import trio
from openapi_spec_validator import OpenAPIV31SpecValidator

import towtruck
from tests.actors import create_fuzzed
from tests.helpers import NETWORK_TEST_SECONDS
from towtruck.errors import STATUS, status_of
from towtruck.methods import methods_of
from towtruck.server import app as server_app
from towtruck.server import openapi
from towtruck.server.routes import _CLUSTER_ROUTES, Routes, build_routes


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    """A box at a point."""

    corner: Point
    size: float = 1.0
    tags: list[str] = dataclasses.field(default_factory=list)


class Typed:
    """An actor whose methods are annotated."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id

    async def activate(self) -> None:
        pass

    async def move(self, data: Point) -> Point:
        """Move by ``data``."""
        return {"x": data["x"] + 1, "y": data["y"]}

    def count(self, data: list[int]) -> int:
        return len(data)

    def scale(self, data: dict[str, float]) -> Box:
        return Box({"x": 0, "y": 0}, size=data.get("by", 1.0))

    async def maybe(self, data: str | None) -> bool:
        return data is not None

    def untyped(self, data):  # type: ignore[no-untyped-def]
        return data

    async def ping(self) -> str:
        return "pong"

    def _private(self, data: Any) -> None:
        pass


#: The ids ``create_typed`` was called with.
CREATED: list[str] = []


def create_typed(id: str, client: towtruck.Client) -> Typed:
    CREATED.append(id)
    return Typed(id, client)


@pytest.fixture
async def node() -> AsyncIterator[towtruck.Node]:
    CREATED.clear()
    async with towtruck.open_node(create_typed, state_store="memory:") as node:
        yield node


async def fetch_document(http: httpx.AsyncClient, node: towtruck.Node) -> dict[str, Any]:
    response = await http.get(f"{node.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def openapi_path(rule: str) -> str:
    """A Werkzeug rule (``/a/<path:b>``) as an OpenAPI path (``/a/{b}``)."""
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule)


async def test_the_document_is_valid_openapi_3_1(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
    OpenAPIV31SpecValidator(document).validate()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == towtruck.__version__


async def test_the_document_is_made_without_calling_create_actor_and_made_once(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        first = await http.get(f"{node.url}/openapi.json")
        second = await http.get(f"{node.url}/openapi.json")
    assert CREATED == []
    assert first.content == second.content
    described = openapi.ApiDocument(
        build_routes(node.runtime), node.runtime, Routes(node.runtime), _CLUSTER_ROUTES
    )
    assert described.json() is described.json()


async def test_every_route_the_node_answers_is_in_the_document(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
        # Quart's static rule is left out: towtruck has no static folder.
        static = await http.get(f"{node.url}/static/dashboard.js")
    assert static.status_code == 404
    assert static.json()["error"]["type"] == "RouteNotFound"
    paths = document["paths"]
    routes = build_routes(node.runtime)
    for rule in routes.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for verb in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert verb.lower() in paths[openapi_path(rule.rule)], (verb, rule.rule)
    methods = methods_of(create_typed("probe", node.client))
    assert sorted(methods) == ["count", "maybe", "move", "ping", "scale", "untyped"]
    for name in methods:
        for verb in server_app.CALL_VERBS:
            assert verb.lower() in paths[f"/invoke/{{id}}/{name}"], (verb, name)
    assert "post" in paths["/cluster/forward"]


#: A value for each path parameter the routes have, and the body a POST sends.
EXAMPLES = {"actor_id": "a", "id": "a", "name": "r", "rest": "x/y", "address": "nohost"}


async def test_every_path_in_the_document_is_answered_by_the_node(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
        asked = 0
        for path, item in document["paths"].items():
            url = node.url + re.sub(r"{(\w+)}", lambda m: EXAMPLES[m[1]], path)
            for verb in ("get", "post", "put", "patch", "delete"):
                if verb not in item:
                    continue
                body = b"{}" if "requestBody" in item[verb] else None
                # Streamed, so that /dashboard/events is left after its head.
                async with http.stream(verb.upper(), url, content=body) as response:
                    status = response.status_code
                    if status in (404, 405):
                        await response.aread()
                        error = response.json()["error"]
                        assert status != 405, (verb, path, error)
                        assert error["type"] != "RouteNotFound", (verb, path, error)
                asked += 1
    assert asked >= 60


async def test_each_method_has_a_path_with_schemas_from_its_annotations(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
    paths = document["paths"]
    assert not any(path.startswith("/invoke/{id}/_") for path in paths)
    assert "/invoke/{id}/activate" not in paths
    assert "/invoke/{id}/{method}" not in paths

    def request(name: str) -> Any:
        return paths[f"/invoke/{{id}}/{name}"]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]

    def answer(name: str) -> Any:
        return paths[f"/invoke/{{id}}/{name}"]["get"]["responses"]["200"]["content"][
            "application/json"
        ]["schema"]

    assert request("move") == answer("move") == {"$ref": "#/components/schemas/Point"}
    assert request("count") == {"type": "array", "items": {"type": "integer"}}
    assert answer("count") == {"type": "integer"}
    assert request("scale") == {"type": "object", "additionalProperties": {"type": "number"}}
    assert answer("scale") == {"$ref": "#/components/schemas/Box"}
    assert request("maybe") == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert request("untyped") == answer("untyped") == {}
    assert "requestBody" not in paths["/invoke/{id}/ping"]["post"]
    assert "Move by `data`." in paths["/invoke/{id}/move"]["post"]["description"]
    schemas = document["components"]["schemas"]
    assert schemas["Point"]["required"] == ["x", "y"]
    assert schemas["Box"]["properties"]["corner"] == {"$ref": "#/components/schemas/Point"}
    assert schemas["Box"]["required"] == ["corner"]
    assert schemas["Box"]["description"] == "A box at a point."


def test_an_actor_whose_class_cannot_be_known_gets_the_generic_invoke_path() -> None:
    app = server_app.App(create_fuzzed)
    document = openapi.describe(
        app.routes, create_fuzzed, Routes(app.runtime), cluster_routes=_CLUSTER_ROUTES
    )
    OpenAPIV31SpecValidator(document).validate()
    invoke = [path for path in document["paths"] if path.startswith("/invoke/")]
    assert invoke == ["/invoke/{id}/{method}"]
    names = [p["name"] for p in document["paths"]["/invoke/{id}/{method}"]["parameters"]]
    assert {"id", "method"} <= set(names)


class Shape(Protocol):
    def area(self, data: Any) -> float: ...


class Abstract(abc.ABC):
    @abc.abstractmethod
    def area(self, data: Any) -> float: ...


def annotated(id: str, client: towtruck.Client) -> Typed:
    return Typed(id, client)


def unannotated(id, client):  # type: ignore[no-untyped-def]
    return Typed(id, client)


def returns_mapping(id: str, client: towtruck.Client) -> dict[str, Any]:
    return {}


def returns_union(id: str, client: towtruck.Client) -> Typed | Box:
    return Typed(id, client)


def returns_protocol(id: str, client: towtruck.Client) -> Shape:
    raise NotImplementedError


def returns_abstract(id: str, client: towtruck.Client) -> Abstract:
    raise NotImplementedError


def returns_object(id: str, client: towtruck.Client) -> object:
    return Typed(id, client)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (Typed, Typed),
        (annotated, Typed),
        (unannotated, None),
        (returns_mapping, None),
        (returns_union, None),
        (returns_protocol, None),
        (returns_abstract, None),
        (returns_object, None),
        (functools.partial(annotated), None),
    ],
)
def test_the_actor_class_is_the_factory_or_its_return_annotation(
    factory: Any, expected: type | None
) -> None:
    assert openapi.actor_class(factory) is expected


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (list, {"type": "array"}),
        (dict, {"type": "object"}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (list[Any], {"type": "array", "items": {}}),
        (
            list[list[bool]],
            {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}},
        ),
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (dict[int, int], {"type": "object", "additionalProperties": {}}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Literal["a", "b"], {"enum": ["a", "b"]}),
        (Literal[b"a"], None),
        (Any, None),
        (set[int], None),
        (int | set[int], None),
        (Typed, None),
    ],
)
def test_type_hints_become_json_schema(hint: Any, schema: dict[str, Any] | None) -> None:
    assert openapi.Schemas().of(hint) == schema


def test_a_named_type_that_refers_to_itself_is_described_once() -> None:
    schemas = openapi.Schemas()
    assert schemas.of(list[Tree]) == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Tree"},
    }
    assert schemas.named["Tree"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Tree"},
    }


@dataclasses.dataclass
class Tree:
    children: list[Tree]


async def test_the_errors_name_every_type_of_the_table_by_status(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
    responses = document["components"]["responses"]
    for status in set(STATUS.values()):
        schema = responses[f"Error{status}"]["content"]["application/json"]["schema"]
        names = schema["allOf"][1]["properties"]["error"]["properties"]["type"]["enum"]
        assert sorted(names) == sorted(c.__name__ for c in STATUS if status_of(c) == status)
    assert responses["Error503"]["headers"]["retry-after"]["schema"]["const"] == "1"
    move = document["paths"]["/invoke/{id}/move"]["post"]["responses"]
    assert {"400", "404", "500", "503", "504", "508", "default"} <= set(move)
    ready = document["paths"]["/ready"]["get"]["responses"]
    assert "503" in ready  # named in the handler's Raises: section


async def test_the_cluster_routes_declare_the_cluster_key(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        document = await fetch_document(http, node)
    scheme = document["components"]["securitySchemes"]["clusterKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "towtruck-cluster-key"}
    for path, item in document["paths"].items():
        keyed = path.startswith((*_CLUSTER_ROUTES, "/dashboard/data", "/dashboard/events"))
        for verb, operation in item.items():
            if verb == "parameters":
                continue
            assert ("security" in operation) == keyed, (verb, path)


async def test_the_docs_page_is_served_from_the_package(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        page = await http.get(f"{node.url}/docs")
        script = await http.get(f"{node.url}/docs/docs.js")
        sheet = await http.get(f"{node.url}/docs/docs.css")
    assert page.status_code == script.status_code == sheet.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert sheet.headers["content-type"] == "text/css; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="docs/docs.js"' in page.text
    assert 'fetch("openapi.json"' in script.text
    assert "innerHTML" not in script.text  # text from actors' code goes in as text


def test_the_call_verbs_agree_with_the_app() -> None:
    assert {verb.upper() for verb in openapi._CALL_VERBS} == server_app.CALL_VERBS
