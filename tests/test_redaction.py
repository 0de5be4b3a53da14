"""No token, cookie or claim set ever reaches extauthz's logs (debug level included)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.envoy import EnvoyProcess
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

ISS = "https://issuer.example"
SECRET_CLAIM = "claim-value-that-must-never-be-logged"


def test_logs_never_contain_tokens_cookies_or_claims(tmp_path: Path) -> None:
    signer, stranger = Signer("RS256"), Signer("RS256")
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "providers": {
            "main": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks_uri": "",
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "session"},
                    {"query": "access_token"},
                ],
                "claims_to_headers": {"x-user-id": "sub"},
            }
        },
        "rules": [
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }

    def mint(**extra: Any) -> str:
        return signer.sign(claims(ISS, "api", private=SECRET_CLAIM, **extra))

    tokens = {
        "valid": mint(),
        "expired": mint(now=time.time() - 7200),
        "wrong_aud": signer.sign(claims(ISS, "other", private=SECRET_CLAIM)),
        "bad_sig": stranger.sign(claims(ISS, "api", private=SECRET_CLAIM), kid=signer.kid),
        "unknown_kid": mint(),
        "cookie": mint(sub="cookie-user"),
        "query": mint(sub="query-user"),
        "scope": mint(scope="read"),
        "garbage": "eyJhbGciOiJSUzI1NiJ9.not-json.sig",
    }
    tokens["unknown_kid"] = signer.sign(claims(ISS, "api", private=SECRET_CLAIM), kid="nope")
    # What each request must get, so a failure names the request (and a deny that
    # never reached extauthz cannot pass for a logged one).
    expected = {
        "valid": 200, "expired": 401, "wrong_aud": 401, "bad_sig": 401, "unknown_kid": 401,
        "cookie": 200, "query": 200, "scope": 403, "garbage": 401,
    }  # fmt: skip
    # A second, different token (its own jti: two mints in one second sign the same bytes).
    other = mint(jti="second-token")
    statuses: dict[str, int] = {}
    with JwksServer(jwks(signer)) as keys:
        cfg["providers"]["main"]["jwks_uri"] = keys.url  # type: ignore[index]
        # Debug level: allowed requests are logged too.
        server = ServeProcess(tmp_path, "redact", cfg, env={"EXTAUTHZ_LOG_LEVEL": "debug"})
        try:
            server.wait_ready()
            with (
                EchoUpstream() as up,
                EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=up.port) as envoy,
            ):
                for name, token in tokens.items():
                    if name == "cookie":
                        r = envoy.request("GET", "/x", headers={"cookie": f"a=1; session={token}"})
                    elif name == "query":
                        r = envoy.request("GET", f"/x?access_token={token}")
                    elif name == "scope":
                        r = envoy.request(
                            "GET", "/admin", headers={"authorization": f"Bearer {token}"}
                        )
                    else:
                        r = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
                    statuses[name] = r.status
                two = {"authorization": f"Bearer {tokens['valid']}", "cookie": f"session={other}"}
                statuses["two_tokens"] = envoy.request("GET", "/x", headers=two).status
        finally:
            server.stop()
    assert statuses == {**expected, "two_tokens": 400}
    log = server.log.read_text()
    denials = sum(status != 200 for status in statuses.values())
    assert log.count('"event": "denied"') == denials, log[-2000:]
    for name, token in tokens.items():
        for i, part in enumerate(token.split(".")):
            if len(part) >= 16:
                assert part not in log, f"segment {i} of the {name} token appears in the logs"
    assert SECRET_CLAIM not in log
    assert '"event": "allowed"' in log


def test_debug_logging_of_allows_is_redacted_too(tmp_path: Path) -> None:
    signer = Signer("EdDSA")
    token = signer.sign(claims(ISS, "api", private=SECRET_CLAIM, sub="debug-user"))
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
        "providers": {"main": {"issuer": ISS, "audiences": ["api"], "jwks": jwks(signer)}},
    }
    server = ServeProcess(tmp_path, "debug", cfg, env={"EXTAUTHZ_LOG_LEVEL": "debug"})
    try:
        with (
            EchoUpstream() as up,
            EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=up.port) as envoy,
        ):
            server.wait_ready()
            assert (
                envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"}).status
                == 200
            )
    finally:
        server.stop()
    log = server.log.read_text()
    assert '"event": "allowed"' in log and '"sub": "debug-user"' in log
    assert SECRET_CLAIM not in log
    for part in token.split("."):
        assert part not in log
