"""Serving an aiohttp application on HOST:PORT (the admin endpoints, the dev issuer)."""

from __future__ import annotations

from aiohttp import web


async def start(application: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Run ``application`` on host:port (0 picks a free port); returns it and the port."""
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # aiohttp types _server as optional; after start() it is the listening server.
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(bound)
