"""Key rotation under continuous traffic through a real Envoy: zero false denies.

The dev issuer rotates its signing key every few seconds (publishing the next key one
rotation ahead and keeping retired keys until their tokens expire); several clients
send fresh and older-but-valid tokens the whole time. Then the same with a JWKS outage
in the middle, shorter than ``max_stale``. ``EXTAUTHZ_SOAK_SECONDS`` scales the runs.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extauthz.dev.issuer import DevIssuer
from tests.support.envoy import EnvoyProcess
from tests.support.http import KeepAlive
from tests.support.jwks_server import JwksServer
from tests.support.serve import ServeProcess
from tests.support.signing import Signer, claims
from tests.support.upstream import EchoUpstream

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SOAK = float(os.environ.get("EXTAUTHZ_SOAK_SECONDS", "60"))
AUD = "soak-api"


@dataclass
class Tally:
    total: int = 0
    false_denies: list[tuple[int, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(
    port: int, mint: Callable[[], str], until: float, tally: Tally, reuse_for: float
) -> None:
    pool: list[tuple[float, str]] = []  # (minted at, token): reused while still valid
    client = KeepAlive(port)
    rng = random.Random()
    while time.monotonic() < until:
        now = time.time()
        pool = [(t, tok) for t, tok in pool if now - t < reuse_for]
        if not pool or rng.random() < 0.5:
            token = mint()
            pool.append((now, token))
            age = 0.0
        else:
            minted, token = rng.choice(pool)
            age = now - minted
        status, body = client.get("/soak", {"authorization": f"Bearer {token}"})
        with tally.lock:
            tally.total += 1
            if status != 200:
                tally.false_denies.append((status, body.decode("utf-8", "replace")[:200], age))
    client.close()


def traffic(
    port: int, mint: Callable[[], str], seconds: float, ttl: float, clients: int = 4
) -> Tally:
    """Half fresh tokens, half tokens minted up to ttl/2 ago (still valid)."""
    tally = Tally()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, mint, until, tally, ttl / 2))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build issuer + JWKS server + extauthz + Envoy; yields a factory.

    extauthz runs in its own process, as in production: in this process it would share
    the interpreter lock with the client threads below, and on a busy machine its
    answers would wait behind them past Envoy's timeout (a 503 that says nothing about
    extauthz). The JWKS server stays here so the test can break it on purpose.
    """
    stack: list[Any] = []

    def make(rotate_every: float, token_ttl: float, **provider: Any) -> tuple[Any, ...]:
        dev = DevIssuer("https://dev-issuer.example", alg="EdDSA", rotate_every=rotate_every,
                        token_ttl=token_ttl)  # fmt: skip
        keys = JwksServer(dev.jwks).__enter__()
        stack.append(keys)
        cfg = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "providers": {
                "dev": {
                    "issuer": dev.issuer,
                    "audiences": [AUD],
                    "jwks_uri": keys.url,
                    "refresh_interval": "2s",
                    "min_refresh_interval": "1s",
                    "clock_skew": "0s",
                    **provider,
                }
            },
        }
        server = ServeProcess(tmp_path, "rotation", cfg)
        stack.append(server)
        server.wait_ready()
        upstream = EchoUpstream().__enter__()
        stack.append(upstream)
        envoy = EnvoyProcess(extauthz_port=server.grpc_port, upstream_port=upstream.port,
                             timeout="1s").__enter__()  # fmt: skip
        stack.append(envoy)
        return dev, keys, server, envoy

    yield make
    for part in reversed(stack):
        if isinstance(part, ServeProcess):
            part.stop()
        else:
            part.__exit__(None, None, None)


def test_rotation_under_traffic_has_zero_false_denies(rig: Callable[..., Any]) -> None:
    dev, _, _, envoy = rig(rotate_every=3.0, token_ttl=8.0)
    tally = traffic(envoy.port, lambda: dev.mint(aud=AUD), SOAK, ttl=8.0)
    assert dev.rotations >= SOAK / 3 - 2, "the issuer did not rotate as planned"
    assert tally.total > 100
    assert tally.false_denies == [], f"{len(tally.false_denies)}/{tally.total} false denies"


def test_jwks_outage_within_max_stale_has_zero_false_denies(rig: Callable[..., Any]) -> None:
    period = SOAK / 4
    dev, keys, server, envoy = rig(rotate_every=period, token_ttl=SOAK / 3, max_stale="10m")
    outages: list[float] = []

    def outage() -> None:
        # Start right after extauthz fetched a JWKS published after a rotation (so it
        # holds the pre-published next key), and stay down for less than one rotation
        # period: every key that signs during the outage was published before it.
        deadline = time.monotonic() + SOAK
        while dev.rotations < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the scenario's own clock, not synchronising a test
        fetched = keys.fetches
        while keys.fetches == fetched and time.monotonic() < deadline:
            time.sleep(0.05)
        keys.fail_with = 503
        started = time.monotonic()
        while time.monotonic() - started < 0.8 * period:
            time.sleep(0.05)
        keys.fail_with = None
        outages.append(time.monotonic() - started)

    chaos = threading.Thread(target=outage)
    chaos.start()
    tally = traffic(envoy.port, lambda: dev.mint(aud=AUD), SOAK, ttl=SOAK / 3)
    chaos.join()
    assert outages and outages[0] >= 0.8 * period
    assert server.metric('extauthz_jwks_fetch_total{provider="dev",result="error"') >= 1
    assert tally.total > 100
    assert tally.false_denies == [], f"{len(tally.false_denies)}/{tally.total} false denies"


def test_random_kid_burst_costs_at_most_one_fetch(rig: Callable[..., Any]) -> None:
    dev, keys, server, envoy = rig(rotate_every=0, token_ttl=60.0, min_refresh_interval="2s",
                                   refresh_interval="1h")  # fmt: skip
    junk = Signer("EdDSA")
    results: list[tuple[bool, int]] = []
    lock = threading.Lock()
    before = keys.fetches
    started = time.monotonic()

    def burst(n: int) -> None:
        client = KeepAlive(envoy.port)
        for i in range(n):
            valid = i % 10 == 0
            token = (
                dev.mint(aud=AUD)
                if valid
                else junk.sign(claims(dev.issuer, AUD), kid=uuid.uuid4().hex)
            )
            status, _ = client.get("/x", {"authorization": f"Bearer {token}"})
            with lock:
                results.append((valid, status))
        client.close()

    threads = [threading.Thread(target=burst, args=(140,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    junk_statuses = {s for v, s in results if not v}
    assert sum(not v for v, _ in results) >= 1000
    assert junk_statuses == {401}
    assert {s for v, s in results if v} == {200}, "valid traffic was affected"
    allowed = 1 + int(elapsed / 2)  # one per min_refresh_interval
    assert keys.fetches - before <= allowed
    assert server.metric('extauthz_unknown_kid_total{provider="dev"}') >= 1000
