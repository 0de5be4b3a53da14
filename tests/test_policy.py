"""Rule selection, requirements and response shaping (pure: Policy.decide with plain values)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from extauthz import config
from extauthz.core.decision import NeedKeys
from extauthz.core.headers import header_value
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.errors import UnsafeHeaderValue
from extauthz.keys import jwks
from tests.support.answers import wire
from tests.support.signing import Signer, claims

NOW = time.time()
GATEWAY, INTERNAL = "https://gateway.example", "https://idp.internal"
GW, IDP = Signer("EdDSA"), Signer("RS256")
KEYS = {
    "gateway": jwks.parse_keyset({"keys": [GW.jwk()]}),
    "internal": jwks.parse_keyset({"keys": [IDP.jwk()]}),
}

CONFIG: dict[str, Any] = {
    "providers": {
        "gateway": {
            "issuer": GATEWAY,
            "audiences": ["api"],
            "jwks": {"keys": []},
            "token_sources": [
                {"header": "authorization", "prefix": "Bearer "},
                {"header": "x-zuplo-jwt"},
                {"cookie": "access_token"},
                {"query": "access_token"},
            ],
            "claims_to_headers": {"x-user-id": "sub", "x-user-scope": "scope"},
            "payload_header": "x-jwt-payload",
        },
        "internal": {
            "issuer": INTERNAL,
            "audiences": ["api"],
            "jwks": {"keys": []},
            "forward_token": False,
            "claims_to_headers": {"x-tenant": "tenant", "x-groups": "groups"},
        },
    },
    "rules": [
        {"name": "health", "match": {"path_prefix": "/healthz"}, "allow_anonymous": True},
        {
            "name": "admin",
            "match": {
                "path_prefix": "/admin",
                "methods": ["POST", "DELETE"],
                "hosts": ["api.example.com"],
            },
            "providers": ["internal"],
            "scopes": ["admin", "write"],
        },
        {"name": "tenant", "match": {"path_exact": "/tenant"}, "claims": {"tenant": ["acme", 7]}},
        {"name": "users", "match": {"path_regex": "/users/[0-9]+"}, "providers": ["gateway"]},
        {"name": "default", "match": {"path_prefix": "/"}},
    ],
}
POLICY = Policy(config.from_mapping(CONFIG))


def keys(name: str) -> jwks.KeySet | None:
    return KEYS[name]


def gw(**extra: Any) -> str:
    return GW.sign(claims(GATEWAY, "api", now=NOW, **extra))


def idp(**extra: Any) -> str:
    return IDP.sign(claims(INTERNAL, "api", now=NOW, **extra))


def decide(
    path: str = "/",
    token: str | None = None,
    *,
    method: str = "GET",
    host: str = "api.example.com",
    headers: dict[str, str] | None = None,
    ext: dict[str, str] | None = None,
    policy: Policy = POLICY,
) -> Any:
    h = dict(headers or {})
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    req = AuthRequest(method=method, host=host, path=path, headers=h, context_extensions=ext or {})
    return policy.decide(req, keys, NOW)


# --- rule selection -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "method", "host", "rule"),
    [
        ("/healthz", "GET", "x", "health"),
        ("/healthz/live", "GET", "x", "health"),
        ("/admin/users", "POST", "api.example.com", "admin"),
        ("/admin/users", "POST", "API.example.com:443", "admin"),  # case and port ignored
        ("/admin/users", "GET", "api.example.com", "default"),  # method not listed
        ("/admin/users", "POST", "evil.example.com", "default"),  # host not listed
        ("/tenant", "GET", "x", "tenant"),
        ("/tenant/x", "GET", "x", "default"),  # exact means exact
        ("/users/42", "GET", "x", "users"),
        ("/users/42/keys", "GET", "x", "default"),  # regex must match the whole path
        ("/users/42?x=1", "GET", "x", "users"),  # query is not part of the path
    ],
)
def test_rule_selection(path: str, method: str, host: str, rule: str) -> None:
    d = decide(path, method=method, host=host)
    assert d.rule == rule


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("//admin", "admin"),
        ("/healthz/../admin", "admin"),
        ("/healthz/./../admin/x", "admin"),
        ("/%61dmin", "admin"),
        ("/healthz/%2e%2e/admin", "admin"),
    ],
)
def test_path_tricks_resolve_to_the_protected_rule(path: str, rule: str) -> None:
    d = decide(path, method="POST")
    assert d.rule == rule and not d.allowed


@pytest.mark.parametrize(
    "path", ["/healthz%2F..%2Fadmin", "/healthz%5c..%5cadmin", "/..", "/healthz/../../x", "/a\\b"]
)
def test_ambiguous_paths_are_refused_with_400(path: str) -> None:
    d = decide(path)
    assert (d.allowed, wire(d).http_status, wire(d).oauth_error, d.reason) == (
        False, 400, "invalid_request", "bad_path",
    )  # fmt: skip


def test_context_extension_selects_rule_by_name_and_skips_matching() -> None:
    d = decide("/anything", idp(scope="admin write"), ext={"extauthz_rule": "admin"})
    assert d.allowed and d.rule == "admin"
    d = decide("/healthz", ext={"extauthz_rule": "admin"})  # matching skipped: not anonymous
    assert not d.allowed and d.rule == "admin" and d.reason == "missing_token"


def test_unknown_context_rule_fails_closed() -> None:
    d = decide("/healthz", ext={"extauthz_rule": "nope"})
    assert not d.allowed and d.reason == "unknown_rule" and wire(d).http_status == 401


def test_an_ignored_context_extension_is_named_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A route that sets `required_scope: admin` believes in a check that never runs: the
    log names each key extauthz does not read, once per process."""
    from extauthz import logs
    from extauthz.authorizer import Authorizer

    logs.configure("info", "json")
    authorizer = Authorizer(POLICY, {})
    key = f"required_scope_{time.monotonic_ns()}"  # once per process: a name never seen
    for _ in range(3):
        req = AuthRequest(
            path="/healthz", context_extensions={key: "admin", "extauthz_rule": "health"}
        )
        assert authorizer.first(req).allowed  # type: ignore[union-attr]
    named = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if '"context_extension_ignored"' in line
    ]
    assert [n["key"] for n in named] == [key]
    assert "extauthz_rule" in named[0]["hint"]


