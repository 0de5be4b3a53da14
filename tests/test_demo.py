"""`extauthz demo` as a new user runs it: the printed curl commands behave as printed."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.envoy


def _read_banner(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"demo exited early: {''.join(lines)}")
        lines.append(line.rstrip("\n"))
        if line.startswith("curl") and "extauthz token" in line:
            return lines
    raise AssertionError("demo did not print its curl commands in time")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl, as the README does")
def test_demo_curl_commands_behave_as_printed(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "demo", "--port", "0", "--rotate-every", "5s"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "demo.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        lines = _read_banner(proc, time.monotonic() + 60)
        pairs = [
            (int(m.group(1)), cmd)
            for comment, cmd in itertools.pairwise(lines)
            if cmd.startswith("curl") and (m := re.search(r"-> (\d{3})", comment))
        ]
        assert len(pairs) >= 7, lines
        port = int(re.search(r"envoy\s+http://127\.0\.0\.1:(\d+)", "\n".join(lines)).group(1))  # type: ignore[union-attr]
        for expected, cmd in pairs:
            probe = cmd.replace("curl -i", "curl -s -o /dev/null -w '%{http_code}'", 1)
            out = subprocess.run(
                ["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=30
            )
            assert out.stdout == str(expected), f"{cmd[:120]}... gave {out.stdout} {out.stderr}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        # Ctrl-C stopped Envoy too: its listener is gone.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
