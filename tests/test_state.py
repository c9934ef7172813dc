"""Persistent state seen from an actor: loading before activate, writing, autosave,
fencing against a newer activation, and a store that fails (see towtruck.state)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import towtruck
from examples import account
from towtruck.storage.memory import MemoryStore, memory_store

SECONDS = 30


def shared(name: str) -> tuple[MemoryStore, dict[str, Any]]:
    """A memory store of the process, and the settings that give it to a runtime."""
    return memory_store(name), {"state_store": f"memory://{name}"}


async def test_state_is_loaded_before_activate_and_survives_collection() -> None:
    seen: list[Any] = []

    class Counter:
        def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
            self.context = context
            self.state = context.persistent(default=lambda: {"n": 0})

        def activate(self) -> None:
            seen.append((self.context.epoch, self.state.exists, dict(self.state.value)))

        async def bump(self) -> int:
            self.state.value["n"] += 1
            await self.state.write()
            return int(self.state.value["n"])

    store, settings = shared("collection")
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Counter, **settings) as runtime:
            assert await runtime.client.invoke("c", "bump") == 1
            assert await runtime.client.invoke("c", "bump") == 2
            runtime.catalog.max_inactivity = 0
            assert await runtime.collect() == 1
            assert await runtime.client.invoke("c", "bump") == 3
    assert seen == [(1, False, {"n": 0}), (2, True, {"n": 2})]
    assert (await store.read("c")).states["state"].value == b'{"n":3}'


async def test_the_account_example_keeps_its_balance_across_runtimes(tmp_path: Any) -> None:
    settings = {"state_store": f"sqlite:///{tmp_path / 'state.sqlite3'}"}
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(account.create_actor, **settings) as runtime:
            await runtime.client.invoke("alice", "deposit", {"amount": 5})
            assert await runtime.client.invoke("alice", "deposit", {"amount": 2}) == {"balance": 7}
            with pytest.raises(towtruck.ActorError, match="insufficient funds"):
                await runtime.client.invoke("alice", "withdraw", {"amount": 8})
        async with towtruck.open_runtime(account.create_actor, **settings) as runtime:
            assert await runtime.client.invoke("alice", "balance") == {"balance": 7}
            assert await runtime.client.invoke("bob", "balance") == {}


async def test_a_two_parameter_factory_never_touches_the_store(tmp_path: Any) -> None:
    path = tmp_path / "never.sqlite3"
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(
            lambda id, client: {"ping": lambda: "pong"}, state_store=f"sqlite:///{path}"
        ) as runtime:
            assert await runtime.client.invoke("a", "ping") == "pong"
            assert runtime.store.opened is None
    assert not path.exists()


class Stale:
    """Keeps a list; ``add`` writes it."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.context = context
        self.state = context.persistent(default=list)

    async def add(self, item: str) -> list[str]:
        self.state.value.append(item)
        await self.state.write()
        return list(self.state.value)

    async def add_quietly(self, item: str) -> str:
        """Swallows the conflict: the call must fail all the same."""
        try:
            await self.add(item)
        except towtruck.StateConflict:
            return "swallowed"
        return "written"

    def epoch(self) -> int:
        return self.context.epoch


async def test_the_later_claim_wins_and_the_earlier_activation_is_dropped() -> None:
    store, settings = shared("fencing")
    with trio.fail_after(SECONDS):
        async with (
            towtruck.open_runtime(Stale, **settings) as first,
            towtruck.open_runtime(Stale, **settings) as second,
        ):
            assert await first.client.invoke("x", "add", "a") == ["a"]
            assert await second.client.invoke("x", "add", "b") == ["a", "b"]  # claims anew
            assert await second.client.invoke("x", "epoch") == 2
            with pytest.raises(towtruck.StateConflict) as caught:
                await first.client.invoke("x", "add", "stale")
            assert caught.value.status == 409
            assert "x" not in first.catalog  # dropped at once
            assert (await store.read("x")).states["state"].value == b'["a","b"]'
            # The next call on the first runtime claims afresh and sees the newer state.
            assert await first.client.invoke("x", "add", "c") == ["a", "b", "c"]
            assert await first.client.invoke("x", "epoch") == 3
            with pytest.raises(towtruck.StateConflict):
                await second.client.invoke("x", "add_quietly", "lost")
            assert "x" not in second.catalog
            assert (await store.read("x")).states["state"].value == b'["a","b","c"]'


