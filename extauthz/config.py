"""Configuration: one pydantic schema, validated up front, frozen afterwards.

Every problem is reported with its dotted key path (``providers.zuplo.clock_skew``);
unknown keys are errors because a typo must never silently disable a check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
            return f"header {self.header}" + (f" ({self.prefix.strip()})" if self.prefix else "")
        if self.cookie is not None:
            return f"cookie {self.cookie}"
        return f"query {self.query}"


DEFAULT_TOKEN_SOURCES = (TokenSource(header="authorization", prefix="Bearer "),)


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
    token_sources: tuple[TokenSource, ...] = DEFAULT_TOKEN_SOURCES
    forward_token: bool = True
    claims_to_headers: Mapping[HeaderName, str] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    payload_header: HeaderName | None = None

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
    def _one_key_source(self) -> Provider:
        chosen = [
            name
            for name, on in (
                ("jwks_uri", self.jwks_uri is not None),
                ("discovery", self.discovery),
                ("jwks_file", self.jwks_file is not None),
                ("jwks", self.jwks is not None),
            )
            if on
        ]
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise ValueError(
                f"set exactly one key source of jwks_uri, discovery, jwks_file, jwks (got {got})"
            )
        if self.min_refresh_interval > self.refresh_interval:
            raise ValueError("min_refresh_interval must not exceed refresh_interval")
        return self

    #: The settings a key source depends on; a reload keeps the source when they are equal.
    KEY_SETTINGS: ClassVar[tuple[str, ...]] = (
        "issuer", "jwks_uri", "discovery", "jwks_file", "jwks", "refresh_interval",
        "min_refresh_interval", "max_stale", "fetch_timeout",
    )  # fmt: skip

    def same_keys(self, other: Provider) -> bool:
        return all(getattr(self, k) == getattr(other, k) for k in self.KEY_SETTINGS)

    @property
    def key_source(self) -> str:
        if self.jwks_uri is not None:
            return f"jwks_uri {self.jwks_uri}"
        if self.discovery:
            return f"discovery {self.issuer.rstrip('/')}/.well-known/openid-configuration"
        if self.jwks_file is not None:
            return f"jwks_file {self.jwks_file}"
        return "inline jwks"


class TLS(_Model):
    cert_file: Path
    key_file: Path = Field(repr=False)
    client_ca_file: Path | None = None


class Server(_Model):
    listen: str = "0.0.0.0:9191"
    admin_listen: str | None = "127.0.0.1:9192"
    workers: int | Literal["auto"] = Field(default=1)
    token_cache_size: int = Field(default=100_000, ge=0)
    realm: str = Field(default="extauthz", pattern=r'^[^"\\\r\n]*$')
    tls: TLS | None = None
    # On SIGTERM: NOT_SERVING at once, keep answering this long, then drain and exit.
    shutdown_delay: Duration = 0.0

    @field_validator("listen", "admin_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_address(value)
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
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
    def _lower(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(h.lower() for h in value)

    @model_validator(mode="after")
    def _one_path(self) -> Match:
        if sum(p is not None for p in (self.path_prefix, self.path_exact, self.path_regex)) > 1:
            raise ValueError("set at most one of path_prefix, path_exact, path_regex")
        return self

    @property
    def catch_all(self) -> bool:
        """Matches every request: any rule after it is unreachable."""
        return (
            self.methods is None
            and self.hosts is None
            and self.path_exact is None
            and self.path_regex in (None, ".*", "/.*")
            and self.path_prefix in (None, "/", "")
        )


class Rule(_Model):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    allow_anonymous: bool = False
    providers: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, tuple[str | int | bool, ...]] = Field(
        default_factory=lambda: MappingProxyType({})
    )

    @field_validator("claims")
    @classmethod
    def _freeze_claims(
        cls, value: Mapping[str, tuple[str | int | bool, ...]]
    ) -> Mapping[str, tuple[str | int | bool, ...]]:
        return MappingProxyType(dict(value))


class Config(_Model):
    server: Server = Field(default_factory=Server)
    providers: Mapping[str, Provider] = Field(min_length=1)
    rules: tuple[Rule, ...] | None = None
    default_action: Literal["deny", "allow"] = "deny"

    @field_validator("providers")
    @classmethod
    def _freeze_providers(cls, value: Mapping[str, Provider]) -> Mapping[str, Provider]:
        return MappingProxyType(dict(value))

    @model_validator(mode="after")
    def _rules_reference_providers(self) -> Config:
        problems: list[str] = []
        seen: set[str] = set()
        catch_all: str | None = None
        for i, rule in enumerate(self.rules or ()):
            if catch_all is not None:
                problems.append(
                    f"rules.{i}.match: rule {rule.name!r} can never match: "
                    f"rule {catch_all!r} before it matches every request"
                )
            elif rule.match.catch_all:
                catch_all = rule.name
            if rule.name in seen:
                problems.append(f"rules.{i}.name: duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            for name in rule.providers or ():
                if name not in self.providers:
                    problems.append(f"rules.{i}.providers: unknown provider {name!r}")
        issuers: dict[str, str] = {}
        for name, p in self.providers.items():
            if p.issuer in issuers:
                problems.append(
                    f"providers.{name}.issuer: same issuer as provider {issuers[p.issuer]!r} "
                    "(a token's iss must select exactly one provider)"
                )
            issuers.setdefault(p.issuer, name)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def split_address(value: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` -> (host, port). Raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def from_mapping(data: object) -> Config:
    """Validate already-parsed YAML. Raises ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError([("", "the configuration must be a YAML mapping")])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            loc = _path(err["loc"])
            # Model-level checks that name their own sub-paths.
            for part in msg.split("; "):
                if re.match(r"^(rules\.\d+|providers\.[^.]+)\.\w+: ", part):
                    sub, _, text = part.partition(": ")
                    problems.append((sub, text))
                else:
                    problems.append((loc, part))
        raise ConfigError(problems) from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file. Raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"invalid YAML: {exc}")]) from None
    return from_mapping(data)


def summary(config: Config) -> str:
    """A human summary for ``check-config`` (never prints key material)."""
    s = config.server
    tls = "mTLS" if s.tls and s.tls.client_ca_file else "on" if s.tls else "off"
    lines = [
        f"server: grpc {s.listen}, admin {s.admin_listen or 'disabled'}, "
        f"workers {s.workers}, tls {tls}",
    ]
    for name, p in config.providers.items():
        aud = ", ".join(p.audiences) if p.audiences else "(audience check disabled)"
        lines.append(f"provider {name}: issuer {p.issuer}")
        lines.append(f"  audiences: {aud}")
        lines.append(f"  keys: {p.key_source}, refresh {p.refresh_interval:g}s")
        lines.append(f"  algorithms: {', '.join(p.algorithms)}; clock skew {p.clock_skew:g}s")
        lines.append(f"  tokens from: {'; '.join(t.describe() for t in p.token_sources)}")
    if config.rules is None:
        lines.append("rules: none (every request needs a valid token from any provider)")
    else:
        for r in config.rules:
            lines.append(f"rule {r.name}: {'anonymous' if r.allow_anonymous else 'token'}")
    lines.append(f"default_action: {config.default_action}")
    return "\n".join(lines)
