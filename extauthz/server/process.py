"""One serving process: the gRPC front door, gRPC health, key sources, admin endpoints.

Health (``grpc.health.v1``, services ``""`` and the Authorization service) follows
readiness: NOT_SERVING until every provider has usable keys, and while draining.
SIGTERM: NOT_SERVING at once, keep serving for ``server.shutdown_delay`` (so Envoy and
Kubernetes stop sending), then finish in-flight calls within the grace period, exit 0.
SIGHUP, or a change of the config file: reload (see :mod:`extauthz.server.reload`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__, files, logs, metrics, tracing
from .. import config as configmod
from .. import replay as replay_store
from ..authorizer import Authorizer
from ..config import Config, Provider, split_address
from ..core.policy import Policy
from ..errors import ConfigError
from ..frontdoor import http as http_door
from ..frontdoor.grpc import SERVICE_NAME, AuthorizationServicer
from ..introspection import Introspector
from ..keys import source as keysource
from ..keys.jwks import KeySet
from . import admin, reload
from .pool import Pool
from .ticker import Periodic, Ticker
from .tls import CertFiles

_log = logs.get("extauthz.server")

#: How often (in ticks of 0.2 s) the periodic jobs run.
READINESS_EVERY = 1
CONFIG_WATCH_EVERY = 5
KEY_AGE_EVERY = 5


class ServingProcess:
    """One serving process. ``start`` binds everything; ``stop`` drains."""

    def __init__(
        self,
        config: Config,
        *,
        reuse_port: bool = False,
        status_file: Path | None = None,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        announce: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path  # watched for live reload when set
        self._overrides = dict(overrides or {})  # server.* set by the worker supervisor
        self._config_stamp = files.stamp_or_none(config_path) if config_path else None
        self._reuse_port = reuse_port
        self.status_file = status_file  # a worker reports readiness to its supervisor here
        self._last_status = ""
        self.announce = announce  # workers log "worker_serving"; the supervisor "started"
        self._session: aiohttp.ClientSession | None = None
        self.sources: Mapping[str, keysource.KeySource] = {}
        self.introspectors: Mapping[str, Introspector] = {}
        self.authorizer: Authorizer | None = None
        self._servicer: AuthorizationServicer | None = None
        self._grpc: grpc.Server | None = None
        self._pool: Pool | None = None
        self._http_door: http_door.Listener | None = None
        self._health = health.HealthServicer()
        self._admin: web.AppRunner | None = None
        self._ticker: Ticker | None = None
        self.draining = False
        self.grpc_port = 0
        self.http_port = 0
        self.admin_port = 0
        self._serving: bool | None = None

    # -- parts ---------------------------------------------------------------------------
    def _http_client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"user-agent": f"extauthz/{__version__}"},
                connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=60),
            )
        return self._session

    def _new_source(self, name: str, provider: Provider) -> keysource.KeySource:
        return keysource.build(name, provider, self._http_client, on_change=self._keys_changed)

    def _keys_changed(self, provider: str, old: KeySet, new: KeySet) -> None:
        if self.authorizer is not None:  # the current one, also after a reload
            self.authorizer.keys_changed(provider, old, new)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        tracing.setup(cfg.server.tracing)
        self.sources = {
            name: self._new_source(name, p) for name, p in cfg.providers.items() if p.has_keys
        }
        self.introspectors = _introspectors(cfg, {})
        self.replay = replay_store.build(cfg.server.replay_store)
        self.authorizer = Authorizer(
            Policy(cfg), self.sources, replay=self.replay, introspectors=self.introspectors
        )
        # grpcio's synchronous server: a Check is decided on a pool thread without a
        # trip through the event loop (about 100 µs less per request than grpc.aio on
        # one core, see docs/benchmarks.md); the loop keeps the key sources, the HTTP
        # door and the waits (AuthorizationServicer resolves those on it).
        self._pool = Pool(cfg.server.grpc_threads, "check")
        self._grpc = grpc.server(
            self._pool,
            options=[
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_receive_message_length", 4 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ],
        )
        self._servicer = AuthorizationServicer(self.authorizer, asyncio.get_running_loop())
        self._servicer.serve_on(self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        self._set_serving(False)
        host, port = split_address(cfg.server.listen)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if cfg.server.tls is not None:
            credentials = CertFiles(cfg.server.tls).credentials()
            self.grpc_port = self._grpc.add_secure_port(target, credentials)
        else:
            self.grpc_port = self._grpc.add_insecure_port(target)
        self._grpc.start()
        if cfg.server.http is not None:
            self._http_door = http_door.Listener(cfg.server.http, self.authorizer)
            self.http_port = await self._http_door.start(reuse_port=self._reuse_port)
        for src in self.sources.values():
            src.start()
        if cfg.server.admin_listen is not None:
            self._admin, self.admin_port = await admin.start(
                split_address(cfg.server.admin_listen), self.status
            )
        jobs = [
            Periodic("readiness", READINESS_EVERY, self._follow_readiness),
            Periodic("key_age", KEY_AGE_EVERY, self._publish_key_age),
        ]
        if self.config_path is not None:
            jobs.append(Periodic("config_watch", CONFIG_WATCH_EVERY, self._watch_config))
        if self.status_file is not None:
            jobs.append(Periodic("worker_status", READINESS_EVERY, self._write_status))
        self._ticker = Ticker(jobs)
        self._ticker.start()
        admin_host = cfg.server.admin_listen.rpartition(":")[0] if cfg.server.admin_listen else ""
        _log.info(
            "started" if self.announce else "worker_serving",
            pid=os.getpid(),
            version=__version__,
            grpc=f"{host}:{self.grpc_port}",
            http=_http_address(cfg, self.http_port),
            tls=_tls_mode(cfg),
            admin=f"{admin_host}:{self.admin_port}" if cfg.server.admin_listen else None,
            providers={n: p.key_source for n, p in cfg.providers.items()},
        )

    async def begin_drain(self) -> None:
        """Report NOT_SERVING (health, /readyz) while still answering Check calls."""
        self.draining = True
        self._set_serving(False)
        if self.status_file is not None:
            self._write_status()

    async def stop(self, grace: float = 5.0) -> None:
        await self.begin_drain()
        # Both doors stop accepting, then finish what is in flight, together.
        await asyncio.gather(
            *([_stopped(self._grpc, grace)] if self._grpc is not None else []),
            *([self._http_door.stop(grace)] if self._http_door is not None else []),
        )
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # idle now: the server has stopped
        if self._ticker is not None:
            await self._ticker.stop()
        for src in self.sources.values():
            await src.stop()
        for introspector in self.introspectors.values():
            await introspector.close()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._session is not None:
            await self._session.close()
        await self.replay.close()
        tracing.shutdown()
        _log.info("stopped")

    # -- readiness -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = admin.key_status(self.sources, self.draining)
        # An unreachable replay store fails DPoP requests only (503), so it is shown,
        # not made a readiness condition: every replica shares it, and taking them all
        # out of service would fail every other request too.
        status["replay_store"] = self.replay.status()
        for name, introspector in self.introspectors.items():
            # Ready at once: each opaque token is asked about when it arrives.
            entry = status["providers"].setdefault(name, {})
            entry["introspection"] = {
                "endpoint": introspector.settings.endpoint,
                "cached_answers": introspector.entries,
            }
        return status

    @property
    def ready(self) -> bool:
        return not self.draining and self.authorizer is not None and self.authorizer.ready

    def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)
        _log.info("readiness", ready=serving)

    def _follow_readiness(self) -> None:
        # Readiness changes with time alone too (keys passing max_stale): follow it.
        self._set_serving(self.ready)

    def _publish_key_age(self) -> None:
        for src in self.sources.values():
            src.publish_age()

    def _write_status(self) -> None:
        assert self.status_file is not None
        text = json.dumps(self.status())
        if text != self._last_status:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.status_file)  # atomic: the supervisor never reads half a file
            self._last_status = text

    # -- reload --------------------------------------------------------------------------
    async def _watch_config(self) -> None:
        assert self.config_path is not None
        stamp = files.stamp_or_none(self.config_path)
        if stamp is not None and stamp != self._config_stamp:
            self._config_stamp = stamp
            await self.reload("file")

    async def reload(self, trigger: str = "signal") -> bool:
        """Validate the config file again and swap it in (see :mod:`.reload`).

        An invalid file keeps the running config (logged with every problem, counted
        in ``extauthz_config_reload_total{result="error"}``).
        """
        if self.config_path is None or self.authorizer is None:
            return False
        try:
            new = configmod.load(self.config_path)
            if self._overrides:
                new = configmod.with_server(new, self._overrides)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("error").inc()
            _log.error(
                "config_reload_failed",
                trigger=trigger,
                problems=[f"{p or '(top level)'}: {m}" for p, m in exc.problems],
            )
            return False
        change = reload.plan(self.config, new, self.sources)
        if change.needs_restart:
            _log.warning("config_reload_needs_restart", keys=list(change.needs_restart))
        started: dict[str, keysource.KeySource] = {}
        for name, provider in change.started.items():
            src = self._new_source(name, provider)
            if name in change.inherits:
                src.inherit(change.inherits[name])
            src.start()
            started[name] = src
        # Give new sources a moment (together, not one after another) to load keys.
        await asyncio.gather(
            *(s.wait_ready(min(5.0, s.provider.fetch_timeout)) for s in started.values())
        )
        sources = {**change.kept, **started}
        introspectors = _introspectors(change.config, self.introspectors)
        authorizer = Authorizer(
            Policy(change.config), sources, replay=self.replay, introspectors=introspectors
        )
        # The swap: one reference assignment each, never a half-updated config.
        retired = [i for i in self.introspectors.values() if i not in introspectors.values()]
        self.config, self.sources, self.authorizer = change.config, sources, authorizer
        self.introspectors = introspectors
        if self._servicer is not None:
            self._servicer.use(authorizer)
        if self._http_door is not None and change.config.server.http is not None:
            self._http_door.use(authorizer, change.config.server.http)
        for src in change.retired:
            await src.stop()
        for introspector in retired:
            await introspector.close()
        metrics.CONFIG_RELOADS.labels("success").inc()
        _log.info(
            "config_reloaded",
            trigger=trigger,
            providers_kept=sorted(change.kept),
            providers_started=sorted(started),
            providers_removed=sorted(s.name for s in change.retired if s.name not in sources),
        )
        return True


async def _stopped(server: grpc.Server, grace: float) -> None:
    """Stop accepting, let in-flight calls finish within ``grace``: the event loop keeps
    running meanwhile, since a call may be waiting on it."""
    await asyncio.to_thread(server.stop(grace).wait)


def _introspectors(cfg: Config, running: Mapping[str, Introspector]) -> dict[str, Introspector]:
    """One per provider with introspection; a running one is kept (answers and
    connections) while its settings, the secret read from its file included, are equal."""
    out: dict[str, Introspector] = {}
    for name, provider in cfg.providers.items():
        if provider.introspection is None:
            continue
        current = running.get(name)
        if current is not None and current.settings == provider.introspection:
            out[name] = current
        else:
            out[name] = Introspector(name, provider)
    return out


def _http_address(cfg: Config, port: int) -> str | None:
    if cfg.server.http is None:
        return None
    return f"{split_address(cfg.server.http.listen)[0]}:{port}"


def _tls_mode(cfg: Config) -> str | bool:
    tls = cfg.server.tls
    return "mtls" if tls is not None and tls.client_ca_file else tls is not None


async def serve(
    config: Config,
    *,
    grace: float = 5.0,
    reuse_port: bool = False,
    status_file: Path | None = None,
    announce: bool = True,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the exit code."""
    process = ServingProcess(
        config,
        reuse_port=reuse_port,
        status_file=status_file,
        config_path=config_path,
        overrides=overrides,
        announce=announce,
    )
    await process.start()
    # Everything allocated so far (modules, config, protobuf descriptors) lives for the
    # whole process: move it out of the collector's reach so a full collection scans
    # only request garbage, not ~200k long-lived objects (a p99 latency spike otherwise).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(process.reload("signal"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    delay = process.config.server.shutdown_delay
    _log.info("draining", shutdown_delay_seconds=delay, grace_seconds=grace)
    await process.begin_drain()
    if delay:
        await asyncio.sleep(delay)  # still serving: peers see NOT_SERVING and move away
    await process.stop(grace)
    return 0
