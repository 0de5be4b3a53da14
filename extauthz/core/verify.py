"""Token verification (RFC 7519 / RFC 8725) through joserfc. Verification raises.

``parse_token`` does the cheap, key-free checks; ``verify_token`` selects the key (by provider,
then ``kid``; never from ``jku``/``x5u``/``jwk``/``x5c``), checks the signature and the
claims. ``check_claims`` derives the validity window once; a verified-token cache keeps
that window and re-checks only it on a hit (``check_window``): issuer, audience and
required claims of a given token cannot change.
All joserfc exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from .. import errors
from ..config import Provider
from ..keys.jwks import KeySet

MAX_TOKEN_BYTES = 8192


_ALGS = JWSRegistry.algorithms
# Header members whose meaning we do not implement: rejecting beats misreading.
_REFUSED_HEADERS = frozenset(("crit", "b64", "zip", "enc"))


#: Deepest JSON nesting accepted in a token's header or payload. Real claim sets nest
#: a few levels; thousands of levels are an attack on the parser (RecursionError).
MAX_JSON_DEPTH = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def _reject_constant(_: str) -> None:
    raise ValueError("non-standard number")


def _check_tree(value: Any) -> None:
    """Depth within MAX_JSON_DEPTH and every string encodable as UTF-8 (a lone
    surrogate such as ``"\\ud800"`` is valid JSON but no header or protobuf string
    can carry it). Iterative: the input decides the depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError("JSON nested too deeply")
            if isinstance(item, dict):
                for key, member in item.items():
                    key.encode("utf-8")
                    stack.append((member, depth + 1))
            else:
                stack.extend((member, depth + 1) for member in item)
        elif isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate


#: One decoder for every call: ``json.loads`` with these arguments builds a new one each time.
_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def strict_json(data: bytes) -> Any:
    """Strict JSON for anything an attacker writes (token header and payload):
    UTF-8 only (``json.loads(bytes)`` would also take UTF-16/32 and a BOM, RFC 8259
    §8.1), no duplicate members, no NaN/Infinity, nesting bounded, no lone surrogates.
    Raises ValueError for every refusal (RecursionError included)."""
    text = data.decode("utf-8")
    try:
        value = _STRICT.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # The walk costs a few microseconds; skip it when it cannot find anything: no
    # escape that could make a surrogate, and fewer brackets than the depth bound.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        _check_tree(value)
    return value


@dataclass(frozen=True, slots=True)
class Unverified:
    """A structurally valid JWS whose signature has not been checked yet."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any] = field(repr=False)
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    @property
    def iss(self) -> str | None:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else None


@dataclass(frozen=True, slots=True)
class Verified:
    provider: str
    claims: Mapping[str, Any] = field(repr=False)
    kid: str | None
    thumbprint: str  # of the key that verified it: revocation drops cache entries by it
    # The validity window with clock skew applied, so a cache hit re-checks time cheaply.
    not_after: float = math.inf
    not_before: float = -math.inf
    digest: bytes = field(default=b"", repr=False)  # the token's, when a cache keyed it


def check_window(not_after: float, not_before: float, now: float) -> None:
    """A verified token's validity window (skew applied) against `now`."""
    if now >= not_after:
        raise errors.Expired()
    if now < not_before:
        raise errors.NotYetValid()


