"""`extauthz demo` as a new user runs it (README, first command): every printed command
works as printed, pasted into a fresh shell where the venv's bin directory is not on
PATH and the cwd is elsewhere, and answers what its comment says.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO, fresh_shell_env

pytestmark = pytest.mark.envoy

VALIDITY = re.compile(r"^# tokens below are valid for (\d+) min, until (\d\d:\d\d) UTC")


class Lines:
    """The demo's stdout, line by line, read in a thread so waits have a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            with stream:  # closed at EOF, when the demo and its children have exited
                for line in stream:
                    self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, done: Any, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("demo exited early:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if done(line):
                return self.seen
        raise AssertionError("demo did not print its commands in time:\n" + "\n".join(self.seen))


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _bearer(cmd: str) -> str:
    m = re.search(r"Bearer ([\w-]+\.[\w-]+\.[\w-]+)", cmd)
    assert m, cmd
    return m.group(1)


def _run_as_printed(cmd: str, cwd: Path, env: dict[str, str]) -> tuple[list[int], str]:
    """The command, verbatim, in a new bash; returns (HTTP status, curl -i output)."""
    out = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=30
    )
    assert out.returncode == 0, f"{cmd[:160]}... exited {out.returncode}: {out.stderr[-500:]}"
    assert "Traceback" not in out.stderr, out.stderr
    # `curl -i` status lines, and bare codes from `curl -w '%{http_code}\\n'`, in order.
    statuses = [int(code) for code in re.findall(r"^(?:HTTP/[\d.]+ )?(\d{3})\b", out.stdout, re.M)]
    assert statuses, f"{cmd[:160]}... printed no HTTP status: {out.stdout[:300]} {out.stderr}"
    return statuses, out.stdout


def _check_expectation(comment: str, statuses: list[int], output: str, cmd: str) -> None:
    """`# what -> NNN[, then NNN]... more`: the statuses, and each quoted fragment."""
    m = re.search(r"-> (\d{3}(?:, then \d{3})*)(.*)", comment)
    assert m, comment
    want = [int(code) for code in re.findall(r"\d{3}", m.group(1))]
    assert statuses == want, f"{comment}\n{cmd[:160]}...\ngave {statuses}:\n{output}"
    rest = m.group(2)
    for fragment in re.findall(r'[\w-]+="[^"]*"|"[^"]+"', rest):
        text = fragment.strip('"') if fragment.startswith('"') else fragment
        assert text in output, f"{comment}: {text!r} not in\n{output}"
    user = re.search(r"x-user-id: (\w+)", rest)
    if user:
        assert f'"x-user-id": "{user.group(1)}"' in output, output


def _kids(jwks_url: str) -> set[str]:
    with urllib.request.urlopen(jwks_url, timeout=5) as resp:
        return {k["kid"] for k in json.load(resp)["keys"]}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl, as the README does")
def test_demo_commands_work_as_printed_in_a_fresh_shell(tmp_path: Path) -> None:
    shell_env = fresh_shell_env()
    assert shutil.which("extauthz", path=shell_env["PATH"]) is None
    # As the README runs it: the venv's console script, by path, from the checkout.
    script = Path(sys.executable).parent / "extauthz"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "extauthz"]
    with open(tmp_path / "demo.log", "w") as stderr:  # the child keeps its own copy
        proc = subprocess.Popen(
            [*command, "demo", "--port", "0", "--rotate-every", "5s"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=shell_env,
            start_new_session=True,
        )
    try:
        reader = Lines(proc)
        reader.until(lambda line: "token not active" in line, 60)
        lines = reader.until(lambda line: line.startswith("curl "), 10)
        started = time.time()
        text = "\n".join(lines)
        port = int(re.search(r"envoy\s+http://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        issuer = re.search(r"dev issuer\s+(http://127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]

        # How long the printed tokens stay valid is said, and true.
        validity = [m for line in lines if (m := VALIDITY.match(line))]
        assert len(validity) == 1, text
        assert int(validity[0].group(1)) >= 55
        pairs = [
            (comment, cmd)
            for comment, cmd in itertools.pairwise(lines)
            if comment.startswith("#") and "->" in comment and cmd.startswith(("curl ", "T="))
        ]
        by_comment = {comment: cmd for comment, cmd in pairs}
        valid = _claims(_bearer(next(c for k, c in pairs if k.startswith("# valid token"))))
        assert valid["exp"] >= started + 55 * 60
        assert time.strftime("%H:%M", time.gmtime(valid["exp"])) == validity[0].group(2)
        expired = _claims(_bearer(next(c for k, c in pairs if k.startswith("# expired token"))))
        assert expired["exp"] < started - 60  # beyond the 60 s clock skew

        # Every command, exactly as printed: the `$(... token ...)` one included, and the
        # DPoP ones, which sign their proof when run.
        assert len(pairs) >= 13, text
        opaque = [cmd for comment, cmd in pairs if "token not active" in comment]
        assert len(opaque) == 1 and "/revoke" in opaque[0], text
        fresh = [cmd for _, cmd in pairs if " token --issuer " in cmd]
        assert len(fresh) == 1 and "$(" in fresh[0], text
        dpop = [cmd for _, cmd in pairs if " dpop-proof " in cmd]
        assert len(dpop) == 2 and all('-H "Authorization: DPoP $T"' in c for c in dpop), text
        for comment, cmd in pairs:
            statuses, output = _run_as_printed(cmd, tmp_path, shell_env)
            _check_expectation(comment, statuses, output, cmd)

        # After the signing key has rotated away, the printed tokens still work.
        first = _kids(f"{issuer}/.well-known/jwks.json")
        deadline = time.monotonic() + 30
        while not (_kids(f"{issuer}/.well-known/jwks.json") - first):
            assert time.monotonic() < deadline, "the dev issuer did not rotate"
            time.sleep(0.2)
        for comment, cmd in by_comment.items():
            if comment.startswith(("# valid token", "# a fresh token", "# sent with a proof")):
                statuses, output = _run_as_printed(cmd, tmp_path, shell_env)
                _check_expectation(comment, statuses, output, cmd)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        # Ctrl-C stopped Envoy too: its listener is gone.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
