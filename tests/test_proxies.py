"""extauthz's HTTP door behind the proxies its examples configure: real Envoy
(``http_service``, envoy/http-service.yaml), real NGINX (examples/nginx.conf) and real
Caddy (examples/Caddyfile), each in front of an echo upstream and asking a real
extauthz, with configs derived from the shipped files (tests/support/proxies.py).

Through each proxy: a valid token reaches the upstream with extauthz's identity
headers; missing, invalid and expired tokens are 401 with the challenge (and the JSON
body where the proxy relays it); too little scope is 403; a client's identity headers
(any spelling, repeated) never reach the upstream, on an authenticated rule or an
anonymous one, and neither does a Caddy placeholder; rules apply to the original
method, path and host; a token in the query is not in the proxy's access log; an
unreachable extauthz fails closed.

Traefik is not run (no Debian package): its example's structure is checked, and the
request its ForwardAuth documents is sent to the door directly. The Kubernetes
snippets are validated offline.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz import config as cfgmod
from extauthz.dev.envoy import EnvoyProcess, envoy_binary
from tests.support import proxies
from tests.support.proxies import CaddyProcess, NginxProcess, Reply, free_port, send
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream, SeenRequest

REPO = Path(__file__).resolve().parent.parent
ISS = "https://issuer.example"
SIGNER = Signer("ES256")
REALM = "shop"
#: claims_to_headers of the test config: the identity headers every example must guard.
IDENTITY = {"x-user-id": "sub", "x-user-scope": "scope"}
#: Envoy's http_service path_prefix, in envoy/http-service.yaml and server.http.
ENVOY_PREFIX = "/check"


def door_config(mode: str, **http: Any) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "realm": REALM,
            "http": {"listen": "127.0.0.1:0", "original_request": mode, **http},
        },
        "providers": {
            "main": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks": jwks(SIGNER),
                "claims_to_headers": dict(IDENTITY),
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"query": "access_token"},
                ],
            }
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {"name": "admin", "scopes": ["admin"],
             "match": {"path_prefix": "/admin", "methods": ["POST", "PUT", "PATCH", "DELETE"]}},
            {"name": "internal", "scopes": ["internal"],
             "match": {"path_prefix": "/internal", "hosts": ["in.example"]}},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }  # fmt: skip


def token(**extra: Any) -> str:
    return SIGNER.sign(claims(ISS, "api", **extra))


def bearer(**extra: Any) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token(**extra)}")


EXPIRED = SIGNER.sign(claims(ISS, "api", now=time.time() - 3600, ttl=60))


@contextlib.contextmanager
def running_door(mode: str, **http: Any) -> Iterator[ServerThread]:
    with ServerThread(door_config(mode, **http)) as server:
        server.wait_ready()
        yield server


# -- the proxies -------------------------------------------------------------------------
@dataclass
class Front:
    """A proxy in front of the shared upstream, as a test drives it."""

    name: str
    port: int
    upstream: EchoUpstream
    relays_deny_body: bool  # the door's JSON body reaches the client as it was
    access_log: Callable[[], str]

    def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None, *,
        host: str = "api.example", body: bytes | None = None,
    ) -> tuple[Reply, SeenRequest | None]:  # fmt: skip
        """The client's answer, and what the upstream saw of this request (or None)."""
        marker = uuid.uuid4().hex
        reply = send(self.port, method, target, [*(headers or []), ("x-test-id", marker)],
                     host=host, body=body)  # fmt: skip
        seen = [r for r in self.upstream.requests if r.headers.get("x-test-id") == marker]
        assert len(seen) <= 1
        return reply, (seen[0] if seen else None)


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


def _need(binary: str | None, package: str) -> str:
    if binary is None:
        pytest.skip(f"{package} is not installed (.ci/run installs it: apt-get install {package})")
    return binary


