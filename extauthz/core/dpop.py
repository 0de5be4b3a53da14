"""DPoP proofs (RFC 9449 §4.3): the client proves, per request, that it holds the key
its access token is bound to.

A proof is a hostile JWT too: it goes through the same strict JSON parser, size cap
and key rules as access tokens (no ``jku``/``x5u``/``x5c``, no ``crit``, no private or
degenerate key), and every refusal raises :class:`~extauthz.errors.InvalidDpopProof`
— but a key other than the token's ``cnf.jkt``, a binding problem (``BindingMismatch``).
The ``jti`` replay check needs shared state, so it is not done here:
:func:`verify_proof` returns what the caller must remember and for how long.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from ..config import DpopSettings
from ..errors import BindingMismatch, InvalidDpopProof, JwksError
from ..keys.jwks import MIN_RSA_BITS, parse_keyset
from .verify import MAX_TOKEN_BYTES, strict_json, typ_matches

_ALGS = JWSRegistry.algorithms
#: Longest ``jti`` accepted (RFC 9449 asks for 96 bits of randomness; a bound keeps the
#: replay store's keys small whatever a client sends).
MAX_JTI = 256
#: Header members a proof must not carry: keys are only ever taken from ``jwk``.
_REFUSED = ("jku", "x5u", "x5c", "crit", "b64", "zip", "enc")
#: JWK members that only a private key has: a proof never sends a secret.
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_UNRESERVED = re.compile(
    r"%(4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])"
)


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every check but the replay check."""

    jkt: str  # RFC 7638 SHA-256 thumbprint of its key: must equal the token's cnf.jkt
    jti: str
    iat: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(ASCII of the access token))."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def normalise_uri(uri: str) -> str:
    """RFC 3986 §6 syntax-based normalisation for comparing ``htu``: scheme and host in
    lower case, the default port dropped, percent-encoded unreserved characters decoded
    and other escapes in upper case, an empty path as "/", no query or fragment."""
    try:
        # urlsplit raises for some hosts (an unclosed "[", NFKC tricks), .port for a
        # port that is not a number in range: none of them may become a 5xx.
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise InvalidDpopProof("DPoP proof htu is not a URI") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidDpopProof("DPoP proof htu is not an http(s) URL")
    host = parts.hostname.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    path = parts.path or "/"
    path = _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), path)
    path = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), path)
    return f"{scheme}://{host}{remove_dot_segments(path)}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: "/a/./b/../c" is "/a/c". Clients and
    proxies send the resolved path; a proof may name either."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _numeric(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidDpopProof("DPoP proof iat is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidDpopProof("DPoP proof iat is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidDpopProof("DPoP proof iat is not a number")
    return number


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None or value == "":
        raise InvalidDpopProof(f"DPoP proof {name} missing")
    if not isinstance(value, str):
        raise InvalidDpopProof(f"DPoP proof {name} is not a string")
    return value


def _rsa_bits(n: Any) -> int:
    """The size of an RSA ``jwk``'s modulus (0 when ``n`` is not base64url)."""
    try:
        return int.from_bytes(urlsafe_b64decode(n.encode("ascii")), "big").bit_length()
    except (AttributeError, ValueError):  # not a string, not ASCII, not base64url
        return 0


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings from JSON: ``hmac.compare_digest`` raises
    TypeError for non-ASCII ``str`` (which JSON may hold), so compare UTF-8 bytes."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def verify_proof(
    proof: str,
    token: str,
    *,
    method: str,
    uri: str,
    settings: DpopSettings,
    clock_skew: float,
    now: float,
    jkt: str | None = None,
) -> Proof:
    """Every check of RFC 9449 §4.3 but ``jti`` replay (the caller's, with a store).
    Raises :class:`InvalidDpopProof`, or :class:`BindingMismatch` when ``jkt`` (the
    token's ``cnf.jkt``) is given and is not the thumbprint of the proof's key: checked
    before the signature, so a key the token is not bound to never costs a signature
    verification (an RSA ``jwk`` with a huge exponent costs some 20 ms to verify)."""
    if len(proof) > MAX_TOKEN_BYTES or not proof.isascii():
        raise InvalidDpopProof("DPoP proof malformed")
    segments = proof.split(".")
    if len(segments) != 3 or not all(segments):
        raise InvalidDpopProof("DPoP proof malformed")
    try:
        header = strict_json(urlsafe_b64decode(segments[0].encode()))
        claims = strict_json(urlsafe_b64decode(segments[1].encode()))
        signature = urlsafe_b64decode(segments[2].encode())
    except (ValueError, TypeError):
        raise InvalidDpopProof("DPoP proof malformed") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidDpopProof("DPoP proof malformed")
    typ = header.get("typ")
    if not typ_matches(typ, "dpop+jwt"):  # as RFC 7515 compares media types
        raise InvalidDpopProof("DPoP proof typ is not dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms or alg not in _ALGS:
        raise InvalidDpopProof("DPoP proof algorithm not allowed")
    if any(name in header for name in _REFUSED):
        raise InvalidDpopProof("DPoP proof header not accepted")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or any(name in jwk for name in _PRIVATE):
        raise InvalidDpopProof("DPoP proof jwk is not a public key")
    if jwk.get("kty") == "RSA" and _rsa_bits(jwk.get("n")) < MIN_RSA_BITS:
        # Refused before joserfc imports it: the import warns (SecurityWarning), and a
        # client's proof must not reach the warnings machinery (an error under -W error).
        raise InvalidDpopProof("DPoP proof jwk is not a usable public key")
    try:
        # The access tokens' key rules: type and curve fit `alg`, no degenerate key.
        (key,) = parse_keyset({"keys": [jwk]}, allow_symmetric=False,
                              min_rsa_bits=MIN_RSA_BITS).keys  # fmt: skip
    except (JwksError, ValueError):
        raise InvalidDpopProof("DPoP proof jwk is not a usable public key") from None
    if not key.accepts(alg):
        raise InvalidDpopProof("DPoP proof jwk does not fit its algorithm")
    if jkt is not None and not same(key.thumbprint, jkt):
        raise BindingMismatch("DPoP proof key does not match the token")
    signing_input = (segments[0] + "." + segments[1]).encode("ascii")
    try:
        valid = _ALGS[alg].verify(signing_input, signature, key.key)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise InvalidDpopProof("DPoP proof signature invalid")
    jti = _string(claims, "jti")
    if len(jti) > MAX_JTI:
        raise InvalidDpopProof("DPoP proof jti too long")
    if _string(claims, "htm") != method:  # methods are case-sensitive (RFC 9110 §9.1)
        raise InvalidDpopProof("DPoP proof htm does not match the request")
    if normalise_uri(_string(claims, "htu")) != normalise_uri(uri):
        raise InvalidDpopProof("DPoP proof htu does not match the request")
    iat = _numeric(claims.get("iat"))
    if not now - settings.max_age - clock_skew <= iat <= now + clock_skew:
        raise InvalidDpopProof("DPoP proof too old or from the future")
    ath = claims.get("ath")
    if ath is None:  # a proof made for a token request, not for using the token
        raise InvalidDpopProof("DPoP proof has no ath")
    if not isinstance(ath, str) or not same(ath, access_token_hash(token)):
        raise InvalidDpopProof("DPoP proof ath does not match the access token")
    return Proof(jkt=key.thumbprint, jti=jti, iat=iat)
