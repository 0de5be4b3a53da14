"""Periodic jobs on one tick: each at its own period, one failing job does not stop the
others, and a tick that comes late is reported as an event-loop stall."""

from __future__ import annotations

import asyncio
import time

from extauthz.server.ticker import STALL, Periodic, Ticker


async def test_jobs_run_at_their_periods_and_a_failing_job_stops_nothing() -> None:
    runs: dict[str, int] = {"every": 0, "third": 0}

    def every() -> None:
        runs["every"] += 1

    async def third() -> None:
        runs["third"] += 1

    def broken() -> None:
        raise RuntimeError("a bug in one job")

    ticker = Ticker(
        [Periodic("broken", 1, broken), Periodic("every", 1, every), Periodic("third", 3, third)]
    )
    for count in range(9):
        await ticker.run_once(count)
    assert runs == {"every": 9, "third": 3}


async def test_a_blocked_loop_is_counted_as_a_stall() -> None:
    blocked = asyncio.Event()

    def block_once() -> None:
        if not blocked.is_set():
            blocked.set()
            time.sleep(STALL + 0.15)  # the bug being detected: blocking the event loop

    ticker = Ticker([], tick=0.02)
    ticker.start()
    try:
        asyncio.get_running_loop().call_soon(block_once)
        deadline = time.monotonic() + 5
        while ticker.stalls == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await ticker.stop()
    assert ticker.stalls >= 1
