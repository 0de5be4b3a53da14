"""Degenerate EdDSA public keys (RFC 8032), refused before they can verify anything.

A small-order public key (the identity point among them) makes the verification
equation hold for signatures anyone can compute, and OpenSSL does not refuse such keys.
A JWKS that publishes one, by mistake or by an attacker who can write to it, would let
anyone mint tokens. ``degenerate`` decodes the point (RFC 8032 §5.1.3 / §5.2.3),
refusing non-canonical encodings too, and tells whether a multiple of the cofactor
sends it to the identity. Pure integer arithmetic (about 0.2 ms): a JWKS key meets it
once, at load time; a DPoP proof brings its key on every request, so answers are
remembered for the keys seen last (a client keeps its key).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class _Curve:
    p: int  # field prime
    a: int  # twisted Edwards a*x^2 + y^2 = 1 + d*x^2*y^2
    d: int
    cofactor: int
    size: int  # encoded length in bytes


_P25519 = 2**255 - 19
_P448 = 2**448 - 2**224 - 1
CURVES = {
    "Ed25519": _Curve(_P25519, -1, -121665 * pow(121666, -1, _P25519) % _P25519, 8, 32),
    "Ed448": _Curve(_P448, 1, -39081 % _P448, 4, 57),
}


def _sqrt(u: int, p: int) -> int | None:
    """A square root of u modulo p (p = 3 mod 4, or p = 5 mod 8), or None."""
    if p % 4 == 3:
        x = pow(u, (p + 1) // 4, p)
    else:
        x = pow(u, (p + 3) // 8, p)
        if x * x % p != u % p:
            x = x * pow(2, (p - 1) // 4, p) % p
    return x if x * x % p == u % p else None


def _decode(curve: _Curve, data: bytes) -> tuple[int, int] | None:
    """The affine point, or None when the encoding is not a canonical curve point."""
    if len(data) != curve.size:
        return None
    number = int.from_bytes(data, "little")
    sign = number >> (8 * curve.size - 1)
    y = number & ((1 << (8 * curve.size - 1)) - 1)
    if y >= curve.p:
        return None  # non-canonical y
    p = curve.p
    y2 = y * y % p
    x2 = (y2 - 1) * pow((curve.d * y2 - curve.a) % p, -1, p) % p
    x = _sqrt(x2, p)
    if x is None:
        return None  # not on the curve
    if x == 0 and sign:
        return None  # "negative zero": non-canonical
    if x & 1 != sign:
        x = p - x
    return x, y


def _add(curve: _Curve, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2), p = a, b, curve.p
    t = curve.d * x1 * x2 * y1 * y2 % p
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, -1, p) % p
    y3 = (y1 * y2 - curve.a * x1 * x2) * pow(1 - t, -1, p) % p
    return x3, y3


@lru_cache(maxsize=4096)
def degenerate(crv: str, public: bytes) -> str | None:
    """Why ``public`` must not be used as a ``crv`` key, or None when it is sound."""
    curve = CURVES[crv]
    point = _decode(curve, public)
    if point is None:
        return f"not a canonical {crv} point"
    for _ in range(curve.cofactor.bit_length() - 1):  # multiply by the cofactor
        point = _add(curve, point, point)
    if point == (0, 1):
        return f"{crv} public key of small order: it would verify forged tokens"
    return None
