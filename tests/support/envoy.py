"""A real Envoy in front of an upstream, asking a real extauthz, for the tests.

Starts from the demo's bootstrap (``extauthz.dev.envoy_config``) and adds what tests
need: per-route ``context_extensions``, raw header encoding, a JSON access log in the
workdir, and clients for requests, stats and the access log.

::

    with EchoUpstream() as up, EnvoyProcess(extauthz_port=p, upstream_port=up.port) as envoy:
        resp = envoy.request("GET", "/anything", headers={"authorization": "Bearer ..."})
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from extauthz.dev import envoy_config
from extauthz.dev.envoy import EnvoyProcess as _Envoy
from extauthz.dev.envoy import envoy_binary
from extauthz.errors import EnvoyStartError
from tests.support.http import Response, http_request

__all__ = ["EnvoyProcess", "EnvoyStartError", "Response", "envoy_binary", "http_request"]

_POLL = 0.05


def add_context_extensions(
    bootstrap: dict[str, Any], routes: Sequence[tuple[str, Mapping[str, str]]]
) -> None:
    """Routes whose Check carries ``context_extensions`` (before the catch-all route)."""
    vhost = envoy_config.connection_manager(bootstrap)["route_config"]["virtual_hosts"][0]
    extra = [
        envoy_config.route(
            prefix,
            {"check_settings": {"context_extensions": {str(k): str(v) for k, v in ext.items()}}},
        )
        for prefix, ext in routes
    ]
    vhost["routes"][-1:-1] = extra


class EnvoyProcess(_Envoy):
    """A real Envoy with extauthz at ``127.0.0.1:extauthz_port`` in front of
    ``127.0.0.1:upstream_port``; ``config_hook`` may change the bootstrap before start."""

    def __init__(
        self,
        *,
        extauthz_port: int,
        upstream_port: int,
        listen_port: int = 0,
        listen_host: str = "127.0.0.1",
        timeout: str = "1s",
        unprotected_prefixes: Sequence[str] = (),
        context_extensions: Sequence[tuple[str, Mapping[str, str]]] = (),
        encode_raw_headers: bool = False,
        config_hook: Callable[[dict[str, Any]], None] | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
    ) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="envoy-"))
        self.access_log_path = workdir / "access.log"
        config = envoy_config.bootstrap(
            extauthz_port=extauthz_port,
            upstream_port=upstream_port,
            listen_port=listen_port,
            listen_host=listen_host,
            timeout=timeout,
            unprotected_prefixes=unprotected_prefixes,
            access_log_path=str(self.access_log_path),
        )
        if context_extensions:
            add_context_extensions(config, context_extensions)
        if encode_raw_headers:
            # Headers as raw bytes (header_map) instead of the string map.
            envoy_config.ext_authz_settings(config)["encode_raw_headers"] = True
        if config_hook is not None:
            config_hook(config)
        super().__init__(
            config,
            workdir=workdir,
            startup_timeout=startup_timeout,
            log_level=log_level,
            extra_args=extra_args,
        )
        self._final_access_log: str | None = None

    def stop(self) -> None:
        # Keep the access log readable after exit, then clean up.
        with contextlib.suppress(FileNotFoundError):
            self._final_access_log = self.access_log_path.read_text()
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