def parse_token(token: str) -> Unverified:
    """Key-free checks: size, shape, header, JSON payload. Raises InvalidToken subclasses."""
    if len(token) > MAX_TOKEN_BYTES:
        raise errors.TokenTooLarge()
    if not token.isascii():
        raise errors.MalformedToken()
    dots = token.count(".")
    if dots == 4:
        raise errors.MalformedToken("encrypted tokens are not accepted")
    if dots != 2:
        raise errors.MalformedToken()
    h64, p64, s64 = token.encode("ascii").split(b".")
    try:
        # Our own strict parse, not joserfc's compact one: that lets the last duplicate
        # win, accepts UTF-16 and recurses without bound. Which `alg` or `kid` counts must
        # not be a parser's choice (RFC 7515 §4), and no header may crash the parser.
        # joserfc's strict base64url does the decoding.
        header = strict_json(urlsafe_b64decode(h64))
    except (ValueError, TypeError):
        raise errors.MalformedToken() from None
    if not isinstance(header, dict) or "alg" not in header:
        raise errors.MalformedToken()
    try:
        if "b64" in header and header["b64"] is not True:
            # RFC 7797's unencoded payload (refused below, with its header) needs `crit`.
            crit = header.get("crit")
            if not (isinstance(crit, list) and "b64" in crit):
                raise ValueError("b64 without crit")
            payload = p64
        else:
            payload = urlsafe_b64decode(p64)
        signature = urlsafe_b64decode(s64)
    except (ValueError, TypeError):
        raise errors.MalformedToken() from None
    alg = header.get("alg")
    if not isinstance(alg, str) or not isinstance(header.get("kid", ""), str):
        raise errors.MalformedToken()  # RFC 7515: `alg` and `kid` are strings
    if alg.lower() == "none":
        raise errors.AlgorithmNotAllowed()
    if not _REFUSED_HEADERS.isdisjoint(header):
        raise errors.UnsupportedHeader()
    try:
        claims = strict_json(payload)
    except ValueError:
        raise errors.MalformedToken("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise errors.MalformedToken("token payload is not a JSON object")
    return Unverified(
        header=header,
        claims=claims,
        signing_input=h64 + b"." + p64,
        signature=signature,
    )


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a token that already passed ``parse_token`` and ``verify_token``."""
    claims: dict[str, Any] = json.loads(urlsafe_b64decode(token.split(".")[1].encode()))
    return claims


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.InvalidClaims(f"claim {name} is not a NumericDate")
    try:
        number = float(value)  # a 400-digit JSON integer overflows here
    except OverflowError:
        raise errors.InvalidClaims(f"claim {name} is not a NumericDate") from None
    if not math.isfinite(number):
        raise errors.InvalidClaims(f"claim {name} is not a NumericDate")
    return number


def check_claims(
    claims: Mapping[str, Any], provider: Provider, now: float, *, introspected: bool = False
) -> tuple[float, float]:
    """Issuer, audience, time and required claims. Returns the validity window
    ``(not_after, not_before)`` with the clock skew applied, for ``check_window``.

    ``introspected``: an RFC 7662 answer, where ``iss`` and ``exp`` are optional (the
    authorization server vouches for the token), but held to them when present."""
    iss = claims.get("iss")
    if iss != provider.issuer and not (introspected and iss is None):
        raise errors.UnknownIssuer()
    exp = _numeric(claims, "exp")
    if exp is None and not introspected:
        raise errors.InvalidClaims("claim exp is required")
    skew = provider.clock_skew
    if exp is not None and now >= exp + skew:
        raise errors.Expired()
    nbf = _numeric(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise errors.NotYetValid()
    iat = _numeric(claims, "iat")
    if iat is not None and now + skew < iat:
        raise errors.NotYetValid("token issued in the future")
    if provider.max_lifetime is not None:
        if iat is None or exp is None:
            raise errors.InvalidClaims(f"claim {'iat' if iat is None else 'exp'} is required")
        if exp - iat > provider.max_lifetime:
            raise errors.InvalidClaims("token lifetime too long")
    if provider.audiences:
        aud = claims.get("aud")
        if isinstance(aud, str):
            aud = [aud]
        if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
            raise errors.WrongAudience()
        if not any(a in provider.audiences for a in aud):
            raise errors.WrongAudience()
    for name in ("sub", "jti"):
        # RFC 7519 §4.1.2 / §4.1.7: strings. A numeric `sub` would reach the upstream
        # as the same x-user-id as the string of its digits: another identity.
        if name in claims and not isinstance(claims[name], str):
            raise errors.InvalidClaims(f"claim {name} is not a string")
    for name in provider.required_claims:
        if name not in claims:
            raise errors.InvalidClaims(f"claim {name} is required")
    starts = [v for v in (nbf, iat) if v is not None]
    return (exp + skew if exp is not None else math.inf), (
        max(starts) - skew if starts else -math.inf
    )


def typ_matches(typ: object, wanted: str) -> bool:
    """RFC 7515 §4.1.9: a media type, compared case-insensitively, "application/" optional."""
    if not isinstance(typ, str):
        return False

    def bare(value: str) -> str:
        value = value.lower()
        return value[len("application/") :] if value.startswith("application/") else value

    return bare(typ) == bare(wanted)


def verify_token(
    token: Unverified,
    name: str,
    provider: Provider,
    keys: KeySet,
    now: float,
    digest: bytes = b"",
) -> Verified:
    """Signature and claims. Raises; never returns an unverified result.

    ``UnknownKey`` means no key of this provider carries the token's ``kid``: the caller
    may refetch the JWKS once and retry.
    """
    alg = token.alg
    if alg not in provider.algorithms or alg not in _ALGS:
        raise errors.AlgorithmNotAllowed()
    if provider.require_typ is not None and not typ_matches(
        token.header.get("typ"), provider.require_typ
    ):
        raise errors.WrongTokenType()
    # Claims first: they are cheap and they gate the (rate-limited) unknown-kid refetch.
    not_after, not_before = check_claims(token.claims, provider, now)
    kid = token.kid
    if kid is not None and kid not in keys.by_kid:
        raise errors.UnknownKey()
    candidates = keys.candidates(kid, alg)
    if not candidates:
        if kid is None and not keys.keys:
            raise errors.UnknownKey()
        # The kid exists but its key type, curve or own `alg` disagree with the token.
        raise errors.AlgorithmNotAllowed("algorithm does not match key")
    model = _ALGS[alg]
    for key in candidates:
        try:
            ok = model.verify(token.signing_input, token.signature, key.key)
        except (JoseError, ValueError, TypeError):
            ok = False
        if ok:
            return Verified(
                provider=name,
                claims=token.claims,
                kid=key.kid,
                thumbprint=key.thumbprint,
                not_after=not_after,
                not_before=not_before,
                digest=digest,
            )
    raise errors.BadSignature()
