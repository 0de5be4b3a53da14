"""The adversarial introspection corpus (introspection.yaml): hostile answers from an
RFC 7662 endpoint, and hostile opaque tokens from a client.

Each answer case is one token the endpoint (a real HTTP server on 127.0.0.1:0 that
answers as the case says) knows, asked about three times: in-process through the
running server's ``Authorizer.check`` (the decision's reason: an exception would be
``internal_error``), then through the gRPC door and the HTTP door of the same server
(real sockets). Every one is the case's status, never an allow it should not be; a
503 is never cached (each request asks again); extauthz reads no more than 64 KiB + 1
of an answer, however much the endpoint sends.

Each token case is sent the same ways to a server whose endpoint
(tests/support/introspection_server.py) must never hear of it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import yaml

from extauthz.core.decision import Decision
from extauthz.core.request import AuthRequest
from extauthz.introspection import MAX_ANSWER_BYTES
from tests.adversarial import build
from tests.support.answers import wire
from tests.support.introspection_server import IntrospectionServer
from tests.support.server import ServerThread, wait_for
from tests.test_http_door import request as door_request
from tests.test_two_doors import via_grpc

HERE = Path(__file__).parent
CORPUS: dict[str, list[dict[str, Any]]] = yaml.safe_load((HERE / "introspection.yaml").read_text())
ANSWERS = CORPUS["answers"]
TOKENS = CORPUS["tokens"]
DOORS = ("authorizer", "grpc", "http")
PIECE = 64 * 1024
#: The answer every case starts from (``json`` members go over it).
DEFAULT_ANSWER: dict[str, Any] = {
    "active": True, "iss": "@iss", "aud": build.AUD, "sub": "user-1", "exp": "@now+300",
}  # fmt: skip
STREAM_PREFIX = b'{"active":true,"aud":"api","sub":"user-1","pad":"'
CHALLENGE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def test_corpus_is_well_formed() -> None:
    ids = [c["id"] for c in ANSWERS + TOKENS]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    assert len(ANSWERS) >= 40 and len(TOKENS) >= 12
    for case in ANSWERS:
        assert set(case) <= {"id", "description", "answer", "expect"}, case["id"]
        assert case["description"] and case["expect"]["status"] in (200, 401, 503), case["id"]
    for case in TOKENS:
        allowed = {"id", "description", "token", "request", "expect", "doors", "sent"}
        assert set(case) <= allowed and case["description"], case["id"]
        assert set(case.get("doors", DOORS)) <= set(DOORS), case["id"]


# -- a hostile endpoint ---------------------------------------------------------------------
@dataclass
class Plan:
    """How the endpoint answers one token."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: int | None = None  # a body of this many bytes, in 64 KiB pieces
    declared: bool = False  # the stream under a content-length (else chunked)
    gzip: bool = False
    hang: bool = False
    mid_body: bool = False
    close: bool = False
    # Sent in two pieces (chunked): the second once ``pause`` is set (extauthz has read
    # the first) or after 5 s.
    split: bool = False
    pause: threading.Event | None = None


