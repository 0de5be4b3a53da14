"""Periodic jobs on one tick: each job has a name and a period; a tick that comes late
means something blocked the event loop, and every request waited with it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import logs, metrics

_log = logs.get("extauthz.server")

#: How often the loop wakes; every period is a multiple of it.
TICK = 0.2
#: A tick this much later than due is reported as an event-loop stall.
STALL = 0.25

Job = Callable[[], Awaitable[None] | None]


@dataclass(frozen=True)
class Periodic:
    name: str
    every: int  # in ticks
    run: Job


class Ticker:
    def __init__(self, jobs: list[Periodic], *, tick: float = TICK) -> None:
        self.jobs = jobs
        self.tick = tick
        self.stalls = 0
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, count: int) -> None:
        for job in self.jobs:
            if count % job.every == 0:
                try:
                    result = job.run()
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # one failing job must not stop the others
                    _log.exception("periodic_job_failed", job=job.name)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        count = 0
        while True:
            await self.run_once(count)
            count += 1
            before = loop.time()
            await asyncio.sleep(self.tick)
            late = loop.time() - before - self.tick
            if late > STALL:
                self.stalls += 1
                metrics.EVENT_LOOP_STALLS.inc()
                _log.warning("event_loop_stalled", seconds=round(late, 3))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
