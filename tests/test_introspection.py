"""Opaque tokens through RFC 7662 introspection, in process against a real endpoint:
what the endpoint receives, what is cached and for how long, one call per token, and
every failure a 503 that is never cached."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import aiohttp
import pytest

from extauthz import config, errors, metrics
from extauthz.authorizer import Authorizer
from extauthz.core.decision import Decision
from extauthz.core.introspected import Answer, AnswerCache, kept_until
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.errors import ConfigError, DenyKind
from extauthz.introspection import Introspector
from extauthz.server.process import ServingProcess
from tests.support.http import http_request
from tests.support.introspection_server import IntrospectionServer
from tests.support.server import ServerThread
from tests.support.signing import Signer, claims, jwks

ISSUER = "https://idp.example"
SECRET = "s3cret with:colon%and space"
NOW = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "introspection-secret"
    path.write_text(SECRET + "\n")  # the newline `echo` leaves is not part of it
    return path


@pytest.fixture
def endpoint() -> Iterator[IntrospectionServer]:
    with IntrospectionServer() as server:
        yield server


def provider(endpoint: IntrospectionServer, secret_file: Path, **intro: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audiences": ["api"],
        "claims_to_headers": {"x-user-id": "sub"},
        "introspection": {
            "endpoint": endpoint.url,
            "client_id": "ext authz",
            "client_secret_file": str(secret_file),
            **intro,
        },
    }


def active(sub: object = "alice", **more: Any) -> dict[str, Any]:
    return {"active": True, "iss": ISSUER, "aud": "api", "sub": sub, "exp": NOW + 3600, **more}


def request(token: str, path: str = "/x") -> AuthRequest:
    return AuthRequest(
        method="GET",
        host="api.example",
        path=path,
        headers={"authorization": f"Bearer {token}"},
        context_extensions={},
    )


@pytest.fixture
async def built(
    endpoint: IntrospectionServer, secret_file: Path
) -> AsyncIterator[tuple[Authorizer, Clock]]:
    clock = Clock()
    cfg = config.from_mapping(
        {"providers": {"corp": provider(endpoint, secret_file, cache_ttl="60s")}}
    )
    introspector = Introspector("corp", cfg.providers["corp"], clock=clock)
    yield Authorizer(Policy(cfg), {}, introspectors={"corp": introspector}, clock=clock), clock
    await introspector.close()


def allowed(decision: Decision) -> bool:
    return decision.allowed and decision.reason == "ok"


# --- the call ------------------------------------------------------------------------


async def test_the_endpoint_receives_exactly_the_form_and_basic_credentials(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, _ = built
    endpoint.answers["opaque-1"] = active()
    decision = await authorizer.check(request("opaque-1"))
    assert allowed(decision)
    assert decision.set_headers == (("x-user-id", "alice"),)
    assert decision.metadata is not None and decision.metadata["sub"] == "alice"
    (seen,) = endpoint.requests
    assert seen["method"] == "POST" and seen["path"] == "/introspect"
    assert seen["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(seen["body"].decode()) == [
        ("token", "opaque-1"),
        ("token_type_hint", "access_token"),
    ]
    scheme, _, blob = seen["headers"]["authorization"].partition(" ")
    user, _, password = base64.b64decode(blob).decode().partition(":")
    # RFC 6749 §2.3.1: each form-encoded before base64; the file's newline stripped.
    assert scheme == "Basic"
    assert (unquote_plus(user), unquote_plus(password)) == ("ext authz", SECRET)
    assert "%3A" in password  # the colon inside the secret cannot split the pair


async def test_calls_reuse_a_kept_alive_connection(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, _ = built
    for i in range(5):
        endpoint.answers[f"t{i}"] = active()
        assert allowed(await authorizer.check(request(f"t{i}")))
    assert endpoint.calls == 5
    assert len({r["peer"] for r in endpoint.requests}) == 1


# --- the answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param({"active": False}, "inactive_token", id="inactive"),
        pytest.param(active(iss="https://other.example"), "wrong_issuer", id="other-issuer"),
        pytest.param(active(aud="someone-else"), "wrong_audience", id="other-audience"),
        pytest.param(active(aud=["x", "api"]), "ok", id="audience-any-of"),
        pytest.param(active(exp=NOW - 61), "expired", id="expired-beyond-skew"),
        pytest.param(active(exp=NOW - 30), "ok", id="expired-within-skew"),
        pytest.param(active(nbf=NOW + 120), "not_yet_valid", id="not-yet-valid"),
        pytest.param(active(exp="tomorrow"), "invalid_claims", id="exp-a-string"),
        pytest.param(active(sub=7), "invalid_claims", id="sub-a-number"),
        pytest.param({"active": True, "aud": "api", "sub": "a"}, "ok", id="no-iss-no-exp"),
        pytest.param({"active": True, "sub": "a"}, "wrong_audience", id="no-aud"),
    ],
)
async def test_an_active_answer_meets_the_rules_a_jwt_meets(
    built: tuple[Authorizer, Clock],
    endpoint: IntrospectionServer,
    answer: dict[str, Any],
    reason: str,
) -> None:
    authorizer, _ = built
    endpoint.answers["tok"] = answer
    decision = await authorizer.check(request("tok"))
    assert decision.reason == reason
    assert decision.allowed == (reason == "ok")
    if reason == "inactive_token":
        assert decision.deny is DenyKind.INVALID_TOKEN
        assert decision.description == "token not active"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(500, None, id="500"),
        pytest.param(401, None, id="bad-client-credentials"),
        pytest.param(200, b"<html>", id="not-json"),
        pytest.param(200, b"[true]", id="not-an-object"),
        pytest.param(200, b'{"active": "true"}', id="active-a-string"),
        pytest.param(200, b'{"sub": "a"}', id="no-active"),
        pytest.param(200, b'{"active": true, "active": false}', id="duplicate-members"),
        pytest.param(200, b"[" * 10_000 + b"]" * 10_000, id="deeply-nested"),
    ],
)
async def test_an_unusable_answer_is_a_503_and_is_not_cached(
    built: tuple[Authorizer, Clock],
    endpoint: IntrospectionServer,
    status: int,
    body: bytes | None,
) -> None:
    authorizer, _ = built
    endpoint.fail_with = status if status != 200 else None
    endpoint.body = body
    endpoint.answers["tok"] = active()
    for _ in range(2):
        decision = await authorizer.check(request("tok"))
        assert decision.deny is DenyKind.UNAVAILABLE
        assert decision.reason == "introspection_unavailable"
    assert endpoint.calls == 2  # each request asked again
    endpoint.fail_with, endpoint.body = None, None
    assert allowed(await authorizer.check(request("tok")))  # back at once


async def test_an_unreachable_endpoint_is_a_503_then_recovers(secret_file: Path) -> None:
    holder = IntrospectionServer({"tok": active()})
    url = holder.url
    holder._server.server_close()  # the port is closed: connection refused
    cfg = config.from_mapping(
        {
            "providers": {
                "corp": {
                    "issuer": ISSUER,
                    "audiences": ["api"],
                    "introspection": {
                        "endpoint": url,
                        "client_id": "x",
                        "client_secret_file": str(secret_file),
                    },
                }
            }
        }
    )
    introspector = Introspector("corp", cfg.providers["corp"], clock=Clock())
    authorizer = Authorizer(Policy(cfg), {}, introspectors={"corp": introspector}, clock=Clock())
    try:
        decision = await authorizer.check(request("tok"))
        assert decision.reason == "introspection_unavailable"
    finally:
        await introspector.close()


# --- the cache -----------------------------------------------------------------------


async def test_an_active_answer_is_reused_until_cache_ttl_then_asked_again(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, clock = built
    endpoint.answers["tok"] = active()
    for _ in range(3):
        assert allowed(await authorizer.check(request("tok")))
    assert endpoint.calls == 1
    endpoint.answers["tok"] = {"active": False}  # revoked at the authorization server
    clock.now += 59.9
    assert allowed(await authorizer.check(request("tok")))  # still within cache_ttl
    clock.now += 0.2
    decision = await authorizer.check(request("tok"))
    assert decision.reason == "inactive_token"
    assert endpoint.calls == 2


async def test_an_answer_is_not_kept_past_its_own_exp(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, clock = built
    endpoint.answers["tok"] = active(exp=NOW + 10)
    assert allowed(await authorizer.check(request("tok")))
    clock.now += 10  # exp reached: the cache lets go (the skew only widens the check)
    endpoint.answers["tok"] = {"active": False}
    assert (await authorizer.check(request("tok"))).reason == "inactive_token"
    assert endpoint.calls == 2


async def test_an_inactive_answer_is_kept_for_negative_cache_ttl(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, clock = built
    for _ in range(3):
        assert (await authorizer.check(request("unknown"))).reason == "inactive_token"
    assert endpoint.calls == 1
    clock.now += 5
    endpoint.answers["unknown"] = active()
    assert allowed(await authorizer.check(request("unknown")))
    assert endpoint.calls == 2


def test_the_cache_is_bounded_and_keyed_by_digest() -> None:
    cache = AnswerCache(3)
    for i in range(10):
        cache.put(bytes([i]), Answer(True, {"sub": str(i)}), NOW + 60, NOW)
    assert len(cache) == 3
    assert cache.get(bytes([0]), NOW) is None  # the oldest went first
    assert cache.get(bytes([9]), NOW) is not None
    assert cache.get(bytes([9]), NOW + 60) is None  # its time is up


@pytest.mark.parametrize(
    ("claims_", "until"),
    [
        ({"exp": NOW + 10}, NOW + 10),
        ({"exp": NOW + 1000}, NOW + 60),
        ({}, NOW + 60),
        ({"exp": 10**400}, NOW + 60),
        ({"exp": float("inf")}, NOW + 60),
        ({"exp": "soon"}, NOW + 60),
    ],
)
def test_kept_until_is_the_sooner_of_exp_and_cache_ttl(
    claims_: dict[str, Any], until: float, endpoint: IntrospectionServer, secret_file: Path
) -> None:
    settings = config.from_mapping(
        {"providers": {"corp": provider(endpoint, secret_file, cache_ttl="60s")}}
    ).providers["corp"]
    assert settings.introspection is not None
    assert kept_until(Answer(True, claims_), settings.introspection, NOW) == until


# --- one call in flight per token ------------------------------------------------------


async def test_twenty_concurrent_requests_for_one_token_make_one_call(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, _ = built
    endpoint.answers["tok"] = active()
    endpoint.gate = threading.Event()
    pending = [asyncio.ensure_future(authorizer.check(request("tok"))) for _ in range(20)]
    deadline = time.monotonic() + 10
    while endpoint.calls < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # polling for the call to arrive, with a deadline
    assert endpoint.calls == 1
    endpoint.gate.set()
    decisions = await asyncio.gather(*pending)
    assert all(allowed(d) for d in decisions)
    assert endpoint.calls == 1


async def test_a_request_waits_no_longer_than_its_deadline_and_the_answer_serves_the_next(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, _ = built
    endpoint.answers["tok"] = active()
    endpoint.gate = threading.Event()
    started = time.monotonic()
    decision = await authorizer.check(request("tok"), time_remaining=0.2)
    assert decision.reason == "introspection_unavailable"
    assert time.monotonic() - started < 2.0  # half the 0.2 s deadline, plus scheduling
    endpoint.gate.set()
    deadline = time.monotonic() + 10
    while authorizer.introspectors["corp"].cached("tok", NOW) is None:
        assert time.monotonic() < deadline, "the call in flight never finished"
        await asyncio.sleep(0.01)
    assert allowed(await authorizer.check(request("tok")))
    assert endpoint.calls == 1


async def test_a_slow_endpoint_times_out_after_timeout(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    cfg = config.from_mapping(
        {"providers": {"corp": provider(endpoint, secret_file, timeout="0.3s")}}
    )
    introspector = Introspector("corp", cfg.providers["corp"])
    authorizer = Authorizer(Policy(cfg), {}, introspectors={"corp": introspector})
    endpoint.gate = threading.Event()
    try:
        decision = await authorizer.check(request("tok"))
        assert decision.reason == "introspection_unavailable"
    finally:
        endpoint.gate.set()
        await introspector.close()


# --- tokens that never reach the endpoint ----------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param("a" * 9000, "too_large", id="too-large"),
        pytest.param("tok&token=other", "malformed", id="form-injection"),
        pytest.param("t\u00e9k", "malformed", id="not-ascii"),
        pytest.param("a=b", "malformed", id="padding-inside"),
    ],
)
async def test_a_token_that_is_not_a_b64token_is_never_sent(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer, token: str, reason: str
) -> None:
    authorizer, _ = built
    decision = await authorizer.check(request(token))
    assert decision.reason == reason and not decision.allowed
    assert endpoint.calls == 0


async def test_jwts_keep_the_jwt_path_beside_an_introspection_provider(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    signer = Signer("EdDSA")
    cfg = config.from_mapping(
        {
            "providers": {
                "jwt": {"issuer": "https://jwt.example", "audiences": ["api"],
                        "jwks": jwks(signer)},
                "corp": provider(endpoint, secret_file),
            }
        }
    )  # fmt: skip
    from extauthz.keys import source as keysource

    sources = {"jwt": keysource.build("jwt", cfg.providers["jwt"], lambda: aiohttp.ClientSession())}
    sources["jwt"].start()
    introspector = Introspector("corp", cfg.providers["corp"])
    authorizer = Authorizer(Policy(cfg), sources, introspectors={"corp": introspector})
    try:
        await sources["jwt"].wait_ready(5)
        token = signer.sign(claims("https://jwt.example", aud="api"))
        assert allowed(await authorizer.check(request(token)))
        endpoint.answers["opaque"] = active()
        assert allowed(await authorizer.check(request("opaque")))
        assert endpoint.calls == 1  # the JWT was never introspected
        # A JWT naming the introspection provider's issuer is not sent there either.
        stray = signer.sign(claims(ISSUER, aud="api"))
        assert (await authorizer.check(request(stray))).reason == "wrong_issuer"
        assert endpoint.calls == 1
    finally:
        await sources["jwt"].stop()
        await introspector.close()


# --- configuration and the serving process ---------------------------------------------


def test_the_secret_is_read_stripped_and_never_shown(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    cfg = config.from_mapping({"providers": {"corp": provider(endpoint, secret_file)}})
    settings = cfg.providers["corp"].introspection
    assert settings is not None and settings.client_secret == SECRET
    for text in (repr(cfg), str(cfg), config.summary(cfg)):
        assert SECRET not in text and "s3cret" not in text
    assert "not shown" in config.summary(cfg)


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        pytest.param({"client_secret_file": "/nonexistent/secret"},
                     "providers.corp.introspection.client_secret_file",
                     "No such file", id="missing-secret"),
        pytest.param({"endpoint": "ftp://idp.example/i"},
                     "providers.corp.introspection.endpoint", "http", id="not-http"),
        pytest.param({"cache_ttl": "soon"}, "providers.corp.introspection.cache_ttl",
                     "", id="bad-duration"),
        pytest.param({"timeout": "0s"}, "providers.corp.introspection.timeout",
                     "more than 0", id="no-time-at-all"),
        pytest.param({"endpoint": "https://user:pw@idp.example/i"},
                     "providers.corp.introspection.endpoint", "credentials", id="userinfo"),
        pytest.param({"ca_file": "/nonexistent/ca.pem"}, "providers.corp.introspection.ca_file",
                     "cannot load", id="missing-ca"),
    ],
)  # fmt: skip
def test_a_bad_introspection_setting_names_its_key(
    endpoint: IntrospectionServer, secret_file: Path, change: dict[str, Any], path: str, words: str
) -> None:
    data = provider(endpoint, secret_file)
    data["introspection"].update(change)
    with pytest.raises(ConfigError) as caught:
        config.from_mapping({"providers": {"corp": data}})
    assert any(p == path and words in m for p, m in caught.value.problems), caught.value.problems


def test_an_empty_secret_file_is_refused(endpoint: IntrospectionServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.from_mapping({"providers": {"corp": provider(endpoint, empty)}})


def test_two_introspection_providers_need_rules_that_tell_them_apart(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    a = provider(endpoint, secret_file)
    b = {**provider(endpoint, secret_file), "issuer": "https://other.example"}
    with pytest.raises(ConfigError) as caught:
        config.from_mapping({"providers": {"a": a, "b": b}})
    assert [p for p, _ in caught.value.problems] == ["providers"]
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(
            {"providers": {"a": a, "b": b},
             "rules": [{"name": "x", "match": {"path_prefix": "/x"}, "providers": ["a"]},
                       {"name": "rest", "providers": ["a", "b"]}]}
        )  # fmt: skip
    assert [p for p, _ in caught.value.problems] == ["rules.1.providers"]
    config.from_mapping(
        {"providers": {"a": a, "b": b},
         "rules": [{"name": "x", "match": {"path_prefix": "/x"}, "providers": ["a"]},
                   {"name": "rest", "providers": ["b"]}]}
    )  # fmt: skip


def test_a_provider_needs_a_key_source_or_introspection(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    bare = {"issuer": ISSUER, "audiences": ["api"]}
    with pytest.raises(ConfigError, match="or introspection"):
        config.from_mapping({"providers": {"corp": bare}})
    both = {**provider(endpoint, secret_file), "jwks": {"keys": []}}
    assert config.from_mapping({"providers": {"corp": both}}).providers["corp"].has_keys


async def test_an_introspection_only_process_is_ready_at_once_and_reload_keeps_answers(
    endpoint: IntrospectionServer, secret_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "extauthz.yaml"
    corp = provider(endpoint, secret_file)
    data = {"server": {"listen": "127.0.0.1:0", "admin_listen": None}, "providers": {"corp": corp}}
    path.write_text(json.dumps(data))
    process = ServingProcess(config.load(path), config_path=path)
    await process.start()
    try:
        assert process.ready
        status = process.status()
        assert status["providers"]["corp"]["introspection"]["endpoint"] == endpoint.url
        endpoint.answers["tok"] = active(exp=time.time() + 600)
        assert process.authorizer is not None
        assert allowed(await process.authorizer.check(request("tok")))
        # A reload that leaves introspection alone keeps the answers (no second call).
        corp["claims_to_headers"] = {"x-user": "sub"}
        path.write_text(json.dumps(data))
        assert await process.reload("test")
        decision = await process.authorizer.check(request("tok"))
        assert allowed(decision) and decision.set_headers == (("x-user", "alice"),)
        assert endpoint.calls == 1
        # A new secret in the file is read by the reload: a new client, a new cache.
        secret_file.write_text("another secret\n")
        path.write_text(json.dumps(data) + "\n")
        assert await process.reload("test")
        assert allowed(await process.authorizer.check(request("tok")))
        assert endpoint.calls == 2
        _, _, blob = endpoint.requests[-1]["headers"]["authorization"].partition(" ")
        assert base64.b64decode(blob).decode().endswith(":another+secret")
    finally:
        await process.stop(grace=0.1)


async def test_introspection_metrics_count_each_answer(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    def count(result: str, name: str = "extauthz_introspection_total") -> float:
        return sum(
            s.value
            for m in metrics.REGISTRY.collect()
            for s in m.samples
            if s.name == name and s.labels == {"provider": "corp", "result": result}
        )

    def lookups(result: str) -> float:
        return count(result, "extauthz_introspection_cache_total")

    before = {r: count(r) for r in ("active", "inactive", "error")}
    looked = {r: lookups(r) for r in ("hit", "miss")}
    authorizer, _ = built
    endpoint.answers["tok"] = active()
    await authorizer.check(request("tok"))
    await authorizer.check(request("tok"))  # cached: no call, no count
    await authorizer.check(request("gone"))
    endpoint.fail_with = 500
    await authorizer.check(request("other"))
    assert {r: count(r) - before[r] for r in before} == {"active": 1, "inactive": 1, "error": 1}
    assert {r: lookups(r) - looked[r] for r in looked} == {"hit": 1, "miss": 3}


def test_an_unavailable_introspection_is_a_503_kind() -> None:
    exc = errors.IntrospectionUnavailable()
    assert exc.kind is DenyKind.UNAVAILABLE and exc.reason == "introspection_unavailable"


def test_the_http_door_waits_for_an_introspection_up_to_its_timeout(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    """The HTTP door knows no deadline: an introspection call is waited for up to the
    provider's `timeout`, not the 0.1 s an unknown kid's refetch gets."""
    data = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "http": {"listen": "127.0.0.1:0"},
        },
        "providers": {"corp": provider(endpoint, secret_file, timeout="5s")},
    }
    endpoint.answers["tok"] = active(exp=time.time() + 600)
    endpoint.gate = threading.Event()
    with ServerThread(data) as server:
        answers: list[int] = []
        asking = threading.Thread(
            target=lambda: answers.append(
                http_request(
                    "127.0.0.1",
                    server.server.http_port,
                    "GET",
                    "/x",
                    headers={"authorization": "Bearer tok"},
                ).status
            )
        )
        asking.start()
        deadline = time.monotonic() + 10
        while endpoint.calls < 1:
            assert time.monotonic() < deadline, "the introspection call never arrived"
            time.sleep(0.01)
        time.sleep(0.5)  # the endpoint is slow on purpose: 5 times the unknown-kid wait
        endpoint.gate.set()
        asking.join(10)
    assert answers == [200]


async def test_closing_lets_a_call_in_flight_answer_its_requests(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    """A reload retires an introspector while requests wait on it: they still get an
    answer (a gRPC Check without one would leave Envoy to its failure mode)."""
    authorizer, _ = built
    endpoint.answers["tok"] = active()
    endpoint.gate = threading.Event()
    waiting = asyncio.ensure_future(authorizer.check(request("tok")))
    deadline = time.monotonic() + 10
    while endpoint.calls < 1:
        assert time.monotonic() < deadline, "the call never arrived"
        await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(authorizer.introspectors["corp"].close())
    await asyncio.sleep(0)  # close() is now waiting for the call
    assert not closing.done()
    endpoint.gate.set()
    assert allowed(await waiting)
    await closing


async def test_calls_in_flight_are_bounded(
    built: tuple[Authorizer, Clock],
    endpoint: IntrospectionServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from extauthz import introspection

    monkeypatch.setattr(introspection, "MAX_IN_FLIGHT", 2)
    authorizer, _ = built
    endpoint.gate = threading.Event()
    held = [asyncio.ensure_future(authorizer.check(request(f"t{i}"))) for i in range(2)]
    deadline = time.monotonic() + 10
    while endpoint.calls < 2:
        assert time.monotonic() < deadline, "the calls never arrived"
        await asyncio.sleep(0.01)
    third = await authorizer.check(request("t3"))
    assert third.reason == "introspection_unavailable"
    assert third.description == "too many introspection calls in flight"
    endpoint.gate.set()
    await asyncio.gather(*held)
    assert endpoint.calls == 2


async def test_made_up_tokens_do_not_push_out_active_answers(
    endpoint: IntrospectionServer, secret_file: Path
) -> None:
    cfg = config.from_mapping(
        {"providers": {"corp": provider(endpoint, secret_file, cache_size=8)}}
    )
    clock = Clock()
    introspector = Introspector("corp", cfg.providers["corp"], clock=clock)
    authorizer = Authorizer(Policy(cfg), {}, introspectors={"corp": introspector}, clock=clock)
    try:
        endpoint.answers["real"] = active()
        assert allowed(await authorizer.check(request("real")))
        for i in range(50):  # inactive answers: their own, smaller table
            assert (await authorizer.check(request(f"junk{i}"))).reason == "inactive_token"
        assert allowed(await authorizer.check(request("real")))
        assert endpoint.calls == 51  # the real token's answer was still cached
        assert introspector.entries <= 8 + 2
    finally:
        await introspector.close()


async def test_a_large_answer_is_used_but_not_cached(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    authorizer, _ = built
    endpoint.answers["big"] = active(notes="x" * 10_000)
    for _ in range(2):
        assert allowed(await authorizer.check(request("big")))
    assert endpoint.calls == 2


async def test_an_opaque_token_with_dots_is_introspected(
    built: tuple[Authorizer, Clock], endpoint: IntrospectionServer
) -> None:
    """Three dot-separated segments are a JWS only when the first is a JSON header:
    PASETO-style tokens are opaque."""
    authorizer, _ = built
    endpoint.answers["v4.local.abc_DEF-123"] = active()
    assert allowed(await authorizer.check(request("v4.local.abc_DEF-123")))
    assert endpoint.calls == 1
