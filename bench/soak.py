"""Soak: mixed traffic through a real Envoy while the issuer rotates its key.

    python -m bench.soak --duration 600 [--rotate-every 30] [--clients 4] [--json FILE]

Every request has a known right answer (valid → 200, expired / wrong audience / random
kid / forged → 401, missing scope → 403, anonymous route → 200); the run reports
requests, wrong decisions and 5xx (both must be 0), and the server's RSS and open file
descriptors after warm-up and at the end (flat: RSS within 10%, fds within 5).
Exit status 0 only when every criterion holds. Traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from joserfc import jwt
from joserfc.jwk import OKPKey

from bench.client import KeepAlive
from extauthz.dev import envoy_config
from extauthz.dev.envoy import EnvoyProcess
from extauthz.dev.issuer import DevIssuer

AUD = "soak-api"


def _proc_stats(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class _Jwks:
    """The dev issuer's JWKS over HTTP (in-process, so tokens can be minted locally)."""

    def __init__(self, issuer: DevIssuer) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "max-age=5")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class _Tokens:
    """Clients reuse a token for a while, as real ones do; a fresh one every second."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._at = 0.0
        self._valid = ""
        self._noscope = ""
        self._stranger = OKPKey.generate_key("Ed25519")

    def valid(self) -> tuple[str, str]:
        with self._lock:
            if time.monotonic() - self._at > 1.0:
                self._valid = self.issuer.mint(aud=AUD, scope="admin read")
                self._noscope = self.issuer.mint(aud=AUD, scope="read")
                self._at = time.monotonic()
            return self._valid, self._noscope

    def case(self, rng: random.Random) -> tuple[str, str, dict[str, str], int]:
        valid, noscope = self.valid()
        now = int(time.time())
        pick = rng.randrange(8)
        if pick <= 2:
            return "valid", "/api", {"authorization": f"Bearer {valid}"}, 200
        if pick == 3:
            expired = self.issuer.mint(aud=AUD, claims={"iat": now - 900, "exp": now - 600})
            return "expired", "/api", {"authorization": f"Bearer {expired}"}, 401
        if pick == 4:
            wrong = self.issuer.mint(aud="someone-else")
            return "wrong_aud", "/api", {"authorization": f"Bearer {wrong}"}, 401
        if pick == 5:
            body = {"iss": self.issuer.issuer, "aud": AUD, "sub": "x", "iat": now, "exp": now + 60}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc's note on the name "EdDSA"
                junk = jwt.encode(
                    {"alg": "EdDSA", "kid": uuid.uuid4().hex}, body, self._stranger,
                    algorithms=["EdDSA"],
                )  # fmt: skip
            return "random_kid", "/api", {"authorization": f"Bearer {junk}"}, 401
        if pick == 6:
            return "no_scope", "/admin", {"authorization": f"Bearer {noscope}"}, 403
        return "anonymous", "/public/status", {}, 200


def run(duration: float, rotate_every: float, clients: int, workdir: Path) -> dict[str, Any]:
    issuer = DevIssuer("https://soak-issuer.example", alg="EdDSA", rotate_every=rotate_every,
                       token_ttl=max(60.0, 4 * rotate_every))  # fmt: skip
    jwks = _Jwks(issuer)
    port = _free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": None},
        "providers": {
            "soak": {
                "issuer": issuer.issuer,
                "audiences": [AUD],
                "jwks_uri": jwks.url,
                "refresh_interval": f"{max(2.0, rotate_every / 3)}s",
                "min_refresh_interval": "1s",
                "claims_to_headers": {"x-user-id": "sub"},
            }
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }
    config_path = workdir / "soak.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log = workdir / "extauthz.log"
    with log.open("w") as stderr:  # the child keeps its own copy of the file
        server = subprocess.Popen(
            [sys.executable, "-m", "extauthz", "serve", "--config", str(config_path)],
            stderr=stderr,
            env={
                **os.environ,
                "EXTAUTHZ_LOG_FORMAT": "json",
                "EXTAUTHZ_LOG_LEVEL": os.environ.get("EXTAUTHZ_LOG_LEVEL", "warning"),
            },
        )
    try:
        _wait_serving(server, port, log)
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Up(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: Any) -> None:
                pass

        upstream = ThreadingHTTPServer(("127.0.0.1", 0), Up)
        upstream.daemon_threads = True
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        bootstrap = envoy_config.bootstrap(
            extauthz_port=port, upstream_port=upstream.server_port, timeout="1s",
            access_log_path=os.devnull,
        )  # fmt: skip
        with EnvoyProcess(bootstrap) as envoy:
            return _traffic(envoy.port, server.pid, _Tokens(issuer), issuer, duration, clients)
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"extauthz exited: {log.read_text()[-2000:]}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit("extauthz did not become ready in time")


def _traffic(port: int, pid: int, tokens: _Tokens, issuer: DevIssuer, duration: float,
             clients: int) -> dict[str, Any]:  # fmt: skip
    results: Counter[str] = Counter()
    wrong: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    warm = min(10.0, duration / 6)
    samples: dict[str, tuple[int, int]] = {}

    def client(seed: int) -> None:
        try:
            _client(seed)
        except Exception as exc:  # a harness bug must fail the run, not thin the traffic
            with lock:
                results["harness_errors"] += 1
                wrong.append(f"harness: {exc!r}")

    def _client(seed: int) -> None:
        rng = random.Random(seed)
        client = KeepAlive(port)
        while time.monotonic() - start < duration:
            name, path, headers, expected = tokens.case(rng)
            status, body = client.get(path, headers)
            with lock:
                results["requests"] += 1
                results[f"{name}:{status}"] += 1
                if status >= 500 or status == 0:
                    results["5xx"] += 1
                    wrong.append(
                        f"{name}: {status} {body[:120]!r} at {time.monotonic() - start:.1f}s"
                    )
                elif status != expected:
                    results["wrong"] += 1
                    wrong.append(f"{name}: expected {expected}, got {status}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    while time.monotonic() - start < warm:
        time.sleep(0.2)  # the run's own schedule, not synchronisation
    samples["start"] = _proc_stats(pid)
    for t in threads:
        t.join()
    samples["end"] = _proc_stats(pid)
    rss0, fd0 = samples["start"]
    rss1, fd1 = samples["end"]
    return {
        "duration_s": duration,
        "requests": results["requests"],
        "wrong_decisions": results["wrong"],
        "errors_5xx": results["5xx"],
        "harness_errors": results["harness_errors"],
        "rotations": issuer.rotations,
        "rss_start_mb": round(rss0 / 2**20, 1),
        "rss_end_mb": round(rss1 / 2**20, 1),
        "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 1),
        "fds_start": fd0,
        "fds_end": fd1,
        "by_case": {k: v for k, v in sorted(results.items()) if ":" in k},
        "wrong_examples": wrong[:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--rotate-every", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", type=Path, help="keep logs and configs in this directory")
    args = p.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args.duration, args.rotate_every, args.clients, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="extauthz-soak-") as tmp:
            report = run(args.duration, args.rotate_every, args.clients, Path(tmp))
    ok = (
        report["wrong_decisions"] == 0
        and report["harness_errors"] == 0
        and report["errors_5xx"] == 0
        and report["rss_growth_pct"] <= 10
        and report["fds_end"] - report["fds_start"] <= 5
        and report["requests"] > 0
    )
    report["ok"] = ok
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
