"""A real RFC 7662 introspection endpoint on 127.0.0.1:0 whose answers a test controls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class IntrospectionServer:
    """Answers ``POST /introspect`` from ``answers`` (token -> JSON object; an unknown
    token is ``{"active": false}``).

    Knobs: ``fail_with`` (HTTP status), ``body`` (raw bytes for every answer),
    ``gate`` (an Event: answers wait until it is set, so a test holds calls in flight
    and releases them when it chooses). Every request is recorded (``requests``: method,
    path, lower-cased headers, raw body, the client's address) and counted (``calls``).
    """

    def __init__(self, answers: dict[str, dict[str, Any]] | None = None) -> None:
        self.answers: dict[str, dict[str, Any]] = answers or {}
        self.fail_with: int | None = None
        self.body: bytes | None = None
        self.gate: threading.Event | None = None
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with owner._lock:
                    owner.calls += 1
                    owner.requests.append(
                        {
                            "method": "POST",
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": raw,
                            "peer": self.client_address,
                        }
                    )
                    gate = owner.gate
                if gate is not None:
                    gate.wait(30)  # held on purpose by the test, released by it
                status, body = owner._answer(raw)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
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
        self.url = f"http://127.0.0.1:{self.port}/introspect"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, raw: bytes) -> tuple[int, bytes]:
        if self.fail_with is not None:
            return self.fail_with, b'{"error": "server_error"}'
        if self.body is not None:
            return 200, self.body
        token = parse_qs(raw.decode()).get("token", [""])[0]
        return 200, json.dumps(self.answers.get(token, {"active": False})).encode()

    def __enter__(self) -> IntrospectionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()
