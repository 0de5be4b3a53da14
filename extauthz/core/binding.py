"""Sender-constrained tokens: a token bound to a key (DPoP, RFC 9449) or to a client
certificate (RFC 8705) is accepted only from whoever holds that key or certificate.

Checked on every request, cache hits included (the cache remembers a signature, not a
proof). Downgrades are refused both ways: a DPoP-bound token sent as ``Bearer`` and an
unbound token sent as ``DPoP``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ..config import Provider
from ..errors import BindingMismatch, InvalidDpopProof
from .dpop import same, verify_proof
from .request import AuthRequest
from .tokens import Found


def replay_key(provider: str, jkt: str, jti: str) -> str:
    """A bounded key per (provider, proof key, jti): the jti is the client's choice, and
    keying by the key too means one client's jti never blocks another's."""
    digest = hashlib.sha256(f"{provider}\x00{jkt}\x00{jti}".encode()).hexdigest()[:40]
    return f"extauthz:dpop:{digest}"


def request_uri(req: AuthRequest) -> str:
    """The original request's URI without query, as ``htu`` must name it."""
    scheme = req.scheme or "http"
    return f"{scheme}://{req.host}{req.path.partition('?')[0].partition('#')[0]}"


def check(
    req: AuthRequest,
    token: Found,
    provider_name: str,
    provider: Provider,
    claims: Mapping[str, Any],
    now: float,
) -> tuple[str, float] | None:
    """Raise when a binding is not met. For a valid DPoP request, returns the replay
    check still owed: (replay key, seconds to remember it)."""
    cnf = claims.get("cnf", {})
    if not isinstance(cnf, dict):  # RFC 7800 §3.1: an object; a binding unread is refused
        raise BindingMismatch("token cnf claim is not an object")
    # A member that is present binds, whatever its value: `"x5t#S256": null` is not an
    # unbound token (fail closed), it is a binding no certificate can meet.
    jkt = cnf.get("jkt")
    owed: tuple[str, float] | None = None
    settings = provider.dpop
    if token.scheme == "dpop":
        if settings is None:
            raise BindingMismatch("DPoP is not accepted for this issuer")
        if not isinstance(jkt, str):
            raise BindingMismatch("token is not DPoP-bound")
        value = req.headers.get("dpop")
        if value is None:
            raise InvalidDpopProof("DPoP proof missing")
        if "," in value:  # repeated headers arrive joined by commas; no proof has one
            raise InvalidDpopProof("more than one DPoP proof")
        proof = verify_proof(
            value.strip(),
            token.token,
            method=req.method,
            uri=request_uri(req),
            settings=settings,
            clock_skew=provider.clock_skew,
            now=now,
            jkt=jkt,
        )
        if not same(proof.jkt, jkt):
            raise BindingMismatch("DPoP proof key does not match the token")
        window = settings.max_age + 2 * provider.clock_skew
        owed = (replay_key(provider_name, proof.jkt, proof.jti), window)
    elif "jkt" in cnf:
        raise BindingMismatch("DPoP-bound token sent as Bearer")
    elif settings is not None and settings.required:
        raise BindingMismatch("this issuer's tokens must be sent with DPoP")
    if "x5t#S256" in cnf:
        x5t = cnf["x5t#S256"]
        have = req.client_cert.thumbprint() if req.client_cert is not None else ""
        if not have:
            raise BindingMismatch("certificate-bound token without a client certificate")
        if not isinstance(x5t, str) or not same(have, x5t):
            raise BindingMismatch("client certificate does not match the token")
    return owed
