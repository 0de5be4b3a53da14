"""What is measured: each contender starts its processes, proves it answers correctly,
then is timed once per call of :func:`run_once`.

Core split (2 cores): the authorization server (a floor or extauthz) alone on core 0;
the load generator and this orchestrator on core 1; Envoy (``--concurrency 1``) also on
core 1, so that behind Envoy the server keeps a core to itself as in the direct runs.
Two-worker runs cannot be separated: the workers and h2load share both cores; their CPU
is reported per worker.

Envoy's ext_authz asks the server over gRPC (``grpc_service``, ``door="grpc"``) or over
HTTP/1.1 (``http_service``, ``door="http"``: extauthz's HTTP front door, or an HTTP
floor from bench/http_floor.py).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extauthz.errors import EnvoyStartError

from . import drivers
from .client import Response, http_request
from .common import (
    AUDIENCE,
    ISSUER,
    NPROC,
    PROVIDER,
    BenchError,
    Keys,
    NotAvailable,
    check_request,
    cpu_delta,
    cpu_snapshot,
    free_port,
    grpc_body,
    grpc_check,
    listening_pids,
    pin,
    python,
    stop,
    tail,
    taskset,
    wait_grpc_serving,
)
from .envoy import USER_HEADER, EnvoyProcess, bench_bootstrap

SUT_CORES = "0" if NPROC >= 2 else None
LOAD_CORES = "1" if NPROC >= 2 else None
ALL_CORES = f"0-{NPROC - 1}" if NPROC >= 2 else None
ENVOY_CORES = LOAD_CORES
STARTUP_TIMEOUT = 30.0
GRPC_OK, GRPC_UNAUTHENTICATED = 0, 16
#: Pool threads of extauthz's gRPC server (``server.grpc_threads``, its default) and of
#: the sync floor: both are started with this many.
GRPC_THREADS = 8
#: The do-nothing servers: gRPC (bench/floor.py) and HTTP (bench/http_floor.py, two
#: implementations). They allow everything, so no request is expected to be denied.
FLOORS = {"floor": "grpc", "floor_sync": "grpc", "http_floor": "http",
          "http_floor_aiohttp": "http"}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """This contender's rps must be at least ``min_ratio`` times ``baseline``'s (measured
    side by side in one run, paired by repeat like every ratio)."""

    baseline: str
    min_ratio: float


@dataclass(frozen=True)
class Contender:
    name: str
    group: str  # "grpc" | "envoy" | "http" | "latency"
    what: str
    alg: str = "RS256"
    server: str | None = "extauthz"  # "extauthz", a key of FLOORS, or None
    cache: bool = True
    workers: int = 1
    envoy: str | None = None  # "alone" | "jwt_authn" | "jwt_authn_cache" | "extauthz"
    door: str = "grpc"  # how Envoy's ext_authz asks the server: "grpc" | "http"
    baseline: str | None = None  # the ratio column's denominator
    targets: tuple[Target, ...] = ()  # minimum rps ratios to other contenders
    max_server_cpu_us: float | None = None  # maximum server CPU µs per request

    def __post_init__(self) -> None:
        if self.server in FLOORS and FLOORS[self.server] != self.door:
            raise ValueError(f"{self.name}: {self.server} answers {FLOORS[self.server]} only")


CONTENDERS: tuple[Contender, ...] = (
    Contender("floor", "grpc", "do-nothing grpc.aio servicer, prebuilt OK", server="floor"),
    Contender("floor_sync", "grpc",
              f"do-nothing servicer on grpcio's sync server, {GRPC_THREADS} threads of "
              "extauthz's pool (its serving model)", server="floor_sync", baseline="floor"),
    Contender("cache_hit", "grpc", "extauthz, RS256, token cache hit", baseline="floor",
              targets=(Target("floor", 0.9),)),
    Contender("rs256", "grpc", "extauthz, RS256 verified every request", cache=False,
              baseline="floor", targets=(Target("floor", 0.7),)),
    Contender("es256", "grpc", "extauthz, ES256 verified every request", alg="ES256",
              cache=False, baseline="floor", targets=(Target("floor", 0.6),)),
    Contender("eddsa", "grpc", "extauthz, EdDSA verified every request", alg="EdDSA",
              cache=False, baseline="floor", targets=(Target("floor", 0.6),)),
    Contender("peer_rs256", "grpc",
              "the Python peer (service-extensions' ext_authz SDK + PyJWT, as documented), "
              "RS256 every request", server="peer", baseline="floor"),
    Contender("cache_hit_2w", "grpc", "extauthz, 2 workers, RS256 cache hit", workers=2,
              baseline="floor"),
    Contender("rs256_2w", "grpc", "extauthz, 2 workers, RS256 every request", workers=2,
              cache=False, baseline="floor"),
    Contender("envoy_alone", "envoy", "Envoy, no auth filter, direct_response 200",
              server=None, envoy="alone"),
    Contender("envoy_jwt_authn", "envoy", "Envoy jwt_authn (local_jwks), RS256, no cache",
              server=None, envoy="jwt_authn", baseline="envoy_alone"),
    Contender("envoy_jwt_authn_cache", "envoy", "Envoy jwt_authn, jwt_cache_size 100",
              server=None, envoy="jwt_authn_cache", baseline="envoy_alone"),
    Contender("envoy_extauthz", "envoy", "Envoy ext_authz -> extauthz, RS256, cache off",
              cache=False, envoy="extauthz", baseline="envoy_alone"),
    Contender("envoy_extauthz_cache", "envoy", "Envoy ext_authz -> extauthz, cache hit",
              envoy="extauthz", baseline="envoy_alone"),
    Contender("envoy_grpc_floor", "http",
              "ext_authz grpc_service -> do-nothing grpc.aio server", server="floor",
              envoy="extauthz"),
    Contender("envoy_http_floor", "http",
              "ext_authz http_service -> do-nothing httptools Protocol (the door's library)",
              server="http_floor", envoy="extauthz", door="http", baseline="envoy_grpc_floor"),
    Contender("envoy_http_floor_aiohttp", "http",
              "ext_authz http_service -> do-nothing aiohttp low-level server",
              server="http_floor_aiohttp", envoy="extauthz", door="http",
              baseline="envoy_http_floor"),
    Contender("envoy_grpc_cache", "http", "ext_authz grpc_service -> extauthz, cache hit",
              envoy="extauthz", baseline="envoy_grpc_floor"),
    Contender("envoy_http_cache", "http",
              "ext_authz http_service -> extauthz HTTP door, cache hit", envoy="extauthz",
              door="http", baseline="envoy_http_floor",
              targets=(Target("envoy_grpc_cache", 2.5), Target("envoy_http_floor", 0.8)),
              max_server_cpu_us=60),
    Contender("envoy_http", "http",
              "ext_authz http_service -> extauthz HTTP door, RS256, cache off", cache=False,
              envoy="extauthz", door="http", baseline="envoy_http_floor"),
    Contender("latency_envoy_alone", "latency", "Envoy alone, paced", server=None,
              envoy="alone"),
    Contender("latency_envoy_floor", "latency",
              "Envoy + do-nothing grpc.aio ext_authz server, paced (the Python floor)",
              server="floor", envoy="extauthz", baseline="latency_envoy_alone"),
    Contender("latency_envoy_extauthz_cache", "latency", "Envoy + extauthz, cache hit, paced",
              envoy="extauthz", baseline="latency_envoy_alone"),
    Contender("latency_envoy_extauthz", "latency", "Envoy + extauthz, cache off, paced",
              cache=False, envoy="extauthz", baseline="latency_envoy_alone"),
)  # fmt: skip
BY_NAME = {c.name: c for c in CONTENDERS}


@dataclass
class RunResult:
    rps: float
    requests: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # process label -> CPU seconds
    wall: float = 0.0
    commands: list[str] = field(default_factory=list)
    #: Latency runs: level label -> achieved rps (``"<label>|target"``: the rate asked);
    #: their ``latency_ms`` keys are ``"<label>|<percentile>"``.
    rates: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_request(self, label_prefix: str = "") -> float | None:
        total = sum(v for k, v in self.cpu.items() if k.startswith(label_prefix))
        return total / self.requests * 1e6 if self.requests else None


# ----------------------------------------------------------------- process management


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    port: int  # where the load generator or Envoy sends (the HTTP door's port for door="http")
    command: str
    workers: list[int] = field(default_factory=list)


def extauthz_config(
    c: Contender, keys: Keys, port: int, admin_port: int, http_port: int | None = None
) -> dict[str, Any]:
    server: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
    }
    if not c.cache:
        server["token_cache_size"] = 0
    if c.door == "grpc":
        server["grpc_threads"] = GRPC_THREADS
    if c.workers != 1:
        server["workers"] = c.workers
    provider: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": keys.jwks(),
        "algorithms": ["RS256", "ES256", "EdDSA"],
    }
    if http_port is not None:
        server["http"] = {"listen": f"127.0.0.1:{http_port}"}  # original_request: request
        provider["claims_to_headers"] = {USER_HEADER: "sub"}  # what the HTTP floors answer
    return {"server": server, "providers": {PROVIDER: provider}}


def wait_http(port: int, proc: subprocess.Popen[bytes], deadline: float, log: Path) -> None:
    """Something accepts TCP connections on ``port`` (the HTTP door or an HTTP floor)."""
    while True:
        rc = proc.poll()
        if rc is not None:
            raise BenchError(f"server exited with code {rc} during startup; {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"nothing listens on {port} in time ({exc}); {tail(log)}"
                ) from None
        time.sleep(0.05)


def start_server(c: Contender, keys: Keys, workdir: Path, tag: str) -> Started:
    port = free_port()
    http_port = free_port() if c.door == "http" and c.server == "extauthz" else None
    log = workdir / f"{tag}.server.log"
    cores = ALL_CORES if c.workers > 1 else SUT_CORES
    listen = ["--listen", f"127.0.0.1:{port}"]
    if c.server == "floor":
        cmd = [*taskset(cores), python(), "-m", "bench.floor", *listen]
    elif c.server == "floor_sync":
        threads = ["--threads", str(GRPC_THREADS)]
        cmd = [*taskset(cores), python(), "-m", "bench.floor", *listen, *threads]
    elif c.server == "peer":
        if importlib.util.find_spec("jwt") is None:
            raise NotAvailable("the peer needs PyJWT: pip install -e '.[bench]'")
        pem = workdir / f"{tag}.rs256.pem"
        pem.write_bytes(keys.keys["RS256"].as_pem(private=False))
        cmd = [*taskset(cores), python(), "-m", "bench.peer", *listen, "--public-key", str(pem)]
    elif c.server == "http_floor":
        cmd = [*taskset(cores), python(), "-m", "bench.http_floor", *listen]
    elif c.server == "http_floor_aiohttp":
        cmd = [*taskset(cores), python(), "-m", "bench.http_floor", *listen, "--impl", "aiohttp"]
    else:
        cfg_path = workdir / f"{tag}.extauthz.yaml"
        cfg = extauthz_config(c, keys, port, free_port(), http_port)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        cmd = [*taskset(cores), python(), "-m", "extauthz", "serve", "--config", str(cfg_path)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
    started = Started(proc, http_port or port, shlex.join(cmd))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        if c.server in FLOORS and FLOORS[c.server] == "http":
            wait_http(port, proc, deadline, log)
            return started
        try:
            wait_grpc_serving(port, proc, deadline, log)
            if http_port is not None:
                wait_http(http_port, proc, deadline, log)
        except BenchError as exc:
            if c.workers > 1:
                raise NotAvailable(f"workers not available: {exc}") from None
            raise
        if c.workers > 1:
            deadline = time.monotonic() + 10
            while len(started.workers) < c.workers:
                started.workers = listening_pids(proc.pid, port)
                if time.monotonic() > deadline:
                    raise NotAvailable(
                        f"workers not available: {len(started.workers)} process(es) listen on "
                        f"port {port}, expected {c.workers}"
                    )
                time.sleep(0.1)
    except BaseException:
        stop(proc)
        raise
    return started


def verify_server(c: Contender, port: int, keys: Keys) -> None:
    """Ask the server directly, on the door Envoy will use."""
    if c.door == "http":
        verify_http(c, port, keys)
    else:
        verify_grpc(c, port, keys)


def verify_http(c: Contender, port: int, keys: Keys) -> None:
    """The HTTP door (or floor) allows the sample token with the identity header, and
    extauthz denies a tampered token and a missing one with 401."""
    token = keys.sample(c.alg)

    def get(headers: dict[str, str]) -> Response:
        try:
            return http_request("127.0.0.1", port, "GET", "/bench", headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"request to the HTTP server failed: {exc!r}") from None

    for _ in range(2):  # the second one is a cache hit where a cache is on
        r = get({"authorization": f"Bearer {token}"})
        user = r.headers.get(USER_HEADER)
        if r.status != 200 or user != "bench-user":
            raise BenchError(f"valid {c.alg} token answered {r.status} with {USER_HEADER} "
                             f"{user!r}, expected 200 and 'bench-user'")  # fmt: skip
    if c.server == "extauthz":
        bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for what, headers in (("tampered", {"authorization": f"Bearer {bad}"}), ("no", {})):
            r = get(headers)
            if r.status != 401:
                raise BenchError(f"{what} token answered {r.status}, expected 401")


def verify_grpc(c: Contender, port: int, keys: Keys) -> None:
    """The sample request must get the expected decision before anything is timed."""
    token = keys.sample(c.alg)
    for attempt in range(2 if c.workers > 1 else 1):  # a second connection may hit another worker
        code = grpc_check(port, token)
        if code != GRPC_OK:
            raise BenchError(f"valid {c.alg} token answered gRPC code {code}, expected OK (0)")
        del attempt
    if c.server in ("extauthz", "peer"):
        bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        code = grpc_check(port, bad)
        if code != GRPC_UNAUTHENTICATED:
            raise BenchError(f"tampered token answered gRPC code {code}, expected 16")


def jwt_authn_config(keys: Keys, cache: bool) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(keys.jwks(["RS256"]))},
        "forward": True,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {
        "providers": {PROVIDER: provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": PROVIDER}}],
    }


def start_envoy(c: Contender, keys: Keys, workdir: Path, tag: str, authz_port: int) -> EnvoyProcess:
    jwt_authn = None
    if c.envoy in ("jwt_authn", "jwt_authn_cache"):
        jwt_authn = jwt_authn_config(keys, c.envoy == "jwt_authn_cache")
    config = bench_bootstrap(
        extauthz_port=authz_port, timeout="1s", ext_authz=c.envoy == "extauthz",
        jwt_authn=jwt_authn, http_service=c.door == "http",
    )  # fmt: skip
    envoy_dir = workdir / f"{tag}.envoy"
    shutil.rmtree(envoy_dir, ignore_errors=True)  # a stale admin-address file would mislead
    envoy = EnvoyProcess(config, workdir=envoy_dir, startup_timeout=STARTUP_TIMEOUT)
    try:
        envoy.start()
    except EnvoyStartError as exc:
        raise BenchError(str(exc)) from None
    assert envoy.proc is not None
    if ENVOY_CORES is not None:
        pin(envoy.proc.pid, ENVOY_CORES)
    return envoy


def verify_envoy(c: Contender, envoy: EnvoyProcess, keys: Keys) -> None:
    token = keys.sample(c.alg)
    for _ in range(2):  # the second one is a cache hit where a cache is on
        r = envoy.request("GET", "/bench", headers={"authorization": f"Bearer {token}"})
        if r.status != 200:
            raise BenchError(f"valid token through Envoy answered {r.status}, expected 200")
    if c.envoy != "alone" and c.server not in FLOORS:  # the floors allow everything
        try:
            r = envoy.request("GET", "/bench")
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"request without token failed: {exc}") from None
        if r.status != 401:
            raise BenchError(f"no token through Envoy answered {r.status}, expected 401")


# ----------------------------------------------------------------- one timed run

#: The open-loop latency rates: a fixed one, and this fraction of a measured maximum.
FIXED_RATE = 1000.0
MAX_FRACTION = 0.7
#: A contender skips another contender's 70 % level above this fraction of its own
#: maximum (it would measure its own overload, not latency); 1,000 rps always runs.
SKIP_ABOVE = 0.8


def max_level(name: str) -> str:
    """The label of the level at ``MAX_FRACTION`` of ``name``'s maximum."""
    return f"{MAX_FRACTION:.0%} of {name} max"


