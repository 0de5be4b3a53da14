"""The HTTP floors: do-nothing forward-auth servers that allow every request.

``httptools`` (default): written the way extauthz's HTTP door is
(``extauthz/frontdoor/http.py``): an asyncio Protocol feeding bytes to httptools'
parser and writing one prebuilt ``200 OK`` (content-length 0, an ``x-user-id``
header) per request, connections kept alive unless the client asks otherwise.
Whatever extauthz's HTTP door costs above this is its own work.

``aiohttp``: the same answer from an aiohttp low-level server
(``aiohttp.web.Server`` with a handler returning 200), for the record: the issue
named aiohttp, granian and a raw protocol as the choices for the door, and this is
what the framework would cost per request before any authorization.

    python -m bench.http_floor --listen 127.0.0.1:9193
    python -m bench.http_floor --listen 127.0.0.1:9193 --impl aiohttp
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
from aiohttp import web

USER = "bench-user"
OK = f"HTTP/1.1 200 OK\r\nx-user-id: {USER}\r\ncontent-length: 0\r\n\r\n".encode()
OK_CLOSE = (
    f"HTTP/1.1 200 OK\r\nx-user-id: {USER}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
).encode()


class FloorProtocol(asyncio.Protocol):
    """One connection: parse with httptools, answer every request with :data:`OK`."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._parser.should_keep_alive():
            transport.write(OK)
        else:
            transport.write(OK_CLOSE)
            transport.close()


async def _aiohttp_handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(status=200, headers={"x-user-id": USER})


def split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(listen: str, impl: str) -> None:
    host, port = split(listen)
    loop = asyncio.get_running_loop()
    if impl == "aiohttp":
        server = await loop.create_server(
            web.Server(_aiohttp_handler, access_log=None), host, port, backlog=1024
        )
    else:
        server = await loop.create_server(FloorProtocol, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.http_floor")
    p.add_argument("--listen", default="127.0.0.1:9193")
    p.add_argument("--impl", choices=("httptools", "aiohttp"), default="httptools")
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.impl))


if __name__ == "__main__":
    main()
