"""A development token issuer with key rotation (for demos and tests; not for production).

Key ring: the *next* key is published one rotation ahead of use, the *current* key
signs, and a *retired* key stays published until every token it signed has expired
(plus ``retire_grace``, 60 s: a verifier's clock may lag and its clock skew allowance
accepts a token that long after ``exp``), so a verifier that follows the JWKS never
sees a valid token with an unknown key. Only keys that signed tokens are kept: with
``rotate_every`` R and token lifetime T the JWKS holds at most about T/R + 3 keys.
Tokens are minted on ``POST /token`` from loopback only.

Opaque tokens (``"opaque": true``) are random strings the issuer remembers (by SHA-256
digest, until they expire; at most ``max_opaque``, the oldest forgotten first): a
resource server asks about them at ``POST /introspect`` (RFC 7662) and a client drops
them at ``POST /revoke`` (RFC 7009), both with the client credentials in HTTP Basic
(RFC 6749 §2.3.1). Neither tokens nor the secret are ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
import urllib.parse
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
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


@dataclass
class _Opaque:
    expires: float
    claims: dict[str, Any]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


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
        client_id: str = "extauthz",
        client_secret: str | None = None,
        max_opaque: int = 100_000,
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
        # The one client allowed to introspect and revoke (HTTP Basic).
        self.client_id = client_id
        self.client_secret = secrets.token_urlsafe(24) if client_secret is None else client_secret
        self.max_opaque = max_opaque
        self._opaque: OrderedDict[bytes, _Opaque] = OrderedDict()  # by SHA-256 of the token
        self._swept_at = clock()
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
        if now - self._swept_at >= 1.0:  # a full sweep at most once a second
            self._opaque = OrderedDict((d, o) for d, o in self._opaque.items() if o.expires > now)
            self._swept_at = now

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
        omit: Collection[str] = (),
    ) -> str:
        """A signed token. ``cnf`` binds it to a DPoP key (``{"jkt": …}``, RFC 9449) or
        a client certificate (``{"x5t#S256": …}``, RFC 8705); ``typ`` "at+jwt" makes it
        an RFC 9068 access token; ``omit`` names claims left out (``iat``, ``sub``…)."""
        with self._lock:
            return self._mint(sub, aud, scope, ttl, claims, cnf, typ, omit)

    def _mint(
        self,
        sub: str,
        aud: str | list[str] | None,
        scope: str | None,
        ttl: float | None,
        claims: Mapping[str, Any] | None,
        cnf: Mapping[str, str] | None,
        typ: str,
        omit: Collection[str],
    ) -> str:
        self._tick()
        body = self._claims(sub, aud, scope, ttl)
        if cnf:
            body["cnf"] = dict(cnf)
        body.update(claims or {})
        key = self._current
        exp = body.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            key.latest_exp = max(key.latest_exp, float(exp))
        for name in omit:
            body.pop(name, None)
        header = {"alg": self.alg, "kid": key.kid, "typ": typ}
        with warnings.catch_warnings():
            # joserfc flags the "EdDSA" name (RFC 9864 prefers "Ed25519"); verifiers in
            # the field still expect "EdDSA", which is what a dev issuer should emit.
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(header, body, key.key, algorithms=[self.alg])

    def _claims(
        self,
        sub: str,
        aud: str | list[str] | None,
        scope: str | None,
        ttl: float | None,
    ) -> dict[str, Any]:
        """The registered claims every token carries."""
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
        return body

    def mint_opaque(
        self,
        *,
        sub: str = "demo-user",
        aud: str | list[str] | None = None,
        scope: str | None = None,
        ttl: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An opaque token (256 random bits, no dots): only :meth:`introspect` tells
        what it stands for, until it expires or is revoked."""
        with self._lock:
            self._tick()
            body = self._claims(sub, aud, scope, ttl)
            expires = float(body["exp"])
            body["client_id"] = self.client_id
            body.update(claims or {})
            token = secrets.token_urlsafe(32)
            while len(self._opaque) >= max(self.max_opaque, 1):
                self._opaque.popitem(last=False)  # the oldest goes first
            self._opaque[_digest(token)] = _Opaque(expires, body)
            return token

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 §2.2: the claims of a known, unexpired, unrevoked opaque token, else
        only ``{"active": false}`` (a JWT, even one from this issuer, is not known)."""
        with self._lock:
            entry = self._opaque.get(_digest(token))
            if entry is None or entry.expires <= self._clock():
                return {"active": False}
            return {"active": True, **entry.claims, "token_type": "Bearer"}

    def revoke(self, token: str) -> None:
        """RFC 7009: forget the token (an unknown one is no error)."""
        with self._lock:
            self._opaque.pop(_digest(token), None)

    @property
    def opaque_tokens(self) -> int:
        """How many opaque tokens the issuer remembers (expired ones until the next sweep)."""
        with self._lock:
            return len(self._opaque)

    def authenticates(self, client_id: str, client_secret: str) -> bool:
        """The client credentials are this issuer's (compared in constant time)."""
        same_id = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        same_secret = hmac.compare_digest(client_secret.encode(), self.client_secret.encode())
        return same_id & same_secret

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": [self.alg],
            "token_endpoint": f"{self.issuer}/token",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "revocation_endpoint": f"{self.issuer}/revoke",
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
        }


