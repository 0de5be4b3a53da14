"""Several worker processes sharing one gRPC port (``server.workers: N | auto``).

The supervisor reserves the port with an SO_REUSEPORT socket (so port 0 works too),
starts N fresh interpreter processes (``spawn``: prometheus multiprocess mode must be
chosen before the metrics module is imported), restarts a worker that dies, serves
the admin endpoints with metrics aggregated across workers and readiness = every
worker ready, and on SIGTERM drains all workers and exits 0.
Each worker has its own key sources and token cache: nothing is shared at runtime.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from .. import config as cfgmod
from .. import logs
from ..config import Config, per_process_replay, split_address
from ..errors import ConfigError

_log = logs.get("extauthz.workers")


def count(config: Config) -> int:
    w = config.server.workers
    if w == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return int(w)


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))  # bound, never listening: it only holds the port for workers
    return sock


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker(config_path: str, overrides: dict[str, Any], status_file: str,
            log_level: str | None, log_format: str | None) -> None:  # fmt: skip
    # A fresh interpreter (spawn): configure logging and load the config again here.
    from .. import logs as logmod
    from .process import serve

    logmod.configure(log_level, log_format)
    cfg = cfgmod.with_server(cfgmod.load(config_path), overrides)
    code = asyncio.run(
        serve(cfg, reuse_port=True, status_file=Path(status_file), announce=False,
              config_path=Path(config_path), overrides=overrides)
    )  # fmt: skip
    raise SystemExit(code)


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: str,
        *,
        log_level: str | None = None,
        log_format: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.n = count(config)
        self._log_args = (log_level, log_format)
        self._procs: dict[int, BaseProcess] = {}
        self._restarts: dict[int, int] = {}
        self._stopping = False
        self.dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        host, port = split_address(config.server.listen)
        self._sock = _reserve(host, port)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        # The HTTP front door's port is held the same way (port 0 works there too).
        self._http_sock: socket.socket | None = None
        self.http_listen: str | None = None
        if config.server.http is not None:
            http_host, http_port = split_address(config.server.http.listen)
            self._http_sock = _reserve(http_host, http_port)
            self.http_listen = _address(http_host, int(self._http_sock.getsockname()[1]))
        self._ctx = multiprocessing.get_context("spawn")

    def _status_file(self, slot: int) -> Path:
        return self.dir / f"status-{slot}.json"

    def _spawn(self, slot: int) -> None:
        overrides: dict[str, Any] = {
            "listen": _address(self.host, self.port),
            "admin_listen": None,
        }
        if self.http_listen is not None:
            overrides["http.listen"] = self.http_listen
        proc = self._ctx.Process(
            target=_worker,
            args=(self.config_path, overrides, str(self._status_file(slot)), *self._log_args),
            name=f"extauthz-worker-{slot}",
        )
        proc.start()
        self._procs[slot] = proc
        _log.info("worker_started", slot=slot, pid=proc.pid)

    def status(self) -> dict[str, Any]:
        workers = []
        for slot, proc in sorted(self._procs.items()):
            try:
                body = json.loads(self._status_file(slot).read_text())
            except (OSError, ValueError):
                body = {"ready": False, "providers": {}}
            body["alive"] = proc.is_alive()
            body["pid"] = proc.pid
            workers.append(body)
        ready = (
            not self._stopping
            and len(workers) == self.n
            and all(w["ready"] and w["alive"] for w in workers)
        )
        return {"ready": ready, "draining": self._stopping, "workers": workers}

    def _forward_hup(self) -> None:
        # Each worker reloads (and validates) the file itself; it also notices edits.
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    async def _watch(self) -> None:
        # Restart crashed workers, with a growing delay for one that keeps crashing.
        from prometheus_client import multiprocess

        while not self._stopping:
            for slot, proc in list(self._procs.items()):
                if not proc.is_alive() and not self._stopping:
                    _log.error("worker_died", slot=slot, pid=proc.pid, exitcode=proc.exitcode)
                    if proc.pid is not None:
                        # prometheus_client leaves this function unannotated.
                        multiprocess.mark_process_dead(proc.pid, str(self.dir))  # type: ignore[no-untyped-call]
                    self._status_file(slot).unlink(missing_ok=True)
                    n = self._restarts.get(slot, 0)
                    self._restarts[slot] = n + 1
                    await asyncio.sleep(min(5.0, 0.1 * 2**n))
                    if not self._stopping:
                        self._spawn(slot)
            await asyncio.sleep(0.2)

    async def run(self, grace: float = 5.0) -> int:
        from . import admin

        for slot in range(self.n):
            self._spawn(slot)
        runner = None
        admin_port = None
        if self.config.server.admin_listen is not None:
            runner, admin_port = await admin.start(
                split_address(self.config.server.admin_listen), self.status
            )
        admin_at = None
        if self.config.server.admin_listen is not None and admin_port is not None:
            admin_at = f"{split_address(self.config.server.admin_listen)[0]}:{admin_port}"
        _log.info("started", grpc=f"{self.host}:{self.port}", http=self.http_listen,
                  workers=self.n, admin=admin_at)  # fmt: skip
        if per_process_replay(self.config):
            # Workers share a port, so a replayed proof may reach one that has not seen it.
            _log.warning("replay_store_per_process", workers=self.n,
                         hint="set server.replay_store to a redis:// URL")  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        watcher = loop.create_task(self._watch())
        await stop.wait()
        self._stopping = True
        watcher.cancel()
        _log.info("draining", workers=self.n, grace_seconds=grace)
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        # Workers keep answering for shutdown_delay, then drain for up to `grace`: wait
        # that long (read afresh: a reload may have changed it) before killing any.
        try:
            delay = cfgmod.load(self.config_path).server.shutdown_delay
        except ConfigError:
            delay = self.config.server.shutdown_delay
        deadline = time.monotonic() + delay + grace + 5
        for proc in self._procs.values():
            await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        if runner is not None:
            await runner.cleanup()
        self._sock.close()
        if self._http_sock is not None:
            self._http_sock.close()
        _log.info("stopped")
        return 0


def supervise(config: Config, config_path: str, **log_args: Any) -> int:
    """Entry point for ``serve`` with workers > 1."""
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if own_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="extauthz-metrics-")
    try:
        return asyncio.run(Supervisor(config, config_path, **log_args).run())
    finally:
        if own_dir:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
