"""Load generators: h2load (gRPC over h2c, direct), wrk (HTTP/1.1 through Envoy, as
fast as it can: closed loop) and h2load at a constant rate (HTTP/1.1 through Envoy,
``--h1 --rps``: open loop, for latency).

Each runs as a subprocess pinned with ``taskset``; output is parsed strictly (a line
we cannot find is an error, never a zero).
"""

from __future__ import annotations

import math
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
#: Open loop: each h2load client (one HTTP/1.1 connection) asks at most this many
#: requests per second. h2load's rate timer ticks every max(10 ms, 1/rps) per client, so
#: at 100 rps a client sends one request per tick, and a client waits for an answer
#: (one request at a time on HTTP/1.1) only if it takes longer than 10 ms.
RATE_PER_CLIENT = 100
TICK_MS = 1000 // RATE_PER_CLIENT


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
    connections: int = WRK_CONNECTIONS,
) -> list[str]:  # fmt: skip
    cmd = [*taskset(cores), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--latency"]  # fmt: skip
    if token is not None:
        cmd += ["-H", f"authorization: Bearer {token}"]
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


def rate_clients(rate: float) -> tuple[int, int]:
    """(clients, requests per second of each, a whole number) for about ``rate``
    requests per second in all (within half a request per second per client)."""
    clients = max(1, math.ceil(rate / RATE_PER_CLIENT))
    return clients, max(1, round(rate / clients))


def h2load_rate_command(
    url: str, token: str | None, rate: float, duration: float, log_file: Path, *,
    cores: str | None,
) -> list[str]:  # fmt: skip
    """HTTP/1.1 at a constant ``rate``: h2load sends on schedule whether or not answers
    came back (open loop), and writes every request's time to ``log_file``.

    h2load's rate timer ticks per client, from its connection on; clients connected
    together would send together (10 requests at once every 10 ms at 1,000 rps). So the
    clients connect a tenth of them per millisecond (``-r``; ``--rate-period`` takes
    whole milliseconds), over the 10 ms of one tick, and their requests interleave: at
    1,000 rps one per millisecond. ``-n`` (not ``-D``, which excludes ``-r``) sets the
    length."""
    clients, per_client = rate_clients(rate)
    per_ms = math.ceil(clients / TICK_MS)
    total = max(clients, round(clients * per_client * duration))
    cmd = [*taskset(cores), "h2load", "--h1", "-t", "1", "-c", str(clients),
           "-r", str(per_ms), "--rate-period", "1ms", "--rps", str(per_client),
           "-n", str(total), "--log-file", str(log_file)]  # fmt: skip
    if token is not None:
        cmd += ["-H", f"authorization: Bearer {token}"]
    return [*cmd, url]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (p99 of 10,000: the 9,900th)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_rate_log(text: str) -> tuple[list[float], int]:
    """(request times in ms of the 2xx answers, ascending; count of the others) from
    h2load's ``--log-file``: start µs since the epoch, status (-1: failed), µs to the
    end of the response, tab-separated."""
    times: list[float] = []
    bad = 0
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        if 200 <= int(cols[1]) < 300:
            times.append(int(cols[2]) / 1000)
        else:
            bad += 1
    times.sort()
    return times, bad


def run_h2load_rate(cmd: list[str], duration: float, log: Path, log_file: Path) -> LoadResult:
    """Run :func:`h2load_rate_command`; percentiles are computed from every request's
    time in ``log_file`` (not h2load's summary, which has no percentiles)."""
    res = _run("h2load", cmd, duration, log, parse_h2load, need_ok=True,
               bad_what="failed/non-2xx")  # fmt: skip
    times, bad = parse_rate_log(log_file.read_text(encoding="utf-8"))
    if bad or not times:
        raise BenchError(f"h2load --log-file: {bad} failed/non-2xx, {len(times)} 2xx; see {log}")
    starts = [int(line.split("\t", 1)[0]) for line in log_file.read_text().splitlines() if line]
    span_s = (max(starts) - min(starts)) / 1e6
    if span_s > 0:  # the rate achieved while sending (h2load's req/s counts the wait after)
        res.rps = (len(starts) - 1) / span_s
    res.latency_ms = {p: percentile(times, float(p)) for p in PERCENTILES}
    res.latency_ms["max"] = times[-1]
    return res


PERCENTILES = ("50", "90", "99", "99.9")
