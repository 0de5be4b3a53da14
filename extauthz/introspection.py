"""RFC 7662 token introspection: one provider's endpoint, its answers and their cache.

One call in flight per token: concurrent requests for the same token wait for the
same answer (each no longer than its own deadline allows; the call itself runs to its
``timeout`` and its answer serves the next request). Kept-alive connections.
Anything but a well-formed answer (an error status, a timeout, more than
:data:`MAX_ANSWER_BYTES`, not a JSON object, no boolean ``active``) is a 503 for the
requests waiting on it, logged in an operator's words and never cached. Neither the
token nor the client secret is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from . import __version__, errors, logs, metrics, tracing
from .config import IntrospectionSettings, Provider
from .core.cache import digest
from .core.introspected import INACTIVE, Answer, AnswerCache, kept_until
from .core.verify import strict_json
from .keys.source import describe, read_capped

_log = logs.get("extauthz.introspection")

#: Largest introspection answer read; a claim set is a few hundred bytes.
MAX_ANSWER_BYTES = 64 * 1024
#: Connections kept to one endpoint.
MAX_CONNECTIONS = 32
#: Calls in flight to one endpoint at most; past it, a token without a cached answer is
#: a 503 at once: a flood of made-up tokens cannot queue without bound behind the pool.
MAX_IN_FLIGHT = 4 * MAX_CONNECTIONS
#: Answers larger than this are used for their request but not cached: the cache's
#: memory stays about entries times a small claim set, whatever the endpoint sends.
MAX_CACHED_ANSWER_BYTES = 8 * 1024


class _Failed(Exception):
    """The endpoint gave no usable answer; the message is for the operator's log,
    ``status`` the HTTP status it answered with, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def basic_credentials(client_id: str, secret: str) -> str:
    """client_secret_basic: both form-encoded before base64 (RFC 6749 §2.3.1)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_answer(body: bytes) -> Answer:
    """An answer as RFC 7662 §2.2 shapes it; raises _Failed for anything else."""
    try:
        value = strict_json(body)  # no duplicates, bounded depth, UTF-8 only
    except ValueError as exc:  # UnicodeDecodeError and RecursionError's stand-in too
        raise _Failed(f"the answer is not strict JSON ({exc.__class__.__name__}: "
                      f"{str(exc)[:80]})") from None  # fmt: skip
    if not isinstance(value, dict):
        raise _Failed("the answer is not a JSON object")
    active = value.get("active")
    if not isinstance(active, bool):
        raise _Failed("the answer has no boolean active member")
    return Answer(True, value) if active else INACTIVE


class Introspector:
    """Asks one provider's endpoint, keeps the answers. Built at start and on reload
    (kept by a reload that leaves the provider's introspection settings as they are)."""

    def __init__(
        self, name: str, provider: Provider, *, clock: Callable[[], float] = time.time
    ) -> None:
        assert provider.introspection is not None
        self.name = name
        self.settings: IntrospectionSettings = provider.introspection
        self.cache = AnswerCache(self.settings.cache_size)
        # Inactive answers apart, and fewer: made-up tokens cannot push out active ones.
        self.negatives = AnswerCache(max(1, self.settings.cache_size // 4))
        self._clock = clock
        self._auth = basic_credentials(self.settings.client_id, self.settings.client_secret)
        self._inflight: dict[bytes, asyncio.Task[Answer]] = {}
        self._session: aiohttp.ClientSession | None = None

    def cached(self, token: str, now: float) -> Answer | None:
        key = digest(token)
        return self.cache.get(key, now) or self.negatives.get(key, now)

    @property
    def entries(self) -> int:
        return len(self.cache) + len(self.negatives)

    async def introspect(
        self, token: str, budget: float, trace: Mapping[str, str] | None = None
    ) -> Answer:
        """``token``'s answer, from a call made now or already in flight (it is cached
        for the requests after). Raises :class:`~extauthz.errors.IntrospectionUnavailable`
        when there is none within ``budget`` seconds. ``trace``: the headers of the
        request that waits, whose trace context a new call's span joins."""
        key = digest(token)
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= MAX_IN_FLIGHT:
                raise errors.IntrospectionUnavailable("too many introspection calls in flight")
            task = asyncio.create_task(self._call(key, token, trace))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(task), budget)
        except TimeoutError:
            raise errors.IntrospectionUnavailable("token introspection timed out") from None
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if task.cancelled() and me is not None and not me.cancelling():
                # The call was cut (the process stopping), not this request: an answer.
                raise errors.IntrospectionUnavailable() from None
            raise

    def _finished(self, key: bytes, task: asyncio.Task[Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up already

    async def _call(self, key: bytes, token: str, trace: Mapping[str, str] | None) -> Answer:
        started = time.perf_counter()
        result = "error"
        status: int | None = None
        span = tracing.call("extauthz.introspection", {"extauthz.provider": self.name}, trace)
        with span as call:
            try:
                answer, size = await self._ask(token)
                result, status = ("active" if answer.active else "inactive"), 200
                if size <= MAX_CACHED_ANSWER_BYTES:
                    now = self._clock()
                    cache = self.cache if answer.active else self.negatives
                    cache.put(key, answer, kept_until(answer, self.settings, now), now)
                return answer
            except _Failed as exc:
                status = exc.status
                _log.warning(
                    "introspection_failed",
                    provider=self.name,
                    endpoint=self.settings.endpoint,
                    error=str(exc),
                )
                # The span says that it failed; the log line says why.
                call.fail("no usable answer")
                raise errors.IntrospectionUnavailable() from None
            finally:
                call.set({"extauthz.result": result, "http.response.status_code": status})
                metrics.INTROSPECTIONS.labels(self.name, result).inc()
                duration = time.perf_counter() - started
                metrics.INTROSPECTION_DURATION.labels(self.name).observe(duration)

    async def _ask(self, token: str) -> tuple[Answer, int]:
        endpoint, timeout = self.settings.endpoint, self.settings.timeout
        try:
            async with self._client().post(
                endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"authorization": self._auth, "accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                if resp.status in (401, 403):
                    raise _Failed(
                        f"HTTP {resp.status} from {endpoint}: the endpoint refused "
                        f"client_id {self.settings.client_id!r} and its secret",
                        resp.status,
                    )
                if resp.status != 200:
                    raise _Failed(f"HTTP {resp.status} from {endpoint}", resp.status)
                body = await _read_capped(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Failed(describe(exc, endpoint, timeout)) from None
        except _Failed:
            raise
        except Exception as exc:  # anything else the client raises: named, not shown
            raise _Failed(f"{exc.__class__.__name__} asking {endpoint}") from None
        try:
            return parse_answer(body), len(body)
        except _Failed as exc:
            raise _Failed(str(exc), 200) from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ca_file = self.settings.ca_file
            tls: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
            self._session = aiohttp.ClientSession(
                headers={"user-agent": f"extauthz/{__version__}"},
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=tls),
                # Never a proxy from the environment: the token must go to the endpoint.
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        """Let the calls in flight finish (each within ``timeout``: their requests get
        their answers), then close the connections."""
        calls = list(self._inflight.values())
        if calls:
            await asyncio.wait(calls, timeout=self.settings.timeout)
        for call in calls:
            call.cancel()  # only those still running past their own timeout
        if self._session is not None:
            await self._session.close()


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    body = await read_capped(resp, MAX_ANSWER_BYTES)
    if body is None:
        raise _Failed(f"the answer is larger than {MAX_ANSWER_BYTES} bytes", resp.status)
    return body
