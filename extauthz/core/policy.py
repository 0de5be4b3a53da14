"""Decisions: rule selection, token extraction, verification, scopes and claims (pure).

``Policy.decide(request, keys, now, answers)`` returns a :class:`Decision` for every
input, or a :class:`NeedKeys` when the token names a ``kid`` its provider's key set
lacks (the caller may refetch once and decide again), or a :class:`NeedIntrospection`
when an opaque token has no cached introspection answer (the caller asks the endpoint
and decides again). Fail closed: the only path to an allow is
an explicit success below.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..config import Config, Provider, Rule, TokenSource, compile_regex
from ..errors import DenyKind
from . import binding, introspected, paths, tokens
from .decision import Decision, NeedIntrospection, NeedKeys, refuse
from .headers import header_value
from .memo import Memo
from .request import CONTEXT_RULE_KEY, AuthRequest
from .verifier import Keys, TokenVerifier
from .verify import MAX_TOKEN_BYTES, Verified

#: ``answers(provider, token, now)``: the cached introspection answer, or None.
Answers = Callable[[str, str, float], introspected.Answer | None]

#: Allow decisions kept for the hottest tokens (FIFO).
HOT_ANSWERS = 256

_CHALLENGES_WITH_EXTRAS = frozenset(
    {
        DenyKind.MISSING_TOKEN,
        DenyKind.NO_RULE,
        DenyKind.INVALID_TOKEN,
        DenyKind.INVALID_DPOP_PROOF,
        DenyKind.INSUFFICIENT_SCOPE,
    }
)


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
class _CompiledProvider:
    name: str
    config: Provider
    injected: tuple[str, ...]  # every header this provider may set upstream


@dataclass(frozen=True)
class _CompiledRule:
    rule: Rule
    matches: Callable[[AuthRequest, str], bool]
    providers: tuple[_CompiledProvider, ...]
    sources: tuple[TokenSource, ...]
    # Which providers accept a JWT from each source: the verifier picks by `iss`.
    accepted: Mapping[TokenSource, Mapping[str, Provider]]
    # The one provider (if any) that introspects an opaque token from each source.
    introspect: Mapping[TokenSource, str]
    resource_metadata: str  # RFC 9728 URL for this rule's challenges, "" when none
    dpop_algs: tuple[str, ...]  # DPoP challenge `algs` for this rule, () when no DPoP
    bearer: bool  # some provider of the rule accepts plain Bearer tokens


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

    def __init__(self, config: Config) -> None:
        self.config = config
        self.realm = config.server.realm
        self.verifier = TokenVerifier(config.server.token_cache_size)
        providers = {
            name: _CompiledProvider(
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
        # Finished allows of the hottest tokens, reached only after a verification
        # (or a cache hit) that passed for this request.
        self._allows: Memo[tuple[bytes, str, TokenSource], Decision] = Memo(HOT_ANSWERS)
        # The configuration's first provider with RFC 9728 metadata ("": none at all),
        # and DPoP: when neither exists, refusals need no challenge extras.
        self._metadata = next(
            (p.resource_metadata for p in config.providers.values() if p.resource_metadata), ""
        )
        first_dpop = next((p.dpop for p in config.providers.values() if p.dpop), None)
        self._dpop_algs = first_dpop.algorithms if first_dpop is not None else ()
        self._challenge_extras = bool(self._metadata or self._dpop_algs)

    def _compile(self, rule: Rule) -> _CompiledRule:
        names = rule.providers if rule.providers is not None else tuple(self.providers)
        provs = tuple(self.providers[n] for n in names)
        sources = tuple(dict.fromkeys(s for p in provs for s in p.config.token_sources))
        verifying = [p for p in provs if p.config.has_keys]
        accepted = {
            s: {p.name: p.config for p in verifying if s in p.config.token_sources} for s in sources
        }
        # config_problems allows a rule at most one introspecting provider.
        introspect = {
            s: p.name
            for s in sources
            for p in provs
            if p.config.introspection is not None and s in p.config.token_sources
        }
        # The first provider, in the rule's order and then the configuration's, that
        # publishes protected-resource metadata.
        ordered = [*provs, *self.providers.values()]
        metadata = next(
            (p.config.resource_metadata for p in ordered if p.config.resource_metadata), None
        )
        # DPoP is offered only when one of the rule's own providers accepts it.
        dpop = next((p.config.dpop for p in provs if p.config.dpop is not None), None)
        bearer = any(p.config.dpop is None or not p.config.dpop.required for p in provs)
        return _CompiledRule(
            rule, _matcher(rule), provs, sources, accepted, introspect, metadata or "",
            dpop.algorithms if dpop is not None else (), bearer,
        )  # fmt: skip

    # -- decision ---------------------------------------------------------------------
    def select(self, req: AuthRequest) -> _CompiledRule | None:
        name = req.context_extensions.get(CONTEXT_RULE_KEY)
        if name is not None:
            chosen = self.by_name.get(name)
            if chosen is None:
                raise errors.UnknownRule(name)
            return chosen
        path = paths.normalise(req.path)
        for r in self.rules:
            if r.matches(req, path):
                return r
        return None

    def decide(
        self, req: AuthRequest, keys: Keys, now: float, answers: Answers | None = None
    ) -> Decision | NeedKeys | NeedIntrospection:
        """``keys(provider)`` returns its usable KeySet (None: no usable keys);
        ``answers`` the cached introspection answers (None: no introspection)."""
        result = self._decide(req, keys, now, answers)
        if self._challenge_extras and isinstance(result, Decision) and not result.allowed:
            return self.challenged(result)
        return result

    def challenged(self, decision: Decision) -> Decision:
        """A refusal with what its 401 or 403 challenge names: RFC 9728 metadata, and the
        RFC 9449 DPoP challenge — of the token's provider when known, else of the first
        provider of the rule (rule order, then configuration order) that has them."""
        if decision.deny not in _CHALLENGES_WITH_EXTRAS or not self._challenge_extras:
            return decision
        own = self.providers.get(decision.provider)
        rule = self.by_name.get(decision.rule)
        url = own.config.resource_metadata if own is not None else None
        if not url:
            url = rule.resource_metadata if rule is not None else self._metadata
        algs: tuple[str, ...]
        if own is not None:
            dpop = own.config.dpop
            algs = dpop.algorithms if dpop is not None else ()
            bearer = dpop is None or not dpop.required
        elif rule is not None:
            algs, bearer = rule.dpop_algs, rule.bearer
        else:
            algs, bearer = self._dpop_algs, True
        return dataclasses.replace(
            decision, resource_metadata=url or "", dpop_algs=algs, bearer=bearer or not algs
        )

    def _decide(
        self, req: AuthRequest, keys: Keys, now: float, answers: Answers | None
    ) -> Decision | NeedKeys | NeedIntrospection:
        try:
            rule = self.select(req)
        except errors.UnknownRule as exc:
            return refuse(exc, rule=exc.name)  # the name comes from Envoy's config
        except errors.Denied as exc:
            return refuse(exc)
        if rule is None:
            if self._deny_default:
                return refuse(errors.NoRuleMatched())
            return Decision(True, "default_allow", remove_headers=self.injected)
        name = rule.rule.name
        if rule.rule.allow_anonymous:
            return Decision(True, "anonymous", rule=name, remove_headers=self.injected)
        verified: Verified | None = None
        dpop = False
        try:
            token = tokens.extract(req.headers, req.path, rule.sources)
            if token is None:
                raise errors.MissingToken()
            dpop = token.scheme == "dpop"
            introspecting = rule.introspect.get(token.source)
            result: Verified | NeedKeys | NeedIntrospection
            if introspecting is not None and not tokens.is_compact_jws(token.token):
                result = self._introspected(token.token, introspecting, answers, now)
            else:
                result = self.verifier.verify(token.token, rule.accepted[token.source], keys, now)
            if isinstance(result, NeedKeys | NeedIntrospection):
                return dataclasses.replace(result, rule=name, dpop=dpop)
            verified = result
            prov = self.providers[verified.provider]
            proof = binding.check(req, token, prov.name, prov.config, verified.claims, now)
            self._check_rule(rule.rule, verified.claims)
            decision = self._allow(req, rule.rule, prov, token, verified, reuse=proof is None)
            if proof is not None:
                return dataclasses.replace(decision, dpop=True, replay=proof)
            return decision
        except errors.Denied as exc:
            dpop = dpop or isinstance(exc, errors.InvalidDpopProof)
            if verified is None:
                return refuse(exc, rule=name, provider=exc.provider, kid=exc.kid, iss=exc.iss,
                              dpop=dpop)  # fmt: skip
            sub = verified.claims.get("sub")
            return refuse(
                exc,
                rule=name,
                provider=verified.provider,
                kid=verified.kid,
                iss=self.providers[verified.provider].config.issuer,
                sub=sub if isinstance(sub, str) else None,
                dpop=dpop,
            )

    def _introspected(
        self, token: str, name: str, answers: Answers | None, now: float
    ) -> Verified | NeedIntrospection:
        """An opaque token: its cached answer held to the provider's rules, or what to
        ask. Only a well-formed token of sane size is ever sent to the endpoint."""
        provider = self.providers[name].config
        if len(token) > MAX_TOKEN_BYTES:
            raise errors.TokenTooLarge().about(name, None, provider.issuer)
        if not tokens.is_b64token(token):
            raise errors.MalformedToken().about(name, None, provider.issuer)
        answer = answers(name, token, now) if answers is not None else None
        if answer is None:
            return NeedIntrospection(name, "", token)
        return introspected.verified(answer, name, provider, now)

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
        prov: _CompiledProvider,
        token: tokens.Found,
        verified: Verified,
        *,
        reuse: bool = True,
    ) -> Decision:
        cfg = prov.config
        # Same token, rule and source: the same answer (claims and config are immutable),
        # unless the answer is cut from the request itself (a rewritten cookie header) or
        # it waits on a proof's replay check.
        reuse_key: tuple[bytes, str, TokenSource] | None = None
        if reuse and verified.digest and (cfg.forward_token or token.source.cookie is None):
            reuse_key = (verified.digest, rule.name, token.source)
            known = self._allows.get(reuse_key)
            if known is not None:
                return known
        claims = verified.claims
        sets: list[tuple[str, str]] = []
        for header, claim in cfg.claims_to_headers.items():
            if claim in claims and claims[claim] is not None:
                try:
                    sets.append((header, header_value(claims[claim])))
                except errors.UnsafeHeaderValue:
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
        decision = Decision(
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
            reuse_key=reuse_key,
            kid=verified.kid,
            iss=cfg.issuer,
            sub=sub if isinstance(sub, str) else None,
        )
        if reuse_key is not None:
            self._allows.put(reuse_key, decision)
        return decision
