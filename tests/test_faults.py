"""Fault injection: a misbehaving issuer or a starved server never yields a wrong allow,
never leaves a request stuck, and is visible in the metrics."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extauthz import metrics
from extauthz.config import Provider
from extauthz.keys import source as keys
from tests.support.certs import CA
from tests.support.envoy import EnvoyProcess
from tests.support.evil_http import EvilHttp
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.server import ServerThread
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream

ISS = "https://issuer.example"
SIGNER = Signer("RS256")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _errors(name: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "extauthz_jwks_fetch_total",
            {"provider": name, "result": "error", "trigger": "scheduled"},
        )
        or 0.0
    )


@pytest.mark.parametrize("mode", ["hang_mid_body", "reset", "redirect_loop", "redirect_away"])
async def test_misbehaving_jwks_keeps_last_good_keys(mode: str, session: Any) -> None:
    name = f"evil-{mode}"
    with EvilHttp("good", jwks(SIGNER)) as evil:
        p = Provider(issuer=ISS, audiences=(), jwks_uri=evil.url, fetch_timeout="300ms")
        src = keys.build(name, p, lambda: session)
        assert await src.refresh("startup")
        evil.mode = mode
        started = time.monotonic()
        assert not await src.refresh("scheduled")
        assert time.monotonic() - started < 2, "a bad answer must be bounded by fetch_timeout"
        assert src.usable() is not None and src.usable().kids == {SIGNER.kid}  # type: ignore[union-attr]
        assert _errors(name) == 1
        if mode == "redirect_away":
            assert "302" in (src.last_error or "")  # never followed to another host


async def test_a_jwks_that_arrives_in_pieces_is_read_whole(session: Any) -> None:
    with EvilHttp("in_pieces", jwks(SIGNER)) as evil:
        p = Provider(issuer=ISS, audiences=(), jwks_uri=evil.url, fetch_timeout="5s")
        src = keys.build("evil-in-pieces", p, lambda: session)
        assert await src.refresh("startup"), src.last_error
        assert src.usable() is not None and src.usable().kids == {SIGNER.kid}  # type: ignore[union-attr]


async def test_tls_error_on_the_jwks_endpoint_keeps_keys(tmp_path: Path, session: Any) -> None:
    """An https JWKS whose certificate is not trusted is a fetch error, not a key source."""
    ca = CA(tmp_path)
    pair = ca.issue("jwks", server=True)
    with JwksServer(jwks(SIGNER)) as plain:
        # First keys from a good source, then point the same provider at a bad TLS server.
        good = Provider(issuer=ISS, audiences=(), jwks_uri=plain.url)
        src = keys.build("tls-bad", good, lambda: session)
        assert await src.refresh("startup")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"keys": []}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        bad = Provider(issuer=ISS, audiences=(), jwks_uri=f"https://localhost:{httpd.server_port}/")
        fetcher = keys.HttpFetcher(bad, lambda: session)
        src._fetcher = fetcher
        assert not await src.refresh("scheduled")
        assert src.last_error and "TLS verification of localhost:" in src.last_error
        assert src.usable() is not None
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.envoy
def test_envoy_deadline_shorter_than_the_unknown_kid_wait() -> None:
    """Envoy gives 100 ms; the shared refetch hangs. The unknown-kid request gets a 401
    within the deadline (never a late answer), and valid tokens keep flowing."""
    with EvilHttp("good", jwks(SIGNER)) as evil:
        cfg = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": None},
            "providers": {
                "p": {
                    "issuer": ISS,
                    "audiences": ["api"],
                    "jwks_uri": evil.url,
                    "fetch_timeout": "5s",
                    "min_refresh_interval": "1s",
                },
            },
        }
        with ServerThread(cfg) as server, EchoUpstream() as up:
            server.wait_ready()
            evil.mode = "hang_mid_body"
            with EnvoyProcess(
                extauthz_port=server.grpc_port, upstream_port=up.port, timeout="0.1s"
            ) as envoy:
                junk = SIGNER.sign(claims(ISS, "api"), kid="never-published")
                started = time.monotonic()
                resp = envoy.request("GET", "/x", headers={"authorization": f"Bearer {junk}"})
                elapsed = time.monotonic() - started
                assert resp.status == 401, resp.text
                assert elapsed < 0.5
                valid = SIGNER.sign(claims(ISS, "api"))
                for _ in range(20):
                    ok = envoy.request("GET", "/x", headers={"authorization": f"Bearer {valid}"})
                    assert ok.status == 200


@pytest.mark.envoy
def test_cpu_starvation_never_produces_a_wrong_allow(tmp_path: Path) -> None:
    """extauthz pinned to one core shared with busy processes: answers may come late
    (Envoy then fails closed with 503), but an invalid token is never allowed."""
    hogs = [
        subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        for _ in range(3)
    ]
    server = None
    try:
        with JwksServer(jwks(SIGNER)) as keyserver:
            cfg = {
                "server": {
                    "listen": "127.0.0.1:0",
                    "admin_listen": "127.0.0.1:0",
                    "token_cache_size": 0,
                },
                "providers": {
                    "p": {"issuer": ISS, "audiences": ["api"], "jwks_uri": keyserver.url}
                },
            }
            server = ServeProcess(tmp_path, "starved", cfg, prefix=("taskset", "-c", "0"))
            with (
                EchoUpstream() as up,
                EnvoyProcess(
                    extauthz_port=server.grpc_port, upstream_port=up.port, timeout="0.2s"
                ) as envoy,
            ):
                bad = Signer("RS256", kid=SIGNER.kid).sign(claims(ISS, "api"))
                good = SIGNER.sign(claims(ISS, "api"))
                statuses: dict[str, set[int]] = {"bad": set(), "good": set()}
                for i in range(200):
                    name, token = ("bad", bad) if i % 2 else ("good", good)
                    r = envoy.request("GET", "/x", headers={"authorization": f"Bearer {token}"})
                    statuses[name].add(r.status)
                assert statuses["bad"] <= {401, 503}, statuses
                assert statuses["good"] <= {200, 503}, statuses
                assert 200 in statuses["good"], "starved, but not dead"
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        if server is not None:
            server.stop()
