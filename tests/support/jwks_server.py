"""A real HTTP JWKS server on 127.0.0.1:0 whose answers a test controls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Document = dict[str, Any] | Callable[[], dict[str, Any]]


class JwksServer:
    """Serves ``document`` (a dict, or a callable returning one) at every path.

    Knobs: ``fail_with`` (HTTP status), ``body`` (raw bytes instead of the document),
    ``delay`` (seconds before answering), ``headers`` (extra response headers),
    ``etag`` (answer 304 to a matching If-None-Match). Every request is recorded.
    """

    def __init__(self, document: Document | None = None) -> None:
        self.document: Document = document or {"keys": []}
        self.fail_with: int | None = None
        self.body: bytes | None = None
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.etag: str | None = None
        self.fetches = 0
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.fetches += 1
                    seen = {k.lower(): v for k, v in self.headers.items()}
                    owner.requests.append(seen)
                    status, body, extra = owner._answer(seen)
                    delay = owner.delay
                if delay:
                    time.sleep(delay)  # the server is slow on purpose (not test sync)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeouts under test)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *a: None  # type: ignore[method-assign]  # clients give up on purpose
        self.port = self._server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, seen: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        extra = dict(self.headers)
        if self.fail_with is not None:
            return self.fail_with, b'{"error": "down"}', extra
        if self.etag is not None:
            extra["etag"] = self.etag
            if seen.get("if-none-match") == self.etag:
                return 304, b"", extra
        if self.body is not None:
            return 200, self.body, extra
        doc = self.document() if callable(self.document) else self.document
        return 200, json.dumps(doc).encode(), extra

    def set(self, document: Document) -> None:
        with self._lock:
            self.document = document
            self.body = None
            self.fail_with = None

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
