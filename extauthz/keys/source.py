"""Key sources: one per provider, keeping an immutable KeySet fresh in the background.

State machine (``state(now)``)::

    EMPTY  --first good fetch-->  FRESH  --refresh due/failing-->  STALE
      ^                             ^                                |
      |                             +------ good fetch --------------+
      |                                                              | max_stale passed
      +------------------------- (never again) ---------  EXPIRED <--+

EMPTY and EXPIRED answer 503 (no usable keys); FRESH and STALE verify. A failed or
empty fetch never replaces a good set. The request path only reads ``usable(now)``;
the single exception is ``refetch_for_unknown_kid``, a shared, rate-limited fetch the
caller may await for a short budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .. import files, logs, metrics, tracing
from ..config import Provider
from ..errors import JwksError, KeyFetchError
from . import jwks

MAX_JWKS_BYTES = 1 << 20
#: Kids just proven absent by a refetch; bounded so junk kids cannot grow memory.
MAX_ABSENT_KIDS = 1024
_log = logs.get("extauthz.keys")


class KeyState(enum.Enum):
    EMPTY = "empty"
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes
    max_age: float | None = None
    etag: str | None = None
    last_modified: str | None = None


NOT_MODIFIED = object()


def _max_age(cache_control: str | None) -> float | None:
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.strip('"').isdigit():
            return float(value.strip('"'))
    return None


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit`` bytes (never reading
    more than ``limit + 1``). A body that arrives in pieces is read to its end; one cut
    short of its Content-Length raises aiohttp's ClientPayloadError."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    body = bytearray()
    while chunk := await resp.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    body = await read_capped(resp, MAX_JWKS_BYTES)
    if body is None:
        raise KeyFetchError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    return body


def _http_status(status: int, url: str) -> str:
    if 300 <= status < 400:
        return f"HTTP {status} from {url} (redirects are not followed: set the final URL)"
    return f"HTTP {status} from {url}"


def describe(exc: BaseException, url: str, timeout: float) -> str:
    """What went wrong with a request, in an operator's words (never a class name alone)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{parts.hostname}:{port}"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"timed out after {timeout:g} s waiting for {where}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return f"TLS verification of {where} failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"name not resolved: {parts.hostname}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {where}"
        return f"cannot connect to {where}: {cause.strerror or cause}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return f"{where} closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer from {where} was cut short"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{where}: {exc.strerror}"
    return f"{where}: {exc.__class__.__name__}"


