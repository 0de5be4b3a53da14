"""The HTTP front door: the same decisions over plain HTTP/1.1, for proxies that ask an
HTTP endpoint (Envoy ``http_service``, NGINX ``auth_request``, Traefik ``ForwardAuth``,
Caddy ``forward_auth``).

Why a small asyncio protocol on ``httptools`` rather than a web framework: an auth
subrequest is a head without a body, answered by a head without a body, thousands of
times a second. Measured here with wrk on one core, a do-nothing aiohttp low-level
server costs 30 µs of CPU per request and this protocol 6 µs; and owning the
connection gives the limits a hostile client must meet — a bounded head
(:data:`MAX_HEAD_BYTES`, :data:`MAX_HEADERS`), a deadline to send it
(:data:`HEAD_TIMEOUT`), bodies never read into memory (a request with one is answered,
then its connection closed) — and ordered answers for pipelined requests. Parsing
stays in ``httptools`` (llhttp, the parser Node.js uses); this module only routes
bytes.

One table (:data:`ANSWERS`) maps a deny kind to a status and an OAuth error. Allow is
exactly 200 with an empty body, the headers being set, and
``x-envoy-auth-headers-to-remove`` listing the injected headers not being set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httptools

from .. import errors, logs
from ..config import HttpSettings, ProtectedResource, split_address
from ..core.decision import Decision, refuse
from ..core.request import AuthRequest, ClientCert
from ..errors import DenyKind
from . import challenge

if TYPE_CHECKING:
    from ..authorizer import Authorizer

_log = logs.get("extauthz.http")

#: The request line and all headers of one request, in bytes (tokens are at most 8 KiB;
#: NGINX's default for a whole head is 8 KiB, Envoy's 60 KiB).
MAX_HEAD_BYTES = 32 * 1024
#: Header lines in one request.
MAX_HEADERS = 100
#: Seconds a client has to send a complete head once it started one (slow-loris clients
#: are closed), and to start the next request on a kept-alive connection.
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
#: Longest wait for an unknown-kid refetch: the HTTP door sees no deadline, and Envoy's
#: http_service timeout defaults to 200 ms. (An introspection call is waited for up to
#: its provider's `timeout`, which the operator sets below the proxy's.)
UNKNOWN_KID_WAIT = 0.1
#: Bytes parsed per turn of the event loop: a client that pipelines thousands of requests
#: in one read is answered a slice at a time, and the other connections in between.
FEED_BYTES = 16 * 1024
#: Encoded allow answers kept for the hottest tokens (FIFO).
MEMO_SIZE = 256

REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True)
class Answer:
    status: int
    oauth_error: str | None  # RFC 6750 error attribute; None: a bare challenge (§3.1)
    challenge: bool = True  # send WWW-Authenticate


#: The one table from what was decided to the HTTP answer.
ANSWERS: Mapping[DenyKind, Answer] = {
    DenyKind.MISSING_TOKEN: Answer(401, None),
    DenyKind.NO_RULE: Answer(401, None),
    DenyKind.INVALID_TOKEN: Answer(401, "invalid_token"),
    DenyKind.INVALID_DPOP_PROOF: Answer(401, "invalid_dpop_proof"),
    DenyKind.INVALID_REQUEST: Answer(400, "invalid_request"),
    DenyKind.INSUFFICIENT_SCOPE: Answer(403, "insufficient_scope"),
    DenyKind.UNAVAILABLE: Answer(503, None, challenge=False),
}
#: The answer when nothing else can be encoded: built once, at import, so it cannot fail.
_UNAVAILABLE_CLOSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\ncontent-length: 25\r\nconnection: close\r\n\r\n"
    b'{"error": "unavailable"}\n'
)
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 503: "Service Unavailable"}  # fmt: skip


def status_of(decision: Decision) -> int:
    return ANSWERS[decision.deny].status if decision.deny is not None else 200


def _head(status: int, headers: list[tuple[str, str]], body: bytes, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


@lru_cache(maxsize=1024)
def _denied(
    realm: str,
    kind: DenyKind,
    description: str,
    scope: str,
    reason: str,
    metadata: str,
    bearer: bool = True,
    dpop_algs: tuple[str, ...] = (),
    dpop: bool = False,
) -> tuple[int, list[tuple[str, str]], bytes]:
    answer = ANSWERS[kind]
    headers, text = challenge.refusal(
        realm, kind, answer.oauth_error, answer.challenge, description, scope, reason,
        metadata, bearer, dpop_algs, dpop,
    )  # fmt: skip
    return answer.status, headers, text.encode()


def encode(decision: Decision, realm: str, close: bool) -> bytes:
    """The HTTP response for a decision (head and body)."""
    if decision.deny is None and decision.allowed:
        headers = list(decision.set_headers)
        if decision.remove_headers:
            headers.append((REMOVE_HEADER, ",".join(decision.remove_headers)))
        return _head(200, headers, b"", close)
    kind = decision.deny if decision.deny is not None else DenyKind.UNAVAILABLE
    status, headers, body = _denied(realm, kind, decision.description, decision.scope,
                                    decision.reason, decision.resource_metadata,
                                    decision.bearer, decision.dpop_algs,
                                    decision.dpop)  # fmt: skip
    return _head(status, headers, body, close)


# -- from an auth request to the original one ---------------------------------------------
class _Refused(Exception):
    """The auth request itself is unusable (names no original request we may believe)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _one(headers: Mapping[str, list[str]], name: str) -> str:
    values = headers.get(name, [])
    if len(values) != 1 or not values[0]:
        raise _Refused(f"{name} must be sent exactly once")
    return values[0]


