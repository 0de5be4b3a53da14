"""A real Prometheus server (the Debian package ``prometheus``; ``.ci/run`` installs it)
for the tests: on a loopback port, scraping and evaluating every second, with its
storage in a directory of its own; and ``promtool``."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from tests.support.http import http_request
from tests.support.proxies import free_port

STARTUP = 60.0  # generous: CI has two busy cores


def _binary(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it: apt-get install prometheus)")
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


class QueryError(AssertionError):
    """Prometheus refused a query (``error_type`` is its errorType, e.g. ``bad_data``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 scraping ``targets`` (``host:port`` of /metrics) and
    evaluating ``rule_files``, both every second. ``start()`` picks a free port (another
    one if it was taken meanwhile); ``stop()`` ends the process."""

    def __init__(self, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path]) -> None:
        self.binary = _binary("prometheus")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "prometheus.log"
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": [
                        {
                            "job_name": "extauthz",
                            "scrape_timeout": "1s",
                            "static_configs": [{"targets": list(targets)}],
                        }
                    ],
                }
            )
        )
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        assert self.proc is None, "already running"
        deadline = time.monotonic() + STARTUP
        while True:
            port = free_port()
            seen = self.log.stat().st_size if self.log.exists() else 0
            if self._try(port):
                return self
            with self.log.open("rb") as log:
                log.seek(seen)
                tail = log.read().decode(errors="replace")[-3000:]
            if "address already in use" not in tail.lower() or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start on {port}:\n{tail}")

    def _try(self, port: int) -> bool:
        """True once this prometheus is ready on ``port``; False if it exited first."""
        args = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.port = port
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                if http_request("127.0.0.1", port, "GET", "/-/ready", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)  # poll interval, not synchronisation
        self.stop()
        raise AssertionError(f"prometheus on {port} was not ready within {STARTUP}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP API ----------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """``data`` of a /api/v1 answer; :class:`QueryError` when Prometheus refuses."""
        target = f"/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
        answer = http_request("127.0.0.1", self.port, "GET", target, timeout=30).json()
        if answer.get("status") != "success":
            raise QueryError(answer.get("errorType", "?"), answer.get("error", ""))
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector's samples, or a scalar as one)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Pending and firing alerts named ``name``."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]
