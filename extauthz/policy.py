"""Decisions: rule selection, token extraction, verification, scopes/claims (pure).

``Policy.decide(request, keys, now)`` returns a :class:`Decision` for every input; it
raises only ``NeedKeys`` (an unknown ``kid`` that a shared JWKS refetch may resolve),
which the async authorizer handles by waiting briefly and deciding again.
Fail closed: the only path to ``allowed=True`` is an explicit success below.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors, paths, tokens, verify
from .cache import Entry, TokenCache, digest
from .config import Config, Provider, Rule, TokenSource, compile_regex
from .jwks import KeySet

CONTEXT_RULE_KEY = "extauthz_rule"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What the gRPC adapter extracts from a CheckRequest (no protobuf here)."""

    method: str = "GET"
    host: str = ""
    path: str = "/"  # :path, including the query string (Envoy leaves http.query empty)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    context_extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str = ""
    provider: str = ""
    http_status: int = 200
    grpc_code: int = errors.OK
    oauth_error: str | None = None
    description: str = ""
    scope: str = ""
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    remove_query: tuple[str, ...] = ()  # query parameters removed before proxying
    metadata: Mapping[str, Any] | None = field(default=None, repr=False)
    # The wire adapter's encoding of this decision, by realm (reused on cache hits).
    encoded: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # For logs only (never a token or the claim set):
    kid: str | None = None
    iss: str | None = None
    sub: str | None = None


class NeedKeys(Exception):
    """The token names a kid unknown to its provider: refetch, then decide again."""

    def __init__(self, provider: str, rule: str, kid: str | None, iss: str | None) -> None:
        self.provider, self.rule, self.kid, self.iss = provider, rule, kid, iss
        super().__init__(provider)


class UnknownRule(errors.NoRuleMatched):
    reason = "unknown_rule"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()


_CTRL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeHeaderValue(ValueError):
    """A claim that no header value can carry faithfully."""


def _joinable(value: list[Any]) -> bool:
    """A list that joined by spaces can be split back into the same list."""
    return all(
        (isinstance(v, str) and v and " " not in v)
        or (isinstance(v, int | float) and not isinstance(v, bool))
        for v in value
    )


def header_value(value: Any) -> str:
    """Render a claim for an identity header, or raise UnsafeHeaderValue.

    Strings and numbers as they are; a list of space-free strings and numbers joined
    by single spaces (like ``scope``); anything else as compact JSON (control characters
    escaped). Never lossy: a value with a control character, or with leading or trailing
    whitespace (which HTTP trims), is refused rather than stripped, so two different
    identities can never reach the upstream as one header value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = json.dumps(value)
    elif isinstance(value, list) and _joinable(value):
        text = " ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    if _CTRL.search(text) or text != text.strip(" \t"):
        raise UnsafeHeaderValue()
    return text


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (RFC 6749 §3.3: delimited by ASCII space, and nothing else:
    a no-break space or U+3000 inside a scope string is part of a scope) or ``scp``."""
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(s for s in value.split(" ") if s)
        elif isinstance(value, list) and name == "scp":
            out.update(s for s in value if isinstance(s, str) and s)
    return frozenset(out)


@dataclass(frozen=True)
class _Provider:
    name: str
    config: Provider
    injected: tuple[str, ...]  # every header this provider may set upstream


@dataclass(frozen=True)
class _Rule:
    rule: Rule
    matches: Callable[[AuthRequest, str], bool]
    providers: tuple[_Provider, ...]
    sources: tuple[TokenSource, ...]


def _matcher(rule: Rule) -> Callable[[AuthRequest, str], bool]:
    m = rule.match
    regex = compile_regex(m.path_regex) if m.path_regex is not None else None
    methods = frozenset(m.methods) if m.methods is not None else None
    hosts = frozenset(m.hosts) if m.hosts is not None else None
    prefix = m.path_prefix
    prefix_slash = prefix if prefix is None or prefix.endswith("/") else prefix + "/"

    def matches(req: AuthRequest, path: str) -> bool:
        if methods is not None and req.method.upper() not in methods:
            return False
        if hosts is not None and paths.host_name(req.host) not in hosts:
            return False
        if m.path_exact is not None:
            return path == m.path_exact
        if prefix is not None and prefix_slash is not None:
            # Segment-aware: `/admin` matches `/admin` and `/admin/x`, not `/administrator`
            # (a prefix ending in `/` is a plain prefix).
            return path == prefix or path.startswith(prefix_slash)
        if regex is not None:
            return regex.fullmatch(path) is not None
        return True

    return matches