async def test_calls_waiting_for_a_superseded_activation_run_on_a_fresh_one() -> None:
    store, settings = shared("waiting")
    release = trio.Event()

    class Slow(Stale):
        async def add(self, item: str) -> list[str]:
            await release.wait()
            return await super().add(item)

    with trio.fail_after(SECONDS):
        async with (
            towtruck.open_runtime(Slow, **settings) as first,
            towtruck.open_runtime(Stale, **settings) as second,
        ):
            assert await first.client.invoke("y", "epoch") == 1
            assert await second.client.invoke("y", "epoch") == 2
            outcomes: dict[str, str] = {}

            async def add(item: str) -> None:
                try:
                    await first.client.invoke("y", "add", item)
                except towtruck.StateConflict:
                    outcomes[item] = "conflict"
                else:
                    outcomes[item] = "added"

            async with trio.open_nursery() as nursery:
                for item in "abc":
                    nursery.start_soon(add, item)
                    await trio.testing.wait_all_tasks_blocked()
                release.set()
            # "a" ran on the stale activation and was refused; "b" and "c" had not
            # run: they ran on the fresh activation that replaced it.
            assert outcomes == {"a": "conflict", "b": "added", "c": "added"}
            assert await first.client.invoke("y", "epoch") == 3
            assert (await store.read("y")).states["state"].value == b'["b","c"]'


class Notes:
    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.notes = context.persistent("notes", default=list, autosave=True)
        self.count = context.persistent("count", default=0, autosave=True)
        self.manual = context.persistent("manual", default=None)

    def add(self, note: Any) -> int:
        self.notes.value.append(note)
        self.count.value += 1
        return int(self.count.value)

    def add_then_fail(self, note: str) -> None:
        self.notes.value.append(note)
        raise ValueError("changed my mind")

    def look(self) -> dict[str, Any]:
        return {
            "notes": self.notes.value,
            "count": self.count.value,
            "etags": [self.notes.etag, self.count.etag],
        }

    async def forget(self) -> None:
        await self.notes.clear()

    async def keep(self, value: Any) -> None:
        self.manual.value = value
        await self.manual.write()

    async def keep_set(self) -> None:
        self.manual.value = {"tags": {1, 2}}
        await self.manual.write()

    def add_set(self) -> None:
        self.notes.value.append({1})


async def test_autosave_writes_changed_states_and_puts_back_after_a_failed_turn() -> None:
    store, settings = shared("autosave")
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Notes, **settings) as runtime:
            call = runtime.client.invoke
            assert await call("n", "add", "one") == 1
            seen = await call("n", "look")
            assert await call("n", "look") == seen  # a turn that changed nothing wrote nothing
            with pytest.raises(towtruck.ActorError, match="changed my mind"):
                await call("n", "add_then_fail", "two")
            assert (await call("n", "look"))["notes"] == ["one"]
            assert await call("n", "add", "three") == 2
            stored = (await store.read("n")).states
            assert stored["notes"].value == b'["one","three"]'
            assert stored["count"].value == b"2"
            await call("n", "forget")
            assert "notes" not in (await store.read("n")).states
            assert (await call("n", "look"))["notes"] == []


async def test_a_value_that_is_not_json_is_refused_before_anything_is_stored() -> None:
    store, settings = shared("notjson")
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Notes, **settings) as runtime:
            call = runtime.client.invoke
            await call("j", "keep", ["fine"])
            with pytest.raises(towtruck.ActorError, match=r"cannot be stored as JSON") as caught:
                await call("j", "keep_set")
            assert caught.value.details["exception"] == "TypeError"
            assert "a set: use a list" in caught.value.message
            assert await call("j", "add", "ok") == 1
            with pytest.raises(towtruck.ActorError, match=r"state 'notes' .* cannot be stored"):
                await call("j", "add_set")  # autosave: refused, and put back
            assert (await call("j", "look"))["notes"] == ["ok"]
            stored = (await store.read("j")).states
            assert stored["manual"].value == b'["fine"]'
            assert stored["notes"].value == b'["ok"]'


async def test_a_store_that_is_down_fails_calls_with_503_and_the_node_keeps_serving() -> None:
    store, settings = shared("down")
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Notes, **settings) as runtime:
            call = runtime.client.invoke
            assert await call("d", "add", "one") == 1
            store.down = True
            with pytest.raises(towtruck.StoreUnavailable) as caught:
                await call("d", "add", "two")
            assert caught.value.status == 503
            assert (await call("d", "look"))["notes"] == ["one"]  # put back
            with pytest.raises(towtruck.StoreUnavailable):
                await call("fresh", "look")  # cannot claim: not activated
            assert "fresh" not in runtime.catalog
            store.down = False
            assert await call("d", "add", "two") == 2
            assert (await call("fresh", "look"))["count"] == 0
            assert (await store.read("d")).states["notes"].value == b'["one","two"]'


async def test_persistent_state_is_declared_in_the_factory_only_once_per_name() -> None:
    class Late:
        def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
            self.context = context
            self.state = context.persistent()

        def declare(self, name: str) -> None:
            self.context.persistent(name)

    _, settings = shared("late")
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Late, **settings) as runtime:
            with pytest.raises(towtruck.ActorError, match="in create_actor or __init__"):
                await runtime.client.invoke("l", "declare", "other")

    def twice(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> object:
        context.persistent("a")
        context.persistent("a")
        return {}

    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(twice, **settings) as runtime:
            with pytest.raises(towtruck.ActorError, match="already has a persistent state 'a'"):
                await runtime.client.invoke("t", "anything")
