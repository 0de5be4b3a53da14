"""`extauthz serve` as a real subprocess, as an operator runs it (JSON logs in a file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.http import http_request
from tests.support.server import wait_for


class ServeProcess:
    """`extauthz serve` as a subprocess with JSON logs in a file."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        cfg: dict[str, Any],
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.config = tmp / f"{name}.yaml"
        self.log = tmp / f"{name}.log"
        self.write(cfg)
        with self.log.open("w") as stderr:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "extauthz", "serve", "--config", str(self.config)],
                stderr=stderr,
                env={**os.environ, "EXTAUTHZ_LOG_FORMAT": "json", **(env or {})},
            )
        try:
            wait_for(self._started, 30, f"{name} start")
        except BaseException:
            self.stop()  # a failed start must not leave the process running
            raise
        started = self.event("started")
        assert started is not None
        self.grpc_port = int(started["grpc"].rpartition(":")[2])
        self.admin_port = int(started["admin"].rpartition(":")[2]) if started["admin"] else 0

    def _started(self) -> bool:
        assert self.proc.poll() is None, f"extauthz exited during startup: {self.log.read_text()}"
        return self.event("started") is not None

    def ready(self) -> bool:
        try:
            return http_request("127.0.0.1", self.admin_port, "GET", "/readyz").status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every provider has keys (before that, a valid token is a 503)."""
        wait_for(self.ready, timeout, "extauthz readiness (/readyz 200)")

    def write(self, cfg: dict[str, Any] | str) -> None:
        """Replace the config file: a mapping (dumped as YAML) or the exact text."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg) if isinstance(cfg, dict) else cfg)
        tmp.replace(self.config)  # atomic, like a ConfigMap update

    def events(self) -> list[dict[str, Any]]:
        """Every complete JSON log line so far (a line still being written is not)."""
        text = self.log.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events()) if e.get("event") == name), None)

    def count(self, name: str) -> int:
        return sum(e.get("event") == name for e in self.events())

    def metric(self, prefix: str) -> float:
        text = http_request("127.0.0.1", self.admin_port, "GET", "/metrics").text
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))

    def stop(self) -> None:
        """SIGTERM first (a supervisor then stops its workers too), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
