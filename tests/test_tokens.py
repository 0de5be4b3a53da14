"""Token extraction from headers, cookies and the query string inside ``:path``."""

from __future__ import annotations

import pytest

from extauthz.config import DEFAULT_TOKEN_SOURCES, TokenSource
from extauthz.core.tokens import cookies, extract, query_params
from extauthz.errors import InvalidRequest, MalformedToken
from tests.support.answers import wire

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"
OTHER = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2In0.c2lnMg"

BEARER = TokenSource(header="authorization", prefix="Bearer ")
CUSTOM = TokenSource(header="x-zuplo-jwt")
COOKIE = TokenSource(cookie="access_token")
QUERY = TokenSource(query="access_token")
ALL = (BEARER, CUSTOM, COOKIE, QUERY)


@pytest.mark.parametrize(
    ("headers", "path", "sources", "expected"),
    [
        # Default: Authorization with a case-insensitive "Bearer " scheme.
        ({"authorization": f"Bearer {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, TOKEN),
        ({"authorization": f"bearer {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, TOKEN),
        ({"authorization": f"BEARER {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, TOKEN),
        ({"authorization": f"BeArEr {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, TOKEN),
        ({"authorization": f"Bearer   {TOKEN}  "}, "/", DEFAULT_TOKEN_SOURCES, TOKEN),
        # Missing header / other schemes: no token.
        ({}, "/", DEFAULT_TOKEN_SOURCES, None),
        ({"x-other": f"Bearer {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, None),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "/", DEFAULT_TOKEN_SOURCES, None),
        ({"authorization": f"Bearer{TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES, None),
        ({"authorization": "Bear"}, "/", DEFAULT_TOKEN_SOURCES, None),
        ({"authorization": TOKEN}, "/", DEFAULT_TOKEN_SOURCES, None),
        # The default does not look at cookies or the query string.
        (
            {"cookie": f"access_token={TOKEN}"},
            f"/?access_token={TOKEN}",
            DEFAULT_TOKEN_SOURCES,
            None,
        ),
        # Custom header without a prefix: the whole value (trimmed) is the token.
        ({"x-zuplo-jwt": TOKEN}, "/", (CUSTOM,), TOKEN),
        ({"x-zuplo-jwt": f"  {TOKEN} "}, "/", (CUSTOM,), TOKEN),
        ({"authorization": f"Bearer {TOKEN}"}, "/", (CUSTOM,), None),
        # Cookie, among others, possibly quoted.
        ({"cookie": f"access_token={TOKEN}"}, "/", (COOKIE,), TOKEN),
        ({"cookie": f"session=abc; access_token={TOKEN}; theme=dark"}, "/", (COOKIE,), TOKEN),
        ({"cookie": f'a=1;access_token="{TOKEN}"'}, "/", (COOKIE,), TOKEN),
        ({"cookie": "session=abc; my_access_token=zzz"}, "/", (COOKIE,), None),
        ({"cookie": ""}, "/", (COOKIE,), None),
        ({}, "/", (COOKIE,), None),
        # Query parameter inside :path.
        ({}, f"/p?access_token={TOKEN}&x=1", (QUERY,), TOKEN),
        ({}, f"/p?x=1&access_token={TOKEN}", (QUERY,), TOKEN),
        ({}, f"/p?x=1&access_token={TOKEN}#frag", (QUERY,), TOKEN),
        ({}, "/p?x=1", (QUERY,), None),
        ({}, f"/p/access_token={TOKEN}", (QUERY,), None),
        ({}, "/p", (QUERY,), None),
        # Several sources configured, token in one of them.
        ({"x-zuplo-jwt": TOKEN}, "/", ALL, TOKEN),
        ({"cookie": f"access_token={TOKEN}"}, "/", ALL, TOKEN),
        ({}, f"/?access_token={TOKEN}", ALL, TOKEN),
        ({"authorization": "Basic dXNlcjpwYXNz"}, f"/?access_token={TOKEN}", ALL, TOKEN),
        ({}, "/", ALL, None),
    ],
)
def test_extract(
    headers: dict[str, str], path: str, sources: tuple[TokenSource, ...], expected: str | None
) -> None:
    found = extract(headers, path, sources)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found.token == expected
        assert found.source in sources


def test_found_reports_the_source() -> None:
    found = extract({"cookie": f"access_token={TOKEN}"}, "/", ALL)
    assert found is not None and found.source == COOKIE


@pytest.mark.parametrize(
    ("headers", "path", "sources"),
    [
        ({"authorization": "Bearer "}, "/", DEFAULT_TOKEN_SOURCES),
        ({"authorization": "Bearer     "}, "/", DEFAULT_TOKEN_SOURCES),
        ({"authorization": "bearer "}, "/", DEFAULT_TOKEN_SOURCES),
        ({"x-zuplo-jwt": ""}, "/", (CUSTOM,)),
        ({"x-zuplo-jwt": "   "}, "/", (CUSTOM,)),
        ({"cookie": "access_token="}, "/", (COOKIE,)),
        ({"cookie": 'access_token=""'}, "/", (COOKIE,)),
        ({}, "/p?access_token=&x=1", (QUERY,)),
    ],
)
def test_empty_token_is_malformed(
    headers: dict[str, str], path: str, sources: tuple[TokenSource, ...]
) -> None:
    with pytest.raises(MalformedToken):
        extract(headers, path, sources)


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"authorization": f"Bearer {TOKEN}", "x-zuplo-jwt": OTHER}, "/"),
        ({"authorization": f"Bearer {TOKEN}", "cookie": f"access_token={OTHER}"}, "/"),
        ({"authorization": f"Bearer {TOKEN}"}, f"/?access_token={OTHER}"),
        ({"cookie": f"access_token={TOKEN}"}, f"/?access_token={OTHER}"),
        # Two different values of the same query parameter.
        ({}, f"/?access_token={TOKEN}&access_token={OTHER}"),
        # The conflict is detected even when the first source is the "right" one.
        ({"x-zuplo-jwt": TOKEN}, f"/?access_token={TOKEN}&access_token={OTHER}"),
    ],
)
def test_two_different_tokens_is_invalid_request(headers: dict[str, str], path: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        extract(headers, path, ALL)
    assert wire(info.value).http_status == 400
    assert wire(info.value).oauth_error == "invalid_request"


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"authorization": f"Bearer {TOKEN}", "x-zuplo-jwt": TOKEN}, "/"),
        ({"authorization": f"Bearer {TOKEN}", "cookie": f"access_token={TOKEN}"}, "/"),
        ({"authorization": f"Bearer {TOKEN}"}, f"/?access_token={TOKEN}"),
        ({}, f"/?access_token={TOKEN}&access_token={TOKEN}"),
        (
            {
                "authorization": f"bearer {TOKEN}",
                "x-zuplo-jwt": TOKEN,
                "cookie": f"access_token={TOKEN}",
            },
            f"/?access_token={TOKEN}",
        ),
    ],
)
def test_same_token_twice_is_fine(headers: dict[str, str], path: str) -> None:
    found = extract(headers, path, ALL)
    assert found is not None and found.token == TOKEN
    assert found.source == next(
        s
        for s in ALL
        if (s.header and s.header in headers)
        or (s.cookie and "cookie" in headers)
        or (s.query and "?" in path)
    )


def test_cookie_parser_keeps_every_occurrence_and_strips_quotes() -> None:
    assert cookies('a=1; b="two"; a=3; junk; =x') == {"a": ["1", "3"], "b": ["two"]}


def test_query_params_from_path() -> None:
    assert query_params("/p?a=1&b=&a=2#c=3") == {"a": ["1", "2"], "b": [""]}
    assert query_params("/p") == {}
    assert query_params("/p?access_token=a%2Bb") == {"access_token": ["a+b"]}
