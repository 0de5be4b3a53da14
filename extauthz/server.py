"""The gRPC server: a thin grpc.aio adapter over the Authorizer, plus health and lifecycle.

Health (``grpc.health.v1``, services ``""`` and the Authorization service) follows
readiness: NOT_SERVING until every provider has usable keys, and while draining.
SIGTERM: NOT_SERVING at once, keep serving for ``server.shutdown_delay`` (so Envoy and
Kubernetes stop sending), then finish in-flight calls within the grace period, exit 0.
SIGHUP, or a change of the config file: reload (see :meth:`Server.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import __version__, admin, errors, files, keys, logs, metrics, wire
from . import config as configmod
from .authorizer import Authorizer
from .cache import TokenCache
from .config import TLS, Config, split_address
from .errors import ConfigError
from .jwks import KeySet
from .policy import AuthRequest, Policy

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
_log = logs.get("extauthz.server")


class AuthorizationServicer:
    """``envoy.service.auth.v3.Authorization/Check``. Returns serialized bytes: deny
    answers and cached allows are encoded once, so nothing is re-serialized per call."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def Check(self, request: Any, context: Any) -> bytes:
        started = time.perf_counter()
        authorizer = self.authorizer  # read once: a reload may swap it mid-call
        realm = authorizer.policy.realm
        try:
            req = wire.to_auth_request(request)
        except Exception:  # an input the adapter cannot read: refuse it, never crash
            _log.exception("check_request_unreadable")
            req = AuthRequest()
            decision = authorizer.policy.deny(errors.InternalError())
        else:
            decision = await authorizer.check(req, context.time_remaining())
        try:
            answer = wire.encode(decision, realm)
        except Exception:
            # A decision the wire cannot carry is a deny, logged and counted as one: an
            # RPC error here would be Envoy's status_on_error and a metric of an allow.
            _log.exception("check_answer_unencodable", reason=decision.reason)
            decision = authorizer.policy.deny(errors.InternalError(), rule=decision.rule)
            answer = wire.encode(decision, realm)
        authorizer.record(req, decision, started)
        return answer

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.Check,
                    request_deserializer=wire.CheckRequest.FromString,
                    response_serializer=bytes,  # already serialized
                )
            },
        )


class _CertFiles:
    """Serves TLS material to grpc, re-reading it when the files change (cert-manager)."""

    def __init__(self, tls: TLS) -> None:
        self.tls = tls
        self._stamp: tuple[files.Stamp, ...] | None = None

    def _paths(self) -> list[Path]:
        return [p for p in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file) if p]

    def load(self) -> Any:
        self._stamp = tuple(files.stamp(p) for p in self._paths())
        ca = self.tls.client_ca_file.read_bytes() if self.tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(self.tls.key_file.read_bytes(), self.tls.cert_file.read_bytes())],
            root_certificates=ca,
        )

    def fetch(self) -> Any:
        try:
            if tuple(files.stamp(p) for p in self._paths()) == self._stamp:
                return None
            config = self.load()
        except OSError as exc:
            _log.warning("tls_reload_failed", error=exc.strerror)
            return None
        _log.info("tls_reloaded")
        return config

    def credentials(self) -> Any:
        return grpc.dynamic_ssl_server_credentials(
            self.load(), self.fetch, require_client_authentication=bool(self.tls.client_ca_file)
        )


_RESTART_ONLY = ("listen", "admin_listen", "workers", "tls")