@functools.cache
def _bomb_pieces(size: int) -> tuple[bytes, ...]:
    """``size`` bytes of an answer that never ends, gzip-compressed (about 1000:1)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    pieces, left = [squeeze.compress(STREAM_PREFIX)], size - len(STREAM_PREFIX)
    filler = b"a" * (1 << 20)
    while left > 0:
        pieces.append(squeeze.compress(filler[: min(left, len(filler))]))
        left -= len(filler)
    pieces.append(squeeze.flush())
    return tuple(p for p in pieces if p)


class HostileEndpoint:
    """``POST /introspect`` on 127.0.0.1:0, answering each token as its :class:`Plan`
    says (an unknown token: ``{"active": false}``). Records every token asked about
    (``asked``), the body bytes each stream got out (``sent``) and whether the client
    hung up on it (``cut``), and any request that followed a redirect (``followed``)."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.asked: list[str] = []
        self.sent: dict[str, int] = {}
        self.cut: set[str] = set()
        self.followed = 0
        self.gate: threading.Event | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if "followed" in self.path:
                    owner._follow(self)
                    return
                token = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])[0]
                with owner._lock:
                    owner.asked.append(token)
                    gate = owner.gate
                if gate is not None:
                    gate.wait(30)
                plan = owner.plans.get(token) or Plan(body=b'{"active":false}')
                try:
                    owner._answer(self, token, plan)
                except OSError:
                    self.close_connection = True  # the client gave up

            def do_GET(self) -> None:  # a 302 followed the way browsers do: as a GET
                owner._follow(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/introspect"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def calls_for(self, token: str) -> int:
        with self._lock:
            return self.asked.count(token)

    def _follow(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.followed += 1
        body = json.dumps({"active": True, "iss": build.ISS, "aud": build.AUD,
                           "sub": "followed"}).encode()  # fmt: skip
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _answer(self, handler: BaseHTTPRequestHandler, token: str, plan: Plan) -> None:
        if plan.hang and not plan.mid_body:
            self._stop.wait(30)
            handler.close_connection = True
            return
        if plan.stream is not None:
            self._stream(handler, token, plan)
            return
        if plan.split:
            self._split(handler, plan)
            return
        body = gzip.compress(plan.body) if plan.gzip else plan.body
        handler.send_response(plan.status)
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        if plan.gzip:
            headers["content-encoding"] = "gzip"
        headers.update(plan.headers)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if plan.mid_body:
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            self._stop.wait(30)
            handler.close_connection = True
            return
        if plan.status not in (204, 304):
            handler.wfile.write(body)
        if plan.close:
            handler.close_connection = True

    def _stream(self, handler: BaseHTTPRequestHandler, token: str, plan: Plan) -> None:
        assert plan.stream is not None
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        if plan.declared:
            handler.send_header("content-length", str(plan.stream))
        else:
            handler.send_header("transfer-encoding", "chunked")
        if plan.gzip:
            handler.send_header("content-encoding", "gzip")
        handler.end_headers()
        handler.close_connection = True
        if plan.gzip:
            pieces: Iterator[bytes] = iter(_bomb_pieces(plan.stream))
        else:
            pieces = _plain_pieces(plan.stream)
        sent = 0
        try:
            for piece in pieces:
                if plan.declared:
                    handler.wfile.write(piece)
                else:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                with self._lock:
                    self.sent[token] = sent
            if not plan.declared:
                handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            with self._lock:
                self.cut.add(token)

    def _split(self, handler: BaseHTTPRequestHandler, plan: Plan) -> None:
        handler.send_response(plan.status)
        handler.send_header("content-type", "application/json")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        half = len(plan.body) // 2
        for i, piece in enumerate((plan.body[:half], plan.body[half:])):
            if i and plan.pause is not None:
                plan.pause.wait(5)
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")

    def __enter__(self) -> HostileEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()


def _plain_pieces(size: int) -> Iterator[bytes]:
    yield STREAM_PREFIX
    left, filler = size - len(STREAM_PREFIX), b"a" * PIECE
    while left > 0:
        yield filler[: min(left, PIECE)]
        left -= PIECE


# -- the cases as plans and requests ----------------------------------------------------------
def _expand(text: str, endpoint: HostileEndpoint, now: int) -> str:
    if text.startswith("@pad:"):  # the default answer padded to exactly N bytes
        size = int(text.removeprefix("@pad:"))
        base = json.dumps(build._subst(DEFAULT_ANSWER, now), separators=(",", ":"))
        filler = size - len(base) - len(',"pad":""')
        padded = base[:-1] + ',"pad":"' + "x" * filler + '"}'
        assert len(padded.encode()) == size
        return padded
    return str(build._subst(text.replace("@self", endpoint.url), now))


def plan_of(case: dict[str, Any], endpoint: HostileEndpoint, now: int) -> Plan:
    spec = case["answer"]
    plan = Plan(
        status=spec.get("status", 200),
        headers={k: _expand(v, endpoint, now) for k, v in (spec.get("headers") or {}).items()},
        stream=spec.get("stream"),
        declared=spec.get("declared", False),
        gzip=spec.get("gzip", False),
        hang=spec.get("hang", False),
        mid_body=spec.get("mid_body", False),
        close=spec.get("close", False),
        split=spec.get("split", False),
    )
    if "b64" in spec:
        plan.body = base64.b64decode(spec["b64"])
    elif "text" in spec:
        plan.body = _expand(spec["text"], endpoint, now).encode("utf-8", "surrogatepass")
    else:
        members = build._merge(DEFAULT_ANSWER, spec.get("json"))
        plan.body = json.dumps(build._subst(members, now), separators=(",", ":")).encode()
    return plan


def config(endpoint: str, secret: Path) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "realm": build.REALM,
            "http": {"listen": "127.0.0.1:0"},
        },
        "providers": {
            "opaque": {
                "issuer": build.ISS,
                "audiences": [build.AUD],
                "clock_skew": "60s",
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "access_token"},
                    {"query": "access_token"},
                ],
                "claims_to_headers": {"x-user-id": "sub"},
                "payload_header": "x-claims",
                "introspection": {
                    "endpoint": endpoint,
                    "client_id": "extauthz",
                    "client_secret_file": str(secret),
                    "cache_ttl": "60s",
                    "negative_cache_ttl": "5s",
                    "timeout": "2s",
                },
            }
        },
    }


