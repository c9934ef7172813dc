"""Asking every live peer at once, for routes that answer for the whole cluster
(``/actors?cluster=1``, ``/actors/{id}``, the dashboard)."""

from __future__ import annotations

import contextlib
from typing import Any, Final

import trio

from ..cluster.membership import MemberState
from ..cluster.router import Router
from ..errors import TowtruckError

__all__ = ["PEER_DEADLINE", "ask_peers"]

#: How long a route that asks every peer waits for their answers.
PEER_DEADLINE: Final = 2.0


async def ask_peers(router: Router, path: str) -> list[Any]:
    """GET ``path`` from every live peer at once; the answers of those that answered
    within :data:`PEER_DEADLINE` (a peer that fails or is slow is left out), in no
    particular order."""
    answers: list[Any] = []

    async def ask(peer: str) -> None:
        with contextlib.suppress(TowtruckError):
            answers.append(await router.peer_client.get(peer, path))

    with trio.move_on_after(PEER_DEADLINE):
        async with trio.open_nursery() as nursery:
            for peer in router.membership.peers(MemberState.ALIVE):
                nursery.start_soon(ask, peer)
    return answers
