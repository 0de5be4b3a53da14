"""Configuration schema: defaults, every problem named by its dotted path, frozen results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from extauthz import config
from extauthz.errors import ConfigError

MINIMAL_YAML = """\
providers:
  zuplo:
    issuer: "https://issuer.example"
    audiences: ["api"]
    jwks_uri: "https://issuer.example/.well-known/jwks.json"
"""

BASE: dict[str, Any] = {
    "issuer": "https://issuer.example",
    "audiences": ["api"],
    "jwks_uri": "https://issuer.example/.well-known/jwks.json",
}


def provider(**overrides: Any) -> dict[str, Any]:
    out = {**BASE, **overrides}
    return {k: v for k, v in out.items() if v is not None}


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(data)
    assert info.value.problems, "a ConfigError must list its problems"
    return list(info.value.problems)


def paths(data: object) -> list[str]:
    return [p for p, _ in problems(data)]


# --------------------------------------------------------------------------- defaults


def test_minimal_config_loads_with_documented_defaults(tmp_path: Path) -> None:
    f = tmp_path / "extauthz.yaml"
    f.write_text(MINIMAL_YAML)
    cfg = config.load(f)

    assert cfg.server.listen == "0.0.0.0:9191"
    assert cfg.server.admin_listen == "127.0.0.1:9192"
    assert cfg.server.workers == 1
    assert cfg.server.token_cache_size == 100_000
    assert cfg.server.realm == "extauthz"
    assert cfg.server.tls is None
    assert cfg.rules is None
    assert cfg.default_action == "deny"

    p = cfg.providers["zuplo"]
    assert p.issuer == "https://issuer.example"
    assert p.audiences == ("api",)
    assert p.key_source.startswith("jwks_uri ")
    assert p.refresh_interval == 300.0
    assert p.min_refresh_interval == 30.0
    assert p.max_stale == 86400.0
    assert p.fetch_timeout == 5.0
    assert p.clock_skew == 60.0
    assert p.max_lifetime is None
    assert p.required_claims == ()
    assert p.forward_token is True
    assert dict(p.claims_to_headers) == {}
    assert p.payload_header is None

    assert len(p.token_sources) == 1
    (src,) = p.token_sources
    assert (src.header, src.prefix, src.cookie, src.query) == (
        "authorization",
        "Bearer ",
        None,
        None,
    )


def test_default_algorithms_are_asymmetric_only() -> None:
    p = config.from_mapping({"providers": {"x": provider()}}).providers["x"]
    assert set(p.algorithms) == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "EdDSA",
    }  # fmt: skip
    assert not any(a.startswith("HS") for a in p.algorithms)
    assert not any(a.lower() == "none" for a in p.algorithms)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("45", 45.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert config.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "5 minutes", "1d", "-5s", -1, True, None, [], "1e3"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(value)


@pytest.mark.parametrize(
    ("field", "value", "seconds"),
    [
        ("clock_skew", "250ms", 0.25),
        ("clock_skew", 90, 90.0),
        ("fetch_timeout", "30s", 30.0),
        ("refresh_interval", "5m", 300.0),
        ("max_stale", "24h", 86400.0),
        ("max_lifetime", "1h", 3600.0),
    ],
)
def test_durations_in_provider(field: str, value: object, seconds: float) -> None:
    p = config.from_mapping({"providers": {"x": provider(**{field: value})}}).providers["x"]
    assert getattr(p, field) == pytest.approx(seconds)


# --------------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"providers": {"zuplo": provider(clock_skwe="60s")}}, "providers.zuplo.clock_skwe"),
        ({"providers": {"x": provider()}, "serverr": {}}, "serverr"),
        ({"providers": {"x": provider()}, "server": {"listn": "x"}}, "server.listn"),
        (
            {"providers": {"x": provider(token_sources=[{"header": "a", "prefx": "B "}])}},
            "providers.x.token_sources.0.prefx",
        ),
        (
            {"providers": {"x": provider()}, "rules": [{"name": "r", "match": {"path": "/"}}]},
            "rules.0.match.path",
        ),
    ],
)
def test_unknown_keys_rejected_with_dotted_path(data: dict[str, Any], path: str) -> None:
    assert (path, "unknown key") in problems(data)


def test_several_problems_reported_at_once() -> None:
    data = {
        "server": {"listen": "nope", "colour": "blue"},
        "providers": {
            "a": provider(clock_skew="soon", bogus=1),
            "b": provider(audiences=None),
        },
    }
    found = paths(data)
    for path in (
        "server.listen",
        "server.colour",
        "providers.a.clock_skew",
        "providers.a.bogus",
        "providers.b.audiences",
    ):
        assert path in found, (path, found)


@pytest.mark.parametrize(
    "field", ["clock_skew", "refresh_interval", "min_refresh_interval", "max_stale", "max_lifetime"]
)
@pytest.mark.parametrize("value", ["soon", "-1s", "10 parsecs", True])
def test_bad_duration_names_its_path(field: str, value: object) -> None:
    assert paths({"providers": {"x": provider(**{field: value})}}) == [f"providers.x.{field}"]


@pytest.mark.parametrize(
    "sources",
    [
        {"jwks_uri": None},
        {"discovery": True},
        {"jwks_file": "/etc/jwks.json"},
        {"jwks": {"keys": []}},
        {"jwks_file": "/etc/jwks.json", "jwks_uri": None},
        {"discovery": True, "jwks": {"keys": []}},
    ],
)
def test_exactly_one_key_source(sources: dict[str, Any]) -> None:
    data = {"providers": {"x": provider(**sources)}}
    chosen = {
        "jwks_uri": "jwks_uri" not in sources,
        "discovery": bool(sources.get("discovery")),
        "jwks_file": "jwks_file" in sources,
        "jwks": "jwks" in sources,
    }
    if sum(chosen.values()) == 1:
        config.from_mapping(data)
        return
    found = problems(data)
    assert [p for p, _ in found] == ["providers.x"]
    assert "exactly one key source" in found[0][1]


def test_no_key_source_is_rejected() -> None:
    found = problems({"providers": {"x": {"issuer": "i", "audiences": []}}})
    assert found[0][0] == "providers.x"
    assert "got none" in found[0][1]


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "RS1", "foo"])
def test_algorithm_none_and_unknown_rejected(alg: str) -> None:
    assert paths({"providers": {"x": provider(algorithms=[alg])}}) == ["providers.x.algorithms.0"]


def test_empty_algorithm_list_rejected() -> None:
    assert paths({"providers": {"x": provider(algorithms=[])}}) == ["providers.x.algorithms"]


def test_audiences_required() -> None:
    found = problems({"providers": {"x": provider(audiences=None)}})
    assert found == [("providers.x.audiences", "required key is missing")]


def test_empty_audiences_explicitly_disables_the_check() -> None:
    p = config.from_mapping({"providers": {"x": provider(audiences=[])}}).providers["x"]
    assert p.audiences == ()
    assert "audience check disabled" in config.summary(config.Config(providers={"x": p}))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [("providers", "required key is missing")]),
        ([], [("", "the configuration must be a YAML mapping")]),
        (None, [("", "the configuration must be a YAML mapping")]),
    ],
)
def test_top_level_shape(data: object, expected: list[tuple[str, str]]) -> None:
    assert problems(data) == expected


def test_no_providers_rejected() -> None:
    assert paths({"providers": {}}) == ["providers"]


def rule(name: str, prefix: str, **extra: Any) -> dict[str, Any]:
    # Distinct, non-catch-all matches so that only the problem under test is reported.
    return {"name": name, "match": {"path_prefix": prefix}, **extra}


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [rule("a", "/a", providers=["nope"])],
            [("rules.0.providers", "unknown provider 'nope'")],
        ),
        (
            [rule("a", "/a"), rule("b", "/b"), rule("a", "/c")],
            [("rules.2.name", "duplicate rule name 'a'")],
        ),
        (
            [rule("a", "/a", providers=["x", "ghost"]), rule("a", "/b")],
            [
                ("rules.0.providers", "unknown provider 'ghost'"),
                ("rules.1.name", "duplicate rule name 'a'"),
            ],
        ),
    ],
)
def test_rules_reference_providers_and_have_unique_names(
    rules: list[dict[str, Any]], expected: list[tuple[str, str]]
) -> None:
    assert problems({"providers": {"x": provider()}, "rules": rules}) == expected


def test_valid_rules_load() -> None:
    cfg = config.from_mapping(
        {
            "providers": {"x": provider()},
            "rules": [
                {"name": "health", "match": {"path_prefix": "/healthz"}, "allow_anonymous": True},
                rule("admin", "/admin", providers=["x"], scopes=["admin"]),
            ],
        }
    )
    assert cfg.rules is not None
    assert [r.name for r in cfg.rules] == ["health", "admin"]
    assert cfg.rules[1].providers == ("x",)


def test_token_source_needs_exactly_one_kind() -> None:
    data = {"providers": {"x": provider(token_sources=[{"header": "a", "cookie": "b"}])}}
    assert paths(data) == ["providers.x.token_sources.0"]
    data = {"providers": {"x": provider(token_sources=[{"cookie": "c", "prefix": "Bearer "}])}}
    assert paths(data) == ["providers.x.token_sources.0"]


# --------------------------------------------------------------------------- frozen


def frozen_config() -> config.Config:
    return config.from_mapping(
        {
            "providers": {"x": provider(claims_to_headers={"X-User-Id": "sub"})},
            "rules": [{"name": "r", "claims": {"tenant": ["acme"]}}],
        }
    )


def test_config_objects_are_frozen() -> None:
    cfg = frozen_config()
    p = cfg.providers["x"]
    with pytest.raises(pydantic.ValidationError):
        p.issuer = "https://evil.example"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.default_action = "allow"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.server.listen = "0.0.0.0:1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.providers["y"] = p  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.rules[0].claims["tenant"] = ("evil",)  # type: ignore[index]


def test_claims_to_headers_is_not_mutable() -> None:
    p = frozen_config().providers["x"]
    assert dict(p.claims_to_headers) == {"x-user-id": "sub"}  # header names lower-cased
    with pytest.raises(TypeError):
        p.claims_to_headers["x-admin"] = "sub"  # type: ignore[index]


def test_default_mappings_are_not_mutable() -> None:
    cfg = config.from_mapping({"providers": {"x": provider()}, "rules": [{"name": "r"}]})
    with pytest.raises(TypeError):
        cfg.providers["x"].claims_to_headers["x-admin"] = "sub"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.rules[0].claims["tenant"] = ("evil",)  # type: ignore[index]


def test_inline_jwks_not_in_repr() -> None:
    secret = "c3VwZXItc2VjcmV0LWhtYWMta2V5LW1hdGVyaWFs"
    p = config.Provider(
        issuer="https://issuer.example",
        audiences=("api",),
        jwks={"keys": [{"kty": "oct", "k": secret, "kid": "hmac"}]},
    )
    cfg = config.Config(providers={"x": p})
    for text in (repr(p), str(p), repr(cfg), str(cfg), config.summary(cfg)):
        assert secret not in text
        assert "oct" not in text
    assert p.key_source == "inline jwks"


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "EXTAUTHZ_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    f = tmp_path / "good.yaml"
    f.write_text(MINIMAL_YAML)
    return f


def test_check_config_good_file(good_file: Path) -> None:
    r = run_cli("check-config", "--config", str(good_file))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "provider zuplo: issuer https://issuer.example" in r.stdout
    assert "audiences: api" in r.stdout
    assert "default_action: deny" in r.stdout


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        """\
server:
  listen: "no-port"
