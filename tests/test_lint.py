"""The checks a maintainer runs by hand hold on every suite run: ruff's lint and format,
and mypy --strict over the package, the tests and the benchmark (pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is a test dependency (pip install -e '.[test]') but is missing")
    return found


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_the_code_passes_its_own_checks(command: list[str], tmp_path: Path) -> None:
    tool, *args = command
    if tool == "mypy":
        args += ["--cache-dir", str(tmp_path / "mypy-cache")]  # a cold run, as CI's
    out = subprocess.run(
        [_tool(tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
