"""Configuration: one pydantic schema, validated up front, frozen afterwards.

Every problem is reported with its dotted key path (``providers.zuplo.clock_skew``);
unknown keys are errors because a typo must never silently disable a check.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .core.paths import host_name
from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"24h"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '5m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError("expected a duration such as '30s', '5m' or a number of seconds")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _freeze(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


FrozenMap = Annotated[Mapping[str, Any], AfterValidator(_freeze)]

# Asymmetric algorithms only by default; `none` is not even a valid name here.
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
    "HS256", "HS384", "HS512",
]  # fmt: skip
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


AbsoluteUrl = Annotated[str, AfterValidator(_absolute_url)]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def _header_name(value: str) -> str:
    value = value.lower()
    if not _HEADER_NAME.match(value):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def compile_regex(pattern: str) -> Any:
    """RE2 (as Envoy's safe_regex): linear time, so no pattern can be a ReDoS."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _workers(value: object) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("expected a number of processes (1 or more) or 'auto'")


def _claim_value(value: object) -> str | int | bool:
    if isinstance(value, str | int | bool):
        return value
    raise ValueError("expected a string, a number or true/false")


ClaimValue = Annotated[str | int | bool, PlainValidator(_claim_value)]


def _Coherence(found: list[tuple[str, str]]) -> PydanticCustomError:
    """A check across keys failed. from_mapping drops these: its own pass over the raw
    mapping reports the same problems with their exact key paths, beside field errors."""
    detail = "; ".join(f"{path}: {message}" if path else message for path, message in found)
    return PydanticCustomError("coherence", "{detail}", {"detail": detail})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSource(_Model):
    """Where to look for a token: exactly one of header, cookie, query."""

    header: HeaderName | None = None
    prefix: str | None = None
    cookie: str | None = Field(default=None, min_length=1)
    query: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenSource:
        kinds = [k for k in ("header", "cookie", "query") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("set exactly one of 'header', 'cookie' or 'query'")
        if self.prefix is not None and self.header is None:
            raise ValueError("'prefix' is only valid with 'header'")
        return self

    def describe(self) -> str:
        if self.header is not None:
            if self.prefix is not None and self.prefix.lower() == "bearer ":
                return f"header {self.header} (Bearer or DPoP)"  # see core/tokens.py
            return f"header {self.header}" + (f" ({self.prefix.strip()})" if self.prefix else "")
        if self.cookie is not None:
            return f"cookie {self.cookie}"
        return f"query {self.query}"


DEFAULT_TOKEN_SOURCES = (TokenSource(header="authorization", prefix="Bearer "),)


DPOP_ALGORITHMS: tuple[Algorithm, ...] = ("ES256", "EdDSA", "RS256", "PS256")


class DpopSettings(_Model):
    """RFC 9449 proof-of-possession for this provider's DPoP-bound tokens."""

    required: bool = False  # true: plain Bearer tokens are refused for this provider
    algorithms: tuple[Algorithm, ...] = Field(default=DPOP_ALGORITHMS, min_length=1)
    max_age: Duration = 60.0  # a proof's `iat` may be this old (plus clock_skew)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        symmetric = [a for a in value if a.startswith("HS")]
        if symmetric:
            raise ValueError(f"{', '.join(symmetric)}: a DPoP proof is signed with a public key")
        return value


class IntrospectionSettings(_Model):
    """RFC 7662: opaque tokens are sent to the authorization server's endpoint."""

    endpoint: str
    client_id: str = Field(min_length=1)
    client_secret_file: Path = Field(repr=False)
    cache_ttl: Duration = 60.0  # an active answer is reused until min(exp, this)
    negative_cache_ttl: Duration = 5.0  # an inactive answer is reused this long
    timeout: Duration = Field(default=2.0, gt=0)
    cache_size: int = Field(default=10_000, ge=1)  # answers kept, per provider
    ca_file: Path | None = None  # else the system's CAs verify an https:// endpoint
    # Read from client_secret_file at every load (start, reload); never shown.
    _secret: str = PrivateAttr(default="")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        if urlsplit(value).username is not None:
            raise ValueError(
                "must not carry credentials (user:password@): extauthz authenticates with "
                "client_id and client_secret_file, and the URL is logged"
            )
        return value

    @field_validator("ca_file")
    @classmethod
    def _usable_ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                why = getattr(exc, "strerror", None) or "not PEM certificates"
                raise ValueError(f"cannot load {value}: {why}") from None
        return value

    @field_validator("client_secret_file")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        _read_secret(value)
        return value

    @model_validator(mode="after")
    def _load_secret(self) -> IntrospectionSettings:
        self._secret = _read_secret(self.client_secret_file)
        return self

    @property
    def client_secret(self) -> str:
        return self._secret


def _read_secret(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {why}") from None
    secret = text.rstrip("\r\n")  # the newline an editor or `echo` leaves
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


class Provider(_Model):
    issuer: str = Field(min_length=1)
    # Required on purpose: `[]` disables the audience check, but only explicitly.
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    discovery: bool = False
    jwks_file: Path | None = None
    jwks: FrozenMap | None = Field(default=None, repr=False)  # may hold `oct` secrets
    algorithms: tuple[Algorithm, ...] = DEFAULT_ALGORITHMS
    refresh_interval: Duration = 300.0
    min_refresh_interval: Duration = 30.0
    max_stale: Duration = 86400.0
    fetch_timeout: Duration = 5.0
    clock_skew: Duration = 60.0
    max_lifetime: Duration | None = None
    required_claims: tuple[str, ...] = ()
    # Smaller RSA keys in this provider's JWKS are skipped at load (and logged).
    min_rsa_bits: int = Field(default=2048, ge=1024, le=16384)
    token_sources: tuple[TokenSource, ...] = DEFAULT_TOKEN_SOURCES
    forward_token: bool = True
    claims_to_headers: Mapping[HeaderName, str] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    payload_header: HeaderName | None = None
    # RFC 9449: DPoP-bound tokens (cnf.jkt) and their proofs; absent: such tokens are
    # refused, as DPoP-scheme requests are.
    dpop: DpopSettings | None = None
    # RFC 9068 / RFC 8725 §3.11: the token's `typ` header must be this (e.g. "at+jwt").
    require_typ: str | None = Field(default=None, min_length=1)
    # RFC 9728: the URL of this resource's protected-resource metadata, named in every
    # 401 and 403 challenge for this provider (MCP clients discover the issuer from it).
    resource_metadata: AbsoluteUrl | None = None
    # RFC 7662: opaque tokens (not a compact JWS) are introspected at this endpoint.
    introspection: IntrospectionSettings | None = None

    @field_validator("jwks_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @field_validator("token_sources")
    @classmethod
    def _some_source(cls, value: tuple[TokenSource, ...]) -> tuple[TokenSource, ...]:
        if not value:
            raise ValueError("at least one token source is required")
        return value

    @field_validator("claims_to_headers")
    @classmethod
    def _freeze_headers(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        return MappingProxyType(dict(value))

    @model_validator(mode="after")
    def _coherent(self) -> Provider:
        found = provider_problems(_plain(self))
        if found:
            raise _Coherence(found)
        return self

    #: The settings a key source depends on; a reload keeps the source when they are equal.
    KEY_SETTINGS: ClassVar[tuple[str, ...]] = (
        "issuer", "jwks_uri", "discovery", "jwks_file", "jwks", "refresh_interval",
        "min_refresh_interval", "max_stale", "fetch_timeout", "min_rsa_bits",
    )  # fmt: skip

    def same_keys(self, other: Provider) -> bool:
        return all(getattr(self, k) == getattr(other, k) for k in self.KEY_SETTINGS)

    @property
    def has_keys(self) -> bool:
        """It verifies JWTs (a key source is set), not only introspects opaque tokens."""
        return any(getattr(self, k) not in (None, False) for k in _KEY_SOURCES)

    @property
    def key_source(self) -> str:
        if not self.has_keys:
            return "none (opaque tokens only, by introspection)"
        if self.jwks_uri is not None:
            return f"jwks_uri {self.jwks_uri}"
        if self.discovery:
            return f"discovery {self.issuer.rstrip('/')}/.well-known/openid-configuration"
        if self.jwks_file is not None:
            return f"jwks_file {self.jwks_file}"
        return "inline jwks"


class ProtectedResource(_Model):
    """RFC 9728 metadata served by the HTTP front door at
    ``/.well-known/oauth-protected-resource``."""

    resource: AbsoluteUrl
    authorization_servers: tuple[AbsoluteUrl, ...] = Field(min_length=1)
    scopes_supported: tuple[str, ...] = ()


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR range") from None


class HttpSettings(_Model):
    """The ``server.http:`` section: the HTTP front door (forward-auth)."""

    listen: str
    path_prefix: str = Field(default="", pattern=r"^(/[^?#\s]*)?$")
    original_request: Literal["request", "forwarded", "original"] = "request"
    trusted_proxies: tuple[Annotated[str, AfterValidator(_network)], ...] = (
        "127.0.0.1/32",
        "::1/128",
    )
    client_cert_header: HeaderName | None = None
    protected_resource: ProtectedResource | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value


class TLS(_Model):
    cert_file: Path
    key_file: Path = Field(repr=False)
    client_ca_file: Path | None = None


_REDIS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)


class TracingSettings(_Model):
    """The ``server.tracing:`` section: OpenTelemetry spans sent over OTLP/HTTP."""

    otlp_endpoint: AbsoluteUrl
    # Requests without a trace context: the share traced. A parent's choice is followed.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = Field(default="extauthz", min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        if urlsplit(value).username is not None:
            raise ValueError(
                "must not carry credentials (user:password@): the URL is shown by "
                "check-config; set OTEL_EXPORTER_OTLP_TRACES_HEADERS instead"
            )
        return value

    @model_validator(mode="after")
    def _installed(self) -> TracingSettings:
        from .tracing import missing_packages  # no OpenTelemetry import: a lookup only

        absent = missing_packages()
        if absent:
            raise ValueError(
                f"the OpenTelemetry packages are not installed ({', '.join(absent)}): "
                "pip install 'extauthz[tracing]'"
            )
        return self


class ServerSettings(_Model):
    """The ``server:`` section: listeners, processes, caches, TLS, shutdown."""

    listen: str = "0.0.0.0:9191"
    admin_listen: str | None = "127.0.0.1:9192"
    workers: Annotated[int | Literal["auto"], PlainValidator(_workers)] = 1
    # Threads per process deciding gRPC Checks. A Check that waits (an unknown kid's
    # refetch, an introspection call, Redis) holds its thread while it waits.
    grpc_threads: int = Field(default=8, ge=1, le=256)
    token_cache_size: int = Field(default=100_000, ge=0)
    realm: str = Field(default="extauthz", pattern=r'^[^"\\\r\n]*$')
    tls: TLS | None = None
    # On SIGTERM: NOT_SERVING at once, keep answering this long, then drain and exit.
    shutdown_delay: Duration = 0.0
    http: HttpSettings | None = None
    # Where DPoP proof `jti`s are remembered: "memory" (this process) or a Redis URL
    # shared by every replica ("redis://HOST:PORT/DB", "rediss://…" for TLS).
    # Not in repr: a Redis URL may carry a password.
    replay_store: str = Field(default="memory", repr=False)
    # OpenTelemetry traces (the `tracing` extra); unset: no spans, no exporter.
    tracing: TracingSettings | None = None

    @field_validator("replay_store")
    @classmethod
    def _replay_store(cls, value: str) -> str:
        if value == "memory":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("expected memory, redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0 or parts.fragment:
            raise ValueError("expected redis://HOST:PORT/DB with a port from 1 to 65535")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError("the Redis database is a number: redis://HOST:PORT/0")
        # The TLS options are how rediss:// trusts a private CA; any other option would
        # reach the Redis client unchecked and fail every DPoP request at run time.
        unknown = sorted(set(parse_qs(parts.query, keep_blank_values=True)) - _REDIS_OPTIONS)
        if unknown:
            raise ValueError(f"unsupported option(s) in the URL: {', '.join(unknown)}")
        return value

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value


class Match(_Model):
    path_prefix: str | None = None
    path_exact: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_regex(value)
            except re2.error as exc:
                detail = (
                    exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                )
                raise ValueError(f"invalid regular expression (RE2 syntax): {detail}") from None
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(m.upper() for m in value)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = tuple(host_name(h) for h in value)
        for given, name in zip(value, names, strict=True):
            if not name or name != given.lower().rstrip("."):
                raise ValueError(f"{given!r}: give a host name without a port")
        return names

    @model_validator(mode="after")
    def _one_path(self) -> Match:
        if sum(p is not None for p in (self.path_prefix, self.path_exact, self.path_regex)) > 1:
            raise ValueError("set at most one of path_prefix, path_exact, path_regex")
        return self


class Rule(_Model):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    allow_anonymous: bool = False
    providers: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, tuple[ClaimValue, ...]] = Field(
        default_factory=lambda: MappingProxyType({})
    )

    @field_validator("claims")
    @classmethod
    def _freeze_claims(
        cls, value: Mapping[str, tuple[str | int | bool, ...]]
    ) -> Mapping[str, tuple[str | int | bool, ...]]:
        return MappingProxyType(dict(value))


class Config(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    providers: Mapping[str, Provider] = Field(min_length=1)
    rules: tuple[Rule, ...] | None = None
    default_action: Literal["deny", "allow"] = "deny"

    @field_validator("providers")
    @classmethod
    def _freeze_providers(cls, value: Mapping[str, Provider]) -> Mapping[str, Provider]:
        return MappingProxyType(dict(value))

    @model_validator(mode="after")
    def _coherent(self) -> Config:
        found = config_problems(_plain(self))
        if found:
            raise _Coherence(found)
        return self


# -- checks across keys ---------------------------------------------------------------
# Written over plain mappings, so they run on the raw YAML as well: every problem is
# reported in one pass, even when other keys failed their own validation.

_KEY_SOURCES = ("jwks_uri", "discovery", "jwks_file", "jwks")
_REMOTE_SOURCES = ("jwks_uri", "discovery")


def _plain(value: Any) -> Any:
    """Models as plain mappings (what the raw checks read), without serialising."""
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _duration_or_none(value: object) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def provider_problems(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key under the provider, message) for checks that involve several keys."""
    found: list[tuple[str, str]] = []
    chosen = [k for k in _KEY_SOURCES if p.get(k) not in (None, False)]
    if len(chosen) > 1 or (not chosen and p.get("introspection") is None):
        got = ", ".join(chosen) if chosen else "none"
        found.append(
            ("", f"set exactly one key source of {', '.join(_KEY_SOURCES)}, or introspection "
                 f"for opaque tokens only (got {got})")
        )  # fmt: skip
    issuer = p.get("issuer")
    if isinstance(issuer, str) and issuer:
        parts = urlsplit(issuer)
        if not parts.scheme or not parts.netloc:
            found.append(
                ("issuer", "must be an absolute URL such as https://issuer.example "
                           "(compared exactly with each token's iss)")
            )  # fmt: skip
    algorithms = p.get("algorithms")
    if isinstance(algorithms, list | tuple):
        hmac = sorted({a for a in algorithms if isinstance(a, str) and a.startswith("HS")})
        remote = [k for k in _REMOTE_SOURCES if p.get(k) not in (None, False)]
        if hmac and remote:
            found.append(
                ("algorithms", f"{', '.join(hmac)} needs a shared secret, which a fetched "
                               f"JWKS ({remote[0]}) cannot hold: use jwks or jwks_file")
            )  # fmt: skip
    low = _duration_or_none(p.get("min_refresh_interval", 30.0))
    high = _duration_or_none(p.get("refresh_interval", 300.0))
    if low is not None and high is not None and low > high:
        found.append(("min_refresh_interval", "must not exceed refresh_interval"))
    return found


def _catch_all(match: object) -> bool:
    """A raw `match` that matches every request: any rule after it is unreachable."""
    if match is None:
        return True
    if not isinstance(match, Mapping):
        return False
    return (
        match.get("methods") is None
        and match.get("hosts") is None
        and match.get("path_exact") is None
        and match.get("path_regex") in (None, ".*", "/.*")
        and match.get("path_prefix") in (None, "/", "")
    )


def _http_problems(data: Mapping[str, Any], providers: Mapping[str, Any]) -> list[tuple[str, str]]:
    server = data.get("server")
    http = server.get("http") if isinstance(server, Mapping) else None
    if not isinstance(http, Mapping):
        return []
    found: list[tuple[str, str]] = []
    mode = http.get("original_request", "request")
    prefix = str(http.get("path_prefix") or "").strip("/")
    if http.get("protected_resource") is not None and mode == "request" and not prefix:
        found.append(
                ("server.http.protected_resource",
                 "with original_request: request, set a path_prefix: otherwise a request "
                 "for /.well-known/oauth-protected-resource cannot be told from an auth "
                 "request for that path")
            )  # fmt: skip
    for name, p in providers.items():
        if not isinstance(p, Mapping) or p.get("forward_token", True) is not False:
            continue
        sources = p.get("token_sources")
        if isinstance(sources, list) and any(
            isinstance(src, Mapping) and "query" in src for src in sources
        ):
            found.append(
                (f"providers.{name}.forward_token",
                 "false cannot remove a query token through the HTTP front door "
                 "(server.http): read the token from a header or a cookie")
            )  # fmt: skip
    return found


def _introspection_problems(
    data: Mapping[str, Any], providers: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """An opaque token names no issuer: each rule may send it to one endpoint only."""
    introspecting = [
        n for n, p in providers.items() if isinstance(p, Mapping) and p.get("introspection")
    ]
    if len(introspecting) < 2:
        return []
    found: list[tuple[str, str]] = []
    both = " and ".join(repr(n) for n in introspecting[:2])
    rules = data.get("rules")
    if not isinstance(rules, list | tuple):
        return [
            ("providers", f"providers {both} both introspect opaque tokens, and with no rules "
                          "every request accepts both: add rules that name one of them")
        ]  # fmt: skip
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or rule.get("allow_anonymous"):
            continue
        named = rule.get("providers")
        allowed = introspecting if not isinstance(named, list | tuple) else [
            n for n in introspecting if n in named
        ]  # fmt: skip
        if len(allowed) > 1:
            found.append(
                (f"rules.{i}.providers",
                 f"allows {' and '.join(repr(n) for n in allowed[:2])}, which both "
                 "introspect opaque tokens: an opaque token names no issuer, so a rule "
                 "may allow at most one of them")
            )  # fmt: skip
    return found


def config_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, message) for every check that involves several keys."""
    found: list[tuple[str, str]] = []
    providers = data.get("providers")
    providers = providers if isinstance(providers, Mapping) else {}
    issuers: dict[str, str] = {}
    for name, p in providers.items():
        if not isinstance(p, Mapping):
            continue
        for key, message in provider_problems(p):
            found.append((f"providers.{name}" + (f".{key}" if key else ""), message))
        issuer = p.get("issuer")
        if isinstance(issuer, str):
            if issuer in issuers:
                found.append(
                    (f"providers.{name}.issuer", f"same issuer as provider {issuers[issuer]!r} "
                     "(a token's iss must select exactly one provider)")
                )  # fmt: skip
            issuers.setdefault(issuer, name)
    found += _http_problems(data, providers)
    found += _introspection_problems(data, providers)
    rules = data.get("rules")
    seen: set[str] = set()
    catch_all: str | None = None
    for i, rule in enumerate(rules if isinstance(rules, list | tuple) else ()):
        if not isinstance(rule, Mapping):
            continue
        name = rule.get("name")
        if catch_all is not None:
            found.append(
                (f"rules.{i}.match", f"rule {name!r} can never match: "
                                     f"rule {catch_all!r} before it matches every request")
            )  # fmt: skip
        elif _catch_all(rule.get("match")):
            catch_all = str(name)
        if isinstance(name, str):
            if name in seen:
                found.append((f"rules.{i}.name", f"duplicate rule name {name!r}"))
            seen.add(name)
        named = rule.get("providers")
        for other in named if isinstance(named, list | tuple) else ():
            if isinstance(other, str) and other not in providers:
                found.append((f"rules.{i}.providers", f"unknown provider {other!r}"))
    return found


#: ``server.*`` keys that only a restart changes (listeners, processes, TLS). Adding or
#: removing ``server.http`` counts as a change of ``http.listen``.
RESTART_ONLY = (
    "listen", "admin_listen", "workers", "grpc_threads", "tls", "http.listen", "replay_store",
    "tracing",
)  # fmt: skip


def with_server(config: Config, changes: Mapping[str, Any] | None = None, /, **more: Any) -> Config:
    """``config`` with some ``server.*`` settings replaced, validated like a file's.

    Keys may be dotted into a section (``{"http.listen": "0.0.0.0:9193"}``); a dotted
    key into a section that is not configured changes nothing."""
    current: dict[str, Any] = {
        name: getattr(config.server, name) for name in ServerSettings.model_fields
    }
    for key, value in {**(changes or {}), **more}.items():
        section, dot, field = key.partition(".")
        if not dot:
            current[section] = value
        elif isinstance(current.get(section), BaseModel):
            current[section] = current[section].model_copy(update={field: value})
    try:
        server = ServerSettings.model_validate(
            {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in current.items()}
        )
    except ValidationError as exc:
        raise ConfigError(
            [(f"server.{_path(e['loc'])}", error_message(e)) for e in exc.errors()]
        ) from None
    return config.model_copy(update={"server": server})


def split_address(value: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` -> (host, port). Raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _expected(ctx: Mapping[str, Any]) -> str:
    """pydantic's "'deny' or 'allow'" as "deny, allow" (and "200 or 401" as "200, 401")."""
    text = str(ctx.get("expected", ""))
    return ", ".join(re.findall(r"'([^']*)'", text) or re.split(r", | or ", text))


def _items(n: object) -> str:
    return "1 item" if n == 1 else f"{n} items"


#: pydantic error types in the user's words (by error type, never pydantic's wording,
#: which names Python types: "Input should be a valid tuple").
_MESSAGES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "missing": lambda _: "required key is missing",
    "extra_forbidden": lambda _: "unknown key",
    "string_type": lambda _: "expected text",
    "int_type": lambda _: "expected a whole number",
    "int_parsing": lambda _: "expected a whole number",
    "int_from_float": lambda _: "expected a whole number",
    "float_type": lambda _: "expected a number",
    "float_parsing": lambda _: "expected a number",
    "bool_type": lambda _: "expected true or false",
    "bool_parsing": lambda _: "expected true or false",
    "list_type": lambda _: "expected a list",
    "tuple_type": lambda _: "expected a list",
    "dict_type": lambda _: "expected a mapping (key: value pairs)",
    "mapping_type": lambda _: "expected a mapping (key: value pairs)",
    "model_type": lambda _: "expected a mapping (key: value pairs)",
    "model_attributes_type": lambda _: "expected a mapping (key: value pairs)",
    "literal_error": lambda ctx: f"expected one of: {_expected(ctx)}",
    "greater_than_equal": lambda ctx: f"must be {ctx.get('ge')} or more",
    "greater_than": lambda ctx: f"must be more than {ctx.get('gt')}",
    "less_than_equal": lambda ctx: f"must be {ctx.get('le')} or less",
    "less_than": lambda ctx: f"must be less than {ctx.get('lt')}",
    "too_short": lambda ctx: f"at least {_items(ctx.get('min_length'))} required",
    "too_long": lambda ctx: f"at most {_items(ctx.get('max_length'))} allowed",
    "string_too_short": lambda _: "must not be empty",
    "string_pattern_mismatch": lambda _: "contains characters that are not allowed here",
    "path_type": lambda _: "expected a file path",
    "invalid-json-value": lambda _: (
        "expected text, a number, true/false, null, a list or a mapping"
    ),
}


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error in the user's words (never pydantic's wording)."""
    kind = err["type"]
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    describe = _MESSAGES.get(kind)
    if describe is not None:
        return describe(err.get("ctx") or {})
    return "invalid value"


def from_mapping(data: object) -> Config:
    """Validate already-parsed YAML. Raises ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([("", "the configuration must be a YAML mapping")])
    problems: list[tuple[str, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            if err["type"] != "coherence":  # reported below, with exact key paths
                problems.append((_path(err["loc"]), error_message(err)))
    # Checks across keys run on the raw mapping too: every problem in one pass.
    problems += [p for p in config_problems(data) if p not in problems]
    if problems or config is None:
        raise ConfigError(sorted(problems, key=lambda p: p[0]))
    return config


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file. Raises ConfigError."""
    return from_mapping(read_yaml(path))


def read_yaml(path: str | os.PathLike[str]) -> object:
    """The parsed YAML of a file. Raises ConfigError when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"{path} is not UTF-8 text")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"invalid YAML: {_yaml_problem(exc, path)}")]) from None
    return data


def _yaml_problem(exc: yaml.YAMLError, path: str | os.PathLike[str]) -> str:
    """``FILE, line L, column C: what`` for where the construct began and where it broke
    (PyYAML counts from 0 and names the file "<unicode string>")."""
    parts = []
    for mark, what in (
        (getattr(exc, "context_mark", None), getattr(exc, "context", None)),
        (getattr(exc, "problem_mark", None), getattr(exc, "problem", None)),
    ):
        if what:
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            parts.append(f"{where}{what}")
    return f"{path}, " + "; ".join(parts) if parts else f"{path}: {str(exc).splitlines()[0]}"


def _describe_replay_store(value: str) -> str:
    """``server.replay_store`` for people: where, never a password or user name (nor the
    URL's query, which may carry either)."""
    if value == "memory":
        from .replay import MEMORY_ENTRIES

        return f"memory (this process only; at most {MEMORY_ENTRIES:,} proofs)"
    parts = urlsplit(value)
    host = parts.hostname or "?"
    try:
        port: int | str = parts.port or 6379
    except ValueError:
        port = "?"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out = f"redis at {where}, database {parts.path.strip('/') or 0}"
    if parts.scheme == "rediss":
        out += ", TLS"
    if parts.username or parts.password:
        out += ", credentials set (not shown)"
    return out


def per_process_replay(config: Config) -> bool:
    """DPoP is on, but its replay store is per process: each worker (and each replica)
    accepts a given proof once, so a captured proof can be replayed to another one."""
    return config.server.replay_store == "memory" and any(
        p.dpop is not None for p in config.providers.values()
    )


def summary(config: Config) -> str:
    """A human summary for ``check-config`` (never prints key material)."""
    s = config.server
    tls = "mTLS" if s.tls and s.tls.client_ca_file else "on" if s.tls else "off"
    lines = [
        f"server: grpc {s.listen} ({s.grpc_threads} threads), "
        f"admin {s.admin_listen or 'disabled'}, "
        f"workers {s.workers}, tls {tls}",
    ]
    if s.http is not None:
        h = s.http
        prefix = f", path_prefix {h.path_prefix}" if h.path_prefix else ""
        lines.append(
            f"http front door: {h.listen}, original request from {h.original_request}"
            f"{prefix}, trusted proxies {', '.join(h.trusted_proxies)}"
        )
        if h.protected_resource is not None:
            lines.append(f"  serves RFC 9728 metadata for {h.protected_resource.resource}")
    lines.append(f"replay store: {_describe_replay_store(s.replay_store)}")
    if s.tracing is not None:
        t = s.tracing
        lines.append(
            f"tracing: OTLP/HTTP to {t.otlp_endpoint} as {t.service_name}, "
            f"sample ratio {t.sample_ratio:g} (a parent's decision is followed)"
        )
    if s.workers != 1 and per_process_replay(config):
        lines.append(
            "  warning: each worker remembers its own DPoP proofs, so a proof can be "
            "replayed to another worker; share them with replay_store: redis://…"
        )
    for name, p in config.providers.items():
        aud = ", ".join(p.audiences) if p.audiences else "(audience check disabled)"
        lines.append(f"provider {name}: issuer {p.issuer}")
        lines.append(f"  audiences: {aud}")
        if p.has_keys:
            lines.append(f"  keys: {p.key_source}, refresh {p.refresh_interval:g}s")
            lines.append(f"  algorithms: {', '.join(p.algorithms)}; clock skew {p.clock_skew:g}s")
        if p.introspection is not None:
            i = p.introspection
            lines.append(
                f"  introspection: {i.endpoint} as client {i.client_id} (secret from "
                f"{i.client_secret_file}, not shown); answers kept {i.cache_ttl:g}s "
                f"(inactive {i.negative_cache_ttl:g}s), at most {i.cache_size:,}; "
                f"timeout {i.timeout:g}s"
            )
        lines.append(f"  tokens from: {'; '.join(t.describe() for t in p.token_sources)}")
        if p.resource_metadata:
            lines.append(f"  resource_metadata: {p.resource_metadata}")
        if p.dpop is not None:
            mode = "required (Bearer refused)" if p.dpop.required else "accepted beside Bearer"
            lines.append(
                f"  dpop: {mode}; proof algorithms {', '.join(p.dpop.algorithms)}; "
                f"proof max_age {p.dpop.max_age:g}s"
            )
        if p.require_typ:
            lines.append(f"  require_typ: {p.require_typ}")
    if config.rules is None:
        lines.append("rules: none (every request needs a valid token from any provider)")
    else:
        for r in config.rules:
            lines.append(f"rule {r.name}: {'anonymous' if r.allow_anonymous else 'token'}")
    lines.append(f"default_action: {config.default_action}")
    return "\n".join(lines)
