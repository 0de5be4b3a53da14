"""Peak memory: one extauthz worker (default token cache) after N distinct valid tokens."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from extauthz.dev.wire import external_auth_pb2_grpc

from .common import BenchError, Keys, check_request, stop, vm_status
from .contenders import Contender, start_server

CHANNELS = 4
IN_FLIGHT_PER_CHANNEL = 16


@dataclass
class RssResult:
    tokens: int
    rss_start_mb: float
    hwm_mb: float
    rss_end_mb: float
    seconds: float
    command: str


async def _drive(port: int, tokens: list[str]) -> int:
    """Send every token once over several channels; returns how many were allowed."""
    bodies = iter(tokens)
    allowed = 0
    failures: list[str] = []

    async def client(stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        nonlocal allowed
        for token in bodies:
            resp = await stub.Check(check_request(token), timeout=30)
            if resp.status.code == 0:
                allowed += 1
            elif len(failures) < 3:
                failures.append(f"code {resp.status.code}: {resp.status.message}")

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CHANNELS)]
    try:
        stubs = [external_auth_pb2_grpc.AuthorizationStub(ch) for ch in channels]
        await asyncio.gather(
            *(client(stub) for stub in stubs for _ in range(IN_FLIGHT_PER_CHANNEL))
        )
    finally:
        for ch in channels:
            await ch.close()
    if failures:
        raise BenchError(f"{len(tokens) - allowed} tokens were not allowed, e.g. {failures}")
    return allowed


def measure(keys: Keys, tokens: list[str], workdir: Path) -> RssResult:
    c = Contender("rss", "rss", "extauthz, 1 worker, default token cache", alg="EdDSA")
    server = start_server(c, keys, workdir, "rss")
    try:
        pid = server.proc.pid
        # `taskset -c 0 python ...` execs python: the pid is the server itself.
        rss_start = vm_status(pid, "VmRSS")
        t0 = time.monotonic()
        asyncio.run(_drive(server.port, tokens))
        seconds = time.monotonic() - t0
        hwm = vm_status(pid, "VmHWM")
        rss_end = vm_status(pid, "VmRSS")
        return RssResult(len(tokens), rss_start, hwm, rss_end, seconds, server.command)
    finally:
        stop(server.proc)
