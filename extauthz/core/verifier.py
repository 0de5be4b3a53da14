"""Verification and the verified-token cache behind one call.

``TokenVerifier.verify`` answers "is this token valid for one of these providers, now?"
with a :class:`~extauthz.core.Verified`, a :class:`~extauthz.core.decision.NeedKeys`
(the token's ``kid`` is not in its provider's key set: a refetch may find it), or a
:class:`~extauthz.errors.Denied`. Whether the answer came from the cache is nobody
else's business: a hit skips the signature check only (the key must still be in the
provider's key set, the time window is checked against ``now``, and the claims are
read from the request's own token, byte for byte the one verified).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import errors
from ..config import Provider
from ..keys.jwks import KeySet
from .cache import Entry, TokenCache, digest
from .decision import NeedKeys
from .memo import Memo
from .verify import Verified, check_window, claims_of, parse_token, verify_token

#: Parsed claim sets kept for the hottest tokens (a hit then skips the JSON parse).
HOT_TOKENS = 256

Keys = Callable[[str], KeySet | None]


class TokenVerifier:
    def __init__(self, cache_size: int) -> None:
        self._cache = TokenCache(cache_size) if cache_size > 0 else None
        self._hot: Memo[bytes, Verified] = Memo(HOT_TOKENS)

    def verify(
        self, token: str, accepted: Mapping[str, Provider], keys: Keys, now: float
    ) -> Verified | NeedKeys:
        """``accepted``: the providers the rule and the token's source allow, by name.
        Raises :class:`~extauthz.errors.Denied` for every refusal."""
        if self._cache is None:
            return self._verify(token, b"", accepted, keys, now)
        key = digest(token)
        hit = self._cache.get(key)
        if hit is not None:
            keyset = keys(hit.provider)
            if keyset is not None and hit.thumbprint in keyset.thumbprints:
                issuer = self._issuer(hit.provider, accepted)
                if hit.provider not in accepted:
                    raise errors.UnknownIssuer()
                try:
                    check_window(hit.not_after, hit.not_before, now)
                except errors.Denied as exc:
                    raise exc.about(hit.provider, hit.kid, issuer) from None
                known = self._hot.get(key)
                if known is not None:
                    return known
                verified = Verified(
                    hit.provider, claims_of(token), hit.kid, hit.thumbprint,
                    hit.not_after, hit.not_before, key,
                )  # fmt: skip
                self._hot.put(key, verified)
                return verified
            self._cache.drop(key)  # its key left the JWKS: verify afresh
            self._hot.drop(key)
        result = self._verify(token, key, accepted, keys, now)
        if isinstance(result, Verified):
            self._cache.put(key, Entry(result.provider, result.thumbprint, result.kid,
                                       result.not_after, result.not_before))  # fmt: skip
            self._hot.put(key, result)
        return result

    def _verify(
        self, token: str, key: bytes, accepted: Mapping[str, Provider], keys: Keys, now: float
    ) -> Verified | NeedKeys:
        unverified = parse_token(token)
        iss = unverified.iss
        # The token's `iss` picks its provider (never "try every key").
        name = next((n for n, p in accepted.items() if p.issuer == iss), None)
        if name is None:
            raise errors.UnknownIssuer().about("", unverified.kid, iss)
        keyset = keys(name)
        if keyset is None:
            raise errors.KeysUnavailable().about(name, unverified.kid, iss)
        try:
            return verify_token(unverified, name, accepted[name], keyset, now, key)
        except errors.UnknownKey:
            return NeedKeys(name, "", unverified.kid, iss)
        except errors.Denied as exc:
            raise exc.about(name, unverified.kid, iss) from None

    @staticmethod
    def _issuer(name: str, accepted: Mapping[str, Provider]) -> str | None:
        provider = accepted.get(name)
        return provider.issuer if provider is not None else None

    def forget_keys(self, provider: str, keep: frozenset[str]) -> int:
        """Revocation: tokens verified by a key of ``provider`` outside ``keep`` are
        verified afresh from now on. Returns how many cache entries went."""
        self._hot.drop_where(lambda v: v.provider == provider)
        return self._cache.purge(provider, keep) if self._cache is not None else 0
