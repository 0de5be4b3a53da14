"""Finding the token in a request: headers (with an optional scheme prefix), cookies, query."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from ..config import TokenSource
from ..errors import InvalidRequest, MalformedToken

#: RFC 6750 §2.1 b64token: what an opaque token may be made of before it is sent to
#: an introspection endpoint.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

#: RFC 9449: the default Authorization source reads DPoP-bound tokens too.
DPOP_PREFIX = "DPoP "


@dataclass(frozen=True, slots=True)
class Found:
    token: str
    source: TokenSource
    scheme: str = "bearer"  # "dpop" when sent as `Authorization: DPoP <token>`


@lru_cache(maxsize=64)
def _schemes(prefix: str | None) -> tuple[tuple[str, int, str], ...]:
    """(lower-cased prefix, its length, scheme) for a header source's ``prefix``: worked
    out once per prefix, not per request."""
    if prefix is None:
        return ()
    out = [(prefix.lower(), len(prefix), "bearer")]
    if prefix.lower() == "bearer ":
        out.append((DPOP_PREFIX.lower(), len(DPOP_PREFIX), "dpop"))
    return tuple(out)


def _from_header(value: str, source: TokenSource) -> list[tuple[str, str]]:
    """The (token, scheme) pairs in one header's value.

    A repeated header reaches us joined by commas (Envoy joins ``Authorization: Bearer a``
    and ``Authorization: Bearer b`` into ``Bearer a,Bearer b``); no token contains a
    comma, so each part is read on its own and the caller sees every token. A part with
    another scheme beside one of ours is a second credential too. A source whose prefix
    is ``Bearer`` also reads ``DPoP`` (RFC 9449 §7.1).
    """
    schemes = _schemes(source.prefix)
    found: list[tuple[str, str]] = []
    other_scheme = False
    for part in value.split(","):
        part = part.lstrip()
        scheme = "bearer"
        if schemes:
            # The auth scheme is case-insensitive (RFC 7235 §2.1): "bearer x" is fine.
            for lowered, length, name in schemes:
                if part[:length].lower() == lowered:
                    part, scheme = part[length:], name
                    break
            else:
                other_scheme = other_scheme or bool(part.strip())
                continue
        token = part.strip()
        if not token:
            raise MalformedToken("empty token")
        found.append((token, scheme))
    if found and other_scheme:
        raise InvalidRequest("more than one credential presented")
    return found


def cookies(header: str) -> dict[str, list[str]]:
    """Parse a Cookie header leniently, keeping every value of a repeated name."""
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out.setdefault(name, []).append(value.strip().strip('"'))
    return out


def without_cookie(header: str, name: str) -> str:
    """The Cookie header without every cookie called ``name``; the others verbatim."""
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and part.partition("=")[0].strip() != name
    ]
    return "; ".join(kept)


def query_params(path: str) -> dict[str, list[str]]:
    """Envoy's ``http.query`` is always empty: the query string is inside ``:path``."""
    _, sep, query = path.partition("?")
    out: dict[str, list[str]] = {}
    if sep:
        for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=True):
            out.setdefault(name, []).append(value)
    return out


def extract(headers: Mapping[str, str], path: str, sources: Iterable[TokenSource]) -> Found | None:
    """Return the one token the request carries, or None.

    Every source is consulted so that two *different* tokens are detected (an attacker
    must not choose which one we check); the same token in two places is fine.
    Raises InvalidRequest for conflicting tokens, MalformedToken for an empty one.
    """
    found: Found | None = None
    jar: dict[str, list[str]] | None = None
    query: dict[str, list[str]] | None = None
    for source in sources:
        values: list[tuple[str, str]] = []
        if source.header is not None:
            raw = headers.get(source.header)
            if raw is not None:
                values.extend(_from_header(raw, source))
        elif source.cookie is not None:
            if jar is None:
                jar = cookies(headers.get("cookie", ""))
            values.extend((v, "bearer") for v in jar.get(source.cookie, ()))
        elif source.query is not None:
            if query is None:
                query = query_params(path)
            values.extend((v, "bearer") for v in query.get(source.query, ()))
        for token, scheme in values:
            if not token:
                raise MalformedToken("empty token")
            if found is None:
                found = Found(token, source, scheme)
            elif found.token != token or found.scheme != scheme:
                # Another token, or the same one under both schemes (Bearer and DPoP:
                # which binding rules apply must not be the client's pick).
                raise InvalidRequest()
    return found


def is_compact_jws(token: str) -> bool:
    """Three base64url segments, the first a JSON object (a JOSE header starts with
    ``eyJ``, base64url for ``{"``, whitespace aside): the JWT path's. Anything else
    (PASETO's ``v4.local.…`` included) is an opaque token, for introspection."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return False
    if not all(_B64URL.fullmatch(p) for p in parts):
        return False
    head = parts[0][:8]
    try:
        start = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except ValueError:
        return False
    return start.lstrip(b" \t\r\n").startswith(b"{")


def is_b64token(token: str) -> bool:
    return _B64TOKEN.fullmatch(token) is not None
