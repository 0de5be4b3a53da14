"""Route policy as a user sees it through a real Envoy."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.envoy import EnvoyProcess
from tests.support.jwks_server import JwksServer
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

GATEWAY, INTERNAL = "https://gateway.example", "https://idp.internal"
GW, IDP = Signer("EdDSA"), Signer("RS256")


def policy_config(gw_url: str, idp_url: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None},
        "providers": {
            "gateway": {
                "issuer": GATEWAY,
                "audiences": ["api"],
                "jwks_uri": gw_url,
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"header": "x-zuplo-jwt"},
                    {"cookie": "access_token"},
                    {"query": "access_token"},
                ],
                "claims_to_headers": {"x-user-id": "sub"},
                "payload_header": "x-jwt-payload",
            },
            "internal": {
                "issuer": INTERNAL,
                "audiences": ["api"],
                "jwks_uri": idp_url,
                "claims_to_headers": {"x-user-id": "sub", "x-tenant": "tenant"},
            },
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {
                "name": "admin",
                "match": {
                    "path_prefix": "/admin",
                    "methods": ["POST"],
                    "hosts": ["api.example.com"],
                },
                "providers": ["internal"],
                "scopes": ["admin"],
            },
            {"name": "tenant", "match": {"path_prefix": "/tenant"}, "claims": {"tenant": ["acme"]}},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }


class Rig:
    def __init__(self, envoy: EnvoyProcess, upstream: EchoUpstream) -> None:
        self.envoy, self.upstream = envoy, upstream

    def call(
        self, path: str, token: str | None = None, *, method: str = "GET", **headers: str
    ) -> Any:
        h = {k.replace("_", "-"): v for k, v in headers.items()}
        h.setdefault("host", "api.example.com")
        if token:
            h["authorization"] = f"Bearer {token}"
        return self.envoy.request(method, path, headers=h)


def _log_one_claim(bootstrap: dict[str, Any]) -> None:
    """A claim reaches Envoy inside the metadata: log one, named by its key path (the
    way envoy/README.md tells users to), to prove the claims travel."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (log,) = hcm["typed_config"]["access_log"]
    log["typed_config"]["log_format"]["json_format"]["authz_claim_iss"] = (
        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:claims:iss)%"
    )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        JwksServer(jwks(GW)) as gw_keys,
        JwksServer(jwks(IDP)) as idp_keys,
        ServerThread(policy_config(gw_keys.url, idp_keys.url)) as server,
        EchoUpstream() as upstream,
    ):
        server.wait_ready()
        with EnvoyProcess(
            extauthz_port=server.grpc_port,
            upstream_port=upstream.port,
            # Envoy's own per-route mechanism: /ops/* is judged by the `admin` rule.
            context_extensions=[("/ops", {"extauthz_rule": "admin"})],
            listen_host="127.0.0.1",
            config_hook=_log_one_claim,
        ) as envoy:
            yield Rig(envoy, upstream)


def gw(**extra: Any) -> str:
    return GW.sign(claims(GATEWAY, "api", **extra))


def idp(**extra: Any) -> str:
    return IDP.sign(claims(INTERNAL, "api", **extra))


def test_anonymous_path_strips_spoofed_identity(rig: Rig) -> None:
    resp = rig.call("/public/info", x_user_id="admin", x_tenant="acme", x_jwt_payload="e30")
    assert resp.status == 200
    seen = resp.json()["headers"]
    assert not {"x-user-id", "x-tenant", "x-jwt-payload"} & set(seen)


def test_scopes_403_with_required_scope(rig: Rig) -> None:
    resp = rig.call("/admin/users", idp(scope="read"), method="POST")
    assert resp.status == 403
    assert resp.headers["www-authenticate"] == (
        'Bearer realm="extauthz", error="insufficient_scope", '
        'error_description="insufficient scope", scope="admin"'
    )
    assert rig.call("/admin/users", idp(scope="read admin"), method="POST").status == 200


