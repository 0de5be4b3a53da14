"""Admin HTTP listener: /healthz (process up), /readyz (keys usable), /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import httpsite, metrics
from ..keys.source import KeySource

Status = Callable[[], dict[str, Any]]


def key_status(sources: Mapping[str, KeySource], draining: bool) -> dict[str, Any]:
    """Readiness as /readyz reports it: every provider has a usable key set."""
    providers = {}
    for name, src in sources.items():
        keys = src.keys
        providers[name] = {
            "state": src.state().value,
            "keys": len(keys.keys) if keys else 0,
            "kids": sorted(keys.kids) if keys else [],
            "last_error": src.last_error,
        }
    ready = not draining and all(src.usable() is not None for src in sources.values())
    return {"ready": ready, "draining": draining, "providers": providers}


def app(status: Status) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        body = status()
        return web.Response(
            status=200 if body["ready"] else 503,
            text=json.dumps(body),
            content_type="application/json",
        )

    async def metrics_(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.exposition_registry()),
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics_)
    return application


async def start(address: tuple[str, int], status: Status) -> tuple[web.AppRunner, int]:
    return await httpsite.start(app(status), *address)
