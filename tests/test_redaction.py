"""No token, cookie or claim set ever reaches extauthz's logs (debug level included); nor,
with introspection, an opaque token, the client secret or an answer's claim values."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from extauthz.introspection import basic_credentials
from tests.support.envoy import EnvoyProcess
from tests.support.introspection_server import IntrospectionServer
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
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


def test_introspection_logs_never_contain_opaque_tokens_the_secret_or_answers(
    tmp_path: Path,
) -> None:
    """Opaque tokens (RFC 7662) through Envoy at debug level: an allow, an inactive
    token, an endpoint answering 500, one answering garbage, one that never answers.
    The logs name what happened (``introspection_failed`` with the operator's reason),
    never the token, the client secret (nor its Basic encoding) or the answer's claim
    values but ``sub`` and ``iss``."""
    now = int(time.time())
    private = {  # claim values of the active answer that must never be logged
        "scope": "scope-value-never-logged",
        "username": "username-value-never-logged",
        "email": "email-value-never-logged@example.com",
        "client_id": "client-id-value-never-logged",
        "jti": "jti-value-never-logged",
        "private": SECRET_CLAIM,
    }
    answer = {"active": True, "iss": ISS, "aud": "api", "sub": "intro-user",
              "exp": now + 600, **private}  # fmt: skip
    tokens = {
        "allow": "opaque-allow-token-" + "a1" * 20,
        "inactive": "opaque-inactive-token-" + "b2" * 20,
        "error_500": "opaque-failing-token-" + "c3" * 20,
        "garbage": "opaque-garbage-token-" + "d4" * 20,
        "timeout": "opaque-timeout-token-" + "e5" * 20,
    }
    client_secret = "client-secret-that-must-never-be-logged-5b2f"
    (tmp_path / "client.secret").write_text(client_secret + "\n")
    garbage = b'{"active": true, "sub": "garbage-user", "private": "' + SECRET_CLAIM.encode() + b'"'
    statuses: dict[str, int] = {}
    with IntrospectionServer({tokens["allow"]: answer}) as endpoint:
        cfg = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "providers": {
                "corp": {
                    "issuer": ISS,
                    "audiences": ["api"],
                    "claims_to_headers": {"x-user-id": "sub"},
                    "introspection": {
                        "endpoint": endpoint.url,
                        "client_id": "extauthz",
                        "client_secret_file": str(tmp_path / "client.secret"),
                        "timeout": "1s",
                    },
                }
            },
        }
        server = ServeProcess(tmp_path, "introspect", cfg, env={"EXTAUTHZ_LOG_LEVEL": "debug"})
        try:
            server.wait_ready()
            with (
                EchoUpstream() as up,
                EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=up.port) as envoy,
            ):

                def ask(name: str) -> int:
                    auth = {"authorization": f"Bearer {tokens[name]}"}
                    return envoy.request("GET", "/x", headers=auth).status

                statuses["allow"] = ask("allow")
                statuses["inactive"] = ask("inactive")
                endpoint.fail_with = 500
                statuses["error_500"] = ask("error_500")
                endpoint.fail_with, endpoint.body = None, garbage
                statuses["garbage"] = ask("garbage")
                endpoint.body = None
                endpoint.gate = threading.Event()  # held: the call runs into its timeout
                statuses["timeout"] = ask("timeout")
                wait_for(lambda: server.count("introspection_failed") >= 3, 30,
                         "the timed-out call to be logged")  # fmt: skip
                endpoint.gate.set()
        finally:
            server.stop()
    assert statuses == {"allow": 200, "inactive": 401, "error_500": 503, "garbage": 503,
                        "timeout": 503}  # fmt: skip
    log = server.log.read_text()
    failures = [e for e in server.events() if e.get("event") == "introspection_failed"]
    assert [f["error"].split(" ")[0] for f in failures[:2]] == ["HTTP", "the"], failures
    assert "timed out" in failures[2]["error"] or "timeout" in failures[2]["error"], failures
    denied = [e["reason"] for e in server.events() if e.get("event") == "denied"]
    assert denied == ["inactive_token"] + ["introspection_unavailable"] * 3, denied
    assert '"event": "allowed"' in log and '"sub": "intro-user"' in log
    for name, token in tokens.items():
        assert token not in log, f"the {name} opaque token appears in the logs"
        assert token[-16:] not in log, f"part of the {name} opaque token appears in the logs"
    assert client_secret not in log, "the client secret appears in the logs"
    assert basic_credentials("extauthz", client_secret).split()[1] not in log
    for claim, value in private.items():
        assert value not in log, f"the answer's {claim} appears in the logs"
    assert "garbage-user" not in log
