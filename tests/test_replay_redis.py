"""The DPoP replay store shared by replicas: a real ``redis-server`` (the Debian package;
``.ci/run`` installs it) started by the test on a loopback port with no persistence, and
real ``extauthz serve`` processes pointed at it with ``server.replay_store: redis://…``.

What the tests hold: a proof accepted by one process is refused as replayed by another,
through either front door (with ``memory`` it is not: the control); Redis stopped or
frozen fails DPoP requests closed (503, within the store's timeout) while Bearer
requests, readiness and the process carry on, and service comes back by itself with
Redis; every key expires within the proof window and names neither the token nor the
``jti``; ``rediss://`` works and checks Redis's certificate; a Redis password never
reaches a log line, ``/readyz`` or ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.core.binding import replay_key
from extauthz.dev.client import ClientKey, generate_key, make_proof, thumbprint
from extauthz.replay import REDIS_CONNECTIONS, RedisReplayStore
from tests.support.certs import CA
from tests.support.http import Response, http_request
from tests.support.redis_server import STARTUP, RedisServer
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
from tests.support.signing import Signer, claims, jwks
from tests.test_server import check_request, header_list

ISS = "https://issuer.example"
SIGNER = Signer("EdDSA")
# The original request every proof names: the HTTP front door (original_request:
# request) takes the scheme from the connection (plain HTTP) and the host from `Host`,
# so both processes see the same URI whatever port each listens on.
HOST = "api.example.com"
PATH = "/orders"
URL = f"http://{HOST}{PATH}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serving(
    tmp_path: Path,
    name: str,
    store: str,
    dpop: dict[str, Any],
    env: dict[str, str] | None = None,
    **provider: Any,
) -> Iterator[ServeProcess]:
    cfg = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "http": {"listen": "127.0.0.1:0"},
            "replay_store": store,
        },
        "providers": {
            "p": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks": jwks(SIGNER),
                "dpop": dpop,
                **provider,
            }
        },
    }
    server = ServeProcess(tmp_path, name, cfg, env=env)
    try:
        server.wait_ready(STARTUP)
        yield server
    finally:
        server.stop()


def _http_port(server: ServeProcess) -> int:
    started = server.event("started")
    assert started is not None and started["http"], started
    return int(started["http"].rpartition(":")[2])


class Client:
    """A DPoP client: its own key, a token bound to it, a new proof per request."""

    def __init__(self) -> None:
        self.key: ClientKey = generate_key("ES256")
        self.jkt = thumbprint(self.key)
        self.token = SIGNER.sign(claims(ISS, "api", ttl=3600, cnf={"jkt": self.jkt}))

    def proof(self) -> str:
        return make_proof(self.key, method="GET", url=URL, token=self.token)


def send_dpop(server: ServeProcess, client: Client, proof: str) -> Response:
    headers = {"host": HOST, "authorization": f"DPoP {client.token}", "dpop": proof}
    return http_request("127.0.0.1", _http_port(server), "GET", PATH, headers=headers)


def grpc_dpop(server: ServeProcess, client: Client, proof: str) -> tuple[int, dict[str, str]]:
    """The same request through the gRPC front door (Envoy's ``Check``): the HTTP status
    it stands for (200 for OK) and the denial's headers."""
    headers = {"authorization": f"DPoP {client.token}", "dpop": proof}
    request = check_request(headers, path=PATH)
    assert request.attributes.request.http.host == HOST
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        resp = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    if resp.status.code == 0:
        return 200, {}
    return resp.denied_response.status.code, header_list(resp.denied_response.headers)


def send_bearer(server: ServeProcess) -> Response:
    token = SIGNER.sign(claims(ISS, "api"))
    headers = {"host": HOST, "authorization": f"Bearer {token}"}
    return http_request("127.0.0.1", _http_port(server), "GET", PATH, headers=headers)


def readyz(server: ServeProcess) -> Response:
    return http_request("127.0.0.1", server.admin_port, "GET", "/readyz")


def _replayed(response: Response | tuple[int, dict[str, str]]) -> bool:
    status, headers = (
        (response.status, response.headers) if isinstance(response, Response) else response
    )
    challenge = headers.get("www-authenticate", "")
    return (
        status == 401
        and 'error="invalid_dpop_proof"' in challenge
        and 'error_description="DPoP proof replayed"' in challenge
    )


def _proof_claims(proof: str) -> dict[str, Any]:
    payload = proof.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


# -- shared between processes ---------------------------------------------------------


def test_a_proof_used_on_one_replica_is_a_replay_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = Client()
    with (
        serving(tmp_path, "a", redis_server.url(), {}) as a,
        serving(tmp_path, "b", redis_server.url(), {}) as b,
    ):
        proof = client.proof()
        first = send_dpop(a, client, proof)
        assert first.status == 200, (first.status, first.headers, a.log.read_text())
        again = send_dpop(b, client, proof)
        assert _replayed(again), (again.status, again.headers)
        # Through either front door, and on the process that accepted it too.
        assert _replayed(grpc_dpop(b, client, proof))
        assert _replayed(send_dpop(a, client, proof))
        # The other way round: accepted through b's gRPC door, a replay on a.
        other = client.proof()
        assert grpc_dpop(b, client, other)[0] == 200
        assert _replayed(send_dpop(a, client, other))
        # A new proof from the same client is fine on either.
        assert send_dpop(b, client, client.proof()).status == 200
        assert send_dpop(a, client, client.proof()).status == 200
        assert b.metric('extauthz_dpop_total{provider="p",result="invalid_dpop_proof"}') == 2
        assert b.metric('extauthz_dpop_total{provider="p",result="ok"}') == 2
        assert a.metric("extauthz_replay_store_errors_total") == 0
        for server in (a, b):
            status = readyz(server).json()["replay_store"]
            assert status == {
                "kind": "redis",
                "where": f"127.0.0.1:{redis_server.port}",
                "state": "ok",
                "last_error": None,
            }
        # One key per accepted proof: a refused replay writes nothing new.
        assert len(redis_server.keys()) == 4


def test_the_memory_store_does_not_share_replays_between_processes(tmp_path: Path) -> None:
    """The control, and the trade-off ``memory`` makes: each process remembers only the
    proofs it saw itself, so behind a load balancer a replay sent to another replica
    within the proof window is accepted. Replicas need ``redis://`` to share them."""
    client = Client()
    with (
        serving(tmp_path, "a", "memory", {}) as a,
        serving(tmp_path, "b", "memory", {}) as b,
    ):
        proof = client.proof()
        assert send_dpop(a, client, proof).status == 200
        assert send_dpop(b, client, proof).status == 200  # the replay IS accepted
        assert _replayed(send_dpop(a, client, proof))  # each process does remember its own
        assert _replayed(send_dpop(b, client, proof))
        assert readyz(a).json()["replay_store"]["kind"] == "memory"


# -- Redis goes away and comes back ---------------------------------------------------


def test_redis_outage_fails_dpop_closed_and_service_resumes_by_itself(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = Client()
    # A wide proof window, so a proof made before the outage is still within it after
    # the restart however slow the machine is.
    with serving(tmp_path, "x", redis_server.url(), {"max_age": "600s"}) as x:
        used = client.proof()
        assert send_dpop(x, client, used).status == 200
        assert _replayed(send_dpop(x, client, used))
        errors_before = x.metric("extauthz_replay_store_errors_total")
        assert errors_before == 0

        redis_server.stop()

        # DPoP requests: 503, never allowed — a fresh proof (it cannot be checked) and
        # the one already used (it would be a replay).
        tries = [client.proof(), client.proof(), used, client.proof()]
        for proof in tries:
            refused = send_dpop(x, client, proof)
            assert refused.status == 503, (refused.status, refused.headers)
        tries.append(client.proof())
        assert grpc_dpop(x, client, tries[-1])[0] == 503  # the gRPC door the same
        # Requests that need no replay check are unaffected.
        assert send_bearer(x).status == 200
        ready = readyz(x)
        assert ready.status == 200, "an unreachable replay store is not a readiness condition"
        body = ready.json()
        assert body["ready"] is True
        store = body["replay_store"]
        assert store["kind"] == "redis" and store["state"] == "unavailable"
        assert store["last_error"].startswith(f"Redis at 127.0.0.1:{redis_server.port}: ")
        # One error counted per DPoP request that could not ask the store.
        assert x.metric("extauthz_replay_store_errors_total") == errors_before + len(tries)
        assert x.metric(
            'extauthz_dpop_total{provider="p",result="replay_store_unavailable"}'
        ) == len(tries)
        wait_for(lambda: x.count("replay_store_unavailable") >= 1, 30, "the outage logged")
        logged = x.event("replay_store_unavailable")
        assert logged is not None and logged["level"] == "warning"
        assert f"127.0.0.1:{redis_server.port}" in logged["error"]
        denied = [
            e for e in x.events() if e.get("event") == "denied"
            and e.get("reason") == "replay_store_unavailable"
        ]  # fmt: skip
        assert len(denied) == len(tries) and {e["status"] for e in denied} == {503}

        redis_server.start()  # the same port, an empty keyspace (no persistence)

        # Nothing is restarted or reloaded on the extauthz side: the next request after
        # Redis is back simply succeeds. Each try uses a new proof (a 503 claims nothing,
        # but a 200 would make a retried proof a replay).
        statuses: list[int] = []

        def resumed() -> bool:
            statuses.append(send_dpop(x, client, client.proof()).status)
            assert statuses[-1] in (200, 503), statuses
            return statuses[-1] == 200

        wait_for(resumed, 60, "DPoP requests to be allowed again")
        assert readyz(x).json()["replay_store"]["state"] == "ok"
        wait_for(lambda: x.count("replay_store_available") >= 1, 30, "the recovery logged")
        assert send_dpop(x, client, client.proof()).status == 200
        fresh = client.proof()
        assert send_dpop(x, client, fresh).status == 200
        assert _replayed(send_dpop(x, client, fresh))
        # What no persistence costs: the restarted Redis starts empty, so a proof used
        # before the restart and still inside its window (max_age) is accepted once more.
        # A Redis that must not forget across restarts needs persistence or replicas; with
        # a short max_age (the default 60s) the exposure is that long after a restart.
        assert send_dpop(x, client, used).status == 200
        assert _replayed(send_dpop(x, client, used))  # and remembered again from then on


def test_a_stalled_redis_times_out_to_503_and_never_lets_a_replay_through(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis frozen (SIGSTOP: connections accepted, nothing answered) is the timeout
    path, not the refused-connection one. Each DPoP request is answered 503 within the
    store's short timeout instead of waiting for Redis, and once Redis thaws no
    connection left mid-command by a timeout hands a stale reply to a later command: a
    replay is refused every time, before, during and after."""
    client = Client()
    with serving(tmp_path, "x", redis_server.url(), {"max_age": "600s"}) as x:
        used = client.proof()
        assert send_dpop(x, client, used).status == 200
        assert redis_server.proc is not None
        pid = redis_server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            for proof in (client.proof(), used, client.proof(), used, client.proof()):
                started = time.monotonic()
                refused = send_dpop(x, client, proof)
                took = time.monotonic() - started
                assert refused.status == 503, (refused.status, refused.headers)
                # 0.25 s per attempt (REDIS_TIMEOUT, twice at most); 5 s is for a busy CI.
                assert took < 5.0, took
            assert send_bearer(x).status == 200
            assert "Timeout" in readyz(x).json()["replay_store"]["last_error"]
        finally:
            os.kill(pid, signal.SIGCONT)

        # Until a fresh proof is allowed again, the used one is a replay or a 503, never a 200.
        def thawed() -> bool:
            assert send_dpop(x, client, used).status in (401, 503)
            return send_dpop(x, client, client.proof()).status == 200

        wait_for(thawed, 60, "DPoP requests to be allowed after Redis thaws")
        for _ in range(10):  # every pooled connection gets its turn
            assert _replayed(send_dpop(x, client, used))
            assert send_dpop(x, client, client.proof()).status == 200
        assert readyz(x).json()["replay_store"]["state"] == "ok"


BURST_TIMEOUT = 10.0


def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """More claims at once than the store keeps connections (a burst of DPoP requests,
    or Redis a little slow) queue for a connection within the timeout. A pool that
    refused them at once would answer 503 and report Redis unavailable while it is fine.
    """
    count = 4 * REDIS_CONNECTIONS
    keys = [f"extauthz:dpop:burst-{i}" for i in range(count)]

    async def burst() -> tuple[list[bool], list[bool], dict[str, Any]]:
        # What is tested is that a claim waits for a connection, not how fast 64 of them
        # open: under coverage on a busy machine, opening them and three rounds of claims
        # took longer than the 0.25 s default, and the last claims timed out ("No
        # connection available"). A pool that refuses at once fails with any timeout.
        store = RedisReplayStore(redis_server.url(), timeout=BURST_TIMEOUT)
        try:
            first = await asyncio.gather(*(store.claim(k, 60) for k in keys))
            again = await asyncio.gather(*(store.claim(k, 60) for k in keys))
            return first, again, store.status()
        finally:
            await store.close()

    first, again, status = asyncio.run(burst())
    assert first == [True] * count  # ReplayStoreDown would have been raised instead
    assert again == [False] * count  # every one of them remembered
    assert status["state"] == "ok"
    assert len(redis_server.keys()) == count


# -- what is written to Redis ---------------------------------------------------------


def test_every_key_expires_within_the_window_and_holds_no_token_or_jti(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    max_age, clock_skew = 30.0, 5.0
    window_ms = (max_age + 2 * clock_skew) * 1000  # the iat window, both ends
    clients = [Client(), Client()]
    proofs: list[tuple[Client, str]] = []
    with serving(
        tmp_path,
        "x",
        redis_server.url(),
        {"max_age": f"{max_age:g}s"},
        clock_skew=f"{clock_skew:g}s",
    ) as x:
        for client in clients:
            for _ in range(3):
                proof = client.proof()
                assert send_dpop(x, client, proof).status == 200
                proofs.append((client, proof))
            assert _replayed(send_dpop(x, client, proof))  # a replay writes nothing
        keys = redis_server.keys()
        db = redis_server.client()
        try:
            pttls = {key: db.pttl(key) for key in keys}
            values: dict[bytes, Any] = {key: db.get(key) for key in keys}
        finally:
            db.close()
    assert len(keys) == len(proofs)
    for key in keys:
        assert 0 < pttls[key] <= window_ms, (key, pttls[key], window_ms)
        assert re.fullmatch(rb"extauthz:dpop:[0-9a-f]{40}", key), key
        assert values[key] == b"1"
    secrets = set()
    for client, proof in proofs:
        jti = _proof_claims(proof)["jti"]
        secrets |= {
            jti,
            client.token,
            client.jkt,
            proof,
            *client.token.split("."),
            proof.split(".")[2],
        }
        # The key is the documented digest of (provider, proof key, jti), nothing more.
        assert replay_key("p", client.jkt, jti).encode() in keys
    stored = b" ".join(keys + [v for v in values.values() if v is not None])
    for secret in secrets:
        assert secret.encode() not in stored


# -- rediss:// ------------------------------------------------------------------------


def test_rediss_shares_replays_over_tls_and_checks_the_certificate(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    ca = CA(tmp_path / "pki")
    pair = ca.issue("redis", server=True)  # for 127.0.0.1
    store = RedisServer(tmp_path / "redis", tls=(pair.cert, pair.key, ca.path))
    store.start()
    try:
        url = store.url()
        assert url.startswith("rediss://")
        client = Client()
        # The private CA reaches extauthz as it reaches any OpenSSL client: SSL_CERT_FILE.
        trusting = {"SSL_CERT_FILE": str(ca.path)}
        with (
            serving(tmp_path, "a", url, {}, env=trusting) as a,
            serving(tmp_path, "b", url, {}, env=trusting) as b,
            serving(tmp_path, "untrusting", url, {}) as untrusting,
        ):
            proof = client.proof()
            assert send_dpop(a, client, proof).status == 200
            assert _replayed(send_dpop(b, client, proof))
            # A Redis whose certificate does not verify is not asked: closed, 503.
            assert send_dpop(untrusting, client, client.proof()).status == 503
            status = readyz(untrusting).json()["replay_store"]
            assert status["state"] == "unavailable", status
        assert len(store.keys()) == 1
    finally:
        store.stop()


# -- the password in the URL ----------------------------------------------------------


def test_a_redis_password_never_reaches_logs_or_readyz(tmp_path: Path) -> None:
    password = "s3cret-Pw-4f9a"
    wrong = "wr0ng-Pw-77c1"
    store = RedisServer(tmp_path / "redis", password=password)
    store.start()
    try:
        client = Client()
        debug = {"EXTAUTHZ_LOG_LEVEL": "debug"}  # every log line there is
        with (
            serving(tmp_path, "right", store.url(password), {}, env=debug) as right,
            serving(tmp_path, "wrong", store.url(wrong), {}, env=debug) as wrong_pw,
        ):
            assert send_dpop(right, client, client.proof()).status == 200
            # A wrong password is a store that cannot be asked: 503, said without it.
            assert send_dpop(wrong_pw, client, client.proof()).status == 503
            status = readyz(wrong_pw).json()["replay_store"]
            assert status["state"] == "unavailable"
            assert "AuthenticationError" in status["last_error"], status
            # An outage: the error paths log and report the store's address.
            store.stop()
            assert send_dpop(right, client, client.proof()).status == 503
            wait_for(lambda: right.count("replay_store_unavailable") >= 1, 30, "outage logged")
            seen = {
                "right /readyz": readyz(right).text,
                "wrong /readyz": readyz(wrong_pw).text,
                "right /metrics": http_request(
                    "127.0.0.1", right.admin_port, "GET", "/metrics"
                ).text,
            }
        seen["right log"] = right.log.read_text()
        seen["wrong log"] = wrong_pw.log.read_text()
        assert "replay_store_unavailable" in seen["wrong log"]
        assert right.count("allowed") == 1, "debug logging was on"
        for where, text in seen.items():
            for secret in (password, wrong):
                assert secret not in text, f"{where} shows a Redis password"
    finally:
        store.stop()


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:s3cret@cache.example/0", "cache.example:6379"),
        ("rediss://user:s3cret@10.0.0.7:6380/2", "10.0.0.7:6380"),
        ("redis://user:s3cret@[::1]:6380/0", "[::1]:6380"),
    ],
)
def test_the_store_reports_where_it_is_never_who(url: str, where: str) -> None:
    store = RedisReplayStore(url)  # no connection until the first claim
    status = store.status()
    assert status == {"kind": "redis", "where": where, "state": "ok", "last_error": None}
    assert "s3cret" not in repr(status) and "user" not in repr(status)
