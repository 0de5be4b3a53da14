"""The gRPC surface Envoy talks to, over a real socket: answers, health, admin, SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz import metrics
from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2 as pb
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.core.decision import Decision
from tests.support.http import http_request
from tests.support.introspection_server import IntrospectionServer
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks

ISS = "https://issuer.example"
AUD = "api"
SIGNER = Signer("ES256")


def config(url: str, **provider: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "realm": "shop"},
        "providers": {
            "main": {
                "issuer": ISS,
                "audiences": [AUD],
                "jwks_uri": url,
                "refresh_interval": "1s",
                "min_refresh_interval": "1s",
                "claims_to_headers": {"x-user-id": "sub", "x-tenant": "tenant"},
                **provider,
            }
        },
    }


def check_request(headers: dict[str, str], *, raw: bool = False, path: str = "/x") -> Any:
    req = pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path = "GET", "api.example.com", path
    if raw:
        for k, v in headers.items():
            http.header_map.headers.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    else:
        http.headers.update(headers)
    return req


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.auth = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def check(self, headers: dict[str, str], **kw: Any) -> Any:
        return self.auth.Check(check_request(headers, **kw), timeout=5)

    def serving(self, service: str = "") -> bool:
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def keys() -> Iterator[JwksServer]:
    with JwksServer(jwks(SIGNER)) as server:
        yield server


@pytest.fixture
def running(keys: JwksServer) -> Iterator[tuple[ServerThread, Client]]:
    with ServerThread(config(keys.url)) as server:
        server.wait_ready()
        yield server, Client(server.grpc_port)


def bearer(**extra: Any) -> dict[str, str]:
    return {"authorization": "Bearer " + SIGNER.sign(claims(ISS, AUD, **extra))}


def header_list(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def test_allow_sets_identity_removes_unset_injected_headers_and_carries_metadata(
    running: tuple[ServerThread, Client],
) -> None:
    _, client = running
    resp = client.check({**bearer(sub="alice"), "x-tenant": "spoofed"})
    assert resp.status.code == 0
    ok = resp.ok_response
    assert header_list(ok.headers) == {"x-user-id": "alice"}
    assert not any(o.HasField("append") and o.append.value for o in ok.headers)
    # The token has no `tenant`: the client's copy must not reach the upstream.
    assert list(ok.headers_to_remove) == ["x-tenant"]
    meta = json_format.MessageToDict(resp.dynamic_metadata)
    assert meta["provider"] == "main" and meta["rule"] == "default"
    assert meta["iss"] == ISS and meta["sub"] == "alice"
    assert meta["claims"]["aud"] == AUD


@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_both_header_encodings(running: tuple[ServerThread, Client], raw: bool) -> None:
    _, client = running
    assert client.check(bearer(), raw=raw).status.code == 0
    assert client.check({}, raw=raw).status.code == 16


ANSWERS = {
    # case: (headers, grpc code, http status, www-authenticate or None)
    "missing": ({}, 16, 401, 'Bearer realm="shop"'),
    "invalid": (
        {"authorization": "Bearer x.y.z"},
        16,
        401,
        'Bearer realm="shop", error="invalid_token", error_description="token malformed"',
    ),
    "two_tokens": (
        {"authorization": "Bearer a.b.c", "cookie": "access_token=d.e.f"},
        3,
        400,
        'Bearer realm="shop", error="invalid_request", '
        'error_description="more than one token presented"',
    ),
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_every_deny_has_a_nonzero_status_and_rfc6750_header(keys: JwksServer, case: str) -> None:
    headers, code, status, www = ANSWERS[case]
    cfg = config(
        keys.url,
        token_sources=[
            {"header": "authorization", "prefix": "Bearer "},
            {"cookie": "access_token"},
        ],
    )
    with ServerThread(cfg) as server:
        server.wait_ready()
        resp = Client(server.grpc_port).check(headers)
    assert resp.status.code == code != 0
    denied = resp.denied_response
    assert denied.status.code == status
    got = header_list(denied.headers)
    assert got["www-authenticate"] == www
    assert got["content-type"] == "application/json"
    assert set(json.loads(denied.body)) <= {"error", "error_description"}


def test_no_keys_yet_means_unavailable_and_not_serving(keys: JwksServer) -> None:
    keys.fail_with = 503
    with ServerThread(config(keys.url)) as server:
        client = Client(server.grpc_port)
        resp = client.check(bearer())
        assert resp.status.code == 14
        assert resp.denied_response.status.code == 503
        assert not client.serving("") and not client.serving("envoy.service.auth.v3.Authorization")
        ready = http_request("127.0.0.1", server.server.admin_port, "GET", "/readyz")
        assert ready.status == 503
        assert ready.json()["providers"]["main"]["state"] == "empty"
        assert http_request("127.0.0.1", server.server.admin_port, "GET", "/healthz").status == 200
        keys.fail_with = None
        wait_for(lambda: client.serving(""), 15, "health SERVING")
        assert client.serving("envoy.service.auth.v3.Authorization")
        ready = http_request("127.0.0.1", server.server.admin_port, "GET", "/readyz")
        assert ready.status == 200
        assert ready.json()["providers"]["main"]["kids"] == [SIGNER.kid]
        assert client.check(bearer()).status.code == 0


def test_new_key_is_accepted_on_its_first_request(keys: JwksServer) -> None:
    with ServerThread(config(keys.url, refresh_interval="1h", min_refresh_interval="30s")) as s:
        s.wait_ready()
        client = Client(s.grpc_port)
        newcomer = Signer("EdDSA")
        keys.set(jwks(SIGNER, newcomer))  # published, but not yet fetched by us
        token = newcomer.sign(claims(ISS, AUD))
        assert client.check({"authorization": f"Bearer {token}"}).status.code == 0
        assert keys.requests[-1].get("cache-control") == "no-cache"


def test_random_kid_storm_costs_one_fetch(keys: JwksServer) -> None:
    with ServerThread(config(keys.url, refresh_interval="1h", min_refresh_interval="1h")) as s:
        s.wait_ready()
        client = Client(s.grpc_port)
        before = keys.fetches
        futures = [
            client.auth.Check.future(
                check_request(
                    {"authorization": "Bearer " + SIGNER.sign(claims(ISS, AUD), kid=f"k{i}")}
                ),
                timeout=10,
            )
            for i in range(300)
        ]
        codes = [f.result().status.code for f in futures]
        assert codes == [16] * 300
        assert keys.fetches - before <= 1
        assert client.check(bearer()).status.code == 0  # valid traffic unaffected


def test_sigterm_drains_and_exits_zero(tmp_path: Path, keys: JwksServer) -> None:
    cfg = config(keys.url)
    cfg["server"]["admin_listen"] = None
    server = ServeProcess(tmp_path, "sigterm", cfg)
    try:
        client = Client(server.grpc_port)
        wait_for(lambda: client.serving(), 20, "SERVING")
        assert client.check(bearer()).status.code == 0
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10
        events = [e["event"] for e in server.events()]
        assert "draining" in events and events[-1] == "stopped"
    finally:
        server.stop()


def test_removed_key_denies_even_a_token_accepted_before(keys: JwksServer) -> None:
    other = Signer("RS256")
    keys.set(jwks(SIGNER, other))
    with ServerThread(config(keys.url, refresh_interval="1s", min_refresh_interval="1s")) as s:
        s.wait_ready()
        client = Client(s.grpc_port)
        token = {"authorization": "Bearer " + SIGNER.sign(claims(ISS, AUD))}
        assert client.check(token).status.code == 0  # verified, now in the token cache
        assert client.check(token).status.code == 0
        keys.set(jwks(other))  # the issuer revokes SIGNER's key

        def gone() -> bool:
            ks = s.server.sources["main"].keys
            return ks is not None and SIGNER.kid not in ks.kids

        wait_for(gone, 10, "the refresh that drops the key")
        resp = client.check(token)
        assert resp.status.code == 16
        assert resp.denied_response.status.code == 401


def _checks(decision: str, reason: str) -> float:
    return sum(
        s.value
        for m in metrics.REGISTRY.collect()
        for s in m.samples
        if s.name == "extauthz_check_total"
        and s.labels["decision"] == decision
        and s.labels["reason"] == reason
    )


def test_an_answer_that_cannot_be_encoded_is_a_counted_and_logged_deny(
    running: tuple[ServerThread, Client], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Fail closed at the last step too: a decision the wire cannot carry (here a header
    value protobuf refuses) is a 503 deny, counted as a deny, never a failed RPC."""
    server, client = running
    policy = server.server.authorizer.policy  # type: ignore[union-attr]
    unencodable = Decision(True, "ok", rule="default", set_headers=(("x-user-id", "\ud800"),))
    monkeypatch.setattr(policy, "decide", lambda *_: unencodable)
    allows, denies = _checks("allow", "ok"), _checks("deny", "internal_error")
    resp = client.check(bearer())
    assert resp.status.code == 14 and resp.denied_response.status.code == 503
    assert _checks("deny", "internal_error") == denies + 1
    assert _checks("allow", "ok") == allows
    seen = capsys.readouterr()
    assert "check_answer_unencodable" in seen.out + seen.err


