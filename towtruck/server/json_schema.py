"""JSON Schema from Python type hints, for the OpenAPI document
(:mod:`towtruck.server.openapi`): the request and answer schemas of actor methods and
routes."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

__all__ = ["Schemas"]


class Schemas:
    """Turns type hints into JSON Schema: ``int``, ``float``, ``str``, ``bool``,
    ``None``, ``list[X]``, ``dict[str, X]``, ``X | Y``, ``Literal[...]``, and by name
    (in :attr:`named`, referred to with ``$ref``) ``TypedDict`` and dataclass types.
    Anything else has no schema at the top (None) and any value (``{}``) inside."""

    def __init__(self) -> None:
        #: The named schemas made so far, for ``components/schemas``.
        self.named: dict[str, dict[str, Any]] = {}
        self._names: dict[type, str] = {}

    def of(self, hint: object) -> dict[str, Any] | None:
        """The schema of values of type ``hint``, or None if it has none."""
        if hint is None or hint is type(None):
            return {"type": "null"}
        simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
        if isinstance(hint, type) and hint in simple:
            return {"type": simple[hint]}
        if hint in (list, dict):
            return {"type": "array" if hint is list else "object"}
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
        if origin is list and len(arguments) == 1:
            return {"type": "array", "items": self.of(arguments[0]) or {}}
        if origin is dict and len(arguments) == 2:
            values = self.of(arguments[1]) if arguments[0] is str else None
            return {"type": "object", "additionalProperties": values or {}}
        if origin is typing.Literal:
            plain = all(type(value) in (str, int, float, bool) for value in arguments)
            return {"enum": list(arguments)} if plain else None
        if origin in (typing.Union, types.UnionType):
            members = [self.of(argument) for argument in arguments]
            if all(member is not None for member in members):
                return {"anyOf": members}
            return None
        if isinstance(hint, type) and (typing.is_typeddict(hint) or dataclasses.is_dataclass(hint)):
            return {"$ref": f"#/components/schemas/{self._name(hint)}"}
        return None

    def _name(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is not None:
            return name
        name = cls.__name__
        while name in self.named:
            name = f"{cls.__module__}.{name}".replace(".", "_")
        self._names[cls] = name
        self.named[name] = {}  # taken before its fields: a type may refer to itself
        try:
            fields = typing.get_type_hints(cls)
        except Exception:
            fields = {}
        if typing.is_typeddict(cls):
            required = sorted(getattr(cls, "__required_keys__", ()))
        else:
            required = [
                field.name
                for field in dataclasses.fields(cls)
                if field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ]
            fields = {field.name: fields.get(field.name) for field in dataclasses.fields(cls)}
        schema: dict[str, Any] = {
            "title": cls.__name__,
            "type": "object",
            "properties": {key: self.of(hint) or {} for key, hint in fields.items()},
        }
        if required:
            schema["required"] = required
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            schema["description"] = inspect.cleandoc(cls.__doc__)
        self.named[name] = schema
        return name
