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
from joserfc.util import urlsafe_b64decode

from ..errors import JwksError
from . import curves

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

#: Default smallest RSA modulus accepted (``providers.<name>.min_rsa_bits``).
MIN_RSA_BITS = 2048
#: Largest RSA public exponent accepted, in bits (65537 has 17).
MAX_RSA_EXPONENT_BITS = 32
#: RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: A token without ``kid`` is tried against at most this many keys (the first ones of
#: the JWKS, in order, whose type fits its ``alg``): a large JWKS must not turn one
#: request into hundreds of signature checks on the event loop.
MAX_KIDLESS_CANDIDATES = 4


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg`, when published
    key: Any = field(repr=False)  # a joserfc Key
    thumbprint: str = ""
    size: int = 0  # bytes of an `oct` key (its hash must not be longer)

    def accepts(self, alg: str) -> bool:
        """Key type, curve and the JWK's own `alg` must all match the token's `alg`."""
        want = ALG_KEY_TYPES.get(alg)
        if want is None or want[0] != self.kty:
            return False
        if want[1] is not None and self.crv not in want[1]:
            return False
        if self.kty == "oct" and self.size < HMAC_MIN_BYTES.get(alg, 0):
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
        if kid is not None:
            return tuple(k for k in self.by_kid.get(kid, ()) if k.accepts(alg))
        fitting = (k for k in self.keys if k.accepts(alg))
        return tuple(k for _, k in zip(range(MAX_KIDLESS_CANDIDATES), fitting, strict=False))


EMPTY = KeySet((), MappingProxyType({}))


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("key member is not a string")
    try:
        return urlsafe_b64decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError("key member is not base64url") from None


def _refuse_weak(data: Mapping[str, Any], key: Any, min_rsa_bits: int) -> int:
    """Raise ValueError for keys that would verify forgeries or are too weak; returns
    the size in bytes of an ``oct`` key (0 otherwise)."""
    kty = key.key_type
    if kty == "RSA":
        bits = key.public_key.key_size
        if bits < min_rsa_bits:
            raise ValueError(f"RSA key of {bits} bits is below {min_rsa_bits} (min_rsa_bits)")
        # Every signature check costs about log2(e) multiplications: a huge exponent
        # (valid, but never issued: 65537 is the norm) makes each one a CPU burn.
        if key.public_key.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
            raise ValueError(f"RSA public exponent above 2**{MAX_RSA_EXPONENT_BITS}")
    elif kty == "OKP":
        crv = data.get("crv")
        if crv not in curves.CURVES:
            raise ValueError(f"OKP curve {crv!r} is not a signature curve")
        why = curves.degenerate(crv, _b64(data.get("x")))
        if why is not None:
            raise ValueError(why)
    elif kty == "oct":
        size = len(key.raw_value)
        alg = data.get("alg")
        need = HMAC_MIN_BYTES.get(alg, HMAC_MIN_BYTES["HS256"]) if isinstance(alg, str) else 32
        if size < need:
            raise ValueError(f"oct key of {size} bytes is shorter than its hash ({need} bytes)")
        return size
    return 0


def _one_key(data: Mapping[str, Any], allow_symmetric: bool, min_rsa_bits: int) -> VerifyKey:
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
    except (JoseError, ValueError, TypeError, KeyError):
        # No library text here: it could echo key material into the logs.
        if kty == "EC" and all(isinstance(data.get(m), str) for m in ("crv", "x", "y")):
            raise ValueError(f"not a point on curve {data.get('crv')}") from None
        raise ValueError(
            f"cannot import the {kty or 'untyped'} key (missing or malformed members)"
        ) from None
    size = _refuse_weak(data, key, min_rsa_bits)
    crv = data.get("crv")
    return VerifyKey(
        kid=kid,
        kty=key.key_type,
        crv=crv if isinstance(crv, str) else None,
        alg=alg,
        key=key,
        thumbprint=key.thumbprint(),
        size=size,
    )


def parse_keyset(
    document: bytes | str | Mapping[str, Any],
    *,
    allow_symmetric: bool = True,
    min_rsa_bits: int = MIN_RSA_BITS,
) -> KeySet:
    """Parse a JWKS. Raises JwksError when no usable key is left."""
    if isinstance(document, bytes | str):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError):
            raise JwksError("JWKS is not valid JSON") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError("JWKS has no 'keys' array")
    keys: list[VerifyKey] = []
    skipped: list[tuple[str, str]] = []
    for i, item in enumerate(document["keys"]):
        label = str(item.get("kid", f"#{i}")) if isinstance(item, Mapping) else f"#{i}"
        if not isinstance(item, Mapping):
            skipped.append((label, "not an object"))
            continue
        try:
            keys.append(_one_key(item, allow_symmetric, min_rsa_bits))
        except ValueError as exc:
            skipped.append((label, str(exc)))
    if not keys:
        detail = "; ".join(f"{k}: {r}" for k, r in skipped) or "no keys"
        raise JwksError(f"JWKS has no usable key ({detail})")
    by_kid: dict[str, list[VerifyKey]] = {}
    for k in keys:
        if k.kid is not None:
            by_kid.setdefault(k.kid, []).append(k)
    return KeySet(
        tuple(keys),
        MappingProxyType({kid: tuple(v) for kid, v in by_kid.items()}),
        tuple(skipped),
    )
