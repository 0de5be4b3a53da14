"""Prometheus metrics (prefix ``extauthz_``). Label sets are bounded: never a token,
``sub`` or path. Label children are cached so recording costs a dict lookup."""

from __future__ import annotations

import os
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
#: Set by the worker supervisor before workers start (prometheus multiprocess mode).
#: Read when asked, not at import: the supervisor imports this module before it sets it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CHECKS = Counter(
    "extauthz_check",
    "Authorization decisions.",
    ["decision", "reason", "provider", "rule", "front_door"],
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
# With several workers (prometheus multiprocess mode) gauges aggregate over live
# workers: the fewest keys and the oldest key set are what an alert should see.
JWKS_KEYS = Gauge(
    "extauthz_jwks_keys",
    "Usable keys in the current key set.",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
JWKS_AGE = Gauge(
    "extauthz_jwks_age_seconds",
    "Seconds since the key set was last confirmed by a successful fetch.",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
# A setting, exported so that dashboards and alerts compare the key age against each
# provider's own max_stale rather than against a number copied from the config.
JWKS_MAX_STALE = Gauge(
    "extauthz_jwks_max_stale_seconds",
    "The provider's max_stale: at this key age its requests get 503 keys_unavailable.",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
JWKS_KEYS_SKIPPED = Gauge(
    "extauthz_jwks_keys_skipped",
    "Keys of the current JWKS that were skipped as unusable or unsafe (each logged).",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
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
INTROSPECTIONS = Counter(
    "extauthz_introspection",
    "Calls to an introspection endpoint (RFC 7662), by answer: active, inactive, error.",
    ["provider", "result"],
    registry=REGISTRY,
)
INTROSPECTION_DURATION = Histogram(
    "extauthz_introspection_duration_seconds",
    "Time for one call to an introspection endpoint, errors and timeouts included.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
INTROSPECTION_CACHE = Counter(
    "extauthz_introspection_cache",
    "Opaque tokens answered from the introspection cache (hit) or sent to the endpoint (miss).",
    ["provider", "result"],
    registry=REGISTRY,
)
DPOP = Counter(
    "extauthz_dpop",
    "DPoP-scheme requests and DPoP-bound tokens, by outcome.",
    ["provider", "result"],
    registry=REGISTRY,
)
REPLAY_STORE_ERRORS = Counter(
    "extauthz_replay_store_errors",
    "Times the DPoP replay store could not be asked (the request got a 503).",
    registry=REGISTRY,
)
EVENT_LOOP_STALLS = Counter(
    "extauthz_event_loop_stalls",
    "Times the event loop was blocked for more than 250 ms (HTTP door requests and "
    "waiting gRPC checks waited too).",
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "extauthz_config_reload",
    "Configuration reloads (SIGHUP or file change).",
    ["result"],
    registry=REGISTRY,
)
# Both series exist from the start at 0: a counter child created by its first increment
# is a new series to Prometheus, whose increase() cannot see that first failure.
for _result in ("success", "error"):
    CONFIG_RELOADS.labels(_result)


@lru_cache(maxsize=4096)
def check_counter(decision: str, reason: str, provider: str, rule: str, front_door: str) -> Counter:
    return CHECKS.labels(decision, reason, provider, rule, front_door)


@lru_cache(maxsize=256)
def introspection_cache_counter(provider: str, result: str) -> Counter:
    return INTROSPECTION_CACHE.labels(provider, result)


def exposition_registry() -> CollectorRegistry:
    """What /metrics serves: this process, or the aggregate of every worker."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        # prometheus_client leaves MultiProcessCollector.__init__ unannotated.
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY
