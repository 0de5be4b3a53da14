"""Admin HTTP listener: /healthz (process up), /readyz (keys usable), /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .keys import KeySource


def app(
    sources: Callable[[], Mapping[str, KeySource]], draining: Callable[[], bool]
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        providers = {}
        for name, src in sources().items():
            keys = src.keys
            providers[name] = {
                "state": src.state().value,
                "keys": len(keys.keys) if keys else 0,
                "kids": sorted(keys.kids) if keys else [],
                "last_error": src.last_error,
            }
        ready = not draining() and all(src.usable() is not None for src in sources().values())
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps({"ready": ready, "draining": draining(), "providers": providers}),
            content_type="application/json",
        )

    async def metrics_(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY),
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics_)
    return application
