"""Plain HTTP/1.1 clients for load loops and checks (http.client: no proxy environment
variables, no redirects). The test suite uses them too."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> Response:
    """One plain HTTP/1.1 request (http.client: no proxy env vars, no redirects)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return Response(resp.status, merged, data)
    finally:
        conn.close()


class KeepAlive:
    """A persistent HTTP/1.1 connection that reconnects after an error (load loops).

    ``get`` returns (status, body); a transport error is status 0 with the error text.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self._args = (host, port)
        self._timeout = timeout
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        try:
            self._conn.request("GET", path, headers=dict(headers or {}))
            resp = self._conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            self._conn = http.client.HTTPConnection(*self._args, timeout=self._timeout)
            return 0, str(exc).encode()

    def close(self) -> None:
        self._conn.close()
