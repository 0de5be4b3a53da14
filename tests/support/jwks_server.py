"""A real HTTP JWKS server on 127.0.0.1:0 whose answers a test controls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JwksServer:
    """Serves ``document`` at any path. ``fail_with`` (status) or ``body`` override it."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document: dict[str, Any] = document or {"keys": []}
        self.fail_with: int | None = None
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}
        self.fetches = 0
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with owner._lock:
                    owner.fetches += 1
                    owner.requests.append({k.lower(): v for k, v in self.headers.items()})
                    status = owner.fail_with or 200
                    body = owner.body if owner.body is not None else json.dumps(owner.document).encode()
                    extra = dict(owner.headers)
                if status != 200:
                    body = b"error"
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def set(self, document: dict[str, Any]) -> None:
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
