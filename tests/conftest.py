"""Shared test rules and helpers.

Every test bounds itself with ``trio.fail_after`` (on the autojump clock, that bound is
in virtual seconds). Network tests use real Hypercorn servers on 127.0.0.1 port 0 and
httpx clients with timeouts; timed behaviour runs on trio's autojump clock, without
HTTP, through ``towtruck.open_runtime``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with timeouts on every call."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client