FIXED_LEVEL = f"{FIXED_RATE:,.0f} rps"


def _latency(c: Contender, url: str, token: str, workdir: Path, tag: str, duration: float,
             levels: Mapping[str, float] | None, commands: list[str]) -> RunResult:  # fmt: skip
    """Maximum (closed loop, ``duration / 2``), then each level (open loop)."""
    t0 = time.monotonic()
    span = max(1.0, duration / 2)
    top = drivers.run_wrk(drivers.wrk_command(url, token, span, cores=LOAD_CORES), span,
                          workdir / f"{tag}.max.wrk.txt")  # fmt: skip
    commands.append(f"{top.command}  # maximum: {top.rps:,.0f} rps")
    rates: dict[str, float] = {"max": top.rps}
    latency: dict[str, float] = {}
    requests = top.requests
    for i, (label, rate) in enumerate((levels or {}).items()):
        if label not in (FIXED_LEVEL, max_level(c.name)) and rate > SKIP_ABOVE * top.rps:
            continue  # over this contender's capacity: its own queue, not latency
        log_file = workdir / f"{tag}.level{i}.h2load.log"
        cmd = drivers.h2load_rate_command(url, token, rate, duration, log_file, cores=LOAD_CORES)
        res = drivers.run_h2load_rate(cmd, duration, workdir / f"{tag}.level{i}.h2load.txt",
                                      log_file)  # fmt: skip
        clients, per_client = drivers.rate_clients(rate)
        rates[label], rates[f"{label}|target"] = res.rps, clients * per_client
        latency.update({f"{label}|{p}": v for p, v in res.latency_ms.items()})
        requests += res.requests
        commands.append(f"{res.command}  # {label}")
    return RunResult(top.rps, requests, latency, {}, time.monotonic() - t0, commands, rates)


