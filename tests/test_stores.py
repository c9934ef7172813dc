"""The contract every state store keeps, run against each backend: memory, an SQLite
file, a real redis-server and a real PostgreSQL (see ``tests/stores.py``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from towtruck.errors import SettingsError, StateConflict, StoreUnavailable
from towtruck.storage import Claim, Store, check_url, open_store
from towtruck.storage.base import bucket_of

from .stores import PostgresServer, RedisServer, postgres_server, redis_server

pytestmark = pytest.mark.parser_free

__all__ = ["postgres_server", "redis_server"]  # fixtures, used by name

STORE_SECONDS = 30
BACKENDS = ["memory", "sqlite", "redis", "postgres"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind = request.param
    if kind == "memory":
        url = "memory:"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    elif kind == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("postgres_server").url
    opened = await open_store(url, timeout=10)
    try:
        yield opened
    finally:
        await opened.aclose()


def unique(prefix: str = "a") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def test_a_first_claim_finds_epoch_one_and_no_states(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        assert await store.read(actor) == Claim(0, {})
        claim = await store.claim(actor)
        assert claim == Claim(1, {})
        assert (await store.claim(actor)).epoch == 2
        assert (await store.read(actor)).epoch == 2


async def test_writes_are_read_back_by_the_next_claim(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        epoch = (await store.claim(actor)).epoch
        etag = await store.write(actor, "state", b'{"n":1}', epoch=epoch, etag=None)
        etag2 = await store.write(actor, "state", b'{"n":2}', epoch=epoch, etag=etag)
        assert etag2 != etag
        await store.write(actor, "other", b"[]", epoch=epoch, etag=None)
        claim = await store.claim(actor)
        assert claim.epoch == epoch + 1
        assert {n: s.value for n, s in claim.states.items()} == {
            "state": b'{"n":2}',
            "other": b"[]",
        }
        assert claim.states["state"].etag == etag2


async def test_a_write_from_an_older_epoch_is_refused_even_with_the_current_etag(
    store: Store,
) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        old = (await store.claim(actor)).epoch
        etag = await store.write(actor, "state", b"1", epoch=old, etag=None)
        new = await store.claim(actor)  # a newer activation
        assert new.states["state"].etag == etag
        with pytest.raises(StateConflict) as caught:
            await store.write(actor, "state", b"2", epoch=old, etag=etag)
        assert caught.value.details["actor"] == actor
        with pytest.raises(StateConflict):
            await store.write(actor, "fresh", b"2", epoch=old, etag=None)
        with pytest.raises(StateConflict):
            await store.clear(actor, "state", epoch=old, etag=etag)
        found = await store.read(actor)
        assert found.epoch == new.epoch
        assert {n: s.value for n, s in found.states.items()} == {"state": b"1"}
        await store.write(actor, "state", b"3", epoch=new.epoch, etag=etag)
        assert (await store.read(actor)).states["state"].value == b"3"


async def test_a_write_with_a_stale_etag_is_refused(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        epoch = (await store.claim(actor)).epoch
        first = await store.write(actor, "state", b"1", epoch=epoch, etag=None)
        await store.write(actor, "state", b"2", epoch=epoch, etag=first)
        with pytest.raises(StateConflict):
            await store.write(actor, "state", b"3", epoch=epoch, etag=first)
        with pytest.raises(StateConflict):  # it exists: "must not exist" is stale too
            await store.write(actor, "state", b"3", epoch=epoch, etag=None)
        assert (await store.read(actor)).states["state"].value == b"2"


async def test_a_write_to_an_actor_never_claimed_is_refused(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        with pytest.raises(StateConflict):
            await store.write(actor, "state", b"1", epoch=1, etag=None)
        assert await store.read(actor) == Claim(0, {})


async def test_clear_removes_one_state_and_a_later_write_creates_it_again(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        epoch = (await store.claim(actor)).epoch
        etag = await store.write(actor, "a", b"1", epoch=epoch, etag=None)
        await store.write(actor, "b", b"2", epoch=epoch, etag=None)
        await store.clear(actor, "a", epoch=epoch, etag=etag)
        await store.clear(actor, "never", epoch=epoch, etag=None)
        assert set((await store.read(actor)).states) == {"b"}
        await store.write(actor, "a", b"5", epoch=epoch, etag=None)
        assert (await store.claim(actor)).states["a"].value == b"5"


async def test_values_keep_every_byte(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique("ünï-cødé ✓")
        epoch = (await store.claim(actor)).epoch
        value = '{"text":"ünï ✓ \\u0000 \\"q\\"","big":18446744073709551615}'.encode()
        large = b'"' + b"x" * 1_000_000 + b'"'
        await store.write(actor, "state", value, epoch=epoch, etag=None)
        await store.write(actor, "large", large, epoch=epoch, etag=None)
        states = (await store.read(actor)).states
        assert states["state"].value == value
        assert states["large"].value == large


async def test_ids_page_through_the_claimed_actors_in_order(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        prefix = unique("page")
        ids = [f"{prefix}-{i:03}" for i in range(25)]
        for actor in reversed(ids):
            await store.claim(actor)
        seen: list[str] = []
        cursor = prefix
        while len(seen) < len(ids):
            page = await store.ids(after=cursor, limit=10)
            assert page
            assert len(page) <= 10
            seen += [i for i in page if i.startswith(prefix)]
            cursor = page[-1]
        assert seen[: len(ids)] == ids


async def test_concurrent_claims_give_distinct_epochs_and_one_writer_wins(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        epochs: list[int] = []

        async def claim() -> None:
            epochs.append((await store.claim(actor)).epoch)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(claim)
        assert sorted(epochs) == list(range(1, 21))
        won = []
        for epoch in epochs:
            try:
                await store.write(actor, "state", str(epoch).encode(), epoch=epoch, etag=None)
            except StateConflict:
                continue
            won.append(epoch)
        assert won == [20]


async def test_many_writes_at_once_each_commit_or_conflict(store: Store) -> None:
    """Concurrent writes to many actors (an SQLite store commits them in groups)."""
    with trio.fail_after(STORE_SECONDS):
        actors = [unique() for _ in range(50)]
        epochs = {a: (await store.claim(a)).epoch for a in actors}
        etags: dict[str, str | None] = dict.fromkeys(actors)

        async def bump(actor: str, times: int) -> None:
            for n in range(times):
                etags[actor] = await store.write(
                    actor, "state", str(n).encode(), epoch=epochs[actor], etag=etags[actor]
                )

        async with trio.open_nursery() as nursery:
            for actor in actors:
                nursery.start_soon(bump, actor, 10)
        for actor in actors:
            assert (await store.read(actor)).states["state"].value == b"9"


async def test_a_cancelled_write_either_committed_or_did_not(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        epoch = (await store.claim(actor)).epoch
        landed = 0
        for n in range(30):
            found = (await store.read(actor)).states.get("state")
            with trio.move_on_after(0) if n % 2 else trio.CancelScope() as scope:
                await store.write(
                    actor, "state", str(n).encode(), epoch=epoch, etag=found.etag if found else None
                )
            after = (await store.read(actor)).states.get("state")
            if after is not None and after.value == str(n).encode():
                landed += 1
            else:
                assert scope.cancelled_caught
                assert after == found  # untouched, never torn
        assert landed >= 15


def test_urls_are_checked() -> None:
    for url in ("sqlite:///x.sqlite3", "sqlite:////tmp/x", "redis://h:1/0", "memory:"):
        assert check_url(url) == url
    for bad in ("mysql://h/db", "sqlite://", "nothing", ""):
        with pytest.raises(SettingsError):
            check_url(bad)


async def test_a_store_that_cannot_be_reached_answers_store_unavailable(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    from .stores import free_port

    with trio.fail_after(STORE_SECONDS):
        port = free_port()  # nothing listens there
        for url in (f"redis://127.0.0.1:{port}/0", f"postgresql://x@127.0.0.1:{port}/x"):
            store = await open_store(url, timeout=2)
            try:
                with pytest.raises(StoreUnavailable) as caught:
                    await store.claim("a")
                assert caught.value.status == 503
            finally:
                await store.aclose()


# Reminders.


async def test_reminders_are_set_listed_replaced_and_forgotten(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        first = await store.set_reminder(actor, "b", due=1000.5, period=60.0, data=b'{"x":1}')
        await store.set_reminder(actor, "a", due=2000.0, period=None, data=b"null")
        assert [row.name for row in await store.reminders(actor)] == ["a", "b"]
        assert await store.reminder(actor, "b") == first
        assert first.bucket == bucket_of(actor)
        again = await store.set_reminder(actor, "b", due=1500.25, period=None, data=b"[]")
        assert again.generation != first.generation
        assert again.tick_id != first.tick_id
        assert await store.reminder(actor, "b") == again
        assert await store.forget_reminder(actor, "b")
        assert not await store.forget_reminder(actor, "b")
        assert await store.reminder(actor, "b") is None
        assert [row.name for row in await store.reminders(actor)] == ["a"]
        assert await store.reminders(unique()) == []


async def test_due_reminders_come_from_the_buckets_asked_soonest_first(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        base = 1e9 + uuid.uuid4().int % 10**6  # apart from other tests' reminders
        actors = [unique() for _ in range(30)]
        for n, actor in enumerate(actors):
            await store.set_reminder(actor, "r", due=base + n, period=None, data=b"1")
        mine = {bucket_of(a) for a in actors[:10]}
        found = await store.due_reminders(sorted(mine), before=base + 20, limit=100)
        found = [row for row in found if row.actor in actors]
        expected = [a for a in actors[:20] if bucket_of(a) in mine]
        assert [row.actor for row in found] == expected
        assert [row.due for row in found] == sorted(row.due for row in found)
        limited = await store.due_reminders(sorted(mine), before=base + 20, limit=2)
        assert len(limited) <= 2


async def test_a_tick_is_marked_done_once_and_only_for_its_generation(store: Store) -> None:
    with trio.fail_after(STORE_SECONDS):
        actor = unique()
        row = await store.set_reminder(actor, "r", due=100.125, period=10.0, data=b"{}")
        done = dict(generation=row.generation, due=row.due, next_due=110.125)
        assert await store.reminder_done(actor, "r", **done)  # type: ignore[arg-type]
        assert not await store.reminder_done(actor, "r", **done)  # type: ignore[arg-type]
        moved = await store.reminder(actor, "r")
        assert moved is not None
        assert (moved.due, moved.generation, moved.data) == (110.125, row.generation, b"{}")
        replaced = await store.set_reminder(actor, "r", due=200.0, period=None, data=b"1")
        assert not await store.reminder_done(
            actor, "r", generation=row.generation, due=110.125, next_due=120.125
        )
        assert await store.reminder(actor, "r") == replaced
        assert await store.reminder_done(
            actor, "r", generation=replaced.generation, due=200.0, next_due=None
        )
        assert await store.reminder(actor, "r") is None
        assert not await store.reminder_done(
            actor, "r", generation=replaced.generation, due=200.0, next_due=None
        )
