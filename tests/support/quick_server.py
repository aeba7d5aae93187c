"""A uvicorn server that notices `should_exit` within 10 ms instead of 100 ms.

Hundreds of tests each start and stop a gateway and a scripted upstream; uvicorn's main loop looks at
`should_exit` once every 100 ms, which alone cost the suite a minute. Everything else (the graceful
shutdown, the lifespan) is uvicorn's own.
"""

from __future__ import annotations

import asyncio

import uvicorn

__all__ = ["QuickServer"]

_TICK_S = 0.01


class QuickServer(uvicorn.Server):
    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(ticks // 10):  # on_tick counts uvicorn's 100 ms ticks
            await asyncio.sleep(_TICK_S)
            ticks = (ticks + 1) % 8_640_000
