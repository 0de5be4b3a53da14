"""The HTTP front door over real sockets: original-request modes, answers, keep-alive
and pipelining, RFC 9728 metadata, and hostile bytes on the port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from extauthz import metrics
from extauthz.frontdoor import http as http_door
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks

ISS = "https://issuer.example"
SIGNER = Signer("ES256")
METADATA = "https://api.example.com/.well-known/oauth-protected-resource"


def config(**http: Any) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "realm": "shop",
            "http": {"listen": "127.0.0.1:0", **http},
        },
        "providers": {
            "main": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks": jwks(SIGNER),
                "claims_to_headers": {"x-user-id": "sub", "x-tenant": "tenant"},
                "resource_metadata": METADATA,
                "token_sources": [
                    {"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "session"},
                ],
            }
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {
                "name": "internal",
                "match": {"path_prefix": "/internal", "hosts": ["in.example"]},
                "scopes": ["internal"],
            },
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }


def token(**extra: Any) -> str:
    # A day: some are made when the tests are collected and used minutes later.
    return SIGNER.sign(claims(ISS, "api", **{"ttl": 86400, **extra}))


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, buf: bytearray, head_only: bool = False) -> Answer:
    """One HTTP/1.1 response from ``sock`` (``buf`` keeps what belongs to the next)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {bytes(buf)!r}")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    buf[:] = rest[length:]
    return Answer(status, headers, rest[:length])


