"""Finding the token in a request: headers (with an optional scheme prefix), cookies, query."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..config import TokenSource
from ..errors import InvalidRequest, MalformedToken


@dataclass(frozen=True, slots=True)
class Found:
    token: str
    source: TokenSource


def _from_header(value: str, source: TokenSource) -> list[str]:
    """The tokens in one header's value.

    A repeated header reaches us joined by commas (Envoy joins ``Authorization: Bearer a``
    and ``Authorization: Bearer b`` into ``Bearer a,Bearer b``); no token contains a
    comma, so each part is read on its own and the caller sees every token. A part with
    another scheme beside one of ours is a second credential too.
    """
    prefix = source.prefix
    parts = value.split(",")
    found: list[str] = []
    other_scheme = False
    for part in parts:
        part = part.lstrip()
        if prefix is not None:
            # The auth scheme is case-insensitive (RFC 7235 §2.1): "bearer x" is fine.
            if part[: len(prefix)].lower() != prefix.lower():
                other_scheme = other_scheme or bool(part.strip())
                continue
            part = part[len(prefix) :]
        token = part.strip()
        if not token:
            raise MalformedToken("empty token")
        found.append(token)
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
        values: list[str] = []
        if source.header is not None:
            raw = headers.get(source.header)
            if raw is not None:
                values.extend(_from_header(raw, source))
        elif source.cookie is not None:
            if jar is None:
                jar = cookies(headers.get("cookie", ""))
            values.extend(jar.get(source.cookie, ()))
        elif source.query is not None:
            if query is None:
                query = query_params(path)
            values.extend(query.get(source.query, ()))
        for token in values:
            if not token:
                raise MalformedToken("empty token")
            if found is None:
                found = Found(token, source)
            elif found.token != token:
                raise InvalidRequest()
    return found
