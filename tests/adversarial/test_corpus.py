"""The adversarial corpus (cases.yaml), each case run twice:

- ``decision``: straight through ``Policy.decide`` with the corpus key sets (no socket);
  an unknown ``kid`` (``NeedKeys``) is answered as after a refetch that did not find it.
- ``envoy``: through a real Envoy -> extauthz (ServerThread) -> JWKS server stack, checking
  the HTTP status, the ``WWW-Authenticate`` error, the JSON body, and that a denied
  request never reached the upstream.

DPoP cases (RFC 9449, ``request.dpop``) run both ways too; their answers also say which
challenge carries the error (``expect.on``; a proof problem's is the DPoP one).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from extauthz import config as cfgmod
from extauthz.core.decision import Decision
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.frontdoor import grpc
from extauthz.keys import jwks
from tests.adversarial import build
from tests.support.answers import settled, wire
from tests.support.envoy import EnvoyProcess
from tests.support.jwks_server import JwksServer
from tests.support.server import ServerThread
from tests.support.upstream import EchoUpstream

CASES = build.load_cases()
IDS = [c["id"] for c in CASES]
_ERROR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def test_corpus_is_well_formed() -> None:
    assert len(CASES) >= 60
    assert len(set(IDS)) == len(IDS), "duplicate case ids"
    statuses = {c["expect"]["status"] for c in CASES}
    assert {200, 400, 401, 403} <= statuses
    for case in CASES:
        assert case.get("description"), case["id"]
        assert set(case) <= {"id", "description", "token", "request", "expect", "expect_envoy"}


# -- decision ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(cfgmod.from_mapping(build.config("http://127.0.0.1:1/jwks.json")))


@pytest.fixture(scope="module")
def keysets() -> dict[str, jwks.KeySet]:
    fetched = jwks.parse_keyset(build.jwks_document(), allow_symmetric=False)
    assert "x25519" in dict(fetched.skipped), "the X25519 key must be skipped"
    return {
        "main": fetched,
        "dpop": fetched,  # the same JWKS endpoint
        "hs": jwks.parse_keyset(build.jwks_document(), allow_symmetric=True),
        "inline": jwks.parse_keyset(build.inline_jwks(), allow_symmetric=True),
    }


def decide(policy: Policy, keysets: dict[str, jwks.KeySet], case: dict[str, Any]) -> Decision:
    now = int(time.time())
    method, path, headers = build.request(case, now)
    req = AuthRequest(method=method, host=headers["host"], path=path, headers=headers)
    # An unknown kid: answered as after a refetch that found nothing new.
    return settled(policy.decide(req, keysets.get, float(now)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_decision(policy: Policy, keysets: dict[str, jwks.KeySet], case: dict[str, Any]) -> None:
    expect = case["expect"]
    d = decide(policy, keysets, case)
    got = {
        "status": wire(d).http_status,
        "error": wire(d).oauth_error,
        "description": d.description,
    }
    assert d.allowed == (expect["status"] == 200), (case["description"], got)
    assert wire(d).http_status == expect["status"], (case["description"], got)
    # What the gRPC adapter would send Envoy (no socket): the encoding must not fail either.
    answer = grpc.CheckResponse.FromString(grpc.encode(d, build.REALM))
    assert (answer.status.code == 0) == d.allowed
    if d.allowed:
        return
    assert answer.denied_response.status.code == expect["status"]
    assert wire(d).oauth_error == expect.get("error"), (case["description"], got)
    sent = {h.header.key: h.header.value for h in answer.denied_response.headers}
    _check_challenge_scheme(sent.get("www-authenticate", ""), case, expect)
    if "description" in expect:
        assert d.description == expect["description"], (case["description"], got)
    if "scope" in expect:
        assert d.scope == expect["scope"]


def _check_challenge_scheme(value: str, case: dict[str, Any], expect: dict[str, Any]) -> None:
    """RFC 9449 §7.1: the error goes on the challenge ``expect.on`` names (a proof problem:
    DPoP), and the DPoP challenge lists exactly the provider's algorithms."""
    error = expect.get("error")
    on = expect.get("on", "DPoP" if error == "invalid_dpop_proof" else None)
    if on == "DPoP":
        dpop_challenge = value[value.index("DPoP realm=") :]
        assert dpop_challenge.startswith(f'DPoP realm="{build.REALM}", error="{error}"'), value
        assert dpop_challenge.endswith(f'algs="{build.DPOP_ALGS}"'), value
        assert value.startswith(f'Bearer realm="{build.REALM}", DPoP '), value  # no error
    elif on == "Bearer":
        assert value.startswith(f'Bearer realm="{build.REALM}", error="{error}"'), value
        assert value.endswith(f'DPoP realm="{build.REALM}", algs="{build.DPOP_ALGS}"'), value


# -- envoy ---------------------------------------------------------------------------------


class Stack:
    def __init__(self, envoy: EnvoyProcess, upstream: EchoUpstream) -> None:
        self.envoy, self.upstream = envoy, upstream


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        JwksServer(build.jwks_document()) as keys,
        ServerThread(build.config(keys.url)) as server,
        EchoUpstream() as upstream,
    ):
        server.wait_ready()
        with EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
            yield Stack(envoy, upstream)


def _www_authenticate(value: str) -> dict[str, str]:
    assert value.startswith("Bearer "), value
    return {k: v.replace('\\"', '"') for k, v in _ERROR.findall(value)}


@pytest.mark.envoy
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_envoy(
    stack: Stack, policy: Policy, keysets: dict[str, jwks.KeySet], case: dict[str, Any]
) -> None:
    expect = case.get("expect_envoy", case["expect"])
    method, path, headers = build.request(case, int(time.time()))
    headers.setdefault("x-user-id", "smuggled")  # must never reach the upstream as sent
    before = len(stack.upstream.requests)
    resp = stack.envoy.request(method, path, headers=headers)
    reached = stack.upstream.requests[before:]
    where = (case["id"], case["description"], resp.status, resp.headers, resp.text[:300])
    assert resp.status == expect["status"], where
    if expect["status"] == 200:
        assert len(reached) == 1, where
        # The identity header comes from the verified claims, as the decision says; on
        # an anonymous rule the client's own copy is removed.
        want = dict(decide(policy, keysets, case).set_headers).get("x-user-id")
        got = reached[0].headers.get("x-user-id")
        # The upstream reads header bytes as Latin-1 (http.server): compare the bytes.
        got = got.encode("latin-1").decode("utf-8") if got is not None else None
        assert got == want, where
        return
    assert reached == [], f"a denied request reached the upstream: {where}"
    if expect.get("envoy_local"):
        return  # Envoy itself refused it before asking extauthz
    _check_challenge_scheme(resp.headers["www-authenticate"], case, expect)
    challenge = _www_authenticate(resp.headers["www-authenticate"])
    assert challenge.get("realm") == build.REALM, where
    assert challenge.get("error") == expect.get("error"), where
    body = resp.json()
    if expect.get("error") is not None:
        assert body["error"] == expect["error"], where
    if "description" in expect:
        assert challenge.get("error_description") == expect["description"], where
        assert body["error_description"] == expect["description"], where
    if "scope" in expect:
        assert challenge.get("scope") == expect["scope"], where
