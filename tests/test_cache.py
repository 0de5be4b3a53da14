"""Verified-token cache: a hit skips the signature only; time, revocation and policy still apply."""

from __future__ import annotations

import time
from typing import Any

import pytest

from extauthz import config, metrics
from extauthz.core import verifier, verify
from extauthz.core.cache import Entry, TokenCache, digest
from extauthz.core.decision import NeedKeys
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.keys import jwks
from tests.support.answers import wire
from tests.support.signing import Signer, claims

ISS = "https://issuer.example"
A, B = Signer("ES256"), Signer("RS256")
CFG = config.from_mapping(
    {
        "providers": {
            "p": {"issuer": ISS, "audiences": ["api"], "jwks": {"keys": []}, "clock_skew": "10s"}
        },
        "rules": [
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }
)
NOW = time.time()


def hits() -> float:
    return metrics.REGISTRY.get_sample_value("extauthz_token_cache_total", {"result": "hit"}) or 0


class Counting:
    """Counts signature verifications by wrapping verify_token (the real one runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = verify.verify_token

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(verifier, "verify_token", counted)


def policy_with_cache(size: int) -> Policy:
    return Policy(config.with_server(CFG, token_cache_size=size))


def cache_of(policy: Policy) -> TokenCache:
    """The verified-token cache inside the policy's verifier (white-box tests only)."""
    cache = policy.verifier._cache
    assert cache is not None
    return cache


def decide(policy: Policy, token: str, keyset: jwks.KeySet, now: float, path: str = "/x") -> Any:
    req = AuthRequest(path=path, headers={"authorization": f"Bearer {token}"})
    return policy.decide(req, lambda _: keyset, now)


def test_hit_skips_signature_but_rechecks_time(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counting(monkeypatch)
    policy = policy_with_cache(100)
    keyset = jwks.parse_keyset({"keys": [A.jwk()]})
    token = A.sign(claims(ISS, "api", now=NOW, ttl=60))
    before = hits()
    assert decide(policy, token, keyset, NOW).allowed
    assert decide(policy, token, keyset, NOW + 1).allowed
    assert counter.calls == 1 and hits() == before + 1
    # Still cached, but now past exp + skew: the hit must not outlive exp.
    late = decide(policy, token, keyset, NOW + 60 + 11)
    assert not late.allowed and late.reason == "expired"


def test_policy_always_runs_on_a_hit() -> None:
    policy = policy_with_cache(100)
    keyset = jwks.parse_keyset({"keys": [A.jwk()]})
    token = A.sign(claims(ISS, "api", now=NOW))
    assert decide(policy, token, keyset, NOW).allowed
    d = decide(policy, token, keyset, NOW, path="/admin")
    assert not d.allowed and wire(d).http_status == 403


def test_revoked_key_stops_cached_tokens() -> None:
    policy = policy_with_cache(100)
    cache = cache_of(policy)
    both = jwks.parse_keyset({"keys": [A.jwk(), B.jwk()]})
    token = A.sign(claims(ISS, "api", now=NOW))
    assert decide(policy, token, both, NOW).allowed
    assert len(cache) == 1
    without_a = jwks.parse_keyset({"keys": [B.jwk()]})
    assert cache.purge("p", without_a.thumbprints) == 1
    assert isinstance(decide(policy, token, without_a, NOW), NeedKeys)  # its kid is gone
    # Even without the purge, a hit whose key left the set is not used.
    cache.put(digest(token), Entry("p", both.by_kid[A.kid][0].thumbprint, A.kid, NOW + 60, 0))
    assert isinstance(decide(policy, token, without_a, NOW), NeedKeys)


def test_cache_is_bounded_and_evicts_oldest() -> None:
    cache = TokenCache(3)
    for i in range(5):
        cache.put(bytes([i]), Entry("p", "t", None, 1, 0))
    assert len(cache) == 3
    assert cache.get(bytes([0])) is None and cache.get(bytes([4])) is not None


def test_cache_size_zero_disables_it(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counting(monkeypatch)
    policy = policy_with_cache(0)
    keyset = jwks.parse_keyset({"keys": [A.jwk()]})
    token = A.sign(claims(ISS, "api", now=NOW))
    for _ in range(3):
        assert decide(policy, token, keyset, NOW).allowed
    assert counter.calls == 3


def test_cache_never_holds_the_token() -> None:
    policy = policy_with_cache(10)
    cache = cache_of(policy)
    token = A.sign(claims(ISS, "api", now=NOW))
    assert decide(policy, token, jwks.parse_keyset({"keys": [A.jwk()]}), NOW).allowed
    stored = repr((cache._slot, cache._refs))
    for part in token.split("."):
        assert part not in stored
    assert "user-1" not in stored  # no claims either