def _joined(headers: Mapping[str, list[str]]) -> dict[str, str]:
    # Repeated headers as a proxy would join them (cookies with "; "): a token source
    # then sees every value, and two different tokens are a 400, as on the gRPC door.
    return {k: ("; " if k == "cookie" else ",").join(v) for k, v in headers.items()}


class Door:
    """The HTTP front door's state: settings, the authorizer, the answer memo."""

    def __init__(self, settings: HttpSettings, authorizer: Authorizer) -> None:
        self.use(authorizer, settings)
        self.connections: set[Connection] = set()

    def use(self, authorizer: Authorizer, settings: HttpSettings) -> None:
        """Answer with ``authorizer`` and ``settings`` from now on (a reload; the listen
        address stays); remembered answers go."""
        self.settings = settings
        self._trusted = tuple(ipaddress.ip_network(n) for n in settings.trusted_proxies)
        self._prefix = settings.path_prefix.rstrip("/")
        self._metadata = _metadata_document(settings.protected_resource)
        self._metadata_paths = {PROTECTED_RESOURCE_PATH}
        if settings.protected_resource is not None:
            own = urlsplit(settings.protected_resource.resource).path.rstrip("/")
            if own:
                self._metadata_paths.add(PROTECTED_RESOURCE_PATH + own)
        self._memo: dict[tuple[Hashable, bool], bytes] = {}
        self.authorizer = authorizer

    def trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def original(self, method: str, target: str, headers: Mapping[str, list[str]],
                 peer: str) -> AuthRequest:  # fmt: skip
        """The request being authorized, per ``original_request``. Raises _Refused."""
        mode = self.settings.original_request
        joined = _joined(headers)
        trusted = self.trusted(peer)
        cert = self._client_cert(headers) if trusted else None
        proto = headers.get("x-forwarded-proto", [])
        scheme = proto[0].lower() if len(proto) == 1 else "http"
        if mode == "request":
            path = target
            if self._prefix:
                rest = target.removeprefix(self._prefix)
                if rest == target or rest[:1] not in ("", "/", "?"):
                    raise _Refused("path outside path_prefix")
                path = rest if rest.startswith("/") else "/" + rest
            return AuthRequest(method=method, host=joined.get("host", ""), path=path,
                               headers=joined, scheme=scheme, client_cert=cert)  # fmt: skip
        if not trusted:
            raise _Refused("forwarded request attributes from an untrusted peer")
        if mode == "forwarded":
            return AuthRequest(
                method=_one(headers, "x-forwarded-method"),
                host=_one(headers, "x-forwarded-host"),
                path=_one(headers, "x-forwarded-uri"),
                scheme=_one(headers, "x-forwarded-proto").lower(),
                headers=joined,
                client_cert=cert,
            )
        return AuthRequest(
            method=_one(headers, "x-original-method"),
            host=_one(headers, "host"),
            path=_one(headers, "x-original-uri"),
            scheme=scheme,
            headers=joined,
            client_cert=cert,
        )

    def _client_cert(self, headers: Mapping[str, list[str]]) -> ClientCert | None:
        """The client certificate a trusted proxy forwarded in ``client_cert_header``:
        Envoy's ``x-forwarded-client-cert`` (one element's ``Cert=`` or ``Hash=``),
        or a URL-encoded PEM (NGINX ``$ssl_client_escaped_cert``)."""
        name = self.settings.client_cert_header
        values = headers.get(name, []) if name is not None else []
        if len(values) != 1:
            return None  # absent, or ambiguous: a bound token is then refused
        return parse_client_cert_header(values[0])

    def metadata_document(self, method: str, target: str) -> bytes | None:
        """The RFC 9728 document, when this is a request for it: at the well-known path,
        or (RFC 9728 §3.1) at the well-known path followed by the resource's own path."""
        if self._metadata is None or target.partition("?")[0] not in self._metadata_paths:
            return None
        if method not in ("GET", "HEAD"):
            return None
        return self._metadata

    def answer(self, decision: Decision, close: bool) -> bytes:
        realm = self.authorizer.policy.realm
        key = decision.reuse_key
        if key is None or close:
            return encode(decision, realm, close)
        found = self._memo.get((key, close))
        if found is None:
            found = encode(decision, realm, close)
            if len(self._memo) >= MEMO_SIZE:
                del self._memo[next(iter(self._memo))]  # oldest first (dicts keep order)
            self._memo[(key, close)] = found
        return found

    def protocol(self) -> Connection:
        return Connection(self)


