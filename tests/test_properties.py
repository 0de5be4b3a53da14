"""Properties over arbitrary requests: always a well-formed answer, never an exception,
never an allow without a token signed by a configured key (or an anonymous rule)."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz import config
from extauthz.core.decision import NeedKeys
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.frontdoor import grpc as wire
from extauthz.keys import jwks
from tests.support.answers import wire as answer_of
from tests.support.signing import Signer, b64, claims

ISS = "https://issuer.example"
NOW = time.time()
GOOD = Signer("ES256")
EVIL = Signer("ES256", kid=GOOD.kid)  # same kid, other key
KEYS = jwks.parse_keyset({"keys": [GOOD.jwk()]})
CFG = config.from_mapping(
    {
        "providers": {
            "p": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks": {"keys": []},
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"header": "x-jwt"},
                    {"cookie": "access_token"},
                    {"query": "access_token"},
                ],
                "claims_to_headers": {"x-user-id": "sub", "x-scope": "scope"},
                "payload_header": "x-payload",
            }
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {"name": "claims", "match": {"path_regex": "/t/[a-z]+"}, "claims": {"tenant": ["a"]}},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }
)
POLICIES = [
    Policy(config.with_server(CFG, token_cache_size=64)),
    Policy(config.with_server(CFG, token_cache_size=0)),
]

VALID = [
    GOOD.sign(claims(ISS, "api", now=NOW)),
    GOOD.sign(claims(ISS, "api", now=NOW, scope="admin", tenant="a")),
]
FORGED = [
    EVIL.sign(claims(ISS, "api", now=NOW, scope="admin")),
    GOOD.sign(claims(ISS, "api", now=NOW - 7200)),
    GOOD.sign(claims("https://other", "api", now=NOW)),
    f"{b64({'alg': 'none'})}.{b64(claims(ISS, 'api', now=NOW))}.",
    GOOD.sign(claims(ISS, "api", now=NOW), kid="unknown"),
]


def _mutate(token: str, data: Any) -> str:
    parts = token.split(".")
    i = data.draw(st.integers(0, len(parts) - 1))
    parts[i] = data.draw(st.sampled_from(["", parts[i][::-1], parts[i] + "A", parts[i][:-2]]))
    return ".".join(parts)


token_text = st.one_of(
    st.sampled_from(VALID + FORGED),
    st.text(max_size=60),
    st.from_regex(r"[A-Za-z0-9_\-]{0,40}(\.[A-Za-z0-9_\-=]{0,40}){0,6}", fullmatch=True),
)
header_names = st.sampled_from(
    ["authorization", "x-jwt", "cookie", "x-user-id", "x-payload", "host", "x-other"]
)
paths = st.one_of(
    st.sampled_from(["/", "/public", "/public/x", "/admin", "/admin/x", "/t/abc", "/x"]),
    st.text(max_size=40).map(lambda s: "/" + s),
    st.from_regex(
        r"/(public|admin|t|x|%2[fF]|\.\.|\.|/|%2e)*(\?access_token=[^&]*)?", fullmatch=True
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_request_gets_a_well_formed_answer_and_no_unearned_allow(data: Any) -> None:
    headers: dict[str, str] = {}
    for _ in range(data.draw(st.integers(0, 4))):
        name = data.draw(header_names)
        token = data.draw(token_text)
        if data.draw(st.booleans()):
            token = _mutate(token, data) if "." in token else token
        if name == "authorization":
            value = data.draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", ""])) + token
        elif name == "cookie":
            value = f"a=b; access_token={token}"
        else:
            value = token
        headers[name] = value
    path = data.draw(paths)
    if data.draw(st.booleans()):
        path += "?access_token=" + data.draw(token_text)
    req = AuthRequest(
        method=data.draw(st.sampled_from(["GET", "POST", "get", ""])),
        host=data.draw(st.sampled_from(["api", "api:443", "", "[::1]:80"])),
        path=path,
        headers=headers,
        context_extensions=data.draw(
            st.sampled_from([{}, {"extauthz_rule": "admin"}, {"extauthz_rule": "nope"}])
        ),
    )
    policy = data.draw(st.sampled_from(POLICIES))
    d = policy.decide(req, lambda _: KEYS, NOW)
    if isinstance(d, NeedKeys):
        assert d.kid not in KEYS.kids
        return
    response = wire.CheckResponse.FromString(wire.encode(d, "extauthz"))
    if d.allowed:
        assert response.status.code == 0
        if d.rule != "public" and d.reason != "anonymous":
            carried = " ".join([path, *headers.values()])
            assert any(t in carried for t in VALID), "allowed without a validly signed token"
            assert d.reason == "ok"
        # Injected headers are either set from verified claims or removed, never passed.
        named = {h for h, _ in d.set_headers} | set(d.remove_headers)
        assert {"x-user-id", "x-scope", "x-payload"} <= named
    else:
        assert response.status.code != 0
        assert answer_of(d).http_status in (400, 401, 403, 503)
        assert response.denied_response.status.code == answer_of(d).http_status


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(claims=st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_metadata_is_what_protobufs_own_struct_update_makes_of_the_claims(claims: Any) -> None:
    """The allow's dynamic metadata is written out by hand for speed; within the depth
    bound it must be byte for byte what protobuf's ``Struct.update`` builds."""
    metadata = {"provider": "p", "rule": "default", "iss": ISS, "sub": None, "claims": claims}
    ours, theirs = wire.CheckResponse(), wire.CheckResponse()
    wire._fill(ours.dynamic_metadata, metadata)
    theirs.dynamic_metadata.update(metadata)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
