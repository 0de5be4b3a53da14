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
from typing import Any

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


def _value(config: Config, key: str) -> Any:
    """A ``server.*`` setting by dotted key (None where a section is absent)."""
    value: Any = config.server
    for part in key.split("."):
        value = getattr(value, part, None) if value is not None else None
    return value


def plan(old: Config, new: Config, sources: Mapping[str, KeySource]) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` does. Pure: nothing starts or stops here."""
    changed = tuple(k for k in RESTART_ONLY if _value(new, k) != _value(old, k))
    if changed:
        keep: dict[str, Any] = {k: getattr(old.server, k) for k in changed if "." not in k}
        if "http.listen" in changed:
            # The HTTP listener stays as it runs; its other settings apply.
            if old.server.http is None or new.server.http is None:
                keep["http"] = old.server.http
            else:
                keep["http"] = new.server.http.model_copy(update={"listen": old.server.http.listen})
        new = with_server(new, **keep)
    kept: dict[str, KeySource] = {}
    started: dict[str, Provider] = {}
    inherits: dict[str, KeySource] = {}
    for name, provider in new.providers.items():
        if not provider.has_keys:
            continue  # introspection only: no key source (see process._introspectors)
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
