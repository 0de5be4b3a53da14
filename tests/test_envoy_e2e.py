"""End to end through a real Envoy: JWKS HTTP server -> extauthz -> Envoy -> upstream."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.envoy import EnvoyProcess
from tests.support.jwks_server import JwksServer
from tests.support.server import ServerThread
from tests.support.signing import Signer, b64, claims, jwks
from tests.support.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

ISS = "https://issuer.example/__zuplo/issuer"
AUD = "your-audience"
SIGNERS = {alg: Signer(alg) for alg in ("RS256", "ES256", "EdDSA")}
ATTACKER = Signer("RS256", kid=SIGNERS["RS256"].kid)  # same kid, different key
BARE = 'Bearer realm="extauthz"'


def invalid(description: str) -> str:
    return f'Bearer realm="extauthz", error="invalid_token", error_description="{description}"'


def server_config(jwks_url: str, **provider: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "providers": {
            "zuplo": {
                "issuer": ISS,
                "audiences": [AUD],
                "jwks_uri": jwks_url,
                "claims_to_headers": {"x-user-id": "sub", "x-user-scope": "scope"},
                **provider,
            }
        },
    }


class Stack:
    def __init__(self, envoy: EnvoyProcess, upstream: EchoUpstream, server: ServerThread) -> None:
        self.envoy, self.upstream, self.server = envoy, upstream, server

    def get(self, token: str | None = None, *, scheme: str = "Bearer", **headers: str) -> Any:
        h = {k.replace("_", "-"): v for k, v in headers.items()}
        if token is not None:
            h["authorization"] = f"{scheme} {token}"
        return self.envoy.request("GET", "/api/orders", headers=h)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        JwksServer(jwks(*SIGNERS.values())) as keys,
        ServerThread(server_config(keys.url)) as server,
        EchoUpstream() as upstream,
    ):
        server.wait_ready()
        with EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
            yield Stack(envoy, upstream, server)


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_valid_token_reaches_upstream_with_identity_headers(stack: Stack, alg: str) -> None:
    token = SIGNERS[alg].sign(claims(ISS, AUD, sub=f"user-{alg}", scope="read write"))
    # A client-sent identity header must be overwritten, never appended to.
    resp = stack.get(token, x_user_id="admin")
    assert resp.status == 200, resp.text
    seen = resp.json()["headers"]
    assert seen["x-user-id"] == f"user-{alg}"
    assert seen["x-user-scope"] == "read write"
    assert seen["authorization"] == f"Bearer {token}"  # forward_token defaults to true


def test_lower_case_scheme_is_accepted(stack: Stack) -> None:
    token = SIGNERS["RS256"].sign(claims(ISS, AUD))
    assert stack.get(token, scheme="bearer").status == 200


def test_expired_within_clock_skew_is_accepted(stack: Stack) -> None:
    now = time.time()
    token = SIGNERS["ES256"].sign(claims(ISS, AUD, now=now - 330, ttl=300))  # expired 30 s ago
    assert stack.get(token).status == 200


def test_missing_token_gets_401_without_error_code(stack: Stack) -> None:
    before = len(stack.upstream.requests)
    resp = stack.get()
    assert resp.status == 401
    assert resp.headers["www-authenticate"] == BARE
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"] == "missing_token"
    assert len(stack.upstream.requests) == before


def _none_token() -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(ISS, AUD))}."


def _hs256_with_rsa_public_key() -> str:
    # Algorithm confusion: HMAC keyed with the RSA public key that verifiers publish
    # (built by hand: joserfc itself refuses to use a public key as an HMAC secret).
    pem = SIGNERS["RS256"].key.as_pem(private=False)
    head = b64({"alg": "HS256", "typ": "JWT", "kid": SIGNERS["RS256"].kid})
    signing_input = f"{head}.{b64(claims(ISS, AUD))}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _bad_signature() -> str:
    head, body, _ = SIGNERS["RS256"].sign(claims(ISS, AUD)).split(".")
    other = ATTACKER.sign(claims(ISS, AUD)).split(".")[2]
    return f"{head}.{body}.{other}"


BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "malformed": (lambda: "not-a-jwt", "token malformed"),
    "expired": (
        lambda: SIGNERS["RS256"].sign(claims(ISS, AUD, now=time.time() - 3600)),
        "token expired",
    ),
    "wrong_issuer": (
        lambda: SIGNERS["RS256"].sign(claims("https://evil.example", AUD)),
        "issuer not accepted",
    ),
    "wrong_audience": (
        lambda: SIGNERS["EdDSA"].sign(claims(ISS, "someone-else")),
        "audience not accepted",
    ),
    "bad_signature": (_bad_signature, "signature invalid"),
    "alg_none": (_none_token, "algorithm not allowed"),
    "hs256_with_rsa_key": (_hs256_with_rsa_public_key, "algorithm not allowed"),
    "unknown_kid": (
        lambda: SIGNERS["RS256"].sign(claims(ISS, AUD), kid="no-such-kid"),
        "unknown key",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_tokens_get_401_invalid_token(stack: Stack, case: str) -> None:
    make, description = BAD_TOKENS[case]
    before = len(stack.upstream.requests)
    resp = stack.get(make())
    assert resp.status == 401, resp.text
    assert resp.headers["www-authenticate"] == invalid(description)
    assert resp.json() == {"error": "invalid_token", "error_description": description}
    assert len(stack.upstream.requests) == before, "a denied request reached the upstream"


def test_denials_are_counted_in_metrics(stack: Stack) -> None:
    from tests.support.envoy import http_request

    stack.get()
    text = http_request("127.0.0.1", stack.server.server.admin_port, "GET", "/metrics").text
    assert (
        'extauthz_check_total{decision="deny",front_door="grpc",provider="",'
        'reason="missing_token"' in text
    )
    assert "extauthz_check_duration_seconds_bucket" in text


def test_raw_header_map_is_supported() -> None:
    """Envoy with encode_raw_headers: true sends http.header_map instead of http.headers."""
    with (
        JwksServer(jwks(*SIGNERS.values())) as keys,
        ServerThread(server_config(keys.url)) as server,
        EchoUpstream() as upstream,
    ):
        server.wait_ready()
        with EnvoyProcess(
            extauthz_port=server.grpc_port, upstream_port=upstream.port, encode_raw_headers=True
        ) as envoy:
            token = SIGNERS["EdDSA"].sign(claims(ISS, AUD, sub="raw"))
            ok = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
            assert ok.status == 200
            assert ok.json()["headers"]["x-user-id"] == "raw"
            assert envoy.request("GET", "/x").status == 401


def test_forward_token_false_strips_the_token_header() -> None:
    with (
        JwksServer(jwks(*SIGNERS.values())) as keys,
        ServerThread(server_config(keys.url, forward_token=False)) as server,
        EchoUpstream() as upstream,
    ):
        server.wait_ready()
        with EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
            token = SIGNERS["RS256"].sign(claims(ISS, AUD))
            resp = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
            assert resp.status == 200
            assert "authorization" not in resp.json()["headers"]


def test_issuer_down_at_startup_answers_503_then_recovers() -> None:
    """Cold start with the JWKS unreachable: not ready, 503; once it is up: 200, no restart."""
    keys = JwksServer(jwks(*SIGNERS.values()))
    keys.fail_with = 500
    with (
        keys,
        ServerThread(
            server_config(keys.url, refresh_interval="1s", min_refresh_interval="1s")
        ) as server,
        EchoUpstream() as upstream,
        EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy,
    ):
        token = SIGNERS["RS256"].sign(claims(ISS, AUD))
        resp = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
        assert resp.status == 503
        assert not server.server.ready
        keys.fail_with = None
        server.wait_ready(timeout=15)
        resp = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
        assert resp.status == 200
