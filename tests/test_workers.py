"""`server.workers: 2`: processes share the port, metrics aggregate, crashes are healed."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import grpc

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.support.http import http_request
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
from tests.support.signing import Signer, claims, jwks
from tests.test_server import check_request

ISS = "https://issuer.example"
SIGNER = Signer("EdDSA")


def test_two_workers_share_the_port_aggregate_metrics_and_restart(tmp_path: Path) -> None:
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "workers": 2},
        "providers": {"p": {"issuer": ISS, "audiences": ["api"], "jwks": jwks(SIGNER)}},
    }
    server = ServeProcess(tmp_path, "workers", cfg)
    proc = server.proc
    try:
        info = server.event("started")
        assert info is not None and info["workers"] == 2
        grpc_port, admin_port = server.grpc_port, server.admin_port

        def readyz() -> Any:
            return http_request("127.0.0.1", admin_port, "GET", "/readyz")

        wait_for(lambda: readyz().status == 200, 30, "both workers ready")
        pids = {w["pid"] for w in readyz().json()["workers"]}
        assert len(pids) == 2

        token = SIGNER.sign(claims(ISS, "api"))
        request = check_request({"authorization": f"Bearer {token}"})
        total = 0
        for _ in range(8):  # separate connections: SO_REUSEPORT spreads them over workers
            with grpc.insecure_channel(
                f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                for _ in range(5):
                    assert stub.Check(request, timeout=5).status.code == 0
                    total += 1
        metrics = http_request("127.0.0.1", admin_port, "GET", "/metrics").text
        allowed = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('extauthz_check_total{decision="allow"')
        )
        assert allowed == total, "metrics must aggregate every worker's checks"

        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                readyz().status == 200
                and victim not in {w["pid"] for w in readyz().json()["workers"]}
            ),
            30,
            "the crashed worker to be replaced",
        )
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert stub.Check(request, timeout=5).status.code == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        events = [e["event"] for e in server.events()]
        assert "worker_died" in events and events[-1] == "stopped"
    finally:
        server.stop()


def test_every_worker_serves_the_http_front_door_on_one_port(tmp_path: Path) -> None:
    cfg = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "workers": 2,
            "http": {"listen": "127.0.0.1:0"},
        },
        "providers": {"p": {"issuer": ISS, "audiences": ["api"], "jwks": jwks(SIGNER)}},
    }
    server = ServeProcess(tmp_path, "http-workers", cfg)
    try:
        info = server.event("started")
        assert info is not None and info["http"] is not None
        port = int(info["http"].rpartition(":")[2])
        assert port != 0
        wait_for(server.ready, 30, "both workers ready")
        token = SIGNER.sign(claims(ISS, "api"))
        statuses = {
            http_request(
                "127.0.0.1", port, "GET", "/x", headers={"authorization": f"Bearer {token}"}
            ).status
            for _ in range(20)  # separate connections: spread over both workers
        }
        assert statuses == {200}
        assert http_request("127.0.0.1", port, "GET", "/x").status == 401
        metrics = http_request("127.0.0.1", server.admin_port, "GET", "/metrics").text
        assert 'front_door="http"' in metrics
    finally:
        server.stop()
