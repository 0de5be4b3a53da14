"""Reloading the configuration: a pure plan from (old config, new config, current key
sources) to what changes, then one swap that applies it.

A provider whose key settings are unchanged keeps its key source, keys and all; one
whose key settings changed gets a new source that starts from the old one's last good
keys; a new provider gets a new source; a removed one's source stops. ``server.*``
settings that only a restart changes keep their running values (and are named).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import RESTART_ONLY, Config, Provider, with_server
from ..keys.source import KeySource


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what will run: the new file, restart-only settings kept
    kept: Mapping[str, KeySource]  # provider -> its running source, unchanged
    started: Mapping[str, Provider]  # provider -> settings of a new source
    inherits: Mapping[str, KeySource]  # provider (in started) -> source to seed it from
    retired: tuple[KeySource, ...]  # running sources no longer used
    needs_restart: tuple[str, ...]  # `server.*` keys that changed but wait for a restart


def plan(old: Config, new: Config, sources: Mapping[str, KeySource]) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` does. Pure: nothing starts or stops here."""
    changed = tuple(k for k in RESTART_ONLY if getattr(new.server, k) != getattr(old.server, k))
    if changed:
        new = with_server(new, **{k: getattr(old.server, k) for k in changed})
    kept: dict[str, KeySource] = {}
    started: dict[str, Provider] = {}
    inherits: dict[str, KeySource] = {}
    for name, provider in new.providers.items():
        current = sources.get(name)
        if current is not None and current.provider.same_keys(provider):
            kept[name] = current
            continue
        started[name] = provider
        if current is not None and current.provider.issuer == provider.issuer:
            inherits[name] = current  # its keys answer until the new source fetches
    retired = tuple(s for n, s in sources.items() if kept.get(n) is not s)
    return ReloadPlan(
        config=new,
        kept=kept,
        started=started,
        inherits=inherits,
        retired=retired,
        needs_restart=tuple(f"server.{k}" for k in changed),
    )
