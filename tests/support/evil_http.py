"""A misbehaving HTTP server on 127.0.0.1:0, one bad behaviour per mode.

Modes: ``hang_mid_body`` (headers and half the body, then silence), ``in_pieces`` (a good
answer whose second half comes 0.2 s after the first), ``reset`` (accept and
reset the connection), ``redirect_loop`` (302 to itself), ``redirect_away`` (302 to
another host), ``good`` (a proper answer with ``document``). The mode can be switched
while the server runs.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any


class EvilHttp:
    def __init__(self, mode: str, document: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.document = document or {"keys": []}
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            conn.recv(65536)
            mode = self.mode
            if mode == "reset":
                # SO_LINGER with zero timeout: close() sends RST instead of FIN.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            if mode == "hang_mid_body":
                body = json.dumps(self.document).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body[: len(body) // 2]
                )
                self._held.append(conn)  # never finish, never close (until stop)
                return
            if mode == "in_pieces":
                # A good answer whose body arrives in two TCP segments, as across a slow
                # network: the reader must wait for the second one.
                body = json.dumps(self.document).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body[: len(body) // 2]
                )
                self._stop.wait(0.2)  # the network is slow on purpose
                conn.sendall(body[len(body) // 2 :])
                conn.close()
                return
            if mode in ("redirect_loop", "redirect_away"):
                target = self.url if mode == "redirect_loop" else "http://evil.example/jwks.json"
                conn.sendall(
                    b"HTTP/1.1 302 Found\r\nlocation: " + target.encode()
                    + b"\r\ncontent-length: 0\r\n\r\n"
                )  # fmt: skip
            else:
                body = json.dumps(self.document).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
            conn.close()
        except OSError:
            conn.close()

    def __enter__(self) -> EvilHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        for c in self._held:
            c.close()
        self._thread.join(5)
