"""Real NGINX, Caddy and Envoy (``http_service``) in front of an upstream, asking a real
extauthz HTTP door, with configs derived from the shipped examples.

Each config is the example file itself with only what a test must change substituted:
the listen port, the addresses of extauthz and the upstream, and where a process may
write (pid, logs, temporary files, Caddy's storage). Every substitution must find its
text exactly once, so an edited example breaks the derivation loudly instead of the
tests proving a copy.

NGINX and Caddy cannot bind port 0 and report the port: a free port is picked by
binding and releasing it, and a start that loses the race (address in use) is retried
on another. Readiness is polled against a deadline; stop is graceful, then a kill.

::

    with NginxProcess(tmp_path, extauthz_port=p, upstream_port=up.port) as nginx:
        reply = nginx.request("GET", "/x", [("authorization", "Bearer ...")])
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

REPO = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = REPO / "examples" / "nginx.conf"
CADDY_EXAMPLE = REPO / "examples" / "Caddyfile"
TRAEFIK_EXAMPLE = REPO / "examples" / "traefik.yml"
ENVOY_EXAMPLE = REPO / "envoy" / "http-service.yaml"
ENVOY_MTLS_EXAMPLE = REPO / "envoy" / "mtls.yaml"
#: Where envoy/mtls.yaml reads its PEM files (tests substitute their own).
EXAMPLE_CERTS = "/etc/envoy/certs/"
MTLS_FILES = ("server.crt", "server.key", "client-ca.crt")

#: The addresses the examples point at (tests substitute them).
EXAMPLE_EXTAUTHZ = "127.0.0.1:9193"
EXAMPLE_UPSTREAM = "127.0.0.1:8080"

_POLL = 0.02


class ProxyStartError(RuntimeError):
    """A proxy did not start (its log tail is in the message)."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


def caddy_binary() -> str | None:
    return shutil.which("caddy")


def free_port() -> int:
    """A loopback port nothing listened on a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its single ``old`` replaced: the example must still contain it."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"expected {old!r} once in the example, found it {count} times")
    return text.replace(old, new)


# -- a client that can repeat headers --------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    header_list: list[tuple[str, str]]  # as received, in order
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k.lower() == name.lower()]


def send(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    host: str = "api.example",
    body: bytes | None = None,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:port; headers may repeat, sent as given. With
    ``tls``, over TLS with that context (the server's name checked: 127.0.0.1)."""
    conn = (
        http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        if tls is None
        else http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    )
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        pairs = [(k, v) for k, v in resp.getheaders()]
        merged: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return Reply(resp.status, merged, pairs, data)
    finally:
        conn.close()