@pytest.mark.parametrize(("action", "allowed"), [("deny", False), ("allow", True)])
def test_default_action_when_no_rule_matches(action: str, allowed: bool) -> None:
    cfg = {**CONFIG, "rules": [CONFIG["rules"][0]], "default_action": action}
    d = decide("/other", headers={"x-user-id": "spoof"}, policy=Policy(config.from_mapping(cfg)))
    assert d.allowed is allowed
    if allowed:
        assert "x-user-id" in d.remove_headers
    else:
        assert (wire(d).http_status, d.reason, wire(d).oauth_error) == (401, "no_rule", None)


# --- anonymous rules and header hygiene ---------------------------------------------
def test_anonymous_rule_allows_and_strips_every_injected_header() -> None:
    d = decide("/healthz", headers={"x-user-id": "admin", "x-tenant": "acme"})
    assert d.allowed and d.reason == "anonymous" and d.set_headers == ()
    assert set(d.remove_headers) == {
        "x-user-id", "x-user-scope", "x-jwt-payload", "x-tenant", "x-groups",
    }  # fmt: skip


# --- providers -------------------------------------------------------------------------
def test_token_iss_selects_its_provider() -> None:
    assert decide("/x", gw()).provider == "gateway"
    assert decide("/x", idp()).provider == "internal"


def test_rule_restricted_to_a_provider_rejects_the_others_tokens() -> None:
    d = decide("/admin", gw(scope="admin write"), method="POST")
    assert not d.allowed and d.reason == "wrong_issuer" and wire(d).http_status == 401


def test_kid_of_another_provider_does_not_verify() -> None:
    # Signed by the internal IdP's key, but claiming the gateway issuer.
    token = IDP.sign(claims(GATEWAY, "api", now=NOW))
    need = decide("/x", token)
    assert isinstance(need, NeedKeys)
    assert need.provider == "gateway" and need.kid == IDP.kid


def test_unknown_issuer_is_invalid_token() -> None:
    d = decide("/x", GW.sign(claims("https://other.example", "api", now=NOW)))
    assert (wire(d).http_status, wire(d).oauth_error, d.description) == (
        401, "invalid_token", "issuer not accepted",
    )  # fmt: skip


# --- token sources -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"x-zuplo-jwt": "TOKEN"}, "/x"),
        ({"cookie": "theme=dark; access_token=TOKEN; other=1"}, "/x"),
        ({}, "/x?access_token=TOKEN"),
        ({"authorization": "BEARER TOKEN", "x-zuplo-jwt": "TOKEN"}, "/x"),  # same token twice
    ],
)
def test_token_sources(headers: dict[str, str], path: str) -> None:
    token = gw()
    h = {k: v.replace("TOKEN", token) for k, v in headers.items()}
    d = decide(path.replace("TOKEN", token), headers=h)
    assert d.allowed, d


def test_two_different_tokens_are_a_400() -> None:
    d = decide("/x", gw(), headers={"x-zuplo-jwt": gw(sub="someone-else")})
    assert (wire(d).http_status, wire(d).grpc_code, wire(d).oauth_error) == (
        400,
        3,
        "invalid_request",
    )


def test_source_not_configured_for_the_tokens_provider_is_refused() -> None:
    # `internal` only reads Authorization; its token in the gateway's cookie is refused.
    d = decide("/x", headers={"cookie": f"access_token={idp()}"})
    assert not d.allowed and d.reason == "wrong_issuer"


