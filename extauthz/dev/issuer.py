"""A development token issuer with key rotation (for demos and tests; not for production).

Key ring: the *next* key is published one rotation ahead of use, the *current* key
signs, and a *retired* key stays published until every token it signed has expired
(plus ``retire_grace``, 60 s: a verifier's clock may lag and its clock skew allowance
accepts a token that long after ``exp``), so a verifier that follows the JWKS never
sees a valid token with an unknown key. Only keys that signed tokens are kept: with
``rotate_every`` R and token lifetime T the JWKS holds at most about T/R + 3 keys.
Tokens are minted on ``POST /token`` from loopback only.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

ALGORITHMS = ("EdDSA", "RS256", "ES256")


def _generate(alg: str) -> Any:
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    if alg == "RS256":
        return RSAKey.generate_key(2048)
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    raise ValueError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")


@dataclass
class _Key:
    kid: str
    key: Any
    latest_exp: float = 0.0  # latest exp of any token signed with it


class DevIssuer:
    def __init__(
        self,
        issuer: str,
        *,
        alg: str = "EdDSA",
        rotate_every: float | None = None,
        token_ttl: float = 300.0,
        retire_grace: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.alg = alg
        self.rotate_every = rotate_every
        self.token_ttl = token_ttl
        self.retire_grace = retire_grace
        self._clock = clock
        self._current = self._new_key()
        self._next = self._new_key() if rotate_every else None
        self._retired: list[_Key] = []
        self._rotated_at = clock()
        self.rotations = 0
        self._lock = threading.RLock()  # tests and tools call it from several threads

    def _new_key(self) -> _Key:
        return _Key(kid=uuid.uuid4().hex[:16], key=_generate(self.alg))

    @property
    def current_kid(self) -> str:
        return self._current.kid

    def tick(self) -> None:
        """Rotate when due and drop retired keys whose tokens have all expired."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        now = self._clock()
        if self.rotate_every and now - self._rotated_at >= self.rotate_every:
            self._rotate()
        self._retired = [k for k in self._retired if k.latest_exp + self.retire_grace > now]

    def _rotate(self) -> None:
        now = self._clock()
        self._retired.append(self._current)
        self._current = self._next or self._new_key()
        self._next = self._new_key() if self.rotate_every else None
        self._rotated_at = now
        self.rotations += 1

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return self._jwks()

    def _jwks(self) -> dict[str, Any]:
        self._tick()
        ring = [self._current, *([self._next] if self._next else []), *self._retired]
        keys = []
        for k in ring:
            data = k.key.as_dict(private=False)
            data.update(kid=k.kid, use="sig", alg=self.alg)
            keys.append(data)
        return {"keys": keys}

    def mint(
        self,
        *,
        sub: str = "demo-user",
        aud: str | list[str] | None = None,
        scope: str | None = None,
        ttl: float | None = None,
        claims: Mapping[str, Any] | None = None,
        cnf: Mapping[str, str] | None = None,
        typ: str = "JWT",
    ) -> str:
        """A signed token. ``cnf`` binds it to a DPoP key (``{"jkt": …}``, RFC 9449) or
        a client certificate (``{"x5t#S256": …}``, RFC 8705); ``typ`` "at+jwt" makes it
        an RFC 9068 access token."""
        with self._lock:
            return self._mint(sub, aud, scope, ttl, claims, cnf, typ)

    def _mint(
        self,
        sub: str,
        aud: str | list[str] | None,
        scope: str | None,
        ttl: float | None,
        claims: Mapping[str, Any] | None,
        cnf: Mapping[str, str] | None,
        typ: str,
    ) -> str:
        self._tick()
        now = self._clock()
        ttl = self.token_ttl if ttl is None else ttl
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "iat": int(now),
            "exp": int(now + ttl),
            "jti": uuid.uuid4().hex,
        }
        if aud is not None:
            body["aud"] = aud
        if scope:
            body["scope"] = scope
        if cnf:
            body["cnf"] = dict(cnf)
        body.update(claims or {})
        key = self._current
        key.latest_exp = max(key.latest_exp, float(body["exp"]))
        header = {"alg": self.alg, "kid": key.kid, "typ": typ}
        with warnings.catch_warnings():
            # joserfc flags the "EdDSA" name (RFC 9864 prefers "Ed25519"); verifiers in
            # the field still expect "EdDSA", which is what a dev issuer should emit.
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(header, body, key.key, algorithms=[self.alg])

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": [self.alg],
            "token_endpoint": f"{self.issuer}/token",
        }


#: The confirmation members a token request may ask for.
_CNF = ("jkt", "x5t#S256")


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def app(issuer: DevIssuer) -> web.Application:
    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(issuer.discovery())

    async def jwks(_: web.Request) -> web.Response:
        # Short max-age: verifiers following Cache-Control pick up rotations quickly.
        max_age = int(min(issuer.rotate_every or 300, 300) / 2) or 1
        return web.json_response(
            issuer.jwks(),
            content_type="application/jwk-set+json",
            headers={"cache-control": f"public, max-age={max_age}"},
        )

    async def token(request: web.Request) -> web.Response:
        if not _loopback(request):
            return web.json_response({"error": "tokens are minted for loopback only"}, status=403)
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            extra = body.get("claims") or {}
            if not isinstance(extra, dict):
                raise ValueError("claims must be an object")
            ttl = body.get("ttl")
            cnf = body.get("cnf") or {}
            if not isinstance(cnf, dict) or not all(
                k in _CNF and isinstance(v, str) and v for k, v in cnf.items()
            ):
                raise ValueError('cnf must be {"jkt": THUMBPRINT} or {"x5t#S256": THUMBPRINT}')
            typ = body.get("typ", "JWT")
            if typ not in ("JWT", "at+jwt"):
                raise ValueError("typ must be JWT or at+jwt")
            minted = issuer.mint(
                sub=str(body.get("sub", "demo-user")),
                aud=body.get("aud"),
                scope=body.get("scope"),
                ttl=None if ttl is None else float(ttl),
                claims=extra,
                cnf=cnf,
                typ=typ,
            )
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        kind = "DPoP" if "jkt" in cnf else "Bearer"
        return web.json_response(
            {"access_token": minted, "token_type": kind, "kid": issuer.current_kid}
        )

    application = web.Application()
    application.router.add_get("/.well-known/openid-configuration", discovery)
    application.router.add_get("/.well-known/jwks.json", jwks)
    application.router.add_post("/token", token)
    return application
