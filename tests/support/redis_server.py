"""A real ``redis-server`` (the Debian package; ``.ci/run`` installs it) for the tests:
on a loopback port, without persistence, in a directory of its own."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

STARTUP = 60.0  # generous: CI has two busy cores


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        pytest.skip(
            "redis-server is not installed (.ci/run installs it: apt-get install redis-server)"
        )
    return found


def _free_port() -> int:
    """A loopback port nothing listened on a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence (no RDB, no AOF), its own directory.

    ``start()`` picks a free port; ``stop()`` then ``start()`` restarts it on the same
    port with an empty keyspace. Skips the test when redis-server is not installed.
    """

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        extra: Sequence[str] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.binary = redis_binary()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.password = password
        self.extra = tuple(extra)  # more redis-server arguments, after (over) these
        self.tls = tls  # (certificate, key, CA): TLS only (rediss://), no plain port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls[2]) if self.tls is not None else None,
        )

    def start(self) -> None:
        """Start on a free port, or on the same port again after :meth:`stop`."""
        assert self.proc is None, "already running"
        same_port = self.port != 0
        deadline = time.monotonic() + STARTUP
        while True:
            port = self.port if same_port else _free_port()
            seen = self.log.stat().st_size if self.log.exists() else 0
            if self._try(port):
                return
            with self.log.open("rb") as log:
                log.seek(seen)
                tail = log.read().decode(errors="replace")[-2000:]
            if "address already in use" not in tail.lower() or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on {port}:\n{tail}")

    def _try(self, port: int) -> bool:
        """True once this redis-server answers on ``port``; False if it exited first."""
        if self.tls is None:
            listen = ["--port", str(port)]
        else:
            cert, key, ca = self.tls
            listen = [
                "--port", "0", "--tls-port", str(port),
                "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            ]  # fmt: skip
        args = [
            self.binary,
            *listen,
            "--bind", "127.0.0.1",
            "--save", "",           # no RDB snapshots
            "--appendonly", "no",   # no AOF: a restart starts empty
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",        # stdout, into self.log
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.port = port
        deadline = time.monotonic() + STARTUP
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    return False
                with contextlib.suppress(redis.RedisError):
                    # This process answering, not something else on the port.
                    if client.info("server")["process_id"] == self.proc.pid:
                        return True
                time.sleep(0.05)  # poll interval, not synchronisation
        finally:
            client.close()
        self.stop()
        raise AssertionError(f"redis-server on {port} did not answer PING within {STARTUP}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # no persistence: SIGTERM exits at once, saving nothing
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def keys(self) -> list[bytes]:
        client = self.client()
        try:
            return sorted(client.scan_iter(match="*", count=1000))
        finally:
            client.close()