@pytest.fixture(scope="module")
def envoy_front(
    upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    work = tmp_path_factory.mktemp("envoy")
    log = work / "access.log"
    with running_door("request", path_prefix=ENVOY_PREFIX) as server:
        bootstrap = proxies.envoy_bootstrap(
            extauthz_port=server.server.http_port, upstream_port=upstream.port, access_log=log
        )
        with EnvoyProcess(bootstrap, workdir=work / "run") as envoy:
            yield Front("envoy", envoy.port, upstream, True, lambda: _read(log))


@pytest.fixture(scope="module")
def nginx_front(
    upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    _need(proxies.nginx_binary(), "nginx")
    with running_door("original") as server:
        work = tmp_path_factory.mktemp("nginx")
        with NginxProcess(
            work, extauthz_port=server.server.http_port, upstream_port=upstream.port
        ) as nginx:
            yield Front("nginx", nginx.port, upstream, False, lambda: _read(nginx.access_log))


@pytest.fixture(scope="module")
def caddy_front(
    upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    _need(proxies.caddy_binary(), "caddy")
    with running_door("forwarded") as server:
        work = tmp_path_factory.mktemp("caddy")
        with CaddyProcess(
            work, extauthz_port=server.server.http_port, upstream_port=upstream.port
        ) as caddy:
            # Caddy logs to stderr (no access log unless the Caddyfile sets `log`).
            yield Front("caddy", caddy.port, upstream, True, caddy.output)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


FRONTS = [pytest.param("envoy", marks=pytest.mark.envoy), "nginx", "caddy"]


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> Front:
    value: Front = request.getfixturevalue(f"{request.param}_front")
    return value


def _challenge(reply: Reply) -> str:
    values = reply.all("www-authenticate")
    assert len(values) == 1, f"one WWW-Authenticate expected, got {values}"
    return values[0]


def _error_of(challenge: str) -> str | None:
    m = re.search(r'error="([^"]+)"', challenge)
    return m.group(1) if m else None


def _check_deny_body(front: Front, reply: Reply, error: str) -> None:
    body = reply.json()
    if front.relays_deny_body:  # the door's body, as it was
        assert body["error"] == error and "error_description" in body
    else:  # NGINX: rebuilt from the challenge (auth_request never relays a body)
        assert body == {"error": _error_of(_challenge(reply)) or "unauthorized"}


# -- allow -------------------------------------------------------------------------------
def test_a_valid_token_reaches_the_upstream_with_extauthz_identity(front: Front) -> None:
    reply, seen = front.request(
        "GET", "/orders/7?x=1",
        [bearer(sub="alice", scope="read"), ("X-User-Id", "mallory"), ("X-User-Scope", "admin")],
    )  # fmt: skip
    assert reply.status == 200, reply
    assert seen is not None and seen.method == "GET" and seen.path == "/orders/7?x=1"
    assert seen.headers["x-user-id"] == "alice"
    assert seen.headers["x-user-scope"] == "read"


# -- deny --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "error", "description"),
    [
        ([], "missing_token", None),
        ([("Authorization", "Bearer junk")], "invalid_token", "token malformed"),
        ([("Authorization", f"Bearer {EXPIRED}")], "invalid_token", "token expired"),
    ],
    ids=["missing", "invalid", "expired"],
)
def test_missing_invalid_and_expired_tokens_are_401(
    front: Front, headers: list[tuple[str, str]], error: str, description: str | None
) -> None:
    reply, seen = front.request("GET", "/orders", headers)
    assert reply.status == 401 and seen is None
    challenge = _challenge(reply)
    assert challenge.startswith(f'Bearer realm="{REALM}"')
    if description is None:  # RFC 6750 §3.1: no error attribute without a token
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge and f'error_description="{description}"' in challenge
    _check_deny_body(front, reply, error)


def test_too_little_scope_is_403_with_the_scope_challenge(front: Front) -> None:
    reply, seen = front.request("POST", "/admin/users", [bearer(scope="read")], body=b"{}")
    assert reply.status == 403 and seen is None
    challenge = _challenge(reply)
    assert 'error="insufficient_scope"' in challenge and 'scope="admin"' in challenge
    _check_deny_body(front, reply, "insufficient_scope")


def test_an_ambiguous_path_is_400_not_a_guess(front: Front) -> None:
    reply, seen = front.request("GET", "/orders;jsessionid=1", [bearer(scope="read")])
    assert reply.status == 400 and seen is None
    assert 'error="invalid_request"' in _challenge(reply)


# -- identity headers --------------------------------------------------------------------
SPOOFED = [
    ("X-User-Id", "mallory"),
    ("x-user-id", "mallory2"),
    ("X-User-Scope", "admin"),
    ("X_User_Id", "mallory3"),
    ("x_user_scope", "admin"),
]


def _identity_headers(seen: SeenRequest) -> dict[str, str]:
    """Every upstream header that an application mapping "_" to "-" reads as one of
    the identity headers."""
    return {k: v for k, v in seen.headers.items() if k.replace("_", "-") in IDENTITY}


@pytest.mark.parametrize(
    ("target", "token_claims", "expected"),
    [
        # A token without a scope claim: x-user-scope is a header extauthz does NOT set.
        ("/orders", {"sub": "alice", "scope": None}, {"x-user-id": "alice"}),
        ("/public/info", None, {}),
    ],
    ids=["authenticated", "anonymous"],
)
def test_client_identity_headers_never_reach_the_upstream(
    front: Front, target: str, token_claims: dict[str, Any] | None, expected: dict[str, str]
) -> None:
    auth = [] if token_claims is None else [bearer(**token_claims)]
    reply, seen = front.request("GET", target, [*SPOOFED, *auth])
    assert reply.status == 200, reply
    assert seen is not None
    assert _identity_headers(seen) == expected
    assert not any("{" in v for v in seen.headers.values()), "a placeholder reached the upstream"


# -- rules on the original request -------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "target", "host", "scope", "status"),
    [
        ("GET", "/admin/users", "api.example", "read", 200),  # methods: GET is not bound
        ("POST", "/admin/users", "api.example", "read", 403),
        ("POST", "/admin/users", "api.example", "admin", 200),
        ("DELETE", "/admin/users/1", "api.example", "read", 403),
        ("POST", "/public/../admin/users", "api.example", "read", 403),  # dot-segments
        ("GET", "/internal/report", "in.example", "read", 403),  # host-bound rule
        ("GET", "/internal/report", "in.example", "internal", 200),
        ("GET", "/internal/report", "api.example", "read", 200),  # another host: default
    ],
)
def test_rules_apply_to_the_original_method_path_and_host(
    front: Front, method: str, target: str, host: str, scope: str, status: int
) -> None:
    body = b'{"n": 1}' if method in ("POST", "PUT") else None
    reply, seen = front.request(method, target, [bearer(scope=scope)], host=host, body=body)
    assert reply.status == status, reply
    assert (seen is not None) == (status == 200)
    if seen is not None:
        assert seen.method == method
        assert seen.body == (body or b""), "the request body reaches the upstream"


# -- logs ---------------------------------------------------------------------------------
def test_a_query_token_is_not_in_the_access_log(front: Front) -> None:
    secret = token(sub="log-check")
    marker = uuid.uuid4().hex
    reply, seen = front.request("GET", f"/orders/{marker}?access_token={secret}")
    assert reply.status == 200 and seen is not None
    assert seen.headers["x-user-id"] == "log-check"
    if front.name != "caddy":  # Caddy writes no access log (the Caddyfile sets no `log`)
        wait_for(lambda: marker in front.access_log(), 5, f"{front.name} access log")
    assert secret not in front.access_log()
    assert secret.split(".")[2] not in front.access_log()


@pytest.mark.envoy
def test_envoy_logs_the_user_from_dynamic_metadata_from_headers(envoy_front: Front) -> None:
    reply, _ = envoy_front.request("GET", "/orders", [bearer(sub="meta-user")])
    assert reply.status == 200
    wait_for(lambda: "meta-user" in envoy_front.access_log(), 5, "access log line")
    line = next(x for x in envoy_front.access_log().splitlines() if "meta-user" in x)
    assert json.loads(line)["authz_user"] == "meta-user"


# -- fail closed -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "status"),
    [pytest.param("envoy", 503, marks=pytest.mark.envoy), ("nginx", 503), ("caddy", 502)],
)
def test_an_unreachable_extauthz_fails_closed(
    name: str, status: int, upstream: EchoUpstream, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    marker = uuid.uuid4().hex
    headers = [bearer(), ("x-test-id", marker)]
    if name == "envoy":
        bootstrap = proxies.envoy_bootstrap(
            extauthz_port=dead, upstream_port=upstream.port, access_log=tmp_path / "a.log"
        )
        with EnvoyProcess(bootstrap, workdir=tmp_path / "run") as envoy:
            reply = send(envoy.port, "GET", "/orders", headers)
    else:
        binary = proxies.nginx_binary() if name == "nginx" else proxies.caddy_binary()
        _need(binary, name)
        cls = NginxProcess if name == "nginx" else CaddyProcess
        with cls(tmp_path, extauthz_port=dead, upstream_port=upstream.port) as proxy:
            reply = proxy.request("GET", "/orders", headers)
    assert reply.status == status
    assert not [r for r in upstream.requests if r.headers.get("x-test-id") == marker]


@pytest.mark.parametrize("name", ["nginx", "caddy"])
def test_a_start_that_finds_its_port_taken_is_retried_on_another(
    name: str, upstream: EchoUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = proxies.nginx_binary() if name == "nginx" else proxies.caddy_binary()
    _need(binary, name)
    cls = NginxProcess if name == "nginx" else CaddyProcess
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        picks = iter([busy])
        real = proxies.free_port
        monkeypatch.setattr(proxies, "free_port", lambda: next(picks, 0) or real())
        with cls(tmp_path, extauthz_port=free_port(), upstream_port=upstream.port) as proxy:
            assert proxy.port not in (0, busy)
            # Its own answer: extauthz is not there, so the request fails closed.
            assert proxy.request("GET", "/orders").status in (502, 503)


# -- NGINX specifics ---------------------------------------------------------------------
def test_nginx_sends_the_challenge_once_and_a_json_body(nginx_front: Front) -> None:
    # auth_request copies WWW-Authenticate on 401 itself: the example must not add it
    # again; on 403 it does not, and the example must.
    for headers, method, target, status in [
        ([], "GET", "/orders", 401),
        ([bearer(scope="read")], "POST", "/admin", 403),
        ([bearer()], "GET", "/a;b", 400),
    ]:
        reply, _ = nginx_front.request(method, target, headers)
        assert reply.status == status
        _challenge(reply)
        assert reply.headers["content-type"] == "application/json"


# -- Envoy: the example validates ----------------------------------------------------------
def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.envoy
def test_envoy_http_service_validates_without_deprecated_fields(tmp_path: Path) -> None:
    result = _validate(proxies.ENVOY_EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower(), result.stderr
    # The check above can fail: the old place of allowed_headers is reported.
    config = yaml.safe_load(proxies.ENVOY_EXAMPLE.read_text())
    ext_authz = _ext_authz(config)
    ext_authz["http_service"]["authorization_request"] = {
        "allowed_headers": ext_authz.pop("allowed_headers")
    }
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    result = _validate(old)
    assert "deprecated" in result.stderr.lower()


def _ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (filter_, router) = manager["http_filters"]
    assert filter_["name"] == "envoy.filters.http.ext_authz"
    assert router["name"] == "envoy.filters.http.router"
    settings: dict[str, Any] = filter_["typed_config"]
    return settings


def _names(matcher: dict[str, Any]) -> set[str]:
    out = set()
    for pattern in matcher["patterns"]:
        assert pattern.get("ignore_case") is True, pattern
        out.add(pattern["exact"].lower())
    return out


def test_envoy_http_service_settings() -> None:
    config = yaml.safe_load(proxies.ENVOY_EXAMPLE.read_text())
    ext_authz = _ext_authz(config)
    service = ext_authz["http_service"]
    assert service["server_uri"]["uri"] == "http://127.0.0.1:9193"
    assert service["server_uri"]["timeout"] == "0.5s"
    assert service["path_prefix"] == ENVOY_PREFIX
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert {"authorization", "cookie", "x-request-id", "dpop"} <= _names(
        ext_authz["allowed_headers"]
    )
    response = service["authorization_response"]
    assert _names(response["allowed_upstream_headers"]) == set(IDENTITY)
    assert _names(response["allowed_client_headers"]) == {
        "www-authenticate", "content-type", "retry-after",
    }  # fmt: skip
    assert _names(response["dynamic_metadata_from_headers"]) == {"x-user-id"}
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (log,) = manager["typed_config"]["access_log"]
    log_format = log["typed_config"]["log_format"]
    text = yaml.safe_dump(log_format["json_format"])
    assert "%REQ_WITHOUT_QUERY(:PATH)%" in text and "%REQ(:PATH)%" not in text
    assert not re.search(r"authorization|cookie", text, re.I)
    assert [f["name"] for f in log_format["formatters"]] == ["envoy.formatter.req_without_query"]


# -- every example names the extauthz config it expects ----------------------------------
def _expected_server(path: Path) -> cfgmod.HttpSettings:
    """The ``server.http`` of the config an example's comment says it expects."""
    text = path.read_text()
    m = re.search(r"#   server:\n((?:#     .*\n)+)", text)
    assert m, f"{path.name} does not name its extauthz config (server.http)"
    block = "server:\n" + "".join(line[4:] + "\n" for line in m.group(1).splitlines())
    data = yaml.safe_load(block)
    return cfgmod.HttpSettings(**data["server"]["http"])


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("envoy/http-service.yaml", "request"),
        ("examples/nginx.conf", "original"),
        ("examples/Caddyfile", "forwarded"),
        ("examples/traefik.yml", "forwarded"),
        ("deploy/ingress-nginx/ingress.yaml", "original"),
        ("deploy/traefik/middleware.yaml", "forwarded"),
        ("deploy/envoy-gateway/securitypolicy.yaml", "request"),
    ],
)
def test_each_example_names_the_server_http_settings_it_needs(path: str, mode: str) -> None:
    settings = _expected_server(REPO / path)
    assert settings.original_request == mode
    assert cfgmod.split_address(settings.listen)[1] == 9193
    if mode == "request":
        assert settings.path_prefix == ENVOY_PREFIX  # what Envoy puts in front of the path


# -- Traefik: the example's structure and the request it documents ------------------------
def _traefik() -> tuple[dict[str, Any], dict[str, Any]]:
    static, dynamic = yaml.safe_load_all(proxies.TRAEFIK_EXAMPLE.read_text())
    return static, dynamic


def test_traefik_example_strips_identity_headers_and_trusts_no_client() -> None:
    static, dynamic = _traefik()
    forwarded = static["entryPoints"]["web"]["forwardedHeaders"]
    assert forwarded.get("insecure") is not True and forwarded["trustedIPs"] == []
    http = dynamic["http"]
    (router,) = http["routers"].values()
    assert router["middlewares"] == ["extauthz-identity-strip", "extauthz"]
    assert router["service"] in http["services"]
    strip = http["middlewares"]["extauthz-identity-strip"]["headers"]["customRequestHeaders"]
    assert all(v == "" for v in strip.values())
    spellings = {n.lower() for n in strip}
    for name in IDENTITY:
        assert {name, name.replace("-", "_")} <= spellings
    auth = http["middlewares"]["extauthz"]["forwardAuth"]
    assert auth["address"] == "http://extauthz:9193/auth"
    assert auth["trustForwardHeader"] is True
    assert {h.lower() for h in auth["authResponseHeaders"]} == set(IDENTITY)
    assert {"authorization", "cookie"} <= {h.lower() for h in auth["authRequestHeaders"]}


@pytest.fixture(scope="module")
def forwarded_door() -> Iterator[ServerThread]:
    with running_door("forwarded") as server:
        yield server


def traefik_request(
    port: int, method: str, uri: str, headers: list[tuple[str, str]], *,
    host: str = "api.example", proto: str = "https",
) -> Reply:  # fmt: skip
    """What Traefik's ForwardAuth sends (its documented shape): GET to the address's
    path, the authRequestHeaders of the client's request, and X-Forwarded-*."""
    _, dynamic = _traefik()
    auth = dynamic["http"]["middlewares"]["extauthz"]["forwardAuth"]
    allowed = {h.lower() for h in auth["authRequestHeaders"]}
    path = "/" + auth["address"].split("/", 3)[3]
    sent = [(k, v) for k, v in headers if k.lower() in allowed]
    sent += [
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Port", "443"),
    ]
    return send(port, "GET", path, sent, host="extauthz:9193")


def test_traefik_forward_auth_requests_get_the_right_answers(forwarded_door: ServerThread) -> None:
    port = forwarded_door.server.http_port
    ok = traefik_request(port, "GET", "/orders?x=1", [bearer(sub="alice", scope="read")])
    assert ok.status == 200 and ok.body == b""
    assert ok.headers["x-user-id"] == "alice" and ok.headers["x-user-scope"] == "read"
    anonymous = traefik_request(port, "GET", "/public/x", [("X-User-Id", "mallory")])
    assert anonymous.status == 200 and "x-user-id" not in anonymous.headers
    # Traefik ignores this header; its authResponseHeaders deletion does the same job.
    assert set(anonymous.headers["x-envoy-auth-headers-to-remove"].split(",")) == set(IDENTITY)
    missing = traefik_request(port, "GET", "/orders", [])
    assert missing.status == 401 and missing.json()["error"] == "missing_token"
    assert missing.headers["www-authenticate"] == f'Bearer realm="{REALM}"'
    scope = traefik_request(port, "POST", "/admin", [bearer(scope="read")])
    assert scope.status == 403 and 'scope="admin"' in scope.headers["www-authenticate"]
    assert traefik_request(port, "GET", "/admin", [bearer(scope="read")]).status == 200
    bound = traefik_request(port, "GET", "/internal/x", [bearer(scope="read")], host="in.example")
    assert bound.status == 403


def test_forwarded_headers_from_an_untrusted_peer_are_refused() -> None:
    with running_door("forwarded", trusted_proxies=["10.0.0.0/8"]) as server:
        reply = traefik_request(server.server.http_port, "GET", "/public/x", [])
        assert reply.status == 400
        assert reply.json()["error_description"].startswith("forwarded request attributes")


# -- Kubernetes snippets -----------------------------------------------------------------
def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
        assert doc["metadata"]["namespace"], path
        assert isinstance(doc["spec"], dict) and doc["spec"], path
    return docs


def _shipped_identity_headers() -> set[str]:
    """claims_to_headers of the config deploy/k8s ships."""
    (cm,) = _documents_any(REPO / "deploy" / "k8s" / "configmap.yaml")
    shipped = cfgmod.from_mapping(yaml.safe_load(cm["data"]["config.yaml"]))
    return {h.lower() for p in shipped.providers.values() for h in p.claims_to_headers}


def _documents_any(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_ingress_nginx_snippet_validates_and_guards_the_identity_headers() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (ingress,) = _documents(REPO / "deploy" / "ingress-nginx" / "ingress.yaml")
    kubernetes_validate.validate(ingress, "1.30", strict=True)
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "auth-url"] == "http://extauthz.extauthz.svc.cluster.local:9193/auth"
    # Without auth-method, ingress-nginx sends no X-Original-URI (extauthz: 400).
    assert notes[prefix + "auth-method"] == "GET"
    headers = {h.strip().lower() for h in notes[prefix + "auth-response-headers"].split(",")}
    assert headers == _shipped_identity_headers()
    assert prefix + "auth-snippet" not in notes  # see the file: it cannot fix Host


def test_traefik_and_envoy_gateway_snippets_have_their_required_fields() -> None:
    # CRDs: kubernetes-validate has no schema for them, so the fields are checked here.
    shipped = _shipped_identity_headers()
    strip, auth = _documents(REPO / "deploy" / "traefik" / "middleware.yaml")
    assert (strip["apiVersion"], strip["kind"]) == ("traefik.io/v1alpha1", "Middleware")
    assert (auth["apiVersion"], auth["kind"]) == ("traefik.io/v1alpha1", "Middleware")
    deleted = strip["spec"]["headers"]["customRequestHeaders"]
    assert all(v == "" for v in deleted.values())
    assert {n.lower() for n in deleted} >= shipped | {n.replace("-", "_") for n in shipped}
    forward = auth["spec"]["forwardAuth"]
    assert forward["address"] == "http://extauthz.extauthz.svc.cluster.local:9193/auth"
    assert forward["trustForwardHeader"] is True
    assert {h.lower() for h in forward["authResponseHeaders"]} == shipped

    policy, grant = _documents(REPO / "deploy" / "envoy-gateway" / "securitypolicy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == (
        "gateway.envoyproxy.io/v1alpha1", "SecurityPolicy",
    )  # fmt: skip
    ext = policy["spec"]["extAuth"]
    (ref,) = ext["http"]["backendRefs"]
    assert ref == {"name": "extauthz", "namespace": "extauthz", "port": 9193}
    assert ext["http"]["path"] == ENVOY_PREFIX
    assert {h.lower() for h in ext["http"]["headersToBackend"]} == shipped
    assert {"authorization", "cookie"} <= {h.lower() for h in ext["headersToExtAuth"]}
    assert ext["failOpen"] is False and ext["statusOnError"] == 503
    assert policy["spec"]["targetRefs"][0]["kind"] == "HTTPRoute"
    # The cross-namespace backendRef needs a ReferenceGrant in the Service's namespace.
    assert grant["kind"] == "ReferenceGrant" and grant["metadata"]["namespace"] == "extauthz"
    assert grant["spec"]["from"] == [{"group": "gateway.envoyproxy.io",
                                      "kind": "SecurityPolicy",
                                      "namespace": policy["metadata"]["namespace"]}]  # fmt: skip
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": "extauthz"}]
