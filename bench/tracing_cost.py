"""``python -m bench.tracing_cost``: what ``server.tracing`` costs a decision, in one
process.

    python -m bench.tracing_cost                             # 20,000 decisions x 5 repeats
    python -m bench.tracing_cost --iterations 200 --repeat 1 # smoke: correctness only

Each case sends one cached EdDSA Bearer token (the allow memo's path: the cheapest
decision, where tracing's share is largest) through ``Authorizer.check`` and
``Authorizer.record``, as a front door does for each request but without the door, and
reads ``time.process_time`` around the loop: this process's CPU, the exporter thread's
included (its queue, large enough to drop nothing, is flushed before the clock stops).
Cases alternate within each repeat (order reversed on odd repeats):

- ``off``: no ``server.tracing``;
- ``unsampled``: tracing on, ``sample_ratio: 0``, no ``traceparent``: the parent is
  looked for and the sampler says no;
- ``sampled``: tracing on, a sampled ``traceparent``: each span is recorded, queued and
  exported over OTLP/HTTP to a sink in another process (on the other core when there
  are two), which answers 200 to everything.
"""
# ruff: noqa: RUF001  (typographic dashes are intended)

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from extauthz import AuthRequest
from extauthz.dev.inprocess import InProcess

from .common import AUDIENCE, ISSUER, NPROC, PROVIDER, BenchError, Keys, stop

CASES = ("off", "unsampled", "sampled")
WARMUP = 50  # untimed decisions per run: the first fills the token cache and allow memo
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _sink() -> None:
    """The OTLP/HTTP sink: prints its port, answers every POST with 200 and a GET with
    the number of POSTs so far."""
    posts = 0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal posts
            self.rfile.read(int(self.headers.get("content-length") or 0))
            posts += 1
            self._answer(b"")

        def do_GET(self) -> None:
            self._answer(str(posts).encode())

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _exports(endpoint: str) -> int:
    """How many exports the sink has received."""
    with urllib.request.urlopen(endpoint, timeout=10) as answer:
        return int(answer.read())


def _requests(token: str, n: int, traced: bool) -> list[AuthRequest]:
    headers = {":authority": "api.bench.local", "authorization": f"Bearer {token}",
               "x-request-id": "00000000-0000-4000-8000-000000000000"}  # fmt: skip
    if traced:
        headers["traceparent"] = TRACEPARENT
    req = AuthRequest(method="GET", host="api.bench.local", path="/orders", headers=headers)
    return [req] * n