class Server:
    """One serving process. ``start`` binds everything; ``stop`` drains."""

    def __init__(
        self,
        config: Config,
        *,
        reuse_port: bool = False,
        status_file: Path | None = None,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # watched for live reload when set
        self._overrides = dict(overrides or {})  # server.* set by the supervisor
        self._config_stamp = files.stamp_or_none(config_path) if config_path else None
        self._servicer: AuthorizationServicer | None = None
        self._reuse_port = reuse_port
        self.status_file = status_file  # a worker reports readiness to its supervisor here
        self._last_status = ""
        self.announce = True  # workers log "worker_serving"; the supervisor logs "started"
        self._session: aiohttp.ClientSession | None = None
        self.sources: Mapping[str, keys.KeySource] = {}
        self.authorizer: Authorizer | None = None
        self.cache: TokenCache | None = None
        self._grpc: Any = None
        self._health = health.aio.HealthServicer()
        self._admin: Any = None
        self._watch: asyncio.Task[None] | None = None
        self.draining = False
        self.grpc_port = 0
        self.admin_port = 0
        self._serving: bool | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"user-agent": f"extauthz/{__version__}"},
                connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=60),
            )
        return self._session

    async def start(self) -> None:
        cfg = self.config
        size = cfg.server.token_cache_size
        self.cache = TokenCache(size) if size > 0 else None
        self.sources = {
            name: keys.build(name, p, self._http, on_change=self._keys_changed)
            for name, p in cfg.providers.items()
        }
        self.authorizer = Authorizer(Policy(cfg, self.cache), self.sources)
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_receive_message_length", 4 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        self._servicer = AuthorizationServicer(self.authorizer)
        self._grpc.add_generic_rpc_handlers((self._servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        await self._set_serving(False)
        host, port = split_address(cfg.server.listen)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if cfg.server.tls is not None:
            self.grpc_port = self._grpc.add_secure_port(
                target, _CertFiles(cfg.server.tls).credentials()
            )
        else:
            self.grpc_port = self._grpc.add_insecure_port(target)
        await self._grpc.start()
        for src in self.sources.values():
            src.start()
        if cfg.server.admin_listen is not None:
            self._admin, self.admin_port = await admin.start(
                split_address(cfg.server.admin_listen), self.status
            )
        self._watch = asyncio.get_running_loop().create_task(self._follow_readiness())
        _log.info(
            "started" if self.announce else "worker_serving",
            pid=os.getpid(),
            version=__version__,
            grpc=f"{host}:{self.grpc_port}",
            tls="mtls"
            if cfg.server.tls and cfg.server.tls.client_ca_file
            else bool(cfg.server.tls),
            admin=f"{cfg.server.admin_listen.rpartition(':')[0]}:{self.admin_port}"
            if cfg.server.admin_listen
            else None,
            providers={n: p.key_source for n, p in cfg.providers.items()},
        )

    def _keys_changed(self, provider: str, old: KeySet, new: KeySet) -> None:
        # Revocation: tokens verified by a key that left the JWKS leave the cache now.
        if self.cache is not None and old.thumbprints - new.thumbprints:
            dropped = self.cache.purge(provider, new.thumbprints)
            _log.info("token_cache_purged", provider=provider, entries=dropped)

    def status(self) -> dict[str, Any]:
        return admin.key_status(self.sources, self.draining)

    def _write_status(self) -> None:
        assert self.status_file is not None
        text = json.dumps(self.status())
        if text != self._last_status:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.status_file)  # atomic: the supervisor never reads half a file
            self._last_status = text

    @property
    def ready(self) -> bool:
        return not self.draining and self.authorizer is not None and self.authorizer.ready

    async def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
        _log.info("readiness", ready=serving)

    async def _follow_readiness(self) -> None:
        # Readiness also changes with time alone (keys passing max_stale), so follow it
        # on a short period rather than only on fetch events.
        tick = 0
        loop = asyncio.get_running_loop()
        while True:
            tick += 1
            if self.config_path is not None and tick % 5 == 0:
                stamp = files.stamp_or_none(self.config_path)
                if stamp is not None and stamp != self._config_stamp:
                    self._config_stamp = stamp
                    await self.reload("file")
            await self._set_serving(self.ready)
            for src in self.sources.values():
                src.publish_age()
            if self.status_file is not None:
                self._write_status()
            before = loop.time()
            await asyncio.sleep(0.2)
            lag = loop.time() - before - 0.2
            if lag > 0.25:  # something blocked the event loop: every Check waited too
                _log.warning("event_loop_stalled", seconds=round(lag, 3))

    # -- reload -------------------------------------------------------------------------
    async def reload(self, trigger: str = "signal") -> bool:
        """Validate the config file again and swap it in atomically.

        An invalid file keeps the running config (logged with every problem, counted
        in ``extauthz_config_reload_total{result="error"}``). Providers whose settings
        did not change keep their key source, keys and all; new providers start
        fetching at once. Listeners, TLS and workers need a restart to change.
        """
        if self.config_path is None or self.authorizer is None:
            return False
        try:
            new = configmod.load(self.config_path)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("error").inc()
            _log.error(
                "config_reload_failed",
                trigger=trigger,
                problems=[f"{p or '(top level)'}: {m}" for p, m in exc.problems],
            )
            return False
        if self._overrides:
            new = new.model_copy(update={"server": new.server.model_copy(update=self._overrides)})
        old = self.config
        fixed = [k for k in _RESTART_ONLY if getattr(new.server, k) != getattr(old.server, k)]
        if fixed:
            _log.warning("config_reload_needs_restart", keys=[f"server.{k}" for k in fixed])
            keep = {k: getattr(old.server, k) for k in fixed}
            new = new.model_copy(update={"server": new.server.model_copy(update=keep)})
        sources: dict[str, keys.KeySource] = {}
        started: list[keys.KeySource] = []
        for name, p in new.providers.items():
            current = self.sources.get(name)
            if current is not None and current.provider.same_keys(p):
                current.provider = p  # same keys; other settings (audiences…) may differ
                sources[name] = current
            else:
                src = keys.build(name, p, self._http, on_change=self._keys_changed)
                if current is not None:
                    src.inherit(current)  # the old keys answer until the new source fetches
                src.start()
                started.append(src)
                sources[name] = src
        # Give new providers a moment (together, not one after another) to load keys
        # before they take traffic.
        await asyncio.gather(
            *(src.wait_ready(min(5.0, src.provider.fetch_timeout)) for src in started)
        )
        size = new.server.token_cache_size
        # A new policy may shape answers differently: cached decisions must not survive.
        cache = TokenCache(size) if size > 0 else None
        authorizer = Authorizer(Policy(new, cache), sources)
        retired = [s for n, s in self.sources.items() if sources.get(n) is not s]
        # The swap: one reference assignment each, never a half-updated config.
        self.config, self.cache, self.sources, self.authorizer = new, cache, sources, authorizer
        if self._servicer is not None:
            self._servicer.authorizer = authorizer
        for src in retired:
            await src.stop()
        metrics.CONFIG_RELOADS.labels("success").inc()
        _log.info(
            "config_reloaded",
            trigger=trigger,
            providers_kept=sorted(n for n in sources if sources[n] not in started),
            providers_started=sorted(s.name for s in started),
            providers_removed=sorted(s.name for s in retired if s.name not in sources),
        )
        return True

    # -- shutdown -------------------------------------------------------------------------
    async def begin_drain(self) -> None:
        """Report NOT_SERVING (health, /readyz) while still answering Check calls."""
        self.draining = True
        await self._set_serving(False)
        if self.status_file is not None:
            self._write_status()

    async def stop(self, grace: float = 5.0) -> None:
        await self.begin_drain()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for src in self.sources.values():
            await src.stop()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._session is not None:
            await self._session.close()
        _log.info("stopped")


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
    server = Server(
        config,
        reuse_port=reuse_port,
        status_file=status_file,
        config_path=config_path,
        overrides=overrides,
    )
    server.announce = announce
    await server.start()
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
        task = loop.create_task(server.reload("signal"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    delay = server.config.server.shutdown_delay
    _log.info("draining", shutdown_delay_seconds=delay, grace_seconds=grace)
    await server.begin_drain()
    if delay:
        await asyncio.sleep(delay)  # still serving: peers see NOT_SERVING and move away
    await server.stop(grace)
    return 0
