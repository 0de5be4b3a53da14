"""Load generators: h2load (gRPC over h2c, direct) and wrk (HTTP/1.1 through Envoy).

Each runs as a subprocess pinned with ``taskset``; output is parsed strictly (a line
we cannot find is an error, never a zero).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import CHECK_PATH, BenchError, taskset

H2LOAD_CLIENTS = 16
H2LOAD_STREAMS = 8
WRK_CONNECTIONS = 32
PACED_CONNECTIONS = 10
PACED_DELAY_MS = 10


@dataclass
class LoadResult:
    rps: float
    requests: int
    ok: int  # succeeded + 2xx (h2load) / non-error 2xx-3xx (wrk)
    bad: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # "50", "90", "99" ...
    command: str = ""


def _num(pattern: str, text: str, what: str) -> str:
    m = re.search(pattern, text, re.M)
    if not m:
        raise BenchError(f"cannot parse {what} from load generator output:\n{text[-1500:]}")
    return m.group(1)


def h2load_command(
    port: int, body: Path, duration: float, *, cores: str | None,
    clients: int = H2LOAD_CLIENTS, streams: int = H2LOAD_STREAMS,
) -> list[str]:  # fmt: skip
    return [
        *taskset(cores),
        "h2load",
        "-d", str(body),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "-c", str(clients),
        "-m", str(streams),
        "-t", "1",
        "-D", f"{max(1, round(duration * 1000))}ms",
        f"http://127.0.0.1:{port}{CHECK_PATH}",
    ]  # fmt: skip


def parse_h2load(out: str) -> LoadResult:
    rps = float(_num(r"^finished in [\d.]+m?s, ([\d.]+) req/s", out, "req/s"))
    total = int(_num(r"^requests: (\d+) total", out, "requests total"))
    succeeded = int(_num(r"^requests: .* (\d+) succeeded", out, "succeeded"))
    failed = int(_num(r"^requests: .* (\d+) failed", out, "failed"))
    errored = int(_num(r"^requests: .* (\d+) errored", out, "errored"))
    ok2xx = int(_num(r"^status codes: (\d+) 2xx", out, "2xx"))
    return LoadResult(rps, total, min(succeeded, ok2xx), failed + errored + (succeeded - ok2xx))


def run_h2load(cmd: list[str], duration: float, log: Path) -> LoadResult:
    return _run("h2load", cmd, duration, log, parse_h2load, need_ok=True, bad_what="failed/non-2xx")


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def wrk_command(
    url: str, token: str | None, duration: float, *, cores: str | None,
    connections: int = WRK_CONNECTIONS, script: Path | None = None,
) -> list[str]:  # fmt: skip
    cmd = [*taskset(cores), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--latency"]  # fmt: skip
    if token is not None:
        cmd += ["-H", f"authorization: Bearer {token}"]
    if script is not None:
        cmd += ["-s", str(script)]
    return [*cmd, url]


def parse_wrk(out: str) -> LoadResult:
    rps = float(_num(r"^Requests/sec:\s+([\d.]+)", out, "Requests/sec"))
    total = int(_num(r"^\s+(\d+) requests in", out, "requests"))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(x) for x in m.groups()) if m else 0
    lat = {
        pct: _ms(v, unit)
        for pct, v, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    if "50" not in lat or "99" not in lat:
        raise BenchError(f"cannot parse wrk latency distribution:\n{out[-1500:]}")
    return LoadResult(rps, total, total - non2xx, non2xx + sock, lat)


def run_wrk(cmd: list[str], duration: float, log: Path) -> LoadResult:
    return _run(
        "wrk", cmd, duration, log, parse_wrk, need_ok=False, bad_what="non-2xx/socket errors"
    )


def _run(
    tool: str,
    cmd: list[str],
    duration: float,
    log: Path,
    parse: Callable[[str], LoadResult],
    *,
    need_ok: bool,
    bad_what: str,
) -> LoadResult:
    """Run a load generator, keep its output, and refuse a run with any failed request."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    log.write_text(f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        raise BenchError(f"{tool} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    res = parse(proc.stdout)
    res.command = shlex.join(cmd)
    if res.requests == 0 or (need_ok and res.ok == 0):
        what = "successful request" if need_ok else "request"
        raise BenchError(f"{tool} completed no {what}; see {log}")
    if res.bad:
        raise BenchError(f"{tool}: {res.bad} {bad_what} of {res.requests}; see {log}")
    return res


PACE_LUA = f"""-- fixed-rate pacing: each connection waits {PACED_DELAY_MS} ms between requests
function delay()
  return {PACED_DELAY_MS}
end
"""
