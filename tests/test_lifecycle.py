"""Operations under traffic through a real Envoy: live reload and SIGTERM with two replicas."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.envoy import EnvoyProcess
from tests.support.http import KeepAlive
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

ISS = "https://issuer.example"
SIGNER = Signer("ES256")


def base_config(url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **server},
        "providers": {
            "main": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks_uri": url,
                "claims_to_headers": {"x-user-id": "sub"},
            }
        },
    }


class Traffic:
    """Clients sending valid tokens through Envoy until stopped; records every non-200."""

    def __init__(self, port: int, clients: int = 3) -> None:
        self.port = port
        self.failures: list[tuple[int, str]] = []
        self.total = 0
        self.seen_headers: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        token = SIGNER.sign(claims(ISS, "api", ttl=600))
        client = KeepAlive(self.port)
        try:
            while not self._stop.is_set():
                status, body = client.get("/t", {"authorization": f"Bearer {token}"})
                with self._lock:
                    self.total += 1
                    if status != 200:
                        self.failures.append((status, body.decode("utf-8", "replace")[:200]))
                    elif self.total % 50 == 0:
                        self.seen_headers.append(json.loads(body)["headers"])
        finally:
            client.close()

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def wait_requests(self, n: int) -> None:
        target = self.total + n
        wait_for(lambda: self.total >= target, 30, f"{n} more requests")


@pytest.fixture
def keys() -> Iterator[JwksServer]:
    with JwksServer(jwks(SIGNER)) as server:
        yield server


def test_reload_under_traffic_with_zero_failed_checks(tmp_path: Path, keys: JwksServer) -> None:
    cfg = base_config(keys.url)
    server = ServeProcess(tmp_path, "a", cfg)
    try:
        with (
            EchoUpstream() as up,
            EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=up.port) as envoy,
            Traffic(envoy.port) as traffic,
        ):
            traffic.wait_requests(100)
            fetches_before = keys.fetches

            # 1. A valid change, by SIGHUP: a new injected header appears upstream.
            cfg["providers"]["main"]["claims_to_headers"]["x-issuer"] = "iss"
            server.write(cfg)
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: server.count("config_reloaded") >= 1, 20, "reload")
            traffic.wait_requests(100)
            assert any(h.get("x-issuer") == ISS for h in traffic.seen_headers[-2:])
            # The provider did not change: its key source and keys were kept.
            assert keys.fetches == fetches_before
            assert server.event("config_reloaded")["providers_kept"] == ["main"]  # type: ignore[index]

            # 2. An invalid file: the running config stays, the failure is reported.
            server.write("providers:\n  main:\n    issuer: 42\n    audencies: []\n")
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: server.count("config_reload_failed") >= 1, 20, "failed reload")
            failed = server.event("config_reload_failed")
            assert failed is not None
            assert any("providers.main.audencies" in p for p in failed["problems"])
            traffic.wait_requests(100)
            assert server.metric('extauthz_config_reload_total{result="error"}') >= 1

            # 3. A file change alone (no signal) is noticed too.
            cfg["providers"]["main"]["claims_to_headers"] = {"x-user-id": "sub", "x-v": "aud"}
            server.write(cfg)
            wait_for(lambda: server.count("config_reloaded") >= 2, 20, "file-change reload")
            traffic.wait_requests(100)
            assert server.metric('extauthz_config_reload_total{result="success"}') >= 2
        assert traffic.total > 300
        assert traffic.failures == [], f"{len(traffic.failures)} failed: {traffic.failures[:3]}"
    finally:
        server.stop()


def test_reload_that_restarts_a_key_source_keeps_its_keys_while_the_issuer_is_down(
    tmp_path: Path, keys: JwksServer
) -> None:
    """A reload that changes a provider's key settings starts a new key source; until
    that source fetches, the provider answers with its last good keys (not a 503)."""
    cfg = base_config(keys.url)
    server = ServeProcess(tmp_path, "a", cfg)
    try:
        server.wait_ready()
        with (
            EchoUpstream() as up,
            EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=up.port) as envoy,
            Traffic(envoy.port) as traffic,
        ):
            traffic.wait_requests(50)
            keys.fail_with = 503  # the issuer goes down
            cfg["providers"]["main"]["max_stale"] = "2h"  # a key setting: a new source
            server.write(cfg)
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: server.count("config_reloaded") >= 1, 20, "reload")
            # The first reload (the file watch may see the change before the signal
            # arrives; the second then changes nothing) started a new key source.
            first = next(e for e in server.events() if e.get("event") == "config_reloaded")
            assert first["providers_started"] == ["main"]
            wait_for(lambda: server.count("jwks_fetch_failed") >= 1, 20, "a failed fetch")
            traffic.wait_requests(100)
            assert server.ready(), "the provider kept usable keys"
        assert traffic.failures == [], f"{len(traffic.failures)} failed: {traffic.failures[:3]}"
    finally:
        server.stop()


def _two_endpoints(ports: list[int]) -> Callable[[dict[str, Any]], None]:
    def hook(bootstrap: dict[str, Any]) -> None:
        cluster = next(
            c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "extauthz"
        )
        cluster["load_assignment"]["endpoints"] = [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}
                        }
                    }
                    for p in ports
                ]
            }
        ]
        # Envoy follows each replica's gRPC health: NOT_SERVING takes it out of rotation.
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "0.1s",
                "no_traffic_interval": "0.1s",
                "unhealthy_interval": "0.1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": "envoy.service.auth.v3.Authorization"},
            }
        ]
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}

    return hook


def test_sigterm_under_traffic_with_a_second_replica_fails_no_check(
    tmp_path: Path, keys: JwksServer
) -> None:
    a = ServeProcess(tmp_path, "a", base_config(keys.url, shutdown_delay="1500ms"))
    b = ServeProcess(tmp_path, "b", base_config(keys.url, shutdown_delay="1500ms"))
    try:
        with (
            EchoUpstream() as up,
            EnvoyProcess(
                extauthz_port=a.grpc_port,
                upstream_port=up.port,
                config_hook=_two_endpoints([a.grpc_port, b.grpc_port]),
            ) as envoy,
        ):
            wait_for(
                lambda: (
                    envoy.stats("cluster.extauthz.membership_healthy").get(
                        "cluster.extauthz.membership_healthy"
                    )
                    == 2
                ),
                20,
                "both replicas healthy in Envoy",
            )
            with Traffic(envoy.port) as traffic:
                traffic.wait_requests(200)
                a.proc.send_signal(signal.SIGTERM)
                assert a.proc.wait(timeout=30) == 0
                traffic.wait_requests(200)
        assert traffic.failures == [], f"{len(traffic.failures)} failed: {traffic.failures[:3]}"
        assert a.count("draining") == 1 and a.event("stopped") is not None
    finally:
        a.stop()
        b.stop()
