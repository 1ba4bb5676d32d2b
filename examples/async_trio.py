"""The async client under trio: many tasks share one pool."""

from __future__ import annotations

import trio

from karma.client import AsyncClient


async def main() -> None:
    async with AsyncClient.from_env(pool_size=16) as karma:
        async with trio.open_nursery() as nursery:
            for account in range(100):
                nursery.start_soon(karma.record_usage, "api_requests", account)
        print(await karma.usages("api_requests", list(range(5))))


if __name__ == "__main__":
    trio.run(main)
