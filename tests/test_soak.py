"""The CI-sized soak (`python -m bench.soak`): mixed traffic through Envoy with rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SECONDS = os.environ.get("EXTAUTHZ_SOAK_SECONDS", "60")


def test_soak_has_no_wrong_decisions_no_5xx_and_flat_resources(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--duration",
            SECONDS,
            "--rotate-every",
            "15",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=float(SECONDS) + 120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.exists(), run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 1000
    assert report["rotations"] >= 1
    assert report["wrong_decisions"] == 0, report["wrong_examples"]
    assert report["errors_5xx"] == 0, report["wrong_examples"]
    assert report["rss_growth_pct"] <= 10, report
    assert report["fds_end"] - report["fds_start"] <= 5, report
    assert run.returncode == 0
