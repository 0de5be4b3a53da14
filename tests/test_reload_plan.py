"""A reload is a pure plan from (old config, new config, running key sources) to what
changes; nothing starts, stops or is edited in place while planning."""

from __future__ import annotations

from typing import Any

import aiohttp

from extauthz import config
from extauthz.keys import source as keysource
from extauthz.server import reload

ISS = "https://issuer.example"


def cfg(**providers: Any) -> config.Config:
    base = {"issuer": ISS, "audiences": ["api"], "jwks_uri": "https://issuer.example/jwks"}
    return config.from_mapping(
        {
            "server": {"listen": "127.0.0.1:9191"},
            "providers": {name: {**base, **p} for name, p in providers.items()},
        }
    )


def running(c: config.Config) -> dict[str, keysource.KeySource]:
    def no_session() -> aiohttp.ClientSession:
        raise AssertionError("planning must not fetch")

    return {n: keysource.build(n, p, no_session) for n, p in c.providers.items()}


def test_unchanged_key_settings_keep_the_running_source_untouched() -> None:
    old = cfg(a={})
    sources = running(old)
    before = sources["a"].provider
    change = reload.plan(old, cfg(a={"audiences": ["other"], "clock_skew": "5s"}), sources)
    assert change.kept == {"a": sources["a"]}
    assert change.started == {} and change.retired == () and change.needs_restart == ()
    assert sources["a"].provider is before, "a kept source is not edited in place"
    assert change.config.providers["a"].audiences == ("other",)


def test_changed_key_settings_start_a_source_that_inherits_the_keys() -> None:
    old = cfg(a={})
    sources = running(old)
    change = reload.plan(old, cfg(a={"max_stale": "2h"}), sources)
    assert list(change.started) == ["a"] and change.started["a"].max_stale == 7200
    assert change.inherits == {"a": sources["a"]}
    assert change.retired == (sources["a"],)
    assert change.kept == {}


def test_a_new_issuer_starts_afresh_without_the_old_keys() -> None:
    old = cfg(a={})
    sources = running(old)
    change = reload.plan(old, cfg(a={"issuer": "https://new.example"}), sources)
    assert list(change.started) == ["a"] and change.inherits == {}
    assert change.retired == (sources["a"],)


def test_providers_added_and_removed() -> None:
    old = cfg(a={}, b={"issuer": "https://b.example"})
    sources = running(old)
    change = reload.plan(old, cfg(a={}, c={"issuer": "https://c.example"}), sources)
    assert change.kept == {"a": sources["a"]}
    assert list(change.started) == ["c"] and change.inherits == {}
    assert change.retired == (sources["b"],)


def test_restart_only_settings_keep_their_running_values_and_are_named() -> None:
    old = cfg(a={})
    new = config.with_server(cfg(a={}), listen="127.0.0.1:9999", workers=2, realm="shop")
    change = reload.plan(old, new, running(old))
    assert change.needs_restart == ("server.listen", "server.workers")
    assert change.config.server.listen == "127.0.0.1:9191"
    assert change.config.server.workers == 1
    assert change.config.server.realm == "shop"  # applies on reload
