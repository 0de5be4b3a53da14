"""Remembering DPoP proof ``jti``s for their window, so a proof is accepted once.

``server.replay_store: memory`` keeps them in this process (bounded: when full of live
entries it refuses, as an unreachable Redis does; replicas do not share it).
``redis://HOST:PORT/DB`` keeps them in Redis, shared by every replica: one
``SET key 1 NX PX ttl`` per DPoP request, through a connection pool, with a short
timeout. Every key expires with the proof window. When Redis cannot be reached the
store says so (:class:`ReplayStoreDown`): the request fails closed with 503, never
accepting what might be a replay, and the next request simply tries again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from . import logs, metrics
from .errors import ReplayStoreDown

_log = logs.get("extauthz.replay")

#: Entries the in-process store holds at most (about 220 bytes each: some 22 MB).
MEMORY_ENTRIES = 100_000
#: Longest wait for Redis per request: a DPoP request is answered 503 after this.
REDIS_TIMEOUT = 0.25
#: Connections to Redis per process at most; more concurrent claims wait for one.
REDIS_CONNECTIONS = 64


class MemoryReplayStore:
    local = True  # answered without waiting

    def __init__(self, entries: int = MEMORY_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self._seen: OrderedDict[str, float] = OrderedDict()  # key -> expiry, oldest first
        self._entries = entries
        self._clock = clock
        self.full = False
        # gRPC pool threads and the event loop claim at once: check-and-set is one step.
        self._lock = threading.Lock()

    def claim_now(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is claimed within ``ttl`` seconds."""
        with self._lock:
            return self._claim(key, ttl)

    def _claim(self, key: str, ttl: float) -> bool:
        now = self._clock()
        seen = self._seen
        while seen:  # expired entries leave from the old end
            oldest, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[oldest]
        previous = seen.get(key)
        if previous is not None and previous > now:
            return False
        if len(seen) >= self._entries:
            # Full of live entries. Forgetting one would let its proof be replayed (and a
            # client flooding proofs of its own could choose when): refuse instead, until
            # entries expire. Redis is the store for more DPoP traffic than this.
            metrics.REPLAY_STORE_ERRORS.inc()
            if not self.full:
                _log.warning("replay_store_full", entries=len(seen))
            self.full = True
            raise ReplayStoreDown("the in-process replay store is full")
        self.full = False
        seen[key] = now + ttl
        seen.move_to_end(key)
        return True

    async def claim(self, key: str, ttl: float) -> bool:
        return self.claim_now(key, ttl)

    def status(self) -> dict[str, Any]:
        state = "full" if self.full else "ok"
        return {"kind": "memory", "state": state, "entries": len(self._seen)}

    async def close(self) -> None:
        pass


class RedisReplayStore:
    local = False

    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT) -> None:
        import redis.asyncio as redis

        # A blocking pool: past MAX_CONNECTIONS concurrent claims, a claim waits (within
        # the timeout) for a connection to come back. The plain pool raises at once
        # instead, turning a burst of DPoP requests into 503s while Redis is fine.
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 6379
        # Never the password; an IPv6 address in brackets, as in the URL.
        self._where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._timeout = timeout
        self.last_error: str | None = None

    async def claim(self, key: str, ttl: float) -> bool:
        try:
            async with asyncio.timeout(self._timeout * 2):
                created = await self._client.set(key, b"1", nx=True, px=max(1, int(ttl * 1000)))
        except Exception as exc:  # any failure to ask: fail closed, and say so
            metrics.REPLAY_STORE_ERRORS.inc()
            why = f"Redis at {self._where}: {exc.__class__.__name__}"
            if self.last_error != why:
                _log.warning("replay_store_unavailable", error=why)
            self.last_error = why
            raise ReplayStoreDown(why) from None
        if self.last_error is not None:
            _log.info("replay_store_available", where=self._where)
            self.last_error = None
        return bool(created)

    def status(self) -> dict[str, Any]:
        state = "unavailable" if self.last_error else "ok"
        return {
            "kind": "redis",
            "where": self._where,
            "state": state,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.disconnect()  # a pool passed in is not closed with the client


ReplayStore = MemoryReplayStore | RedisReplayStore


def build(setting: str) -> ReplayStore:
    if setting == "memory":
        return MemoryReplayStore()
    return RedisReplayStore(setting)
