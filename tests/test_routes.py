"""The routes' handlers one by one, without HTTP (the HTTP behaviour of each route is
in test_app.py and test_cluster.py)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import towtruck
from tests.actors import create_counter
from towtruck.server.routes import Routes


async def test_a_lone_runtime_answers_what_it_can_and_refuses_the_cluster_routes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_counter) as runtime:
        routes = Routes(runtime)
        assert routes.ping("a/b/") == ["ping", "a", "b"]
        assert routes.query("c") == {"exists": False}
        await runtime.client.invoke("c", "increment")
        assert routes.query("c") == {"exists": True}
        health = routes.health()
        assert health["actors"] == 1
        assert health["forwarded"] == 0
        assert health["members"] == [{"address": health["node"], "state": "self"}]
        autojump_clock.jump(runtime.settings.max_inactivity + 1)
        assert await routes.rungc() == {"garbageCollected": 1}
        assert routes.query("c") == {"exists": False}
        with pytest.raises(towtruck.InvalidActorId):
            routes.query("")
        for route in (routes.getservers, routes.getbloom, lambda: routes.heartbeat({})):
            with pytest.raises(towtruck.RouteNotFound, match="clustering is off"):
                route()
        with pytest.raises(towtruck.RouteNotFound):
            await routes.addserver("127.0.0.1:1")
