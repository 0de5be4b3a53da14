"""One policy, two front doors, the same answers: a table of requests sent through the
gRPC door and the HTTP door of one server gets identical statuses, challenges and
upstream identity headers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2 as pb
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.support.server import ServerThread
from tests.support.signing import Signer, claims, jwks
from tests.test_http_door import request as http_request

GATEWAY, IDP = "https://gateway.example", "https://idp.example"
GW, ID = Signer("EdDSA"), Signer("RS256")
MCP_METADATA = "https://mcp.example/.well-known/oauth-protected-resource"
INJECTED = ("x-user-id", "x-scope", "x-tenant")

CONFIG: dict[str, Any] = {
    "server": {
        "listen": "127.0.0.1:0",
        "admin_listen": None,
        "http": {"listen": "127.0.0.1:0"},
    },
    "providers": {
        "gateway": {
            "issuer": GATEWAY,
            "audiences": ["api"],
            "jwks": jwks(GW),
            "claims_to_headers": {"x-user-id": "sub", "x-scope": "scope"},
            "token_sources": [
                {"header": "authorization", "prefix": "Bearer "},
                {"cookie": "session"},
            ],
        },
        "idp": {
            "issuer": IDP,
            "audiences": ["api"],
            "jwks": jwks(ID),
            "claims_to_headers": {"x-user-id": "sub", "x-tenant": "tenant"},
            "resource_metadata": MCP_METADATA,
        },
    },
    "rules": [
        {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
        {
            "name": "admin",
            "match": {"path_prefix": "/admin", "methods": ["POST"]},
            "providers": ["idp"],
            "scopes": ["admin"],
        },
        {"name": "tenant", "match": {"path_exact": "/tenant"}, "claims": {"tenant": ["acme"]}},
        {
            "name": "host",
            "match": {"path_prefix": "/h", "hosts": ["api.example"]},
            "providers": ["gateway"],
        },
        {"name": "mcp", "match": {"path_prefix": "/mcp"}, "providers": ["idp"]},
        {"name": "default", "match": {"path_prefix": "/"}},
    ],
}


# A day: tokens are made when the tests are collected and used minutes later.
def gw(**extra: Any) -> str:
    return GW.sign(claims(GATEWAY, "api", **{"ttl": 86400, **extra}))


def idp(**extra: Any) -> str:
    return ID.sign(claims(IDP, "api", **{"ttl": 86400, **extra}))


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


# (name, method, host, path, headers)
CASES: list[tuple[str, str, str, str, dict[str, str]]] = [
    ("gateway token", "GET", "api.example", "/x", bearer(gw(sub="alice", scope="read"))),
    ("idp token", "GET", "api.example", "/x", bearer(idp(sub="bob", tenant="acme"))),
    ("cookie token", "GET", "api.example", "/x", {"cookie": f"a=1; session={gw(sub='c')}"}),
    ("anonymous, spoofed identity", "GET", "api.example", "/public/a", {"x-user-id": "admin"}),
    ("missing token", "GET", "api.example", "/x", {}),
    ("malformed token", "GET", "api.example", "/x", bearer("junk")),
    ("expired", "GET", "api.example", "/x", bearer(gw(now=1_000_000))),
    ("wrong audience", "GET", "api.example", "/x", bearer(GW.sign(claims(GATEWAY, "other")))),
    (
        "unknown issuer",
        "GET",
        "api.example",
        "/x",
        bearer(GW.sign(claims("https://evil.example", "api"))),
    ),
    ("admin without scope", "POST", "api.example", "/admin", bearer(idp(scope="read"))),
    ("admin with scope", "POST", "api.example", "/admin", bearer(idp(scope="admin"))),
    ("admin, other provider", "POST", "api.example", "/admin", bearer(gw(scope="admin"))),
    ("admin rule by method only", "GET", "api.example", "/admin", bearer(gw())),
    ("claim mismatch", "GET", "api.example", "/tenant", bearer(idp(tenant="globex"))),
    ("claim match", "GET", "api.example", "/tenant", bearer(idp(tenant="acme"))),
    ("host-bound rule, dot and port", "GET", "API.example.:8443", "/h/1", bearer(idp())),
    (
        "two tokens",
        "GET",
        "api.example",
        "/x",
        {**bearer(gw()), "cookie": f"session={gw(sub='other')}"},
    ),
    ("ambiguous path", "GET", "api.example", "/a%2Fb", {}),
    ("path parameter", "GET", "api.example", "/public/..;/admin", {}),
    ("mcp missing token (resource_metadata)", "GET", "api.example", "/mcp/tools", {}),
    ("mcp bad token", "GET", "api.example", "/mcp/tools", bearer("a.b.c")),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(CONFIG) as s:
        s.wait_ready()
        yield s


def via_grpc(port: int, method: str, host: str, path: str,
             headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    req = pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path = method, host, path
    http.headers.update(headers)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = external_auth_pb2_grpc.AuthorizationStub(channel).Check(req, timeout=5)
    if resp.status.code == 0:
        sets = {h.header.key: h.header.value for h in resp.ok_response.headers}
        return {
            "status": 200,
            "set": {k: v for k, v in sets.items() if k in INJECTED},
            "removed": set(resp.ok_response.headers_to_remove),
        }
    denied = {h.header.key: h.header.value for h in resp.denied_response.headers}
    return {"status": resp.denied_response.status.code,
            "challenge": denied.get("www-authenticate")}  # fmt: skip


def via_http(port: int, method: str, host: str, path: str,
             headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    a = http_request(port, path, method=method, headers={**headers, "host": host})
    if a.status == 200:
        removed = a.headers.get("x-envoy-auth-headers-to-remove", "")
        return {
            "status": 200,
            "set": {k: v for k, v in a.headers.items() if k in INJECTED},
            "removed": set(filter(None, removed.split(","))),
        }
    return {"status": a.status, "challenge": a.headers.get("www-authenticate")}


def test_the_table_covers_every_answer() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(("name", "method", "host", "path", "headers"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_both_doors_answer_alike(
    server: ServerThread, name: str, method: str, host: str, path: str, headers: dict[str, str]
) -> None:
    grpc_answer = via_grpc(server.grpc_port, method, host, path, headers)
    http_answer = via_http(server.server.http_port, method, host, path, headers)
    assert grpc_answer == http_answer
    if name.startswith("mcp"):
        assert f'resource_metadata="{MCP_METADATA}"' in (grpc_answer["challenge"] or "")