# -- configs derived from the examples -------------------------------------------------
def nginx_config(*, listen_port: int, extauthz_port: int, upstream_port: int, workdir: Path) -> str:
    """examples/nginx.conf on loopback ports, writing only inside ``workdir``."""
    text = NGINX_EXAMPLE.read_text()
    text = replace_once(text, f"server {EXAMPLE_EXTAUTHZ};", f"server 127.0.0.1:{extauthz_port};")
    text = replace_once(text, f"server {EXAMPLE_UPSTREAM};", f"server 127.0.0.1:{upstream_port};")
    text = replace_once(text, "listen 8000;", f"listen 127.0.0.1:{listen_port};")
    text = replace_once(
        text, "access_log /var/log/nginx/access.log extauthz;",
        f"access_log {workdir / 'access.log'} extauthz;",
    )  # fmt: skip
    text = replace_once(text, "worker_processes auto;", "worker_processes 1;")
    # Temporary files inside the workdir (the compiled-in /var/lib/nginx needs root).
    temp = "".join(
        f"\n    {kind}_temp_path {workdir / ('tmp_' + kind)};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return replace_once(text, "\nhttp {", "\nhttp {" + temp)


def caddy_config(*, listen_port: int, extauthz_port: int, upstream_port: int, workdir: Path) -> str:
    """examples/Caddyfile on a loopback port, admin endpoint off, storage in ``workdir``."""
    text = CADDY_EXAMPLE.read_text()
    text = replace_once(
        text, f"forward_auth {EXAMPLE_EXTAUTHZ} {{", f"forward_auth 127.0.0.1:{extauthz_port} {{"
    )
    text = replace_once(
        text, f"reverse_proxy {EXAMPLE_UPSTREAM}\n", f"reverse_proxy 127.0.0.1:{upstream_port}\n"
    )
    text = replace_once(text, "\n:8000 {", f"\n:{listen_port} {{")
    options = (
        "{\n\tadmin off\n\tdefault_bind 127.0.0.1\n"
        f"\tstorage file_system {workdir / 'storage'}\n}}\n\n"
    )
    return options + text  # global options must be the first block


def _on_loopback(
    config: dict[str, Any], listen_port: int, ports: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """An example Envoy config moved to loopback port 0 (listener and admin), each
    cluster named in ``ports`` (name -> (the example's port, ours)) pointed at ours;
    returns its HTTP connection manager."""
    admin = config["admin"]["address"]["socket_address"]
    assert admin == {"address": "127.0.0.1", "port_value": 9901}
    admin["port_value"] = 0
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == listen_port
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    ports = dict(ports)
    for cluster in config["static_resources"]["clusters"]:
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        example, port = ports.pop(cluster["name"])
        assert address == {"address": "127.0.0.1", "port_value": example}
        address["port_value"] = port
    assert not ports, f"clusters missing from the example: {sorted(ports)}"
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _log_to_file(manager: dict[str, Any], access_log: Path) -> None:
    """The example's stdout access log, same format, into ``access_log``."""
    (log,) = manager["access_log"]
    assert log["name"] == "envoy.access_loggers.stdout"
    log["name"] = "envoy.access_loggers.file"
    log["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(access_log),
        "log_format": log["typed_config"]["log_format"],
    }


def envoy_bootstrap(*, extauthz_port: int, upstream_port: int, access_log: Path) -> dict[str, Any]:
    """envoy/http-service.yaml on loopback port 0 (admin too), with its access log (same
    format) in a file instead of stdout."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_EXAMPLE.read_text())
    manager = _on_loopback(
        config, 10000, {"extauthz_http": (9193, extauthz_port), "upstream": (8080, upstream_port)}
    )
    ext_authz = manager["http_filters"][0]["typed_config"]
    server_uri = ext_authz["http_service"]["server_uri"]
    server_uri["uri"] = replace_once(
        server_uri["uri"], f"http://{EXAMPLE_EXTAUTHZ}", f"http://127.0.0.1:{extauthz_port}"
    )
    _log_to_file(manager, access_log)
    return config


def envoy_mtls_bootstrap(
    *, extauthz_port: int, upstream_port: int, certs: Path, access_log: Path
) -> dict[str, Any]:
    """envoy/mtls.yaml on loopback port 0 (admin too), reading its PEM files
    (server.crt, server.key, client-ca.crt) from ``certs`` instead of
    /etc/envoy/certs/, with its access log (same format) in a file."""
    text = ENVOY_MTLS_EXAMPLE.read_text()
    for name in MTLS_FILES:
        replace_once(text, f"{{ filename: {EXAMPLE_CERTS}{name} }}", "")  # each read once
    config: dict[str, Any] = yaml.safe_load(text.replace(EXAMPLE_CERTS, f"{certs}/"))
    manager = _on_loopback(
        config, 10443, {"extauthz": (9191, extauthz_port), "upstream": (8080, upstream_port)}
    )
    _log_to_file(manager, access_log)
    return config


# -- processes -------------------------------------------------------------------------
class _Proxy:
    """A proxy process on a loopback port it was told to use; retried on another port
    when that one was taken meanwhile."""

    name = "proxy"

    def __init__(
        self, workdir: Path, *, extauthz_port: int, upstream_port: int,
        startup_timeout: float = 20.0, attempts: int = 5,
    ) -> None:  # fmt: skip
        self.workdir = workdir
        self.extauthz_port = extauthz_port
        self.upstream_port = upstream_port
        self.startup_timeout = startup_timeout
        self.attempts = attempts
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    # subclasses ------------------------------------------------------------------------
    def _prepare(self, port: int) -> list[str]:
        """Write the config for ``port``; the command line to run."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _started(self) -> bool:
        """The process has bound its port (not merely: something answers on it)."""
        raise NotImplementedError

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(self.attempts):
            self.port = free_port()
            cmd = self._prepare(self.port)
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.workdir, env=self._env(),
                )  # fmt: skip
            try:
                if self._wait_started():
                    return self
            except BaseException:
                self.stop()
                raise
            last = self.log_tail()
            self.stop()
            if "address already in use" not in last.lower():
                break
        raise ProxyStartError(f"{self.name} did not start\n--- log tail ---\n{last}")

    def _wait_started(self) -> bool:
        """True once started; False if the process exited first."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                return False
            if self._started() and self._accepts():
                return True
            if time.monotonic() > deadline:
                raise ProxyStartError(
                    f"{self.name} not ready after {self.startup_timeout}s\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self._stop_signal)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    _stop_signal = signal.SIGTERM

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), *,
        host: str = "api.example", body: bytes | None = None,
    ) -> Reply:  # fmt: skip
        return send(self.port, method, target, headers, host=host, body=body)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()


class NginxProcess(_Proxy):
    """``nginx -p DIR -c nginx.conf -g 'daemon off; pid …;'`` in the foreground."""

    name = "nginx"
    _stop_signal = signal.SIGQUIT  # graceful shutdown

    def __init__(self, workdir: Path, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.config_path = workdir / "nginx.conf"
        self.pid_path = workdir / "nginx.pid"
        self.access_log = workdir / "access.log"

    def _prepare(self, port: int) -> list[str]:
        binary = nginx_binary()
        if binary is None:
            raise ProxyStartError("nginx is not installed")
        self.pid_path.unlink(missing_ok=True)
        self.config_path.write_text(
            nginx_config(listen_port=port, extauthz_port=self.extauthz_port,
                         upstream_port=self.upstream_port, workdir=self.workdir)
        )  # fmt: skip
        return [
            binary, "-p", f"{self.workdir}/", "-c", str(self.config_path),
            "-e", str(self.workdir / "error.log"),
            "-g", f"daemon off; pid {self.pid_path};",
        ]  # fmt: skip

    def _started(self) -> bool:
        # NGINX writes its pid file after it has bound every listening socket.
        return self.pid_path.exists()

    def log_tail(self, lines: int = 40) -> str:
        parts = [super().log_tail(lines)]
        with contextlib.suppress(FileNotFoundError):
            text = (self.workdir / "error.log").read_text(errors="replace")
            parts.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def error_log(self) -> str:
        try:
            return (self.workdir / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


class CaddyProcess(_Proxy):
    """``caddy run --config Caddyfile --adapter caddyfile``: admin endpoint off, HOME,
    XDG dirs and storage in the workdir."""

    name = "caddy"
    _stop_signal = signal.SIGTERM  # graceful

    def __init__(self, workdir: Path, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.config_path = workdir / "Caddyfile"

    def _prepare(self, port: int) -> list[str]:
        binary = caddy_binary()
        if binary is None:
            raise ProxyStartError("caddy is not installed")
        self.config_path.write_text(
            caddy_config(listen_port=port, extauthz_port=self.extauthz_port,
                         upstream_port=self.upstream_port, workdir=self.workdir)
        )  # fmt: skip
        return [binary, "run", "--config", str(self.config_path), "--adapter", "caddyfile"]

    def _env(self) -> dict[str, str]:
        home = self.workdir / "home"
        return {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }

    def _started(self) -> bool:
        # Logged once every server of the config is listening.
        try:
            return "serving initial configuration" in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def output(self) -> str:
        """Everything Caddy wrote (its logs go to stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


#: The header NginxTlsProcess forwards the client certificate in (server.http.client_cert_header).
NGINX_CLIENT_CERT_HEADER = "X-Client-Cert"


def nginx_tls(text: str, *, listen_port: int, cert: Path, key: Path, client_ca: Path) -> str:
    """An nginx_config() listening with TLS, asking for a client certificate (optional:
    a client without one still gets an answer from extauthz), and passing the one it
    got to extauthz as NGINX's documentation shows: ``$ssl_client_escaped_cert``."""
    text = replace_once(
        text,
        f"listen 127.0.0.1:{listen_port};",
        f"listen 127.0.0.1:{listen_port} ssl;\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        f"        ssl_client_certificate {client_ca};\n"
        "        ssl_verify_client optional;",
    )
    line = "proxy_set_header X-Original-Method $request_method;"
    return replace_once(
        text, line, f"{line}\n            proxy_set_header {NGINX_CLIENT_CERT_HEADER} "
        "$ssl_client_escaped_cert;",
    )  # fmt: skip


class NginxTlsProcess(NginxProcess):
    """:class:`NginxProcess` on a TLS listener with optional client certificates, which
    it forwards to extauthz in :data:`NGINX_CLIENT_CERT_HEADER` (see :func:`nginx_tls`)."""

    name = "nginx-tls"

    def __init__(
        self, workdir: Path, *, cert: Path, key: Path, client_ca: Path, **kwargs: Any
    ) -> None:
        super().__init__(workdir, **kwargs)
        self.tls_files = {"cert": cert, "key": key, "client_ca": client_ca}

    def _prepare(self, port: int) -> list[str]:
        cmd = super()._prepare(port)
        text = nginx_tls(self.config_path.read_text(), listen_port=port, **self.tls_files)
        self.config_path.write_text(text)
        return cmd