def test_rule_providers_and_methods_and_hosts(rig: Rig) -> None:
    admin_gw = gw(scope="admin")
    assert rig.call("/admin/users", admin_gw, method="POST").status == 401  # wrong provider
    assert rig.call("/admin/users", admin_gw, method="GET").status == 200  # default rule
    other_host = rig.call("/admin/users", admin_gw, method="POST", host="other.example.com")
    assert other_host.status == 200  # host not listed: default rule


def test_claims_403(rig: Rig) -> None:
    assert rig.call("/tenant/x", idp(tenant="acme")).status == 200
    resp = rig.call("/tenant/x", idp(tenant="globex"))
    assert resp.status == 403 and 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert resp.json()["error_description"] == "claim tenant not accepted"


def test_context_extensions_pick_the_rule(rig: Rig) -> None:
    assert rig.call("/ops/restart", idp(scope="read")).status == 403
    assert rig.call("/ops/restart", idp(scope="admin")).status == 200
    assert rig.call("/ops/restart", gw(scope="admin")).status == 401


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x", {"cookie": "a=b; access_token=TOKEN"}),
        ("/x?access_token=TOKEN&y=2", {}),
        ("/x", {"x-zuplo-jwt": "TOKEN"}),
    ],
    ids=["cookie", "query", "custom_header"],
)
def test_token_sources(rig: Rig, path: str, headers: dict[str, str]) -> None:
    token = gw(sub="src")
    resp = rig.envoy.request(
        "GET",
        path.replace("TOKEN", token),
        headers={k: v.replace("TOKEN", token) for k, v in headers.items()},
    )
    assert resp.status == 200
    assert resp.json()["headers"]["x-user-id"] == "src"


def test_two_tokens_conflict_400(rig: Rig) -> None:
    resp = rig.call("/x", gw(sub="a"), x_zuplo_jwt=gw(sub="b"))
    assert resp.status == 400
    assert 'error="invalid_request"' in resp.headers["www-authenticate"]


def test_cross_provider_kid_is_401(rig: Rig) -> None:
    forged = IDP.sign(claims(GATEWAY, "api"))  # internal key, gateway issuer
    resp = rig.call("/x", forged)
    assert resp.status == 401 and resp.json()["error_description"] == "unknown key"


def test_payload_header_carries_verified_claims(rig: Rig) -> None:
    resp = rig.call("/x", gw(sub="pay", roles=["a", "b"]))
    assert resp.status == 200
    encoded = resp.json()["headers"]["x-jwt-payload"]
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert payload["sub"] == "pay" and payload["roles"] == ["a", "b"] and payload["iss"] == GATEWAY


def test_dynamic_metadata_reaches_envoys_access_log(rig: Rig) -> None:
    resp = rig.call("/meta-check", gw(sub="meta-user"))
    assert resp.status == 200
    entries = rig.envoy.wait_access_log(1)

    def ours(e: dict[str, Any]) -> bool:
        return "/meta-check" in json.dumps(e)

    deadline_entries = [e for e in entries if ours(e)]
    while not deadline_entries:
        deadline_entries = [e for e in rig.envoy.wait_access_log(len(entries) + 1) if ours(e)]
    entry = deadline_entries[-1]
    assert (entry["authz_provider"], entry["authz_rule"]) == ("gateway", "default")
    assert entry["authz_sub"] == "meta-user" and entry["authz_claim_iss"] == GATEWAY


def test_access_log_holds_no_token_and_no_claim_set(rig: Rig) -> None:
    """The demo's and the tests' Envoy log what envoy/envoy.yaml logs: a token sent as a
    query parameter and the verified claim set never reach it."""
    token = gw(sub="log-user", secret_claim="never-in-a-log")
    resp = rig.envoy.request("GET", f"/log-check?access_token={token}")
    assert resp.status == 200
    wait_for(lambda: "/log-check" in json.dumps(rig.envoy.access_log_lines()), 10, "the log line")
    text = json.dumps(rig.envoy.access_log_lines())
    assert token.split(".")[1] not in text and token.split(".")[2] not in text
    assert "never-in-a-log" not in text


