"""Tokens for ``extauthz test-config``, signed by dev-issuer keys that stand in for each
provider's own: a minted token carries the provider's issuer and audience and verifies
against a key set of those dev keys, so the policy, the claim checks and the rules are
what is tested — never a JWKS, which is not fetched or read.
"""

from __future__ import annotations

from typing import get_args

from ..config import Config, Provider
from ..core.binding import request_uri
from ..core.request import AuthRequest
from ..dev import client
from ..dev.issuer import DevIssuer
from ..keys.jwks import EMPTY, KeySet, parse_keyset
from .cases import Minted, SigningAlg

#: In the provider's order of preference, the first of these it accepts signs by default.
SIGNING_ALGS: tuple[str, ...] = get_args(SigningAlg)
#: A minted token lives this long unless the case or the provider's max_lifetime says less.
DEFAULT_LIFETIME = 300.0
#: The dev issuer's RSA keys have this many bits.
DEV_RSA_BITS = 2048
#: DPoP proof algorithms a client key can be made for (``dev.client.generate_key``).
_DPOP_ALGS = ("ES256", "EdDSA", "PS256", "RS256")


def token_problems(spec: Minted, cfg: Config) -> list[tuple[str, str]]:
    """(key under the case's token, message) when ``spec`` cannot be minted for ``cfg``."""
    if spec.provider is None:
        verifying = [n for n, p in cfg.providers.items() if p.has_keys]
        if len(verifying) == 1:
            return []
        if not verifying:
            return [("provider", "no provider of the configuration verifies JWTs")]
        names = ", ".join(verifying)
        return [("provider", f"required: several providers verify JWTs ({names})")]
    name = spec.provider
    provider = cfg.providers.get(name)
    if provider is None:
        known = ", ".join(cfg.providers)
        return [("provider", f"unknown provider {name!r} (the configuration has {known})")]
    if not provider.has_keys:
        why = f"provider {name!r} verifies no JWTs (introspection only)"
        return [("provider", f"{why}: give a literal token and its introspection answer")]
    alg = signing_alg(provider, spec) or ("RS256" if "RS256" in provider.algorithms else None)
    if alg is None:
        algs = ", ".join(SIGNING_ALGS)
        return [("alg", f"provider {name!r} accepts none of {algs}, which test-config signs with")]
    if alg == "RS256" and provider.min_rsa_bits > DEV_RSA_BITS:
        why = f"test-config's RSA keys have {DEV_RSA_BITS} bits"
        return [("alg", f"{why}, fewer than the min_rsa_bits of provider {name!r}")]
    return []


def provider_of(spec: Minted, cfg: Config) -> str:
    """The provider a valid ``spec`` is minted for: the one named, else the one that
    verifies JWTs."""
    if spec.provider is not None:
        return spec.provider
    return next(name for name, p in cfg.providers.items() if p.has_keys)


def signing_alg(provider: Provider, spec: Minted) -> str | None:
    """The case's ``alg``, else the first of the provider's that a dev key can sign
    with (RS256 only when the provider accepts 2048-bit keys)."""
    if spec.alg is not None:
        return spec.alg
    rsa_ok = provider.min_rsa_bits <= DEV_RSA_BITS
    usable = [a for a in SIGNING_ALGS if a != "RS256" or rsa_ok]
    return next((a for a in provider.algorithms if a in usable), None)


class Signers:
    """One dev issuer per provider and algorithm, made when a token first needs it; a
    provider's key set holds the public keys of its dev issuers (none: an empty set)."""

    def __init__(self, cfg: Config, now: float) -> None:
        self._cfg = cfg
        self._now = now
        self._issuers: dict[str, dict[str, DevIssuer]] = {}
        self._keysets: dict[str, KeySet] = {}
        self._dpop_keys: dict[str, client.ClientKey] = {}

    def mint(self, name: str, spec: Minted) -> str:
        provider = self._cfg.providers[name]
        alg = signing_alg(provider, spec)
        assert alg is not None  # token_problems refused the spec otherwise
        issuer = self._issuer(name, provider, alg)
        lifetime = spec.lifetime
        if lifetime is None:
            lifetime = min(DEFAULT_LIFETIME, provider.max_lifetime or DEFAULT_LIFETIME)
        if spec.expired:  # just past exp plus the clock skew the provider allows
            exp = int(self._now - provider.clock_skew) - 1
        else:
            exp = int(self._now + lifetime)
        times = {"iat": exp - int(lifetime), "exp": exp}
        cnf = {"jkt": client.thumbprint(self._dpop_key(provider))} if spec.dpop else None
        return issuer.mint(
            aud=provider.audiences[0] if provider.audiences else None,
            claims={**times, **{k: v for k, v in spec.claims.items() if v is not None}},
            omit=[k for k, v in spec.claims.items() if v is None],
            cnf=cnf,
            typ=spec.typ or provider.require_typ or "JWT",
        )

    def proof(self, name: str, req: AuthRequest, token: str) -> str:
        """A DPoP proof of the provider's client key for ``req`` and ``token``."""
        key = self._dpop_key(self._cfg.providers[name])
        alg = self._dpop_alg(self._cfg.providers[name])
        return client.make_proof(
            key, method=req.method, url=request_uri(req), token=token, now=self._now, alg=alg
        )

    def keys(self, name: str) -> KeySet | None:
        """What a key source would hold for ``name``: its dev issuers' public keys."""
        found = self._keysets.get(name)
        if found is None:
            issuers = self._issuers.get(name, {})
            if not issuers:
                return EMPTY
            jwks = [key for issuer in issuers.values() for key in issuer.jwks()["keys"]]
            provider = self._cfg.providers[name]
            found = parse_keyset(
                {"keys": jwks}, allow_symmetric=False, min_rsa_bits=provider.min_rsa_bits
            )
            self._keysets[name] = found
        return found

    def _issuer(self, name: str, provider: Provider, alg: str) -> DevIssuer:
        by_alg = self._issuers.setdefault(name, {})
        if alg not in by_alg:
            by_alg[alg] = DevIssuer(provider.issuer, alg=alg, clock=lambda: self._now)
            self._keysets.pop(name, None)  # a new key: the set is rebuilt when next asked
        return by_alg[alg]

    @staticmethod
    def _dpop_alg(provider: Provider) -> str:
        accepted = provider.dpop.algorithms if provider.dpop is not None else ()
        return next((a for a in accepted if a in _DPOP_ALGS), "ES256")

    def _dpop_key(self, provider: Provider) -> client.ClientKey:
        alg = self._dpop_alg(provider)
        if alg not in self._dpop_keys:
            self._dpop_keys[alg] = client.generate_key(alg)
        return self._dpop_keys[alg]