# --- scopes and claims ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "allowed"),
    [
        ({"scope": "read admin write"}, True),
        ({"scp": ["admin", "write"]}, True),
        ({"scope": "admin"}, False),
        ({"scope": ["admin", "write"]}, False),  # `scope` must be a space-delimited string
        ({}, False),
    ],
)
def test_scopes(extra: dict[str, Any], allowed: bool) -> None:
    d = decide("/admin", idp(**extra), method="DELETE")
    assert d.allowed is allowed
    if not allowed:
        assert (wire(d).http_status, wire(d).grpc_code, wire(d).oauth_error, d.scope) == (
            403, 7, "insufficient_scope", "admin write",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("tenant", "allowed"),
    [
        ("acme", True),
        (7, True),
        (["other", "acme"], True),
        ("7", False),  # type-strict: "7" is not 7
        (True, False),
        ({"name": "acme"}, False),
        (None, False),
    ],
)
def test_claims_requirement(tenant: Any, allowed: bool) -> None:
    d = decide("/tenant", gw(tenant=tenant))
    assert d.allowed is allowed
    if not allowed:
        assert (wire(d).http_status, d.reason) == (403, "claim_mismatch")


# --- response shaping ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("alice", "alice"),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (["a", "b", 3], "a b 3"),
        ({"k": [1, 2]}, '{"k":[1,2]}'),
        # A list joined by spaces only when it splits back into the same list.
        (["admin user"], '["admin user"]'),
        (["a", ""], '["a",""]'),
        ([True, "a"], '[true,"a"]'),
        # Objects escape control characters (JSON is reversible).
        ({"k": "a\u0000b"}, '{"k":"a\\u0000b"}'),
        ("caf\u00e9", "caf\u00e9"),
    ],
)
def test_header_value_rendering(value: Any, rendered: str) -> None:
    assert header_value(value) == rendered


@pytest.mark.parametrize(
    "value",
    ["evil\r\nx-admin: yes", "ad\u0000min", "ad\x7fmin", ["a\nb"], " admin", "admin\t"],
)
def test_header_values_that_would_change_in_transit_are_refused(value: Any) -> None:
    """Never stripped: `ad\\u0000min` must not reach the upstream as `admin`."""
    with pytest.raises(UnsafeHeaderValue):
        header_value(value)


def test_a_claim_no_header_can_carry_is_a_401_not_an_altered_identity() -> None:
    d = decide("/x", gw(sub="ad\u0000min"))
    assert (d.allowed, wire(d).http_status, d.reason) == (False, 401, "unforwardable_claim")
    assert d.description == "claim sub cannot be sent as a header"


def test_allow_shapes_headers_payload_and_metadata() -> None:
    token = gw(sub="alice", scope="read", extra={"nested": True})
    d = decide("/x", token)
    assert d.allowed
    sets = dict(d.set_headers)
    assert sets["x-user-id"] == "alice" and sets["x-user-scope"] == "read"
    payload = json.loads(base64.urlsafe_b64decode(sets["x-jwt-payload"] + "=="))
    assert payload["sub"] == "alice" and payload["extra"] == {"nested": True}
    assert "=" not in sets["x-jwt-payload"]
    assert set(d.remove_headers) == {"x-tenant", "x-groups"}
    assert "authorization" not in d.remove_headers  # gateway forwards the token
    assert d.metadata is not None
    assert {k: d.metadata[k] for k in ("provider", "rule", "iss", "sub")} == {
        "provider": "gateway", "rule": "default", "iss": GATEWAY, "sub": "alice",
    }  # fmt: skip
    assert d.metadata["claims"]["scope"] == "read"


def test_forward_token_false_removes_the_token_header() -> None:
    d = decide("/x", idp(tenant="acme"))
    assert d.allowed and "authorization" in d.remove_headers
    assert dict(d.set_headers) == {"x-tenant": "acme"}


def test_missing_claim_for_header_is_removed_not_set() -> None:
    d = decide("/x", gw(sub=None))
    assert d.allowed and "x-user-id" in d.remove_headers
    assert "x-user-id" not in dict(d.set_headers)


@pytest.mark.parametrize(
    ("path", "rule"),
    [("/healthz", "health"), ("/healthz/live", "health"), ("/healthzFOO", "default"),
     ("/healthz-admin", "default")],
)  # fmt: skip
def test_path_prefix_is_segment_aware(path: str, rule: str) -> None:
    assert decide(path).rule == rule


def test_unknown_context_rule_names_the_rule_in_the_decision() -> None:
    d = decide("/x", ext={"extauthz_rule": "typo"})
    assert (d.allowed, d.reason, d.rule) == (False, "unknown_rule", "typo")


def test_two_different_cookie_tokens_are_a_400() -> None:
    d = decide("/x", headers={"cookie": f"access_token={gw()}; access_token={gw(sub='b')}"})
    assert (wire(d).http_status, wire(d).oauth_error) == (400, "invalid_request")


def test_duplicate_issuers_are_a_config_error() -> None:
    from extauthz.errors import ConfigError

    cfg = {"providers": {"a": {**CONFIG["providers"]["gateway"]},
                         "b": {**CONFIG["providers"]["gateway"]}}}  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        config.from_mapping(cfg)
    assert [p for p, _ in exc.value.problems] == ["providers.b.issuer"]
