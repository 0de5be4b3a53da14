"""``python -m bench.dpop``: what a DPoP (RFC 9449) request costs extauthz next to a
Bearer request, in one process.

    python -m bench.dpop                             # 2000 decisions x 5 repeats per case
    python -m bench.dpop --iterations 50 --repeat 1  # smoke: correctness only
    python -m bench.dpop --redis redis://127.0.0.1:6379/0
    python -m bench.dpop --json dpop.json            # also the figures, for the report

``python -m bench`` runs it (pinned to core 0) and puts its table in docs/benchmarks.md.

Every case sends prepared requests through ``Authorizer.check``, the call the gRPC door
makes for each Check, and times the loop with ``time.process_time``: this process's CPU,
no front door, no sockets but Redis's. Tokens and proofs are made before the clock
starts; every answer must be an allow, so a denial can never pass for a fast decision.
Without ``--redis``, a ``redis-server`` found on PATH is started on a free loopback port
without persistence (on the other core when there are two) and stopped at the end.
"""
# ruff: noqa: RUF001  (typographic dashes and the multiplication sign are intended)

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from extauthz import AuthRequest
from extauthz.dev.client import ClientKey, generate_key, make_proof, thumbprint
from extauthz.dev.inprocess import MEMORY_REPLAY_ENTRIES, InProcess

from .common import (
    AUDIENCE,
    ISSUER,
    NPROC,
    PROVIDER,
    BenchError,
    Keys,
    free_port,
    stop,
    tail,
    taskset,
)
from .contenders import LOAD_CORES, SUT_CORES

HOST = "api.bench.local"
PATH = "/orders"
URL = f"https://{HOST}{PATH}"
WARMUP = 20  # untimed decisions per run: the first Bearer one fills the token cache
BASELINES = ("bearer_cached", "bearer_verify")


def _request(authorization: str, proof: str | None = None) -> AuthRequest:
    # The headers the gRPC door hands over for a typical proxied request.
    headers = {
        ":authority": HOST, ":method": "GET", ":path": PATH, "user-agent": "bench/1",
        "x-request-id": "00000000-0000-4000-8000-000000000000", "authorization": authorization,
    }  # fmt: skip
    if proof is not None:
        headers["dpop"] = proof
    return AuthRequest(method="GET", scheme="https", host=HOST, path=PATH, headers=headers)


@dataclass
class Case:
    name: str
    what: str
    make: Callable[[int], list[AuthRequest]]  # n requests for one run, made untimed
    store: str = "memory"  # "memory" or "redis"
    cpu_us: list[float] = field(default_factory=list)  # per repeat
    wall_us: list[float] = field(default_factory=list)

    def row(self) -> Row:
        return Row(self.name, self.what, list(self.cpu_us), list(self.wall_us))


@dataclass
class Row:
    """One case's figures: CPU and wall µs per decision, one of each per repeat."""

    name: str
    what: str
    cpu_us: list[float] = field(default_factory=list)
    wall_us: list[float] = field(default_factory=list)


@dataclass
class Result:
    """What one run measured: ``--json`` writes it, the report's DPoP section reads it."""

    iterations: int
    repeat: int
    rows: list[Row]
    missing: dict[str, str]  # case -> why it was not measured
    info: dict[str, str]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        rows = [Row(r["name"], r["what"], [float(x) for x in r["cpu_us"]],
                    [float(x) for x in r["wall_us"]]) for r in d["rows"]]  # fmt: skip
        return cls(int(d["iterations"]), int(d["repeat"]), rows, dict(d["missing"]),
                   {str(k): str(v) for k, v in d["info"].items()})  # fmt: skip

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name and r.cpu_us), None)


