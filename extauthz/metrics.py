"""Prometheus metrics (prefix ``extauthz_``). Label sets are bounded: never a token,
``sub`` or path. Label children are cached so recording costs a dict lookup."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CHECKS = Counter(
    "extauthz_check",
    "Authorization decisions.",
    ["decision", "reason", "provider", "rule"],
    registry=REGISTRY,
)
CHECK_DURATION = Histogram(
    "extauthz_check_duration_seconds",
    "Time to decide one Check call, excluding gRPC transport.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
JWKS_FETCHES = Counter(
    "extauthz_jwks_fetch",
    "JWKS fetch attempts.",
    ["provider", "result", "trigger"],
    registry=REGISTRY,
)
JWKS_KEYS = Gauge(
    "extauthz_jwks_keys",
    "Usable keys in the current key set.",
    ["provider"],
    registry=REGISTRY,
)
JWKS_AGE = Gauge(
    "extauthz_jwks_age_seconds",
    "Seconds since the key set was last confirmed by a successful fetch.",
    ["provider"],
    registry=REGISTRY,
)
UNKNOWN_KID = Counter(
    "extauthz_unknown_kid",
    "Tokens whose kid was not in the provider's key set.",
    ["provider"],
    registry=REGISTRY,
)
TOKEN_CACHE = Counter(
    "extauthz_token_cache",
    "Verified-token cache lookups.",
    ["result"],
    registry=REGISTRY,
)


@lru_cache(maxsize=4096)
def check_counter(decision: str, reason: str, provider: str, rule: str) -> Counter:
    return CHECKS.labels(decision, reason, provider, rule)