@dataclass
class Outcome:
    """What one door answered: the status, the identity header, the challenge's
    attributes; ``reason`` only in-process (the front doors do not say it)."""

    status: int
    user: str | None = None
    challenge: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def ask(server: ServerThread, door: str, method: str, path: str,
        headers: dict[str, str]) -> Outcome:  # fmt: skip
    headers = dict(headers)
    host = headers.pop("host", build.HOST)
    if door == "authorizer":
        req = AuthRequest(method=method, host=host, path=path, headers=headers)
        d: Decision = server.call(server.server.authorizer.check(req))  # type: ignore[union-attr]
        user = dict(d.set_headers).get("x-user-id")
        attrs = {"error": wire(d).oauth_error or "", "error_description": d.description}
        return Outcome(wire(d).http_status, user, attrs if not d.allowed else {}, d.reason)
    if door == "grpc":
        got = via_grpc(server.grpc_port, method, host, path, headers)
        if got["status"] == 200:
            return Outcome(200, got["set"].get("x-user-id"))
        return Outcome(got["status"], None, _attributes(got["challenge"] or ""))
    answer = door_request(server.server.http_port, path, method=method,
                          headers={**headers, "host": host})  # fmt: skip
    if answer.status == 200:
        return Outcome(200, answer.headers.get("x-user-id"))
    return Outcome(answer.status, None, _attributes(answer.headers.get("www-authenticate", "")))


def _attributes(challenge: str) -> dict[str, str]:
    return dict(CHALLENGE.findall(challenge))


def check(outcome: Outcome, expect: dict[str, Any], where: tuple[Any, ...]) -> None:
    assert outcome.status == expect["status"], (where, outcome)
    if outcome.status == 200:
        assert outcome.user == "user-1", (where, outcome)
        return
    if outcome.reason is not None:  # in-process: never an exception (internal_error)
        assert outcome.reason != "internal_error", (where, outcome)
        if "reason" in expect:
            assert outcome.reason == expect["reason"], (where, outcome)
    if "error" in expect:
        assert outcome.challenge.get("error") == expect["error"], (where, outcome)
    if "description" in expect:
        assert outcome.challenge.get("error_description") == expect["description"], (where, outcome)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HostileEndpoint, ServerThread]]:
    secret = tmp_path_factory.mktemp("hostile") / "secret"
    secret.write_text("adversarial-secret\n")
    with HostileEndpoint() as endpoint, ServerThread(config(endpoint.url, secret)) as server:
        server.wait_ready(timeout=30)
        yield endpoint, server


@pytest.fixture(scope="module")
def plain(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[IntrospectionServer, ServerThread]]:
    secret = tmp_path_factory.mktemp("plain") / "secret"
    secret.write_text("adversarial-secret\n")
    with IntrospectionServer() as endpoint, ServerThread(config(endpoint.url, secret)) as server:
        server.wait_ready(timeout=30)
        yield endpoint, server


@dataclass
class Reads:
    """The size of every read extauthz makes of an HTTP body; ``done`` is set after each."""

    sizes: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    """Reads of HTTP bodies (aiohttp's StreamReader.read), counted while a test runs."""
    spy = Reads()
    original = aiohttp.StreamReader.read

    async def read(self: aiohttp.StreamReader, n: int = -1) -> bytes:
        data = await original(self, n)
        spy.sizes.append(len(data))
        spy.done.set()
        return data

    monkeypatch.setattr(aiohttp.StreamReader, "read", read)
    return spy


