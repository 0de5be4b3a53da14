"""Parsing a JWKS document into an immutable key set (pure; no I/O).

Keys are bound to their provider (one KeySet per provider) and looked up by ``kid``.
Unusable keys are skipped one by one with a reason; a document with no usable key at
all is an error, so an empty or broken JWKS can never replace a good one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from joserfc import jwk
from joserfc.errors import JoseError

from .errors import KeyFetchError

# alg -> (kty, allowed curves or None). Enforced before any signature check, so an
# RSA key can never verify HS256 and an X25519 or P-384 key never verifies EdDSA/ES256.
ALG_KEY_TYPES: Mapping[str, tuple[str, frozenset[str] | None]] = MappingProxyType(
    {
        **{f"RS{n}": ("RSA", None) for n in (256, 384, 512)},
        **{f"PS{n}": ("RSA", None) for n in (256, 384, 512)},
        **{f"HS{n}": ("oct", None) for n in (256, 384, 512)},
        "ES256": ("EC", frozenset({"P-256"})),
        "ES384": ("EC", frozenset({"P-384"})),
        "ES512": ("EC", frozenset({"P-521"})),
        "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
        "Ed25519": ("OKP", frozenset({"Ed25519"})),
    }
)

MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg`, when published
    key: Any = field(repr=False)  # a joserfc Key
    thumbprint: str = ""

    def accepts(self, alg: str) -> bool:
        """Key type, curve and the JWK's own `alg` must all match the token's `alg`."""
        want = ALG_KEY_TYPES.get(alg)
        if want is None or want[0] != self.kty:
            return False
        if want[1] is not None and self.crv not in want[1]:
            return False
        return self.alg is None or self.alg == alg


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerifyKey, ...]
    by_kid: Mapping[str, tuple[VerifyKey, ...]] = field(repr=False)
    skipped: tuple[tuple[str, str], ...] = ()  # (kid or index, reason)
    # Derived once (the request path reads them): kids and key thumbprints.
    kids: frozenset[str] = field(init=False, repr=False)
    thumbprints: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kids", frozenset(k.kid for k in self.keys if k.kid))
        object.__setattr__(self, "thumbprints", frozenset(k.thumbprint for k in self.keys))

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Keys that may verify a token with this header; kid is only a lookup key."""
        pool = self.keys if kid is None else self.by_kid.get(kid, ())
        return tuple(k for k in pool if k.accepts(alg))


EMPTY = KeySet((), MappingProxyType({}))


def _one_key(data: Mapping[str, Any], allow_symmetric: bool) -> VerifyKey:
    use = data.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"use is {use!r}, not 'sig'")
    ops = data.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not allow 'verify'")
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    alg = data.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALG_KEY_TYPES):
        raise ValueError(f"unsupported alg {alg!r}")
    # Import only the public members: a JWKS that leaks `d` must not turn us into a signer.
    public = {k: v for k, v in data.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
    kty = data.get("kty")
    if kty == "oct":
        if not allow_symmetric:
            # A shared secret in a fetched (public) JWKS means anyone can sign.
            raise ValueError("symmetric (oct) keys are only accepted from inline or file jwks")
        public = dict(data)  # symmetric keys are secret by nature
    try:
        key = jwk.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"cannot import: {exc.__class__.__name__}") from None
    crv = data.get("crv")
    if isinstance(key, jwk.RSAKey):
        bits = key.public_key.key_size
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {bits} bits is below {MIN_RSA_BITS}")
    if key.key_type == "OKP" and crv not in ("Ed25519", "Ed448"):
        raise ValueError(f"OKP curve {crv!r} is not a signature curve")
    return VerifyKey(
        kid=kid,
        kty=key.key_type,
        crv=crv if isinstance(crv, str) else None,
        alg=alg,
        key=key,
        thumbprint=key.thumbprint(),
    )


def parse(document: bytes | str | Mapping[str, Any], *, allow_symmetric: bool = True) -> KeySet:
    """Parse a JWKS. Raises KeyFetchError when no usable key is left."""
    if isinstance(document, bytes | str):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError):
            raise KeyFetchError("JWKS is not valid JSON") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeyFetchError("JWKS has no 'keys' array")
    keys: list[VerifyKey] = []
    skipped: list[tuple[str, str]] = []
    for i, item in enumerate(document["keys"]):
        label = str(item.get("kid", f"#{i}")) if isinstance(item, Mapping) else f"#{i}"
        if not isinstance(item, Mapping):
            skipped.append((label, "not an object"))
            continue
        try:
            keys.append(_one_key(item, allow_symmetric))
        except ValueError as exc:
            skipped.append((label, str(exc)))
    if not keys:
        detail = "; ".join(f"{k}: {r}" for k, r in skipped) or "no keys"
        raise KeyFetchError(f"JWKS has no usable key ({detail})")
    by_kid: dict[str, list[VerifyKey]] = {}
    for k in keys:
        if k.kid is not None:
            by_kid.setdefault(k.kid, []).append(k)
    return KeySet(
        tuple(keys),
        MappingProxyType({kid: tuple(v) for kid, v in by_kid.items()}),
        tuple(skipped),
    )