class Policy:
    """Compiled from a frozen Config once; decide() does no I/O and no compilation."""

    def __init__(self, config: Config, cache: TokenCache | None = None) -> None:
        self.config = config
        self.cache = cache
        self.realm = config.server.realm
        providers = {
            name: _Provider(
                name,
                p,
                tuple(
                    dict.fromkeys(
                        [*p.claims_to_headers, *([p.payload_header] if p.payload_header else [])]
                    )
                ),
            )
            for name, p in config.providers.items()
        }
        self.providers = providers
        # Every header any provider may inject: always removed unless we set it, so a
        # client cannot smuggle `x-user-id` through an anonymous rule.
        self.injected = tuple(dict.fromkeys(h for p in providers.values() for h in p.injected))
        rules = config.rules
        if rules is None:
            rules = (Rule(name="default"),)
        self.rules = tuple(self._compile(r) for r in rules)
        self.by_name = {r.rule.name: r for r in self.rules}
        self._deny_default = config.default_action == "deny"

    def _compile(self, rule: Rule) -> _Rule:
        names = rule.providers if rule.providers is not None else tuple(self.providers)
        provs = tuple(self.providers[n] for n in names)
        sources = tuple(dict.fromkeys(s for p in provs for s in p.config.token_sources))
        return _Rule(rule, _matcher(rule), provs, sources)

    # -- decision ---------------------------------------------------------------------
    def select(self, req: AuthRequest) -> _Rule | None:
        name = req.context_extensions.get(CONTEXT_RULE_KEY)
        if name is not None:
            chosen = self.by_name.get(name)
            if chosen is None:
                raise UnknownRule(name)
            return chosen
        path = paths.normalise(req.path)
        for r in self.rules:
            if r.matches(req, path):
                return r
        return None

    def deny(self, exc: errors.Denied, **kw: Any) -> Decision:
        return Decision(
            allowed=False,
            reason=exc.reason,
            http_status=exc.http_status,
            grpc_code=exc.grpc_code,
            oauth_error=exc.oauth_error,
            description=exc.description,
            scope=getattr(exc, "scope", ""),
            **kw,
        )

    def decide(
        self,
        req: AuthRequest,
        keys: Callable[[str], KeySet | None],
        now: float,
    ) -> Decision:
        """Never raises except NeedKeys. ``keys(provider)`` returns its usable KeySet."""
        try:
            rule = self.select(req)
        except UnknownRule as exc:
            return self.deny(exc, rule=exc.name)  # the name comes from Envoy's config
        except errors.Denied as exc:
            return self.deny(exc)
        if rule is None:
            if self._deny_default:
                return self.deny(errors.NoRuleMatched())
            return Decision(True, "default_allow", remove_headers=self.injected)
        name = rule.rule.name
        if rule.rule.allow_anonymous:
            return Decision(True, "anonymous", rule=name, remove_headers=self.injected)
        token: tokens.Found | None = None
        prov: _Provider | None = None
        kid: str | None = None
        iss: str | None = None
        verified: verify.Verified | None = None
        try:
            token = tokens.extract(req.headers, req.path, rule.sources)
            if token is None:
                raise errors.MissingToken()
            key = digest(token.token) if self.cache is not None else b""
            memo_key = (key, name, token.source)
            hit = self._cached(token, key, rule, keys, now)
            if hit is not None:
                assert self.cache is not None
                # Same token, rule and source: the same answer (claims and config are
                # immutable), so a hot token reuses its decision and encoded bytes.
                known = self.cache.memo_get(memo_key)
                if known is not None:
                    return known  # type: ignore[no-any-return]
                prov = self.providers[hit.provider]
                kid, iss = hit.kid, prov.config.issuer
                verified = verify.Verified(
                    hit.provider, verify.claims_of(token.token), hit.kid, hit.thumbprint,
                    hit.not_after, hit.not_before,
                )  # fmt: skip
            else:
                unverified = verify.parse(token.token)
                kid, iss = unverified.kid, unverified.iss
                prov = self._provider_for(rule, token, iss)
                keyset = keys(prov.name)
                if keyset is None:
                    raise errors.KeysUnavailable()
                try:
                    verified = verify.verify(unverified, prov.name, prov.config, keyset, now)
                except errors.UnknownKey:
                    raise NeedKeys(prov.name, name, kid, iss) from None
                if self.cache is not None:
                    entry = Entry(prov.name, verified.thumbprint, verified.kid,
                                  verified.not_after, verified.not_before)  # fmt: skip
                    self.cache.put(key, entry)
            self._check_rule(rule.rule, verified.claims)
            decision = self._allow(req, rule.rule, prov, token, verified)
        except errors.Denied as exc:
            sub = verified.claims.get("sub") if verified is not None else None
            return self.deny(
                exc,
                rule=name,
                provider=prov.name if prov else "",
                kid=kid,
                iss=iss,
                sub=sub if isinstance(sub, str) else None,
            )
        if self.cache is not None and (prov.config.forward_token or token.source.cookie is None):
            # (A rewritten cookie header depends on the request's other cookies: such an
            # answer is never reused for another request.)
            self.cache.memo_put(memo_key, decision)
        return decision

    @staticmethod
    def _provider_for(rule: _Rule, token: tokens.Found, iss: str | None) -> _Provider:
        """The token's `iss` picks its provider (never "try every key")."""
        prov = next((p for p in rule.providers if p.config.issuer == iss), None)
        if prov is None or token.source not in prov.config.token_sources:
            raise errors.UnknownIssuer()
        return prov

    def _cached(
        self,
        token: tokens.Found,
        key: bytes,
        rule: _Rule,
        keys: Callable[[str], KeySet | None],
        now: float,
    ) -> Entry | None:
        """A valid cache entry for this token, or None. Raises when the hit is refused."""
        if self.cache is None:
            return None
        hit = self.cache.get(key)
        if hit is None:
            return None
        prov = self.providers.get(hit.provider)
        keyset = keys(hit.provider)
        if keyset is None or hit.thumbprint not in keyset.thumbprints:
            self.cache.drop(key)  # its key left the JWKS: verify afresh
            return None
        if (
            prov is None
            or prov not in rule.providers
            or token.source not in prov.config.token_sources
        ):
            raise errors.UnknownIssuer()
        verify.check_window(hit.not_after, hit.not_before, now)
        return hit

    def unknown_kid(self, need: NeedKeys) -> Decision:
        """The answer once a refetch could not produce the token's kid."""
        return self.deny(
            errors.UnknownKey(), rule=need.rule, provider=need.provider, kid=need.kid, iss=need.iss
        )

    @staticmethod
    def _check_rule(rule: Rule, claims: Mapping[str, Any]) -> None:
        if rule.scopes:
            have = scopes_of(claims)
            if not all(s in have for s in rule.scopes):
                raise errors.InsufficientScope(scope=" ".join(rule.scopes))
        for claim, allowed in rule.claims.items():
            value = claims.get(claim)
            values = value if isinstance(value, list) else [value]
            if not any(type(v) is type(a) and v == a for v in values for a in allowed):
                raise errors.InsufficientScope(
                    f"claim {claim} not accepted", reason="claim_mismatch"
                )

    def _allow(
        self,
        req: AuthRequest,
        rule: Rule,
        prov: _Provider,
        token: tokens.Found,
        verified: verify.Verified,
    ) -> Decision:
        cfg = prov.config
        claims = verified.claims
        sets: list[tuple[str, str]] = []
        for header, claim in cfg.claims_to_headers.items():
            if claim in claims and claims[claim] is not None:
                try:
                    sets.append((header, header_value(claims[claim])))
                except UnsafeHeaderValue:
                    raise errors.UnforwardableClaim(
                        f"claim {claim} cannot be sent as a header"
                    ) from None

        if cfg.payload_header:
            payload = json.dumps(claims, separators=(",", ":")).encode()
            sets.append(
                (cfg.payload_header, base64.urlsafe_b64encode(payload).rstrip(b"=").decode())
            )
        set_names = {h for h, _ in sets}
        remove = [h for h in self.injected if h not in set_names]
        remove_query: tuple[str, ...] = ()
        if not cfg.forward_token:
            # The token stays here: whichever place it came from is emptied.
            source = token.source
            if source.header is not None:
                remove.append(source.header)
            elif source.cookie is not None:
                rest = tokens.without_cookie(req.headers.get("cookie", ""), source.cookie)
                if rest:
                    sets.append(("cookie", rest))
                else:
                    remove.append("cookie")
            elif source.query is not None:
                remove_query = (source.query,)
        sub = claims.get("sub")
        return Decision(
            allowed=True,
            reason="ok",
            rule=rule.name,
            provider=prov.name,
            set_headers=tuple(sets),
            remove_headers=tuple(remove),
            remove_query=remove_query,
            metadata={
                "provider": prov.name,
                "rule": rule.name,
                "iss": claims.get("iss"),
                "sub": sub,
                "claims": claims,
            },
            kid=verified.kid,
            iss=cfg.issuer,
            sub=sub if isinstance(sub, str) else None,
        )