@pytest.mark.parametrize(
    "path",
    ["/public/../admin/users", "//admin/users", "/public/%2e%2e/admin/users", "/%61dmin/users"],
)
def test_path_normalisation_bypass_attempts_are_denied(rig: Rig, path: str) -> None:
    before = len(rig.upstream.requests)
    resp = rig.call(path, method="POST")
    assert resp.status in (400, 401), f"{path} -> {resp.status}"
    assert len(rig.upstream.requests) == before


def test_encoded_slash_never_reaches_a_public_rule(rig: Rig) -> None:
    resp = rig.call("/public%2F..%2Fadmin/users", method="POST")
    assert resp.status == 400


@pytest.mark.parametrize(
    ("where", "path", "headers", "upstream_path", "upstream_cookie"),
    [
        ("header", "/x?keep=1", {"authorization": "Bearer TOKEN"}, "/x?keep=1", None),
        ("cookie", "/x", {"cookie": "a=1; session=TOKEN; b=2"}, "/x", "a=1; b=2"),
        ("cookie-alone", "/x", {"cookie": "session=TOKEN"}, "/x", None),
        ("query", "/x?keep=1&access_token=TOKEN&z=2", {}, "/x?keep=1&z=2", None),
    ],
)
def test_forward_token_false_keeps_the_token_away_from_the_upstream(
    where: str, path: str, headers: dict[str, str], upstream_path: str, upstream_cookie: str | None
) -> None:
    """Wherever the token came from (header, cookie or query), the upstream never sees
    it; the request's other cookies and query parameters reach it unchanged."""
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None},
        "providers": {
            "p": {
                "issuer": GATEWAY,
                "audiences": ["api"],
                "jwks": jwks(GW),
                "forward_token": False,
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "session"},
                    {"query": "access_token"},
                ],
            }
        },
    }
    token = gw(sub=where)
    with ServerThread(cfg) as server, EchoUpstream() as upstream:
        server.wait_ready()
        with EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
            # Twice: the second answer may come from extauthz's memo of finished answers.
            for _ in range(2):
                resp = envoy.request(
                    "GET",
                    path.replace("TOKEN", token),
                    headers={k: v.replace("TOKEN", token) for k, v in headers.items()},
                )
                assert resp.status == 200
                seen = upstream.requests[-1]
                assert token.split(".")[2] not in json.dumps(seen.as_json())
                assert seen.path == upstream_path
                assert seen.headers.get("cookie") == upstream_cookie
            # Another request's cookies never ride along with a remembered answer.
            if where == "cookie":
                other = envoy.request("GET", "/x", headers={"cookie": f"c=3; session={token}"})
                assert other.status == 200 and upstream.requests[-1].headers["cookie"] == "c=3"


def test_two_authorization_header_lines_are_a_400(rig: Rig) -> None:
    """Two Authorization lines with different tokens: the attacker must not choose which
    one is checked (Envoy joins them with ',' before asking extauthz)."""
    import http.client

    before = len(rig.upstream.requests)
    for second in (gw(sub="other"), "forged.alg-none.token"):
        conn = http.client.HTTPConnection("127.0.0.1", rig.envoy.port, timeout=10)
        try:
            conn.putrequest("GET", "/x", skip_host=True)
            conn.putheader("host", "api.example.com")
            conn.putheader("authorization", f"Bearer {gw(sub='alice')}")
            conn.putheader("authorization", f"Bearer {second}")
            conn.endheaders()
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 400
        assert body == {
            "error": "invalid_request",
            "error_description": "more than one token presented",
        }
    assert len(rig.upstream.requests) == before
