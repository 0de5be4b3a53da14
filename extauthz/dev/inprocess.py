"""extauthz in one process, without listeners: the server's own decision path, for
benchmarks and experiments (``python -m bench.dpop``).

Built as a serving process builds it — key sources loaded before the first request, the
replay store from ``server.replay_store``, introspection clients, traces from
``server.tracing`` — and asked as each front door asks it (:meth:`InProcess.check`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from .. import config as configmod
from .. import logs, tracing
from .. import replay as replay_store
from ..authorizer import Authorizer
from ..core.decision import Decision
from ..core.policy import Policy
from ..core.request import AuthRequest
from ..introspection import Introspector
from ..keys import source as keysource

#: Proofs the default (memory) replay store holds before it refuses new ones.
MEMORY_REPLAY_ENTRIES = replay_store.MEMORY_ENTRIES


class InProcess:
    def __init__(self, authorizer: Authorizer, session: aiohttp.ClientSession | None) -> None:
        self.authorizer = authorizer
        self._session = session

    @classmethod
    async def start(cls, settings: Mapping[str, Any], *, log_level: str = "warning") -> InProcess:
        """From a configuration mapping (as a YAML file holds it); raises ConfigError,
        or RuntimeError when a provider's keys do not load."""
        logs.configure(log_level)
        cfg = configmod.from_mapping(settings)
        tracing.setup(cfg.server.tracing)
        session: aiohttp.ClientSession | None = None

        def client() -> aiohttp.ClientSession:
            nonlocal session
            if session is None:
                session = aiohttp.ClientSession()
            return session

        sources = {}
        for name, provider in cfg.providers.items():
            if not provider.has_keys:
                continue
            source = keysource.build(name, provider, client)
            if not await source.refresh("startup"):
                raise RuntimeError(f"provider {name}: keys did not load ({source.last_error})")
            sources[name] = source
        introspectors = {
            name: Introspector(name, p)
            for name, p in cfg.providers.items()
            if p.introspection is not None
        }
        replay = replay_store.build(cfg.server.replay_store)
        authorizer = Authorizer(Policy(cfg), sources, replay=replay, introspectors=introspectors)
        return cls(authorizer, session)

    async def check(self, req: AuthRequest) -> Decision:
        return await self.authorizer.check(req)

    def flush_traces(self) -> None:
        """Export the spans queued so far, now (with ``server.tracing``)."""
        if tracing.spans is not None:
            tracing.spans.provider.force_flush()

    async def close(self) -> None:
        tracing.shutdown()
        await self.authorizer.replay.close()
        for introspector in self.authorizer.introspectors.values():
            await introspector.close()
        if self._session is not None:
            await self._session.close()
