"""Shared fixtures: hypothesis profiles and a real server on a loopback port."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# generating the first examples can take over a second on a cold 2-core box (STYLE.md §3.7)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile("nightly", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import LineClient  # noqa: E402

Connect = Callable[[int], Awaitable[LineClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open line clients to a port; all are closed when the test ends."""
    opened: list[LineClient] = []

    async def open_client(port: int) -> LineClient:
        client = await LineClient.connect(port)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.aclose()
