"""The same async client under asyncio."""

from __future__ import annotations

import asyncio

from karma.client import AsyncClient


async def main() -> None:
    async with AsyncClient.from_env(pool_size=16) as karma:
        await asyncio.gather(*(karma.record_usage("api_requests", a) for a in range(100)))
        print(await karma.usages("api_requests", list(range(5))))


if __name__ == "__main__":
    asyncio.run(main())
