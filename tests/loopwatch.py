"""``LoopWatch``: how long the running event loop was blocked (issue 10's proof that nothing
synchronous runs on it). A task ticks every 20 ms; the longest late tick is the longest stall."""

from __future__ import annotations

import asyncio
import time

TICK_SECONDS = 0.02


class LoopWatch:
    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.longest = max(self.longest, now - last - TICK_SECONDS)
            last = now

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.ensure_future(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