def request(port: int, target: str = "/x", *, method: str = "GET",
            headers: dict[str, str] | None = None) -> Answer:  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        given = {k.lower(): v for k, v in (headers or {}).items()}
        lines = [f"{method} {target} HTTP/1.1", f"host: {given.pop('host', 'api.example')}"]
        lines += [f"{k}: {v}" for k, v in given.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_answer(sock, bytearray(), head_only=method == "HEAD")


@pytest.fixture(scope="module")
def door() -> Iterator[ServerThread]:
    with ServerThread(config()) as server:
        server.wait_ready()
        yield server


def port_of(server: ServerThread) -> int:
    return server.server.http_port


# -- answers -----------------------------------------------------------------------------
def test_allow_is_exactly_200_with_identity_and_removals(door: ServerThread) -> None:
    a = request(port_of(door), headers={"authorization": f"Bearer {token(sub='alice')}"})
    assert a.status == 200 and a.body == b""
    assert a.headers["x-user-id"] == "alice"
    assert a.headers["x-envoy-auth-headers-to-remove"] == "x-tenant"


def test_anonymous_rule_removes_every_identity_header(door: ServerThread) -> None:
    a = request(port_of(door), "/public/info", headers={"x-user-id": "admin"})
    assert a.status == 200 and "x-user-id" not in a.headers
    assert set(a.headers["x-envoy-auth-headers-to-remove"].split(",")) == {"x-user-id", "x-tenant"}


@pytest.mark.parametrize(
    ("target", "headers", "status", "challenge", "error"),
    [
        ("/x", {}, 401, f'Bearer realm="shop", resource_metadata="{METADATA}"', "missing_token"),
        ("/x", {"authorization": "Bearer junk"}, 401,
         'Bearer realm="shop", error="invalid_token", error_description="token malformed", '
         f'resource_metadata="{METADATA}"', "invalid_token"),
        ("/admin", {"authorization": f"Bearer {token(scope='read')}"}, 403,
         'Bearer realm="shop", error="insufficient_scope", error_description="insufficient '
         f'scope", scope="admin", resource_metadata="{METADATA}"', "insufficient_scope"),
        ("/a;b", {}, 400, 'Bearer realm="shop", error="invalid_request", '
         'error_description="ambiguous request path"', "invalid_request"),
    ],
)  # fmt: skip
def test_denials_carry_the_challenge_and_json_body(
    door: ServerThread, target: str, headers: dict[str, str], status: int, challenge: str,
    error: str,
) -> None:  # fmt: skip
    a = request(port_of(door), target, headers=headers)
    assert a.status == status
    assert a.headers["www-authenticate"] == challenge
    assert a.headers["content-type"] == "application/json"
    assert a.json()["error"] == error


def test_head_requests_get_a_head_without_a_body(door: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", port_of(door)), timeout=5) as sock:
        sock.sendall(b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\nGET /public HTTP/1.1\r\nhost: a\r\n\r\n")
        buf = bytearray()
        first = read_answer(sock, buf, head_only=True)
        second = read_answer(sock, buf)
    assert first.status == 401 and int(first.headers["content-length"]) > 0
    assert second.status == 200, "the HEAD answer's body was not on the wire"


# -- connections -------------------------------------------------------------------------
def test_keep_alive_and_pipelined_requests_are_answered_in_order(door: ServerThread) -> None:
    good = f"Bearer {token(sub='p')}"
    batch = b"".join(
        f"GET {path} HTTP/1.1\r\nhost: a\r\nauthorization: {auth}\r\n\r\n".encode()
        for path, auth in [("/x", good), ("/admin", good), ("/x", "Bearer junk"), ("/x", good)]
    )
    with socket.create_connection(("127.0.0.1", port_of(door)), timeout=5) as sock:
        sock.sendall(batch)
        buf = bytearray()
        statuses = [read_answer(sock, buf).status for _ in range(4)]
        sock.sendall(f"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: {good}\r\n\r\n".encode())
        statuses.append(read_answer(sock, buf).status)
    assert statuses == [200, 403, 401, 200, 200]


def test_metrics_name_the_front_door(door: ServerThread) -> None:
    def count() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "extauthz_check_total",
            {"decision": "allow", "reason": "anonymous", "provider": "", "rule": "public",
             "front_door": "http"},
        )  # fmt: skip
        return value or 0.0

    before = count()
    assert request(port_of(door), "/public").status == 200
    assert count() == before + 1


def test_a_client_that_never_reads_its_answers_stops_being_read(door: ServerThread) -> None:
    """Pipelined requests from a client that reads none of the answers: once the
    answers back up, the door reads no more requests, so its memory stays bounded
    (without this, 3 MB of answers piled up per 8 MB sent, and growing)."""
    batch = b"GET /public/x HTTP/1.1\r\nhost: a\r\n\r\n" * 1000
    with socket.create_connection(("127.0.0.1", port_of(door)), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sent, deadline, blocked_since = 0, time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                sent += sock.send(batch)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 2:
                    break  # nothing more is read from us: the door stopped reading
                time.sleep(0.01)
        assert time.monotonic() < deadline, f"the door kept reading ({sent / 1e6:.0f} MB)"
        buffered = [
            c._transport.get_write_buffer_size()
            for c in door.server._http_door.door.connections  # type: ignore[union-attr]
            if c._transport is not None
        ]
    assert buffered and max(buffered) < 1_000_000, buffered


class _Recorder(asyncio.Transport):
    """What a connection writes, and whether it reads: the slices of a flood are
    visible only at this level (on a socket they look the same once done)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.answers += bytes(data).count(b"HTTP/1.1 ")

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        pass


async def test_a_pipelined_flood_is_answered_a_slice_per_turn_of_the_loop() -> None:
    """Thousands of requests in one read are not all answered before any other
    connection gets a turn (that stalled the event loop for most of a second)."""
    from extauthz import config as cfgmod
    from extauthz.authorizer import Authorizer
    from extauthz.core.policy import Policy

    cfg = cfgmod.from_mapping(config())
    assert cfg.server.http is not None
    door_ = http_door.Door(cfg.server.http, Authorizer(Policy(cfg), {}))
    connection = door_.protocol()
    transport = _Recorder()
    connection.connection_made(transport)
    one = b"GET /public/x HTTP/1.1\r\nhost: a\r\n\r\n"
    count = 20 * http_door.FEED_BYTES // len(one)
    connection.data_received(one * count)
    first = transport.answers
    assert 0 < first <= http_door.FEED_BYTES // len(one) + 1
    assert not transport.reading  # the rest waits; nothing new is read meanwhile
    for _ in range(100):
        if transport.answers == count:
            break
        await asyncio.sleep(0)  # one turn of the loop: one more slice
    assert transport.answers == count and transport.reading
    connection.connection_lost(None)


# -- original-request modes --------------------------------------------------------------
def test_request_mode_strips_the_path_prefix() -> None:
    with ServerThread(config(path_prefix="/check")) as server:
        server.wait_ready()
        port = port_of(server)
        assert request(port, "/check/public/x").status == 200
        assert request(port, "/check/admin", headers={
            "authorization": f"Bearer {token(scope='read')}"}).status == 403  # fmt: skip
        outside = request(port, "/checkpoint/public")
        assert outside.status == 400 and "path_prefix" in outside.json()["error_description"]


FORWARDED = {
    "x-forwarded-method": "GET",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "in.example",
    "x-forwarded-uri": "/internal/report?x=1",
}


def test_forwarded_mode_reads_the_original_request_from_a_trusted_proxy() -> None:
    with ServerThread(config(original_request="forwarded")) as server:
        server.wait_ready()
        port = port_of(server)
        auth = {"authorization": f"Bearer {token(scope='read')}"}
        # Any auth path: the rule comes from X-Forwarded-Uri and -Host (host-bound rule).
        assert request(port, "/auth", headers={**FORWARDED, **auth}).status == 403
        other_host = {**FORWARDED, "x-forwarded-host": "api.example"}
        assert request(port, "/auth", headers={**other_host, **auth}).status == 200
        missing = {k: v for k, v in FORWARDED.items() if k != "x-forwarded-uri"}
        a = request(port, "/auth", headers={**missing, **auth})
        assert a.status == 400 and "x-forwarded-uri" in a.json()["error_description"]


def test_forwarded_headers_from_an_untrusted_peer_are_a_400() -> None:
    with ServerThread(config(original_request="forwarded", trusted_proxies=["10.0.0.0/8"])) as s:
        s.wait_ready()
        a = request(port_of(s), "/auth", headers=FORWARDED)
        assert a.status == 400
        assert a.json()["error_description"].startswith("forwarded request attributes")


def test_a_repeated_forwarded_header_is_a_400() -> None:
    with ServerThread(config(original_request="forwarded")) as server:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", port_of(server)), timeout=5) as sock:
            head = "GET /auth HTTP/1.1\r\nhost: a\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in FORWARDED.items()
            )
            sock.sendall((head + "x-forwarded-uri: /public\r\n\r\n").encode())
            a = read_answer(sock, bytearray())
        assert a.status == 400


def test_original_mode_reads_nginx_headers() -> None:
    with ServerThread(config(original_request="original")) as server:
        server.wait_ready()
        port = port_of(server)
        base = {"x-original-method": "GET", "x-original-uri": "/public/a"}
        assert request(port, "/auth", headers=base).status == 200
        assert request(port, "/auth", headers={**base, "x-original-uri": "/x"}).status == 401


# -- RFC 9728 ----------------------------------------------------------------------------
def test_the_protected_resource_metadata_document() -> None:
    resource = {
        "resource": "https://mcp.example.com",
        "authorization_servers": ["https://auth.example.com"],
        "scopes_supported": ["tools:read"],
    }
    with ServerThread(config(original_request="forwarded", protected_resource=resource)) as s:
        s.wait_ready()
        a = request(port_of(s), "/.well-known/oauth-protected-resource")
        assert a.status == 200 and a.headers["content-type"] == "application/json"
        assert a.json() == {**resource, "bearer_methods_supported": ["header"]}


# -- hostile bytes -----------------------------------------------------------------------
def _closed_after(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


@pytest.mark.parametrize(
    "payload",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",  # a TLS hello
        b"GET / HTTP/1.1\r\nhost a\r\n\r\n",  # a header without a colon
        b"GET " + b"/" * (1 << 20) + b" HTTP/1.1\r\n\r\n",  # a 1 MiB request line
        b"GET / HTTP/1.1\r\n" + b"x-h: 1\r\n" * 10_000 + b"\r\n",  # 10,000 headers
        b"\x00\xff" * 100,
    ],
    ids=["tls", "no-colon", "huge-line", "many-headers", "binary"],
)
def test_malformed_requests_get_a_400_or_a_closed_connection(
    door: ServerThread, payload: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", port_of(door)), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)  # the server may close while we still send: an answer
        got = _closed_after(sock)
    assert got == b"" or got.startswith(b"HTTP/1.1 400 "), got[:200]
    assert request(port_of(door), "/public").status == 200, "the server lives on"


def test_a_huge_announced_body_is_never_read(door: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", port_of(door)), timeout=5) as sock:
        sock.sendall(b"POST /public HTTP/1.1\r\nhost: a\r\ncontent-length: 1073741824\r\n\r\n")
        sock.sendall(b"x" * 65536)  # a little of it
        answer = read_answer(sock, bytearray())
        assert answer.status == 200 and answer.headers.get("connection") == "close"
        assert _closed_after(sock) == b""


def test_slow_clients_are_closed_and_others_unaffected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_door, "HEAD_TIMEOUT", 0.5)
    with ServerThread(config()) as server:
        server.wait_ready()
        port = port_of(server)
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nx-slow: ")  # and then nothing
        started = time.monotonic()
        done = threading.Event()
        statuses: list[int] = []

        def others() -> None:
            while not done.is_set():
                statuses.append(request(port, "/public").status)

        t = threading.Thread(target=others)
        t.start()
        try:
            assert _closed_after(slow, timeout=10) == b""
        finally:
            done.set()
            t.join(10)
            slow.close()
        assert time.monotonic() - started < 5
        assert statuses and set(statuses) == {200}


def test_draining_stops_accepting_and_closes_idle_connections() -> None:
    with ServerThread(config()) as server:
        server.wait_ready()
        port = port_of(server)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            idle.sendall(b"GET /public HTTP/1.1\r\nhost: a\r\n\r\n")
            assert read_answer(idle, bytearray()).status == 200
            listener = server.server._http_door
            assert listener is not None
            server.call(listener.stop(1.0))
            assert _closed_after(idle) == b""
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        finally:
            idle.close()
        wait_for(lambda: not listener.door.connections, 5, "connections closed")


def test_an_unknown_kid_waits_for_the_refetch_and_pipelined_answers_keep_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.jwks_server import JwksServer

    monkeypatch.setattr(http_door, "UNKNOWN_KID_WAIT", 5.0)  # a loaded machine is slow
    old, new = Signer("ES256"), Signer("EdDSA")
    with JwksServer(jwks(old)) as keys:
        cfg = config()
        main = cfg["providers"]["main"]
        del main["jwks"]
        main.update(jwks_uri=keys.url, min_refresh_interval="1s", refresh_interval="1h")
        with ServerThread(cfg) as server:
            server.wait_ready()
            keys.set(jwks(old, new))  # the issuer publishes a key extauthz has not seen
            fresh = new.sign(claims(ISS, "api", sub="rotated"))
            batch = (
                f"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {fresh}\r\n\r\n"
                "GET /public HTTP/1.1\r\nhost: a\r\n\r\n"
                "GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
                sock.sendall(batch)
                buf = bytearray()
                answers = [read_answer(sock, buf) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 401]
    assert answers[0].headers["x-user-id"] == "rotated"
