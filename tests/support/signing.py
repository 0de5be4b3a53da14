"""Test signing keys and token minting (joserfc), for every algorithm we verify."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


def generate(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return RSAKey.generate_key(2048)
    if alg in _CURVES:
        return ECKey.generate_key(_CURVES[alg])
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519")
    if alg.startswith("HS"):
        return OctKey.generate_key(256)
    raise ValueError(alg)


class Signer:
    def __init__(self, alg: str = "RS256", kid: str | None = None, key: Any = None) -> None:
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.key = key if key is not None else generate(alg)

    def jwk(self, **extra: Any) -> dict[str, Any]:
        data = dict(self.key.as_dict(private=False))
        data.update(kid=self.kid, use="sig", alg=self.alg)
        data.update(extra)
        return {k: v for k, v in data.items() if v is not None}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        header: dict[str, Any] | None = None,
        kid: str | None = "default",
        alg: str | None = None,
    ) -> str:
        hdr: dict[str, Any] = {"alg": alg or self.alg, "typ": "JWT"}
        if kid == "default":
            hdr["kid"] = self.kid
        elif kid is not None:
            hdr["kid"] = kid
        hdr.update(header or {})
        return jwt.encode(hdr, claims, self.key, algorithms=[hdr["alg"]])

    def sign_raw(self, header: dict[str, Any], payload: bytes) -> str:
        """Sign arbitrary payload bytes (for malformed-claims cases)."""
        return jws.serialize_compact(header, payload, self.key, algorithms=[header["alg"]])


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers]}


def claims(
    issuer: str, audience: str | list[str] = "api", *, ttl: float = 300, now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    now = time.time() if now is None else now
    out: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": "user-1",
        "iat": int(now), "exp": int(now + ttl),
    }  # fmt: skip
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def b64(data: bytes | dict[str, Any]) -> str:
    import base64

    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
