"""Key sources against a real HTTP JWKS server, with an injected clock for the state machine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extauthz import metrics
from extauthz.config import Provider
from extauthz.keys import source as keys
from tests.support.jwks_server import JwksServer
from tests.support.signing import Signer, jwks

ISS = "https://issuer.example"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def provider(**kw: Any) -> Provider:
    kw.setdefault("jwks_uri", "http://127.0.0.1:1/jwks")
    return Provider(issuer=ISS, audiences=("api",), **kw)


def fetches(name: str, result: str, trigger: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "extauthz_jwks_fetch_total", {"provider": name, "result": result, "trigger": trigger}
    )
    return value or 0.0


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with JwksServer() as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def source(name: str, p: Provider, session: aiohttp.ClientSession, clock: Clock) -> keys.KeySource:
    return keys.build(name, p, lambda: session, clock=clock)


A, B = Signer("RS256"), Signer("EdDSA")


async def test_state_machine_fresh_stale_expired(server: JwksServer, session: Any) -> None:
    server.set(jwks(A))
    clock = Clock()
    p = provider(jwks_uri=server.url, refresh_interval="10s", max_stale="60s",
                 min_refresh_interval="1s")  # fmt: skip
    src = source("sm", p, session, clock)
    assert src.state() is keys.KeyState.EMPTY and src.usable() is None
    assert await src.refresh("startup")
    assert src.state() is keys.KeyState.FRESH
    assert src.usable() is not None and src.usable().kids == {A.kid}  # type: ignore[union-attr]
    clock.now += 11
    assert src.state() is keys.KeyState.STALE and src.usable() is not None
    server.fail_with = 500
    assert not await src.refresh("scheduled")
    assert src.usable() is not None, "a failed fetch must keep the last good keys"
    clock.now += 50
    assert src.state() is keys.KeyState.EXPIRED and src.usable() is None
    server.fail_with = None
    assert await src.refresh("scheduled")
    assert src.state() is keys.KeyState.FRESH


@pytest.mark.parametrize(
    "body",
    [b"garbage", b'{"keys": []}', b'{"nokeys": 1}', b'{"keys": [{"kty": "RSA"}]}',
     b"x" * (keys.MAX_JWKS_BYTES + 10)],
    ids=["garbage", "empty", "no_keys_member", "unusable_key", "oversized"],
)  # fmt: skip
async def test_bad_answers_keep_the_last_good_keys(
    server: JwksServer, session: Any, body: bytes
) -> None:
    name = f"bad-{len(body)}-{body[:6]!r}"
    server.set(jwks(A, B))
    src = source(name, provider(jwks_uri=server.url), session, Clock())
    assert await src.refresh("startup")
    errors_before = fetches(name, "error", "scheduled")
    server.body = body
    assert not await src.refresh("scheduled")
    assert src.usable() is not None and src.usable().kids == {A.kid, B.kid}  # type: ignore[union-attr]
    assert fetches(name, "error", "scheduled") == errors_before + 1
    assert src.last_error


async def test_slow_jwks_times_out_and_keeps_keys(server: JwksServer, session: Any) -> None:
    server.set(jwks(A))
    src = source("slow", provider(jwks_uri=server.url, fetch_timeout="200ms"), session, Clock())
    assert await src.refresh("startup")
    server.delay = 1.0
    assert not await src.refresh("scheduled")
    assert "timed out after 0.2 s waiting for 127.0.0.1:" in (src.last_error or "")
    assert src.usable() is not None


async def test_conditional_requests_and_max_age(server: JwksServer, session: Any) -> None:
    server.set(jwks(A))
    server.etag = '"v1"'
    server.headers = {"cache-control": "public, max-age=5"}
    clock = Clock()
    p = provider(jwks_uri=server.url, refresh_interval="5m", min_refresh_interval="30s")
    src = source("etag", p, session, clock)
    assert await src.refresh("startup")
    # max-age=5 is below min_refresh_interval: clamped to 30 s (minus up to 10% jitter).
    assert 27 <= src._next_due - clock.now <= 30
    assert await src.refresh("scheduled")
    assert server.requests[-1]["if-none-match"] == '"v1"'
    assert fetches("etag", "not_modified", "scheduled") == 1
    server.headers = {"cache-control": "max-age=86400"}
    server.etag = '"v2"'
    assert await src.refresh("scheduled")
    assert 270 <= src._next_due - clock.now <= 300  # clamped to refresh_interval


async def test_removed_key_stops_verifying_at_the_swap(server: JwksServer, session: Any) -> None:
    server.set(jwks(A, B))
    src = source("revoke", provider(jwks_uri=server.url), session, Clock())
    assert await src.refresh("startup")
    server.set(jwks(B))
    assert await src.refresh("scheduled")
    ks = src.usable()
    assert ks is not None and A.kid not in ks.kids and ks.candidates(A.kid, "RS256") == ()


async def test_unknown_kid_refetch_is_shared_and_rate_limited(
    server: JwksServer, session: Any
) -> None:
    server.set(jwks(A))
    clock = Clock()
    src = source("storm", provider(jwks_uri=server.url, min_refresh_interval="30s"), session, clock)
    assert await src.refresh("startup")
    before = server.fetches
    first = src.refetch_for_unknown_kid("k1")
    joined = src.refetch_for_unknown_kid("k2")
    assert first is not None and joined is not None
    assert await first and await joined
    assert server.fetches == before + 1
    assert server.requests[-1]["cache-control"] == "no-cache"
    assert src.refetch_for_unknown_kid("k3") is None, "second fetch within the interval"
    clock.now += 31
    src.mark_absent("k1")
    assert src.refetch_for_unknown_kid("k1") is None, "kid just proven absent"
    again = src.refetch_for_unknown_kid("k4")
    assert again is not None and await again
    assert server.fetches == before + 2


async def test_discovery_follows_jwks_uri_and_checks_issuer(session: Any) -> None:
    with JwksServer() as disco, JwksServer(jwks(A)) as keyserver:
        disco.set({"issuer": disco.base, "jwks_uri": keyserver.url})
        p = Provider(issuer=disco.base, audiences=(), discovery=True)
        src = source("disco", p, session, Clock())
        assert await src.refresh("startup")
        assert src.usable().kids == {A.kid}  # type: ignore[union-attr]
        disco.set({"issuer": "https://elsewhere.example", "jwks_uri": keyserver.url})
        wrong = source("disco2", p, session, Clock())
        assert not await wrong.refresh("startup")
        assert "different issuer" in (wrong.last_error or "")


async def test_jwks_file_is_reread_on_change_and_bad_file_keeps_keys(
    tmp_path: Path, session: Any
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(A)))
    src = source("file", Provider(issuer=ISS, audiences=(), jwks_file=path), session, Clock())
    assert await src.refresh("startup")
    fetcher = src._fetcher
    assert isinstance(fetcher, keys.FileFetcher) and not fetcher.changed()
    tmp = tmp_path / "new.json"
    tmp.write_text(json.dumps(jwks(A, B)))
    tmp.replace(path)  # atomic replace, as a Kubernetes ConfigMap update does
    assert fetcher.changed()
    assert await src.refresh("file")
    assert src.usable().kids == {A.kid, B.kid}  # type: ignore[union-attr]
    path.write_text("{not json")
    assert not await src.refresh("file")
    assert src.usable().kids == {A.kid, B.kid}  # type: ignore[union-attr]


async def test_background_loop_retries_until_the_issuer_is_up(server: JwksServer) -> None:
    server.set(jwks(A))
    server.fail_with = 503
    async with aiohttp.ClientSession() as session:
        src = keys.build("loop", provider(jwks_uri=server.url), lambda: session)
        src.start()
        try:
            assert not await src.wait_ready(0.3)
            server.fail_with = None
            assert await src.wait_ready(15)
            assert server.fetches >= 2
        finally:
            await src.stop()


def test_backoff_grows_and_is_capped() -> None:
    for attempt in range(30):
        delay = keys.backoff(attempt, base=0.5, cap=30)
        assert 0 < delay <= min(30, 0.5 * 2**attempt)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_fetch_failures_are_told_in_an_operators_words(
    server: JwksServer, session: Any
) -> None:
    """/readyz's last_error and the log say what happened, never only a class name."""
    port = _closed_port()
    refused = source("refused", provider(jwks_uri=f"http://127.0.0.1:{port}/j"), session, Clock())
    assert not await refused.refresh("startup")
    assert refused.last_error == f"JWKS fetch failed: connection refused by 127.0.0.1:{port}"

    unresolvable = provider(jwks_uri="http://no-such-host.invalid/jwks")
    dns = source("dns", unresolvable, session, Clock())
    assert not await dns.refresh("startup")
    assert dns.last_error == "JWKS fetch failed: name not resolved: no-such-host.invalid"

    server.fail_with = 404
    missing = source("missing", provider(jwks_uri=server.url), session, Clock())
    assert not await missing.refresh("startup")
    assert missing.last_error == f"JWKS: HTTP 404 from {server.url}"


async def test_inline_keys_never_go_stale_or_expire(session: Any) -> None:
    """Keys written in the config are not fetched again, so age means nothing for them:
    a provider with inline `jwks` must still verify a year later."""
    clock = Clock()
    src = source("inline", provider(jwks_uri=None, jwks=jwks(A)), session, clock)
    assert await src.refresh("startup")
    clock.now += 365 * 86400
    assert src.state() is keys.KeyState.FRESH
    assert src.usable() is not None
    # Nor does the age an alert reads: a year-old inline key set is not stale.
    src.publish_age()
    assert gauge("extauthz_jwks_age_seconds", "inline") == 0


def gauge(name: str, provider: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"provider": provider})


async def test_age_and_max_stale_are_exported_for_alerts(server: JwksServer, session: Any) -> None:
    server.set(jwks(A))
    clock = Clock()
    p = provider(jwks_uri=server.url, max_stale="2h")
    src = source("aged", p, session, clock)
    assert gauge("extauthz_jwks_max_stale_seconds", "aged") == 7200
    assert await src.refresh("startup")
    clock.now += 90
    src.publish_age()
    assert gauge("extauthz_jwks_age_seconds", "aged") == 90