@dataclass
class Bench:
    keys: Keys
    client: ClientKey  # the DPoP client's key (ES256)
    client_ed: ClientKey  # another client's, Ed25519
    minted: int = 0

    def bound(self, key: ClientKey) -> str:
        return self.keys.token("EdDSA", cnf={"jkt": thumbprint(key)})

    def fresh_tokens(self, n: int) -> list[AuthRequest]:
        # Distinct tokens in every run: each is a cache miss, verified afresh.
        first, self.minted = self.minted, self.minted + n
        return [_request(f"Bearer {self.keys.token('EdDSA', jti=f'b-{i}')}")
                for i in range(first, first + n)]  # fmt: skip

    def proofs(self, key: ClientKey, token: str, n: int) -> list[AuthRequest]:
        # A new proof (new jti) per request, as a client must send; iat is now, well
        # inside max_age + clock_skew (180 s) while the run lasts.
        return [_request(f"DPoP {token}", make_proof(key, method="GET", url=URL, token=token))
                for _ in range(n)]  # fmt: skip


def cases(b: Bench) -> list[Case]:
    cached = b.keys.sample("EdDSA")
    es_token, ed_token = b.bound(b.client), b.bound(b.client_ed)
    return [
        Case("bearer_cached", "one EdDSA Bearer token, repeated (allow memo hit)",
             lambda n: [_request(f"Bearer {cached}")] * n),
        Case("bearer_verify", "a new EdDSA Bearer token each request (verified)",
             b.fresh_tokens),
        Case("dpop_memory", "EdDSA DPoP-bound token, new ES256 proof, memory store",
             lambda n: b.proofs(b.client, es_token, n)),
        Case("dpop_memory_eddsa_proof", "the same, the proof signed with Ed25519",
             lambda n: b.proofs(b.client_ed, ed_token, n)),
        Case("dpop_redis", "as dpop_memory, replay store in Redis (one SET NX)",
             lambda n: b.proofs(b.client, es_token, n), store="redis"),
    ]  # fmt: skip


def provider_config(keys: Keys, store: str) -> dict[str, Any]:
    # One provider accepting both schemes (dpop: {}), so only the request differs.
    return {
        "server": {"admin_listen": None, "replay_store": store},
        "providers": {PROVIDER: {
            "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks(("EdDSA",)),
            "algorithms": ["EdDSA"], "dpop": {},
        }},
    }  # fmt: skip


async def decide_all(auth: InProcess, requests: list[AuthRequest], case: str) -> None:
    for req in requests:
        d = await auth.check(req)
        if not d.allowed:
            raise BenchError(f"{case}: denied ({d.reason}: {d.description})")


async def run_once(case: Case, b: Bench, redis_url: str | None, n: int) -> None:
    store = redis_url if case.store == "redis" and redis_url else "memory"
    # A new authorizer and store per run, built from server.replay_store as the server
    # does: empty caches, an empty memory store; the warm-up opens Redis's connection.
    auth = await InProcess.start(provider_config(b.keys, store))
    try:
        await decide_all(auth, case.make(WARMUP), case.name)
        requests = case.make(n)
        gc.collect()  # not the previous run's garbage on this run's clock
        cpu, wall = time.process_time(), time.perf_counter()
        await decide_all(auth, requests, case.name)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await auth.close()
    case.cpu_us.append(cpu / n * 1e6)
    case.wall_us.append(wall / n * 1e6)


async def measure(chosen: list[Case], b: Bench, redis_url: str | None, n: int, r: int) -> None:
    for rep in range(r):
        # Cases alternate, reversed on odd repeats, as in `python -m bench`: a slow drift
        # of the machine's speed then weighs on no case more than on another.
        for case in chosen if rep % 2 == 0 else chosen[::-1]:
            await run_once(case, b, redis_url, n)
            print(f"  [{rep + 1}/{r}] {case.name}: {case.cpu_us[-1]:,.1f} µs CPU",
                  file=sys.stderr, flush=True)  # fmt: skip


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on loopback, no RDB or AOF; None if not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    import redis

    with tempfile.TemporaryDirectory(prefix="extauthz-bench-redis-") as workdir:
        log, port = Path(workdir) / "redis.log", free_port()
        args = [*taskset(LOAD_CORES), binary, "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", workdir, "--logfile", ""]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start on port {port}; {tail(log)}")
                with contextlib.suppress(redis.RedisError):
                    # This redis-server answering, not something else on the port.
                    if client.info("server")["process_id"] == proc.pid:
                        break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            stop(proc)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # Server code that differs from the commit is not the commit: say so.
    dirty = git("status", "--porcelain", "--", "extauthz")
    return head + (" + uncommitted changes to extauthz/" if dirty else "")


def redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"\bv=(\S+)", out.stdout)
    return m.group(1) if m else "unknown"


def _range(vals: list[float]) -> str:
    med = statistics.median(vals)
    return f"{med:,.1f} [{min(vals):,.1f}–{max(vals):,.1f}]"


def ratio(case: Row, base: Row | None) -> float | None:
    """The median of per-repeat CPU ratios (each run over its own repeat's baseline, as
    ``python -m bench`` pairs them)."""
    if base is None or not base.cpu_us or not case.cpu_us:
        return None
    return statistics.median(c / b for c, b in zip(case.cpu_us, base.cpu_us, strict=True))


def _ratio(case: Row, base: Row | None) -> str:
    r = ratio(case, base)
    return "–" if r is None else f"{r:.2f}×"


def table(rows: list[Row], why_missing: dict[str, str]) -> str:
    by_name = {c.name: c for c in rows}
    lines = [
        "| case | what | CPU µs/decision median [min–max] | × bearer_cached "
        "| × bearer_verify | wall µs/decision |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in rows:
        if not c.cpu_us:
            lines.append(f"| `{c.name}` | {c.what} | n/a ({why_missing[c.name]}) | – | – | – |")
            continue
        ratios = " | ".join(_ratio(c, by_name.get(b)) for b in BASELINES)
        lines.append(f"| `{c.name}` | {c.what} | {_range(c.cpu_us)} | {ratios} "
                     f"| {statistics.median(c.wall_us):,.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dpop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--iterations", type=int, default=2000, help="timed decisions per run")
    p.add_argument("--repeat", type=int, default=5, help="runs per case (default 5)")
    p.add_argument("--redis", help="replay store for dpop_redis (default: start redis-server)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    n, r = max(1, args.iterations), max(1, args.repeat)
    if n + WARMUP > MEMORY_REPLAY_ENTRIES:  # the memory store refuses when full: denials
        p.error(f"--iterations: at most {MEMORY_REPLAY_ENTRIES - WARMUP}")

    b = Bench(Keys.generate(), generate_key("ES256"), generate_key("EdDSA"))
    all_cases = cases(b)
    why_missing: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        redis_url = args.redis or stack.enter_context(redis_server())
        if redis_url is None:
            why_missing["dpop_redis"] = "no redis-server on PATH; pass --redis URL"
        chosen = [c for c in all_cases if c.store == "memory" or redis_url]
        if SUT_CORES is not None and len(os.sched_getaffinity(0)) == NPROC:
            # Unless pinned by the caller: the server's core, as in `python -m bench`
            # (redis-server runs on the load generator's).
            os.sched_setaffinity(0, {int(SUT_CORES)})
        print(f"bench.dpop: {len(chosen)} cases, {r} x {n:,} decisions", file=sys.stderr)
        asyncio.run(measure(chosen, b, redis_url, n, r))

    info = {
        "commit": commit(), "python": platform.python_version(),
        "cryptography": _version("cryptography"), "joserfc": _version("joserfc"),
        "redis-py": _version("redis"), "redis-server": redis_server_version(),
        "cores": ",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
    }  # fmt: skip
    result = Result(n, r, [c.row() for c in all_cases], why_missing, info)
    print(table(result.rows, why_missing))
    print(f"\n{n:,} decisions x {r} repeat(s) per case; "
          + ", ".join(f"{k} {v}" for k, v in info.items()))  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