@contextmanager
def _measured(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    before = {label: cpu_snapshot(pid) for label, pid in pids.items()}
    out: dict[str, float] = {}
    yield out
    for label, pid in pids.items():
        delta = cpu_delta(before[label], cpu_snapshot(pid))
        if len(delta) == 1:
            out[label] = next(iter(delta.values()))
        else:
            for i, (p, secs) in enumerate(sorted(delta.items())):
                out[f"{label}[{i}:{p}]"] = secs


def run_once(c: Contender, keys: Keys, workdir: Path, tag: str, duration: float,
             warmup: float, levels: Mapping[str, float] | None = None) -> RunResult:  # fmt: skip
    """One timed run. A latency contender first measures its maximum (wrk, closed loop;
    also its warm-up), then, unless ``levels`` is None, runs at each rate of ``levels``
    (label -> requests per second) open loop."""
    server: Started | None = None
    envoy: EnvoyProcess | None = None
    try:
        if c.server is not None:
            server = start_server(c, keys, workdir, tag)
            verify_server(c, server.port, keys)
        token = keys.sample(c.alg)
        if c.group == "grpc":
            assert server is not None
            body = workdir / f"{c.alg.lower()}.check.bin"
            body.write_bytes(grpc_body(check_request(token)))
            load_cores = ALL_CORES if c.workers > 1 else LOAD_CORES
            if warmup > 0:
                drivers.run_h2load(
                    drivers.h2load_command(server.port, body, warmup, cores=load_cores),
                    warmup, workdir / f"{tag}.warmup.txt",
                )  # fmt: skip
            cmd = drivers.h2load_command(server.port, body, duration, cores=load_cores)
            pids = {"server": server.proc.pid}
            t0 = time.monotonic()
            with _measured(pids) as cpu:
                res = drivers.run_h2load(cmd, duration, workdir / f"{tag}.h2load.txt")
            wall = time.monotonic() - t0
            if c.workers > 1:  # only the listening workers (a supervisor would do nothing)
                cpu = {k: v for k, v in cpu.items() if any(f":{p}]" in k for p in server.workers)}
                cpu = cpu or {"server": 0.0}
            return RunResult(res.rps, res.requests, {}, cpu, wall, [server.command, res.command])
        envoy = start_envoy(c, keys, workdir, tag, server.port if server else 0)
        verify_envoy(c, envoy, keys)
        url = f"http://127.0.0.1:{envoy.port}/bench"
        assert envoy.proc is not None
        # Popen.args is typed as any command form; EnvoyProcess starts it from a list[str].
        envoy_args: list[str] = list(envoy.proc.args)  # type: ignore[arg-type]
        pids = {"envoy": envoy.proc.pid}
        if server is not None:
            pids["server"] = server.proc.pid
        envoy_cmd = shlex.join(str(a) for a in envoy_args)
        commands = [f"{envoy_cmd}  # then: taskset -a -p -c {ENVOY_CORES} <envoy pid>"]
        if server is not None:
            commands.insert(0, server.command)
        if c.group == "latency":
            return _latency(c, url, token, workdir, tag, duration, levels, commands)
        if warmup > 0:
            drivers.run_wrk(drivers.wrk_command(url, token, warmup, cores=LOAD_CORES),
                            warmup, workdir / f"{tag}.warmup.txt")  # fmt: skip
        cmd = drivers.wrk_command(url, token, duration, cores=LOAD_CORES)
        t0 = time.monotonic()
        with _measured(pids) as cpu:
            res = drivers.run_wrk(cmd, duration, workdir / f"{tag}.wrk.txt")
        wall = time.monotonic() - t0
        commands.append(res.command)
        return RunResult(res.rps, res.requests, res.latency_ms, cpu, wall, commands)
    finally:
        if envoy is not None:
            envoy.stop()
        if server is not None:
            stop(server.proc)
