"""Run the extauthz command line as a user would (a subprocess of this interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def extauthz(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def fresh_shell_env() -> dict[str, str]:
    """The environment of a new shell in which the venv was never activated.

    No PATH entry holds an ``extauthz`` executable (the venv's bin directory included),
    and VIRTUAL_ENV is unset: a command that works here does not rely on either.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    dirs = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if d]
    env["PATH"] = os.pathsep.join(
        d for d in dirs if not os.access(os.path.join(d, "extauthz"), os.X_OK)
    )
    return env
