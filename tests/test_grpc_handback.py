"""A gRPC Check that must wait on the event loop, while the loop is stuck: the pool
thread gives up after the request's budget plus HANDBACK_SLACK and answers a 503 deny,
instead of holding its thread (and Envoy's request) for as long as the loop is stuck."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from extauthz.dev.inprocess import InProcess
from extauthz.frontdoor import grpc as grpc_door
from tests.support.signing import Signer

ISSUER = "https://issuer.handback.test"
DEADLINE = 30.0
UNAVAILABLE = 14


class Context:
    """A caller whose deadline is ``remaining`` seconds away."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float:
        return self.remaining


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on a thread of its own, as in ``extauthz serve``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


def test_a_check_gives_up_on_a_stuck_loop_and_answers_unavailable(
    loop: asyncio.AbstractEventLoop,
) -> None:
    signer = Signer("ES256")
    provider = {"issuer": ISSUER, "audiences": ["api"], "jwks": {"keys": [signer.jwk()]}}
    settings = {"providers": {"main": provider}}
    auth = asyncio.run_coroutine_threadsafe(InProcess.start(settings), loop).result(DEADLINE)
    servicer = grpc_door.AuthorizationServicer(auth.authorizer, loop)
    now = int(time.time())
    # A kid the key set lacks: the decision must wait for the refetch, on the loop.
    claims = {"iss": ISSUER, "aud": "api", "sub": "u", "iat": now, "exp": now + 300}
    token = signer.sign(claims, kid="rotated")
    request = grpc_door.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = "GET", "api.test", "/"
    http.headers["authorization"] = f"Bearer {token}"

    release = threading.Event()
    loop.call_soon_threadsafe(release.wait, DEADLINE)  # the loop is stuck until released
    answers: list[Any] = []
    checking = threading.Thread(
        target=lambda: answers.append(servicer.Check(request, Context(remaining=0.2)))
    )
    started = time.monotonic()
    try:
        checking.start()
        checking.join(DEADLINE / 2)
        waited = time.monotonic() - started
        assert answers, "the Check waited for as long as the loop was stuck"
    finally:
        release.set()
        checking.join(DEADLINE)
        asyncio.run_coroutine_threadsafe(auth.close(), loop).result(DEADLINE)
    response = grpc_door.CheckResponse.FromString(answers[0])
    assert response.status.code == UNAVAILABLE
    assert response.denied_response.status.code == 503
    # Half the caller's 0.2 s deadline, plus the slack: not the loop's stall.
    assert waited >= 0.1 + grpc_door.HANDBACK_SLACK
