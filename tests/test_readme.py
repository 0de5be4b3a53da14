"""The README's promises: its commands are the ones CI runs, and its config is valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _test_command() -> str:
    block = re.search(r"# 2\. the whole test suite.*?\n(.+?)\n", README)
    assert block, "README lost its test command"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _test_command() in ci


def test_readme_minimal_config_is_valid(tmp_path: Path) -> None:
    yaml_block = re.search(r"```yaml\n# config.yaml\n(.+?)```", README, re.S)
    assert yaml_block
    path = tmp_path / "config.yaml"
    path.write_text(yaml_block.group(1))
    out = subprocess.run(
        [sys.executable, "-m", "extauthz", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "issuer https://my-api-a32f34.zuplo.api/__zuplo/issuer" in out.stdout
