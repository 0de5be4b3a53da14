"""The floors: a do-nothing Authorization server answering a prebuilt OK.

Same generated code and the same server options as extauthz, plus grpc health so
readiness is checked the same way. Whatever extauthz costs above this is its own work;
what this costs is grpcio's per-call price on this machine. Two serving models:

    python -m bench.floor --listen 127.0.0.1:9191              # grpc.aio
    python -m bench.floor --listen 127.0.0.1:9191 --threads 8  # grpcio's sync server

extauthz serves on the second (``server.grpc_threads`` pool threads); the first is the
floor of earlier runs, kept to show what the serving model itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.dev.wire import external_auth_pb2 as pb
from extauthz.dev.wire import external_auth_pb2_grpc, status_pb2
from extauthz.server.pool import Pool

OK = pb.CheckResponse(status=status_pb2.Status(code=0), ok_response=pb.OkHttpResponse())
OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]


# The generated *_grpc modules are not followed by mypy: the base class is Any.
class FloorServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return OK


class SyncFloorServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:
        return OK


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(FloorServicer(), server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    server.add_insecure_port(listen)
    await server.start()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def serve_sync(
    listen: str, threads: int, servicer: Any = None, pool: futures.ThreadPoolExecutor | None = None
) -> None:
    """``servicer`` (the do-nothing one by default) on grpcio's synchronous server with
    ``threads`` threads of ``pool`` (default: extauthz's own, as ``extauthz serve`` runs
    its Checks), plus health, until SIGTERM or SIGINT."""
    server = grpc.server(pool or Pool(threads, "floor"), options=OPTIONS)
    servicer = servicer if servicer is not None else SyncFloorServicer()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    server.add_insecure_port(listen)
    server.start()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(0.5).wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor")
    p.add_argument("--listen", default="127.0.0.1:9191")
    p.add_argument("--threads", type=int, help="grpcio's sync server with this many threads")
    args = p.parse_args()
    if args.threads:
        serve_sync(args.listen, args.threads)
    else:
        asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