class HttpFetcher:
    """GET a JWKS (or resolve it through OIDC discovery) with validators and a size cap."""

    def __init__(self, provider: Provider, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._provider = provider
        self._session = session
        self._uri = provider.jwks_uri
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._fetching = ""  # the URL of the request under way, for error messages
        self.status: int | None = None  # the last answer's HTTP status, for traces

    @property
    def where(self) -> str:
        return self._uri or self._provider.key_source

    async def _get(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        self._fetching = url
        timeout = aiohttp.ClientTimeout(total=self._provider.fetch_timeout)
        resp = await self._session().get(
            url, headers=headers, timeout=timeout, allow_redirects=False
        )
        self.status = resp.status
        return resp

    async def _discover(self) -> str:
        url = self._provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with await self._get(url, {"accept": "application/json"}) as resp:
            if resp.status != 200:
                raise KeyFetchError(f"discovery document: {_http_status(resp.status, url)}")
            try:
                doc = json.loads(await _read_capped(resp))
            except ValueError:
                raise JwksError("discovery document is not JSON") from None
        if not isinstance(doc, dict) or doc.get("issuer") != self._provider.issuer:
            raise JwksError("discovery document names a different issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise JwksError("discovery document has no valid jwks_uri")
        return uri

    async def fetch(self, *, no_cache: bool = False) -> Fetched | object:
        self.status = None
        try:
            if self._uri is None:
                self._uri = await self._discover()
            headers = {"accept": "application/jwk-set+json, application/json"}
            if no_cache:
                headers["cache-control"] = "no-cache"
            if self._etag:
                headers["if-none-match"] = self._etag
            if self._last_modified:
                headers["if-modified-since"] = self._last_modified
            async with await self._get(self._uri, headers) as resp:
                if resp.status == 304 and (self._etag or self._last_modified):
                    return NOT_MODIFIED
                if resp.status != 200:
                    raise KeyFetchError(f"JWKS: {_http_status(resp.status, self._uri)}")
                body = await _read_capped(resp)
                result = Fetched(
                    body,
                    _max_age(resp.headers.get("cache-control")),
                    resp.headers.get("etag"),
                    resp.headers.get("last-modified"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if self._provider.discovery:
                self._uri = None  # rediscover next time: the issuer may have moved it
            why = describe(exc, self._fetching, self._provider.fetch_timeout)
            raise KeyFetchError(f"JWKS fetch failed: {why}") from None
        return result

    def accepted(self, result: Fetched) -> None:
        """Remember validators only once the body proved usable."""
        self._etag, self._last_modified = result.etag, result.last_modified


class FileFetcher:
    """Re-read a JWKS file when its (mtime, size, inode) changes."""

    poll_interval = 1.0

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: files.Stamp | None = None
        self._pending: files.Stamp | None = None

    @property
    def where(self) -> str:
        return str(self._path)

    def changed(self) -> bool:
        now = files.stamp_or_none(self._path)
        return now is not None and now != self._stamp

    async def fetch(self, *, no_cache: bool = False) -> Fetched | object:
        try:
            stamp = files.stamp(self._path)
            if stamp == self._stamp and not no_cache:
                return NOT_MODIFIED
            if stamp[1] > MAX_JWKS_BYTES:
                raise KeyFetchError(f"JWKS file larger than {MAX_JWKS_BYTES} bytes")
            body = self._path.read_bytes()
        except OSError as exc:
            raise KeyFetchError(f"cannot read JWKS file: {exc.strerror}") from None
        self._pending = stamp
        return Fetched(body)

    def accepted(self, result: Fetched) -> None:
        self._stamp = self._pending


class InlineFetcher:
    where = "inline"

    def __init__(self, document: Any) -> None:
        self._body = json.dumps(document).encode()

    async def fetch(self, *, no_cache: bool = False) -> Fetched | object:
        return Fetched(self._body)

    def accepted(self, result: Fetched) -> None:
        pass


Fetcher = HttpFetcher | FileFetcher | InlineFetcher


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (at least a tenth of the step)."""
    step = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(step / 10, step)  # noqa: S311 - jitter, not crypto


class KeySource:
    """Keys for one provider. ``usable(now)`` is what verification reads."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        fetcher: Fetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, jwks.KeySet, jwks.KeySet], None] | None = None,
    ) -> None:
        self.name = name
        self.provider = provider
        self._fetcher = fetcher
        self._clock = clock
        self._on_change = on_change
        self._keys: jwks.KeySet | None = None
        self._confirmed_at: float | None = None  # monotonic time of the last good fetch
        self._last_unknown_kid_fetch: float | None = None
        self._next_due: float = 0.0
        self._failures = 0
        self._inflight: asyncio.Task[bool] | None = None
        self._absent: OrderedDict[str, float] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self._ready = asyncio.Event()
        metrics.JWKS_KEYS.labels(name).set(0)
        metrics.JWKS_MAX_STALE.labels(name).set(provider.max_stale)

    # -- read side (request path; no I/O) ---------------------------------------------
    def state(self, now: float | None = None) -> KeyState:
        now = self._clock() if now is None else now
        if self._keys is None or self._confirmed_at is None:
            return KeyState.EMPTY
        if isinstance(self._fetcher, InlineFetcher):
            return KeyState.FRESH  # keys in the config cannot go stale; a reload replaces them
        age = now - self._confirmed_at
        if age > self.provider.max_stale:
            return KeyState.EXPIRED
        if age > self.provider.refresh_interval or self._failures:
            return KeyState.STALE
        return KeyState.FRESH

    def usable(self, now: float | None = None) -> jwks.KeySet | None:
        """The current key set, or None while EMPTY or EXPIRED."""
        if self.state(now) in (KeyState.EMPTY, KeyState.EXPIRED):
            return None
        return self._keys

    @property
    def keys(self) -> jwks.KeySet | None:
        return self._keys

    def inherit(self, previous: KeySource) -> None:
        """Start from ``previous``'s last good keys (same issuer, new key settings), so a
        reload never turns a working provider into a 503 while this source's first
        fetch is under way or failing. The keys age from when ``previous`` confirmed
        them; the first good fetch here replaces them. Call before ``start``."""
        if previous.provider.issuer != self.provider.issuer or previous._keys is None:
            return
        self._keys = previous._keys
        self._confirmed_at = previous._confirmed_at
        metrics.JWKS_KEYS.labels(self.name).set(len(previous._keys.keys))
        self._ready.set()

    def publish_age(self) -> None:
        """Update the age gauge (called periodically: set_function does not cross processes).
        Keys written in the config never go stale (``state``), so their age stays 0."""
        if self._confirmed_at is None:
            return
        inline = isinstance(self._fetcher, InlineFetcher)
        age = 0.0 if inline else self._clock() - self._confirmed_at
        metrics.JWKS_AGE.labels(self.name).set(age)

    # -- fetching ---------------------------------------------------------------------
    async def refresh(self, trigger: str, *, no_cache: bool = False) -> bool:
        """One fetch; True when a good key set is in place afterwards (new or unchanged)."""
        named = {"extauthz.provider": self.name, "extauthz.trigger": trigger}
        with tracing.call("extauthz.jwks_fetch", named) as call:
            outcome = await self._refresh(trigger, no_cache)
            http = self._fetcher if isinstance(self._fetcher, HttpFetcher) else None
            call.set(
                {
                    "extauthz.result": outcome,
                    "http.response.status_code": http.status if http is not None else None,
                    "extauthz.keys": len(self._keys.keys) if self._keys is not None else 0,
                }
            )
            if outcome == "error" and self.last_error is not None:
                call.fail(self.last_error)  # the jwks_fetch_failed log line's words
        return outcome != "error"

    async def _refresh(self, trigger: str, no_cache: bool) -> str:
        """:meth:`refresh`'s work; ``success``, ``not_modified`` or ``error``."""
        try:
            result = await self._fetcher.fetch(no_cache=no_cache)
            if result is NOT_MODIFIED:
                outcome = "not_modified"
            else:
                assert isinstance(result, Fetched)
                new = jwks.parse_keyset(
                    result.body,
                    allow_symmetric=not isinstance(self._fetcher, HttpFetcher),
                    min_rsa_bits=self.provider.min_rsa_bits,
                )
                self._fetcher.accepted(result)
                self._swap(new)
                outcome = "success"
                self._schedule(result.max_age)
        except JwksError as exc:
            self._failures += 1
            self.last_error = str(exc)
            metrics.JWKS_FETCHES.labels(self.name, "error", trigger).inc()
            _log.warning(
                "jwks_fetch_failed",
                provider=self.name,
                trigger=trigger,
                error=str(exc),
                state=self.state().value,
                source=self._fetcher.where,
            )
            self._next_due = self._clock() + backoff(
                self._failures - 1, cap=min(30.0, self.provider.refresh_interval)
            )
            return "error"
        if outcome == "not_modified":
            self._schedule(None)
        self._failures = 0
        self.last_error = None
        self._confirmed_at = self._clock()
        self._ready.set()
        metrics.JWKS_FETCHES.labels(self.name, outcome, trigger).inc()
        return outcome

    def _schedule(self, max_age: float | None) -> None:
        p = self.provider
        interval = p.refresh_interval
        if max_age is not None:
            interval = max(p.min_refresh_interval, min(max_age, p.refresh_interval))
        # Jitter (-10%..0) so a fleet of replicas does not fetch in lockstep.
        self._next_due = self._clock() + interval * random.uniform(0.9, 1.0)  # noqa: S311

    def _swap(self, new: jwks.KeySet) -> None:
        old = self._keys
        self._keys = new
        metrics.JWKS_KEYS.labels(self.name).set(len(new.keys))
        metrics.JWKS_KEYS_SKIPPED.labels(self.name).set(len(new.skipped))
        for label, why in new.skipped:
            _log.warning("jwks_key_skipped", provider=self.name, kid=label, reason=why)
        old_kids = old.kids if old else frozenset()
        for kid in new.kids:
            self._absent.pop(kid, None)
        if old is None or old.thumbprints != new.thumbprints:
            _log.info(
                "jwks_changed",
                provider=self.name,
                added=sorted(new.kids - old_kids),
                removed=sorted(old_kids - new.kids),
                keys=len(new.keys),
            )
            if self._on_change is not None:
                self._on_change(self.name, old or jwks.EMPTY, new)

    def refetch_for_unknown_kid(self, kid: str | None = None) -> Awaitable[bool] | None:
        """Start (or join) the shared refetch; None when rate-limited.

        Rate limit: at most one unknown-kid fetch per ``min_refresh_interval``, so a
        storm of random kids costs the issuer one request per interval. A kid that a
        refetch just proved absent is refused at once, without joining a fetch.
        """
        metrics.UNKNOWN_KID.labels(self.name).inc()
        now = self._clock()
        if kid is not None:
            seen = self._absent.get(kid)
            if seen is not None and now - seen < self.provider.min_refresh_interval:
                return None
        if self._inflight is not None and not self._inflight.done():
            return asyncio.shield(self._inflight)
        last = self._last_unknown_kid_fetch
        if last is not None and now - last < self.provider.min_refresh_interval:
            return None
        self._last_unknown_kid_fetch = now
        self._inflight = asyncio.get_running_loop().create_task(
            self.refresh("unknown_kid", no_cache=True)
        )
        return asyncio.shield(self._inflight)

    def mark_absent(self, kid: str | None) -> None:
        if kid is None:
            return
        self._absent[kid] = self._clock()
        self._absent.move_to_end(kid)
        while len(self._absent) > MAX_ABSENT_KIDS:
            self._absent.popitem(last=False)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- background loop --------------------------------------------------------------
    async def _run(self) -> None:
        trigger = "startup"
        is_file = isinstance(self._fetcher, FileFetcher)
        while True:
            if self._inflight is not None and not self._inflight.done():
                await asyncio.shield(self._inflight)
            else:
                self._inflight = asyncio.get_running_loop().create_task(self.refresh(trigger))
                ok = await asyncio.shield(self._inflight)
                if ok and trigger == "startup":
                    trigger = "file" if is_file else "scheduled"
            if isinstance(self._fetcher, InlineFetcher) and self._keys is not None:
                return  # inline keys never change
            while True:
                delay = self._next_due - self._clock()
                if is_file:
                    delay = min(delay, FileFetcher.poll_interval)
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
                if (
                    is_file
                    and self._keys is not None
                    and isinstance(self._fetcher, FileFetcher)
                    and self._fetcher.changed()
                ):
                    break

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None


def build(
    name: str,
    provider: Provider,
    session: Callable[[], aiohttp.ClientSession],
    **kwargs: Any,
) -> KeySource:
    fetcher: Fetcher
    if provider.jwks_file is not None:
        fetcher = FileFetcher(provider.jwks_file)
    elif provider.jwks is not None:
        fetcher = InlineFetcher(dict(provider.jwks))
    else:
        fetcher = HttpFetcher(provider, session)
    return KeySource(name, provider, fetcher, **kwargs)