async def _run(auth: InProcess, reqs: list[AuthRequest]) -> tuple[float, float]:
    """(CPU µs, wall µs) per decision over ``reqs``, after WARMUP untimed ones."""
    authorizer = auth.authorizer

    async def one(req: AuthRequest) -> None:
        started = time.perf_counter()
        decision = await authorizer.check(req)
        if not decision.allowed:
            raise BenchError(f"expected an allow, got {decision.reason}")
        authorizer.record(req, decision, 200, started, front_door="grpc")

    for req in reqs[:WARMUP]:
        await one(req)
    auth.flush_traces()
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    for req in reqs:
        await one(req)
    auth.flush_traces()  # the exporter's work belongs to the run
    n = len(reqs)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def _measure(iterations: int, repeat: int, endpoint: str) -> dict[str, list[float]]:
    keys = Keys.generate()
    provider = {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks(["EdDSA"])}
    token = keys.token("EdDSA")
    cpu: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(repeat):
        for case in CASES if r % 2 == 0 else CASES[::-1]:
            settings: dict[str, Any] = {"providers": {PROVIDER: provider}}
            if case != "off":
                ratio = 0.0 if case == "unsampled" else 1.0
                settings["server"] = {"tracing": {"otlp_endpoint": endpoint, "sample_ratio": ratio}}
            exports = _exports(endpoint)
            auth = await InProcess.start(settings)
            try:
                reqs = _requests(token, iterations + WARMUP, traced=case == "sampled")
                cpu_us, wall_us = await _run(auth, reqs)
            finally:
                await auth.close()
            if (_exports(endpoint) > exports) != (case == "sampled"):
                raise BenchError(f"{case}: spans were {'not ' * (case == 'sampled')}exported")
            cpu[case].append(cpu_us)
            print(f"repeat {r + 1} {case:9} {cpu_us:7.2f} CPU µs  {wall_us:7.2f} wall µs",
                  file=sys.stderr)  # fmt: skip
    return cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--iterations", type=int, default=20_000, help="timed decisions per run")
    p.add_argument("--repeat", type=int, default=5, help="runs per case")
    p.add_argument("--markdown", type=Path, help="also write the report's section here")
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sink:
        _sink()
        return 0
    # Every span of a run is exported: a queue that overflowed would hide their cost.
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(max(2048, args.iterations + WARMUP))
    sink = subprocess.Popen([sys.executable, "-m", "bench.tracing_cost", "--sink"],
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        if NPROC >= 2:
            os.sched_setaffinity(0, {0})
            os.sched_setaffinity(sink.pid, {1})
        assert sink.stdout is not None
        endpoint = f"http://127.0.0.1:{int(sink.stdout.readline())}/v1/traces"
        cpu = asyncio.run(_measure(args.iterations, args.repeat, endpoint))
    finally:
        stop(sink)
    print(table(cpu))
    if args.markdown is not None:
        cmd = "python -m bench.tracing_cost" + (
            ""
            if (args.iterations, args.repeat) == (20_000, 5)
            else f" --iterations {args.iterations} --repeat {args.repeat}"
        )
        args.markdown.write_text("\n".join(section(HEADING, cpu, cmd, args.iterations)),
                                 encoding="utf-8")  # fmt: skip
    return 0


HEADING = "## Tracing cost"
WHAT = {
    "off": "no `server.tracing`",
    "unsampled": "tracing on, `sample_ratio: 0`, no `traceparent`",
    "sampled": "tracing on, a sampled `traceparent`: every span recorded and exported",
}


def table(cpu: dict[str, list[float]]) -> str:
    off = statistics.median(cpu["off"])
    rows = ["| case | what | CPU µs/decision median [min–max] | added over `off` |",
            "|---|---|---:|---:|"]  # fmt: skip
    for case in CASES:
        m = statistics.median(cpu[case])
        added = "–" if case == "off" else f"{m - off:+.1f}"
        rows.append(f"| `{case}` | {WHAT[case]} | {m:.2f} [{min(cpu[case]):.2f}–"
                    f"{max(cpu[case]):.2f}] | {added} |")  # fmt: skip
    return "\n".join(rows)


def section(heading: str, cpu: dict[str, list[float]], command: str, iterations: int) -> list[str]:
    """The report's section: method, table and meaning, every figure from ``cpu``."""
    off = statistics.median(cpu["off"])
    unsampled = statistics.median(cpu["unsampled"]) - off
    sampled = statistics.median(cpu["sampled"]) - off
    runs = len(cpu["off"])
    return [
        f"{heading}\n",
        f"*In one process:* `{command}` ({iterations:,} decisions × {runs} runs per case, "
        "cases alternating). Each case sends one cached EdDSA Bearer token (the allow "
        "memo: the cheapest decision, where tracing's share is largest) through "
        "`Authorizer.check` and `Authorizer.record` — what a front door does per request, "
        "without the door — and reads `time.process_time`: the process's CPU, the "
        "exporter thread's included (its queue is flushed before the clock stops and is "
        "large enough to drop nothing). The OTLP/HTTP sink runs in another process, on "
        "the other core.\n",
        table(cpu) + "\n",
        "**What it means.** Off, tracing costs one attribute test per request (`if "
        "tracing.spans is not None`). On, a request that is not sampled pays "
        f"{unsampled:.1f} µs for looking for its parent and asking the sampler. A sampled "
        f"one costs {sampled:.0f} µs of CPU, part on the request path (the SDK builds "
        "and ends the span) and the rest in the exporter's thread (OTLP encoding and the "
        "HTTP call), which shares the interpreter with the request threads. At a mesh's "
        f"usual 1 % sampling that is about {sampled / 100 + unsampled * 0.99:.1f} µs per "
        "request on average.\n",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