providers:
  zuplo:
    issuer: "https://issuer.example"
    audiences: ["api"]
    jwks_uri: "https://issuer.example/jwks"
    clock_skwe: "60s"
    refresh_interval: "soon"
  other:
    issuer: "https://other.example"
    jwks_uri: "https://other.example/jwks"
rules:
  - name: r
    providers: [ghost]
"""
    )
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2
    assert r.stdout == ""
    for path in (
        "server.listen",
        "providers.zuplo.clock_skwe",
        "providers.zuplo.refresh_interval",
        "providers.other.audiences",
    ):
        assert path in r.stderr, (path, r.stderr)
    assert "unknown key" in r.stderr


def test_check_config_rule_problems(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(MINIMAL_YAML + "rules:\n  - {name: a, providers: [ghost]}\n  - {name: a}\n")
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2
    assert "rules.0.providers" in r.stderr
    assert "rules.1.name" in r.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    r = run_cli("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2
    assert "absent.yaml" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text", ["providers: [unclosed\n", "a: b: c\n", "\tproviders: {}\n"])
def test_check_config_invalid_yaml(tmp_path: Path, text: str) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(text)
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2
    assert "invalid YAML" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_yaml_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2
    assert "mapping" in r.stderr


def test_check_config_from_env(good_file: Path, tmp_path: Path) -> None:
    r = run_cli("check-config", env={"EXTAUTHZ_CONFIG": str(good_file)})
    assert r.returncode == 0, r.stderr
    assert "provider zuplo" in r.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL_YAML + "    typo: 1\n")
    r = run_cli("check-config", env={"EXTAUTHZ_CONFIG": str(bad)})
    assert r.returncode == 2
    assert "providers.zuplo.typo" in r.stderr


def test_check_config_without_any_config() -> None:
    r = run_cli("check-config")
    assert r.returncode == 2
    assert "--config" in r.stderr


# ---------------------------------------------------------------- messages in the user's words

PYDANTIC_WORDS = ("Input should", "valid tuple", "valid integer", "Dictionary", "literal[",
                  ".int", "Field required", "Value error")  # fmt: skip


def test_every_problem_in_one_pass_cross_key_checks_beside_field_errors() -> None:
    data = {
        "server": {"workers": "many", "token_cache_size": -1},
        "providers": {
            "a": provider(
                issuer="my-service",
                algorithms=["HS256"],
                clock_skew="soon",
                refresh_interval="10s",
                min_refresh_interval="1m",
            ),
            "b": provider(issuer="my-service", audiences="api"),
        },
        "rules": [
            {"name": "r", "providers": ["ghost"], "scopes": "admin"},
            {"name": "r", "match": {"path_prefix": "/x"}},
        ],
        "default_action": "maybe",
    }
    url = "must be an absolute URL such as https://issuer.example (compared exactly with each "
    assert set(problems(data)) == {
        ("server.workers", "expected a number of processes (1 or more) or 'auto'"),
        ("server.token_cache_size", "must be 0 or more"),
        ("providers.a.clock_skew", "expected a duration such as '30s', '5m' or a number of "
                                   "seconds"),
        ("providers.a.issuer", url + "token's iss)"),
        ("providers.a.algorithms", "HS256 needs a shared secret, which a fetched JWKS "
                                   "(jwks_uri) cannot hold: use jwks or jwks_file"),
        ("providers.a.min_refresh_interval", "must not exceed refresh_interval"),
        ("providers.b.audiences", "expected a list"),
        ("providers.b.issuer", url + "token's iss)"),
        ("providers.b.issuer", "same issuer as provider 'a' (a token's iss must select "
                               "exactly one provider)"),
        ("rules.0.providers", "unknown provider 'ghost'"),
        ("rules.0.scopes", "expected a list"),
        ("rules.1.name", "duplicate rule name 'r'"),
        ("rules.1.match", "rule 'r' can never match: rule 'r' before it matches every request"),
        ("default_action", "expected one of: deny, allow"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        {"server": {"workers": 0}, "providers": {"x": provider()}},
        {"server": {"workers": [1]}, "providers": {"x": provider()}},
        {"providers": {}},
        {"providers": {"x": provider(audiences="api", required_claims="sub")}},
        {"providers": {"x": provider(min_rsa_bits=512, forward_token="maybe")}},
        {"providers": {"x": provider()}, "rules": [{"name": "r", "claims": {"t": [{"a": 1}]}}]},
        {"providers": {"x": provider(token_sources={"header": "a"})}},
        {"server": {"realm": 'a"b', "listen": 9191}, "providers": {"x": provider()}},
    ],
)
def test_messages_never_name_python_or_pydantic_types(data: dict[str, Any]) -> None:
    for path, message in problems(data):
        assert not any(w in message or w in path for w in PYDANTIC_WORDS), (path, message)


def test_hmac_with_a_file_or_inline_jwks_is_fine() -> None:
    secret = {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXh4eHg"}]}
    cfg = config.from_mapping(
        {"providers": {"x": provider(jwks_uri=None, jwks=secret, algorithms=["HS256"])}}
    )
    assert cfg.providers["x"].algorithms == ("HS256",)


def test_hmac_with_discovery_is_an_error() -> None:
    x = provider(jwks_uri=None, discovery=True, algorithms=["RS256", "HS512"])
    found = problems({"providers": {"x": x}})
    assert found == [
        ("providers.x.algorithms", "HS512 needs a shared secret, which a fetched JWKS "
                                   "(discovery) cannot hold: use jwks or jwks_file")
    ]  # fmt: skip


def test_yaml_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text('server:\n  listen: "a\n  b: [\n')
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2
    assert f"{f}, line 2, column 11: while scanning a quoted scalar" in r.stderr
    assert "unicode string" not in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- server.replay_store


@pytest.mark.parametrize(
    "value",
    [
        "memory",
        "redis://127.0.0.1:6379/0",
        "redis://cache.example",  # port 6379, database 0
        "redis://cache.example:6380/15",
        "rediss://cache.example:6380/0",  # TLS
        "redis://:s3cret@cache.example:6379/0",
        "redis://user:s3cret@[::1]:6379/1",
    ],
)
def test_replay_store_accepts_memory_and_redis_urls(value: str) -> None:
    cfg = config.from_mapping({"server": {"replay_store": value}, "providers": {"p": provider()}})
    assert cfg.server.replay_store == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Memory",
        "redis",
        "redis:/x",
        "redis:cache.example",
        "mongodb://cache.example:27017/0",
        "http://cache.example:6379/0",
        "unix:///run/redis.sock",
        "redis:///0",  # no host
        "redis://:s3cret@/0",
        "redis://cache.example/abc",  # the database is a number
        "redis://cache.example/-1",
        "redis://cache.example/0/1",
        42,
    ],
)
def test_replay_store_anything_else_is_an_error_naming_the_key(value: object) -> None:
    found = problems({"server": {"replay_store": value}, "providers": {"p": provider()}})
    assert [p for p, _ in found] == ["server.replay_store"], found
    assert not any(w in m for _, m in found for w in PYDANTIC_WORDS), found


@pytest.mark.parametrize(
    "value", ["redis://cache.example:port/0", "redis://cache.example:99999/0", "redis://h/0?x=1"]
)
def test_replay_store_with_a_bad_port_or_unknown_option_is_an_error(value: str) -> None:
    found = problems({"server": {"replay_store": value}, "providers": {"p": provider()}})
    assert [p for p, _ in found] == ["server.replay_store"], found


@pytest.mark.parametrize("value", ["redis:/x", "mongodb://db.example/0", "redis://h/abc"])
def test_check_config_rejects_a_malformed_replay_store(tmp_path: Path, value: str) -> None:
    f = tmp_path / "store.yaml"
    f.write_text(f'server:\n  replay_store: "{value}"\n' + MINIMAL_YAML)
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert "server.replay_store" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("memory", "replay store: memory (this process only; at most 100,000 proofs)"),
        (
            "rediss://cache.example:6380/2",
            "replay store: redis at cache.example:6380, database 2, TLS",
        ),
        ("redis://10.0.0.7", "replay store: redis at 10.0.0.7:6379, database 0"),
    ],
)
def test_check_config_summary_names_the_replay_store(
    tmp_path: Path, value: str, shown: str
) -> None:
    f = tmp_path / "store.yaml"
    f.write_text(f'server:\n  replay_store: "{value}"\n' + MINIMAL_YAML)
    r = run_cli("check-config", "--config", str(f))
    assert r.returncode == 0, r.stderr
    assert shown in r.stdout.splitlines()


def test_a_redis_password_never_appears_in_check_config_output(tmp_path: Path) -> None:
    password = "pw-9f3b71c2"
    good = tmp_path / "good.yaml"
    good.write_text(
        f'server:\n  replay_store: "rediss://replay-user-x1:{password}@cache.example:6380/0"\n'
        + MINIMAL_YAML
    )
    r = run_cli("check-config", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert (
        "replay store: redis at cache.example:6380, database 0, TLS, credentials set (not shown)"
        in r.stdout
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f'server:\n  replay_store: "redis://:{password}@cache.example/x"\n' + MINIMAL_YAML
    )
    r2 = run_cli("check-config", "--config", str(bad))
    assert r2.returncode == 2 and "server.replay_store" in r2.stderr
    for text in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert password not in text
        assert "replay-user-x1" not in text  # nor the user name


def test_summary_names_the_http_front_door() -> None:
    http = {"listen": "127.0.0.1:9000", "original_request": "forwarded",
            "trusted_proxies": ["10.0.0.0/8"], "path_prefix": "/check"}  # fmt: skip
    text = config.summary(config.from_mapping({"server": {"http": http},
                                               "providers": {"p": provider()}}))  # fmt: skip
    assert (
        "http front door: 127.0.0.1:9000, original request from forwarded, "
        "path_prefix /check, trusted proxies 10.0.0.0/8"
    ) in text
    plain = config.summary(config.from_mapping({"providers": {"p": provider()}}))
    assert "http front door" not in plain


def test_summary_names_the_grpc_pool() -> None:
    text = config.summary(config.from_mapping({"server": {"grpc_threads": 16},
                                               "providers": {"p": provider()}}))  # fmt: skip
    assert "server: grpc 0.0.0.0:9191 (16 threads), admin" in text


def test_summary_shows_dpop_and_require_typ() -> None:
    cfg = config.from_mapping(
        {"providers": {"p": provider(dpop={"required": True, "algorithms": ["ES256"]},
                                     require_typ="at+jwt")}}
    )  # fmt: skip
    text = config.summary(cfg)
    assert "  dpop: required (Bearer refused); proof algorithms ES256; proof max_age 60s" in text
    assert "  require_typ: at+jwt" in text
    assert "dpop" not in config.summary(config.from_mapping({"providers": {"p": provider()}}))


@pytest.mark.parametrize(
    ("workers", "store", "dpop", "warned"),
    [
        (4, "memory", True, True),
        ("auto", "memory", True, True),
        (1, "memory", True, False),  # one process: its store sees every proof
        (4, "redis://cache.example:6379/0", True, False),
        (4, "memory", False, False),  # no DPoP, nothing to replay
    ],
)
def test_summary_warns_when_workers_do_not_share_dpop_replays(
    workers: object, store: str, dpop: bool, warned: bool
) -> None:
    p = provider()
    if dpop:
        p["dpop"] = {}
    cfg = config.from_mapping(
        {"server": {"workers": workers, "replay_store": store}, "providers": {"p": p}}
    )
    text = config.summary(cfg)
    assert ("a proof can be replayed to another worker" in text) is warned, text
