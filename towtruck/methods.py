"""What may be called on an actor from outside it, and how to call it.

An actor is whatever ``create_actor(id, client)`` returns: an object, whose public
methods are callable, or a mapping of names to callables (the Node project's style).
Only public names are callable: nothing starting with ``_``, never the hooks
``activate``, ``deactivate`` and ``receive_reminder``, and for objects only functions defined on the class,
so instance attributes, properties and inherited dunders never answer a call. Tables
of class methods are built once per class and shared by its actors.
"""

from __future__ import annotations

import dis
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["HOOKS", "Method", "class_methods", "hook", "is_public", "methods_of"]

#: Hooks: called by towtruck, never callable from outside.
HOOKS: Final = frozenset({"activate", "deactivate", "receive_reminder"})

_POSITIONAL: Final = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)


class Method:
    """One callable method of an actor.

    Attributes:
        name: The name callers use.
        function: The function itself (unbound, for methods of a class).
        bound: Pass the actor object as the first argument.
        takes_data: Pass the call's data (``def ping(self)`` takes none).
        is_async: Calling it returns a coroutine to await.
        may_suspend: Its coroutine may wait (it has an ``await``, ``async for`` or
            ``async with``); an ``async def`` without any runs to the end in one step.
        one_step: An ``async def`` that cannot wait: it runs to the end in one step.
    """

    __slots__ = ("bound", "function", "is_async", "may_suspend", "name", "one_step", "takes_data")

    def __init__(self, name: str, function: Callable[..., Any], *, bound: bool) -> None:
        self.name = name
        self.function = function
        self.bound = bound
        self.takes_data = _takes_data(function, bound=bound)
        self.is_async = inspect.iscoroutinefunction(function)
        self.may_suspend = self.is_async and _may_suspend(function)
        self.one_step = self.is_async and not self.may_suspend

    def call(self, instance: object, data: Any) -> Any:
        """Call it: the result, or for an async method the coroutine to await."""
        if self.bound:
            return self.function(instance, data) if self.takes_data else self.function(instance)
        return self.function(data) if self.takes_data else self.function()


def methods_of(instance: object) -> Mapping[str, Method]:
    """The callable methods of an actor object or mapping, by name.

    Raises:
        TypeError: ``instance`` is not something an actor can be (None, a string...).
    """
    if isinstance(instance, Mapping):
        return {
            name: Method(name, value, bound=False)
            for name, value in instance.items()
            if isinstance(name, str) and is_public(name) and callable(value)
        }
    if instance is None or isinstance(instance, (str, bytes, int, float, bool)):
        raise TypeError(
            f"create_actor returned {instance!r}: return an object with methods, "
            "or a mapping of names to callables"
        )
    cls = type(instance)
    table = _CLASS_TABLES.get(cls)
    if table is None:
        table = _CLASS_TABLES[cls] = class_methods(cls)
    return table


def hook(instance: object, name: str) -> Callable[[], Any] | None:
    """The actor's ``activate`` or ``deactivate`` hook, if it has one."""
    value = instance.get(name) if isinstance(instance, Mapping) else getattr(instance, name, None)
    return value if callable(value) else None


_CLASS_TABLES: weakref.WeakKeyDictionary[type, Mapping[str, Method]] = weakref.WeakKeyDictionary()


def class_methods(cls: type) -> Mapping[str, Method]:
    """The callable methods of a class's actors, by name (a new table: actors share
    the one :func:`methods_of` keeps per class)."""
    table: dict[str, Method] = {}
    for name in dir(cls):
        if not is_public(name):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, staticmethod):
            table[name] = Method(name, attr.__func__, bound=False)
        elif inspect.isfunction(attr):
            table[name] = Method(name, attr, bound=True)
    return table


def is_public(name: str) -> bool:
    """Whether ``name`` may be called from outside: an identifier, not private, not
    a hook."""
    return name.isidentifier() and not name.startswith("_") and name not in HOOKS


# Opcodes through which a coroutine can give control back to the event loop, across
# CPython 3.11 to 3.13. A coroutine function whose own code has none of them (no
# ``await``, ``async for`` or ``async with``) cannot suspend: calling ``send(None)`` on
# its coroutine runs it to the end.
_SUSPENDING_OPCODES: Final = frozenset(
    {"GET_AWAITABLE", "SEND", "YIELD_VALUE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH"}
)


def _may_suspend(function: Callable[..., Any]) -> bool:
    code = getattr(function, "__code__", None)
    if code is None or not code.co_flags & inspect.CO_COROUTINE:
        return True  # not a plain ``async def``: assume it may
    return any(op.opname in _SUSPENDING_OPCODES for op in dis.get_instructions(code))


def _takes_data(function: Callable[..., Any], *, bound: bool) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it does
        return True
    positional = sum(p.kind in _POSITIONAL for p in parameters)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return variadic or positional > int(bound)