def test_two_authorization_entries_in_the_raw_header_map_are_a_400(
    running: tuple[ServerThread, Client],
) -> None:
    """With encode_raw_headers Envoy sends each header line as its own entry."""
    _, client = running
    req = check_request({}, raw=True)
    for token in (bearer(sub="a"), bearer(sub="b")):
        entry = base_pb2.HeaderValue(key="authorization", raw_value=token["authorization"].encode())
        req.attributes.request.http.header_map.headers.append(entry)
    resp = client.auth.Check(req, timeout=5)
    assert (resp.status.code, resp.denied_response.status.code) == (3, 400)


def test_a_check_waiting_on_introspection_holds_up_no_other_check(
    keys: JwksServer, tmp_path: Path
) -> None:
    """Checks are decided on grpcio's pool threads; one that waits (here for an
    introspection answer the test holds back) keeps its thread, not the server."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    with IntrospectionServer() as endpoint:
        endpoint.answers["opaque-token-1"] = {"active": True, "iss": "https://corp.example",
                                              "aud": "api", "sub": "bob",
                                              "exp": time.time() + 3600}  # fmt: skip
        endpoint.gate = threading.Event()
        cfg = config(keys.url)
        cfg["providers"]["corp"] = {
            "issuer": "https://corp.example",
            "audiences": ["api"],
            "claims_to_headers": {"x-user-id": "sub"},
            "introspection": {"endpoint": endpoint.url, "client_id": "extauthz",
                              "client_secret_file": str(secret), "timeout": "20s"},
        }  # fmt: skip
        with ServerThread(cfg) as server, futures.ThreadPoolExecutor(1) as pool:
            server.wait_ready()
            client = Client(server.grpc_port)
            opaque = {"authorization": "Bearer opaque-token-1"}
            waiting = pool.submit(lambda: client.auth.Check(check_request(opaque), timeout=30))
            wait_for(lambda: endpoint.calls == 1, what="the introspection call to arrive")
            for _ in range(20):  # more calls than the pool has threads, one after another
                assert client.check(bearer(sub="alice")).status.code == 0
            assert client.check({}).status.code == 16
            assert not waiting.done(), "the introspected request was answered before its answer"
            endpoint.gate.set()
            resp = waiting.result(30)
            assert resp.status.code == 0
            assert header_list(resp.ok_response.headers) == {"x-user-id": "bob"}
