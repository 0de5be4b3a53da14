"""Shared pieces of the benchmark: keys and tokens, the CheckRequest body, processes, CPU."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.dev.wire import external_auth_pb2, external_auth_pb2_grpc

ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "api"
PROVIDER = "bench"
TOKEN_TTL = 6 * 3600  # longer than any run
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
ALGS = ("RS256", "ES256", "EdDSA")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1

warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")


class BenchError(RuntimeError):
    """A contender cannot be measured (wrong answer, did not start...)."""


class NotAvailable(BenchError):
    """A contender is not measurable on this build (e.g. workers not implemented)."""


# --------------------------------------------------------------------- keys and tokens


def _generate(alg: str) -> Any:
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    if alg == "RS256":
        return RSAKey.generate_key(2048)
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    raise ValueError(alg)


@dataclass
class Keys:
    """One signing key per algorithm, all published by the one bench provider."""

    keys: dict[str, Any] = field(default_factory=dict)
    _samples: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> Keys:
        return cls({alg: _generate(alg) for alg in ALGS})

    @staticmethod
    def kid(alg: str) -> str:
        return f"bench-{alg.lower()}"

    def jwks(self, algs: Sequence[str] = ALGS) -> dict[str, Any]:
        out = []
        for alg in algs:
            data = dict(self.keys[alg].as_dict(private=False))
            data.update(kid=self.kid(alg), use="sig", alg=alg)
            out.append(data)
        return {"keys": out}

    def sample(self, alg: str) -> str:
        """The one token per algorithm every contender is driven with (minted once)."""
        if alg not in self._samples:
            self._samples[alg] = self.token(alg)
        return self._samples[alg]

    def token(self, alg: str, sub: str = "bench-user", **extra: Any) -> str:
        from joserfc import jwt

        now = int(time.time())
        claims = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + TOKEN_TTL, **extra,
        }  # fmt: skip
        header = {"alg": alg, "typ": "JWT", "kid": self.kid(alg)}
        return jwt.encode(header, claims, self.keys[alg], algorithms=[alg])


_MINT_KEY: Any = None


def _mint_init(jwk: dict[str, Any]) -> None:
    global _MINT_KEY
    from joserfc.jwk import OKPKey

    warnings.filterwarnings("ignore", message=".*EdDSA is deprecated.*")
    _MINT_KEY = OKPKey.import_key(jwk)


def _mint_range(bounds: tuple[int, int]) -> list[str]:
    from joserfc import jwt

    now = int(time.time())
    header = {"alg": "EdDSA", "typ": "JWT", "kid": Keys.kid("EdDSA")}
    return [
        jwt.encode(
            header,
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": f"user-{i}",
                "iat": now,
                "exp": now + TOKEN_TTL,
                "jti": f"bench-{i}",
            },
            _MINT_KEY,
            algorithms=["EdDSA"],
        )
        for i in range(*bounds)
    ]


def mint_many_eddsa(keys: Keys, count: int) -> list[str]:
    """``count`` distinct valid EdDSA tokens (joserfc), minted on every core."""
    import multiprocessing

    jwk = keys.keys["EdDSA"].as_dict(private=True)
    procs = max(1, NPROC)
    step = (count + procs * 4 - 1) // (procs * 4)
    chunks = [(i, min(count, i + step)) for i in range(0, count, step)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs, initializer=_mint_init, initargs=(jwk,)) as pool:
        parts = pool.map(_mint_range, chunks)
    return [t for part in parts for t in part]


# --------------------------------------------------------------------- gRPC request


def check_request(token: str | None, path: str = "/bench") -> Any:
    headers = {
        ":authority": "bench.local",
        ":method": "GET",
        ":path": path,
        "user-agent": "bench/1",
        "x-request-id": "00000000-0000-4000-8000-000000000000",
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method = "GET"
    http.path = path
    http.host = "bench.local"
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.id = "1"
    http.headers.update(headers)
    src = req.attributes.source.address.socket_address
    src.address, src.port_value = "127.0.0.1", 40000
    dst = req.attributes.destination.address.socket_address
    dst.address, dst.port_value = "127.0.0.1", 10000
    return req


def grpc_body(message: Any) -> bytes:
    """gRPC length-prefixed message: flag 0 (uncompressed) + 4-byte big-endian length."""
    data: bytes = message.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def grpc_check(port: int, token: str | None, timeout: float = 5.0) -> int:
    """One real gRPC Check call; returns CheckResponse.status.code."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        resp = stub.Check(check_request(token), timeout=timeout)
        return int(resp.status.code)


def wait_grpc_serving(port: int, proc: subprocess.Popen[bytes], deadline: float, log: Path) -> None:
    """grpc.health.v1 Check("") == SERVING, polled against a deadline."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        last = "no answer"
        while True:
            rc = proc.poll()
            if rc is not None:
                raise BenchError(f"server exited with code {rc} during startup; {tail(log)}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            if time.monotonic() > deadline:
                raise BenchError(f"server not SERVING in time (last: {last}); {tail(log)}")
            time.sleep(0.05)


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return f"no log at {path}"
    return f"log {path}:\n    " + "\n    ".join(text[-lines:])


# --------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cores: str | None) -> list[str]:
    if cores is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cores]


def pin(pid: int, cores: str) -> None:
    """Pin every thread of a running process (Envoy starts its threads before we can)."""
    if shutil.which("taskset"):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cores, str(pid)],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (from /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_snapshot(root: int) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in descendants(root)}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {p: after[p] - before.get(p, 0.0) for p in after}


def listening_pids(root: int, port: int) -> list[int]:
    """Processes in ``root``'s tree holding a LISTEN socket on ``port`` (SO_REUSEPORT workers)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                    inodes.add(parts[9])
    owners = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.append(pid)
                        break
    return owners


def vm_status(pid: int, key: str) -> float:
    """A ``/proc/<pid>/status`` size line (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


def python() -> str:
    return sys.executable