#: The confirmation members a token request may ask for.
_CNF = ("jkt", "x5t#S256")


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The (client_id, client_secret) of an ``Authorization: Basic`` header: RFC 6749
    §2.3.1 form-urlencodes both before base64, so "a b:c%" arrives as ``a+b:c%25``."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        pair = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = pair.partition(":")
    if not colon:
        return None
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


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

    async def client_form(request: web.Request) -> str | web.Response:
        """The request's ``token`` once the client is authenticated, else the answer."""
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None or not issuer.authenticates(*credentials):
            return web.json_response(
                {"error": "invalid_client"},
                status=401,
                headers={**_NO_STORE, "www-authenticate": 'Basic realm="extauthz dev issuer"'},
            )
        try:
            form = await request.post()  # token_type_hint is optional and needs no answer
            value = form.get("token")
        except (ValueError, LookupError):  # not UTF-8, an unknown charset, a bad multipart
            value = None
        if not isinstance(value, str) or not value:
            return web.json_response({"error": "invalid_request"}, status=400, headers=_NO_STORE)
        return value

    async def introspect(request: web.Request) -> web.Response:
        value = await client_form(request)
        if isinstance(value, web.Response):
            return value
        return web.json_response(issuer.introspect(value), headers=_NO_STORE)

    async def revoke(request: web.Request) -> web.Response:
        value = await client_form(request)
        if isinstance(value, web.Response):
            return value
        issuer.revoke(value)
        return web.Response(status=200, headers=_NO_STORE)

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
            cnf = body.get("cnf") or {}
            if not isinstance(cnf, dict) or not all(
                k in _CNF and isinstance(v, str) and v for k, v in cnf.items()
            ):
                raise ValueError('cnf must be {"jkt": THUMBPRINT} or {"x5t#S256": THUMBPRINT}')
            typ = body.get("typ", "JWT")
            if typ not in ("JWT", "at+jwt"):
                raise ValueError("typ must be JWT or at+jwt")
            opaque = body.get("opaque", False)
            if not isinstance(opaque, bool):
                raise ValueError("opaque must be true or false")
            if opaque and (cnf or "typ" in body):
                raise ValueError("an opaque token has no cnf and no typ")
            ttl = body.get("ttl")
            common: dict[str, Any] = {
                "sub": str(body.get("sub", "demo-user")),
                "aud": body.get("aud"),
                "scope": body.get("scope"),
                "ttl": None if ttl is None else float(ttl),
                "claims": extra,
            }
            if opaque:
                return web.json_response(
                    {"access_token": issuer.mint_opaque(**common), "token_type": "Bearer"}
                )
            minted = issuer.mint(**common, cnf=cnf, typ=typ)
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
    application.router.add_post("/introspect", introspect)
    application.router.add_post("/revoke", revoke)
    return application