class Listener:
    """The HTTP front door on its socket: start, drain and stop."""

    def __init__(self, settings: HttpSettings, authorizer: Authorizer) -> None:
        self.door = Door(settings, authorizer)
        self._server: asyncio.Server | None = None

    def use(self, authorizer: Authorizer, settings: HttpSettings) -> None:
        self.door.use(authorizer, settings)

    async def start(self, *, reuse_port: bool = False) -> int:
        """Listen on ``settings.listen``; returns the bound port (0 picks one)."""
        host, port = split_address(self.door.settings.listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.door.protocol, host, port, reuse_port=reuse_port or None, backlog=1024
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self, grace: float) -> None:
        """Stop accepting; let connections finish the requests they started (at most
        ``grace`` seconds), closing each once it has nothing left to answer."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.door.connections):
            connection.close_when_idle()
        deadline = asyncio.get_running_loop().time() + grace
        while self.door.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.door.connections):
            connection.abort()


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (XFCC quotes values holding , ; or =)."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_client_cert_header(value: str) -> ClientCert | None:
    """A forwarded client certificate: a URL-escaped PEM (NGINX), or Envoy's XFCC with
    exactly one element, as an edge Envoy with ``SANITIZE_SET`` sends it. Several
    elements are refused (None): behind an edge that appends instead, the first one
    may have been written by the client."""
    value = value.strip()
    if "-----BEGIN" in unquote(value) and "=" not in value.partition("-----")[0]:
        return ClientCert(pem=unquote(value))
    elements = _split_unquoted(value, ",")
    if len(elements) != 1:
        return None
    fields: dict[str, str] = {}
    for pair in _split_unquoted(elements[0], ";"):
        key, sep, raw = pair.strip().partition("=")
        if sep:
            fields[key.strip().lower()] = raw.strip().strip('"')
    if fields.get("cert"):
        return ClientCert(pem=unquote(fields["cert"]))
    if fields.get("hash"):
        return ClientCert(sha256_hex=fields["hash"])
    return None


def _metadata_document(resource: ProtectedResource | None) -> bytes | None:
    if resource is None:
        return None
    doc: dict[str, Any] = {
        "resource": resource.resource,
        "authorization_servers": list(resource.authorization_servers),
        "bearer_methods_supported": ["header"],
    }
    if resource.scopes_supported:
        doc["scopes_supported"] = list(resource.scopes_supported)
    body = json.dumps(doc).encode()
    return _head(200, [("content-type", "application/json"),
                       ("cache-control", "max-age=300")], body, False)  # fmt: skip


# -- one connection ---------------------------------------------------------------------
@dataclass
class _Pending:
    request: AuthRequest | None
    refused: str | None  # the auth request was unusable (400)
    close: bool  # answer with connection: close, then close
    started: float
    document: bytes | None = None  # a response that is not a decision (metadata)
    head_only: bool = False  # a HEAD request: the answer's head without its body


class Connection(asyncio.Protocol):
    """One client connection: parse heads with httptools, answer in order."""

    def __init__(self, door: Door) -> None:
        self._door = door
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._queue: deque[_Pending] = deque()
        self._busy = False  # an answer is being decided asynchronously
        self._closing = False
        # The client does not read its answers (the transport's buffer is full): read
        # no more requests, or pipelining clients grow our memory without bound.
        self._write_paused = False
        self._unfed = b""  # read but not yet parsed: waits for the next slice's turn
        self._feed_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    # connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._door.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self._arm(HEAD_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._queue.clear()
        self._door.connections.discard(self)

    def close_when_idle(self) -> None:
        """Draining: no new requests; close now if nothing is owed, else after it."""
        self._closing = True
        if self._transport is None:
            return
        if not self._queue and not self._busy:
            self._transport.close()
        else:
            self._queue[-1].close = True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again, unless an answer is being decided, the client is not reading its
        answers, or the connection is closing; bytes already read come first."""
        if self._transport is None or self._busy or self._closing or self._write_paused:
            return
        if self._unfed:
            self._schedule_feed()
        else:
            self._transport.resume_reading()

    def _schedule_feed(self) -> None:
        if not self._feed_scheduled:
            self._feed_scheduled = True
            asyncio.get_running_loop().call_soon(self._feed_more)

    def _feed_more(self) -> None:
        self._feed_scheduled = False
        if self._transport is None or self._closing:
            self._unfed = b""
            return
        if self._busy or self._write_paused:
            return  # _resolved or resume_writing carries on
        data, self._unfed = self._unfed, b""
        self._feed(data)
        if not self._unfed:
            self._resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._unfed:  # earlier bytes still wait for their turn: keep the order
            self._unfed += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse one slice now; leave the rest for a later turn of the event loop."""
        chunk, rest = data[:FEED_BYTES], data[FEED_BYTES:]
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            # The head was read and is answered; no protocol switch follows here.
            self.close_when_idle()
        except (httptools.HttpParserError, _HeadTooLarge):
            self._fail("malformed or oversized request")
        if rest and not self._closing and self._transport is not None:
            self._unfed = rest
            self._transport.pause_reading()
            self._resume_reading()  # schedules the next slice unless reading is held

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if self._busy or self._queue:
            self._arm(IDLE_TIMEOUT)  # an answer is still owed: look again later
        else:
            self._transport.close()  # idle, or too slow to send a head

    def _fail(self, why: str) -> None:
        """A request that cannot be parsed: one 400 (after the answers owed), then close."""
        if self._closing:
            return
        self._queue.append(_Pending(None, why, True, time.perf_counter()))
        self._closing = True
        if self._transport is not None:
            self._transport.pause_reading()
        self._drain()

    # parser callbacks ------------------------------------------------------------------
    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, list[str]] = {}
        self._head_bytes = 0
        self._count = 0

    def on_message_begin(self) -> None:
        self._reset()
        self._arm(HEAD_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        self._grow(len(name) + len(value) + 4)
        if self._count > MAX_HEADERS:
            raise _HeadTooLarge()
        key = name.decode("latin-1").lower()
        self._headers.setdefault(key, []).append(value.decode("utf-8", "replace"))

    def _grow(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        started = time.perf_counter()
        self._disarm()
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        target = self._url.decode("latin-1")
        # A request with a body is answered without reading it, then the connection
        # closes: nothing is buffered, and a 1 GiB upload costs one answer.
        has_body = "transfer-encoding" in self._headers or any(
            v.strip() not in ("", "0") for v in self._headers.get("content-length", [])
        )
        close = has_body or not parser.should_keep_alive()
        head_only = method == "HEAD"
        document = self._door.metadata_document(method, target)
        if document is not None:
            self._queue.append(_Pending(None, None, close, started, document, head_only))
        else:
            try:
                req = self._door.original(method, target, self._headers, self._peer)
                self._queue.append(_Pending(req, None, close, started, None, head_only))
            except _Refused as exc:
                pending = _Pending(None, exc.description, close, started, None, head_only)
                self._queue.append(pending)
        if close:
            self._closing = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._drain()

    def on_body(self, body: bytes) -> None:
        pass  # never read into memory

    def on_message_complete(self) -> None:
        if not self._closing:
            self._arm(IDLE_TIMEOUT)

    # answers ---------------------------------------------------------------------------
    def _drain(self) -> None:
        """Answer queued requests in order; an unknown kid makes one wait (async)."""
        door = self._door
        while self._queue and not self._busy:
            pending = self._queue[0]
            if pending.document is not None:
                self._queue.popleft()
                self._write(pending.document, pending)
                continue
            if pending.request is None:
                self._queue.popleft()
                decision = refuse(errors.InvalidRequest(pending.refused, reason="bad_request"))
                self._respond(AuthRequest(), decision, pending)
                continue
            authorizer = door.authorizer
            result = authorizer.first(pending.request)
            if not isinstance(result, Decision):
                self._busy = True
                if self._transport is not None:
                    self._transport.pause_reading()
                task = asyncio.get_running_loop().create_task(
                    authorizer.resolve(
                        pending.request, result, authorizer.budget(result, None, UNKNOWN_KID_WAIT)
                    )
                )
                task.add_done_callback(self._resolved)
                return
            self._queue.popleft()
            self._respond(pending.request, result, pending)

    def _resolved(self, task: asyncio.Task[Decision]) -> None:
        self._busy = False
        if not self._queue:
            return  # the connection went away meanwhile
        pending = self._queue.popleft()
        try:
            decision = task.result()
        except BaseException:  # cancelled: fail closed
            decision = refuse(errors.InternalError())
        assert pending.request is not None
        self._respond(pending.request, decision, pending)
        self._resume_reading()
        self._drain()

    def _respond(self, req: AuthRequest, decision: Decision, pending: _Pending) -> None:
        try:
            data = self._door.answer(decision, pending.close)
        except Exception:  # a decision HTTP cannot carry: a deny, logged and counted
            _log.exception("check_answer_unencodable", reason=decision.reason)
            decision = refuse(errors.InternalError(), rule=decision.rule)
            data = _UNAVAILABLE_CLOSE
            pending.close = True
        self._door.authorizer.record(req, decision, status_of(decision), pending.started,
                                     front_door="http")  # fmt: skip
        self._write(data, pending)

    def _write(self, data: bytes, pending: _Pending) -> None:
        transport = self._transport
        if transport is None:
            return
        if pending.head_only:  # the length stays in the head, the body goes (RFC 9110 §9.3.2)
            data = data[: data.index(b"\r\n\r\n") + 4]
        transport.write(data)
        if pending.close:
            self._queue.clear()
            transport.close()


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing at once."""