# -- answers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ANSWERS, ids=[c["id"] for c in ANSWERS])
def test_answer(
    hostile: tuple[HostileEndpoint, ServerThread], reads: Reads, case: dict[str, Any]
) -> None:
    endpoint, server = hostile
    expect = case["expect"]
    token = f"{case['id']}.{uuid.uuid4().hex}"  # b64token, not a JWS: opaque
    endpoint.plans[token] = plan = plan_of(case, endpoint, int(time.time()))
    plan.pause = reads.done
    headers = {"authorization": f"Bearer {token}", "x-user-id": "smuggled"}
    asked = 0
    for door in DOORS:
        reads.done.clear()  # a split answer's second piece waits for this request's read
        outcome = ask(server, door, "GET", "/api/orders", headers)
        asked += 1
        check(outcome, expect, (case["id"], case["description"], door))
    cached = expect["status"] != 503 and not expect.get("calls")
    if cached:
        assert endpoint.calls_for(token) == 1, "a usable answer is asked for once, then cached"
    else:  # asked anew (a call still in flight is joined, not repeated)
        wait_for(lambda: endpoint.calls_for(token) >= 2, 10, "the endpoint to be asked again")
        assert endpoint.calls_for(token) <= asked
    assert endpoint.followed == 0, "a redirect was followed"
    # However much was sent, extauthz read at most 64 KiB + 1 of each answer.
    assert max(reads.sizes, default=0) <= MAX_ANSWER_BYTES + 1, reads.sizes
    size = case["answer"].get("stream")
    if size is not None:
        if not case["answer"].get("declared"):
            assert reads.sizes, "the answer was read through another method than the one counted"
        if not case["answer"].get("gzip"):  # (a bomb is small: it may all be sent)
            # ... and hung up on the stream rather than let it run to its end.
            wait_for(lambda: token in endpoint.cut, 30, "extauthz to hang up on the stream")
            assert endpoint.sent.get(token, 0) < size // 4, endpoint.sent


def test_concurrent_requests_for_one_token_make_one_call(
    hostile: tuple[HostileEndpoint, ServerThread],
) -> None:
    """Twenty requests for one unknown token while the endpoint holds its answer: one
    call, and every request gets its answer."""
    endpoint, server = hostile
    token = f"herd.{uuid.uuid4().hex}"
    endpoint.plans[token] = plan_of({"answer": {"json": {}}}, endpoint, int(time.time()))
    assert server.server.authorizer is not None
    check_one = server.server.authorizer.check
    req = AuthRequest(host=build.HOST, path="/api/orders",
                      headers={"authorization": f"Bearer {token}"})  # fmt: skip
    gate = threading.Event()
    endpoint.gate = gate
    try:

        async def all_at_once() -> list[Decision]:
            return list(await asyncio.gather(*(check_one(req) for _ in range(20))))

        pending = asyncio.run_coroutine_threadsafe(all_at_once(), server.loop)
        wait_for(lambda: endpoint.calls_for(token) == 1, 10, "the one call to arrive")
    finally:
        endpoint.gate = None
        gate.set()
    decisions = pending.result(timeout=30)
    assert [d.reason for d in decisions] == ["ok"] * 20
    assert endpoint.calls_for(token) == 1


# -- hostile tokens ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", TOKENS, ids=[c["id"] for c in TOKENS])
def test_hostile_token_never_reaches_the_endpoint(
    plain: tuple[IntrospectionServer, ServerThread], case: dict[str, Any]
) -> None:
    endpoint, server = plain
    expect = case["expect"]
    method, path, headers = build.request(case, int(time.time()))
    sent = build.token(case["token"], 0)
    before = endpoint.calls
    for door in case.get("doors", DOORS):
        outcome = ask(server, door, method, path, headers)
        check(outcome, expect, (case["id"], case["description"], door))
    if case.get("sent"):  # the control: sent once, exactly as it is
        assert endpoint.calls == before + 1
        (form,) = [parse_qs(r["body"].decode()) for r in endpoint.requests[before:]]
        assert form == {"token": [sent], "token_type_hint": ["access_token"]}
    else:
        assert endpoint.calls == before, "a hostile token was sent to the endpoint"
        assert not any(sent.encode() in r["body"] for r in endpoint.requests)
