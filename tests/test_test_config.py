"""`extauthz test-config`: a config decides a table of requests, without a server, and
every answer that differs from the expectation is reported (exit 1); a bad requests
file is exit 2 with the key path; no token ever reaches the output."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz import cli, config
from extauthz.dev.issuer import DevIssuer
from extauthz.policytest import cases, report, runner
from tests.support.cli import extauthz

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "examples" / "policy.yaml"
POLICY_TESTS = REPO / "examples" / "policy-tests.yaml"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")

#: A config with the features the example does not use: DPoP, opaque tokens, one
#: provider (a minted token needs no provider name then).
LOCAL = """
providers:
  idp:
    issuer: "https://idp.example"
    audiences: ["api"]
    jwks_uri: "https://idp.example/jwks"
    dpop: {{required: true}}
    claims_to_headers: {{x-user-id: sub}}
  opaque:
    issuer: "https://as.example"
    audiences: []
    introspection:
      endpoint: "https://as.example/introspect"
      client_id: extauthz
      client_secret_file: "{secret}"
    claims_to_headers: {{x-client: client_id}}
rules:
  - {{name: api, match: {{path_prefix: /api}}, providers: [idp]}}
  - {{name: legacy, match: {{path_prefix: /legacy}}, providers: [opaque], scopes: [read]}}
"""


def _main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(path: Path, cases_: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"cases": cases_}, sort_keys=False))
    return path


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    path = tmp_path / "config.yaml"
    path.write_text(LOCAL.format(secret=secret))
    return path


# --- the shipped example ---------------------------------------------------------------


def test_the_shipped_example_passes_through_the_real_command() -> None:
    result = extauthz("test-config", "examples/policy.yaml", "examples/policy-tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    total = len(yaml.safe_load(POLICY_TESTS.read_text())["cases"])
    assert lines[-1] == f"{total} cases: {total} passed, 0 failed"
    assert all(line.startswith("PASS  ") for line in lines[:-1]), result.stdout
    assert result.stderr == ""
    # No token and no claim set (base64url JSON starts with eyJ) is ever printed.
    assert "eyJ" not in result.stdout


def test_the_shipped_example_allows_and_refuses_on_every_rule() -> None:
    rules = {r["name"] for r in yaml.safe_load(POLICY.read_text())["rules"]}
    table = cases.load(POLICY_TESTS)
    allowed = {c.expect.rule for c in table.cases if c.expect.status == 200}
    refused = {c.expect.rule for c in table.cases if c.expect.status in (401, 403)}
    assert rules <= allowed, rules - allowed
    assert rules - {"health"} <= refused, rules - refused
    statuses = {c.expect.status for c in table.cases}
    assert {200, 400, 401, 403} <= statuses


# --- a wrong rule is caught ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "failing", "lines"),
    [
        pytest.param(
            ('scopes: ["reports:read"]', 'scopes: ["reports:write"]'),
            ["reports with reports:read", "reports without reports:read"],
            ["status: expected 200, got 403", "status: expected 403, got 200"],
            id="required-scope",
        ),
        pytest.param(
            (
                "match: {path_exact: /healthz}\n    allow_anonymous: true",
                "match: {path_exact: /healthz}",
            ),
            ["health check needs no token"],
            ["status: expected 200, got 401", "reason: expected anonymous, got missing_token"],
            id="anonymous-path",
        ),
        pytest.param(
            ("claims: {tenant: [acme]}", "claims: {tenant: [acme, globex]}"),
            ["admin write by staff of another tenant"],
            ["status: expected 403, got 200", "reason: expected claim_mismatch, got ok"],
            id="claim",
        ),
    ],
)
def test_a_deliberately_wrong_rule_fails_its_cases(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    failing: list[str],
    lines: list[str],
) -> None:
    text = POLICY.read_text()
    assert change[0] in text
    broken = tmp_path / "policy.yaml"
    broken.write_text(text.replace(change[0], change[1], 1))
    code, out, err = _main(capsys, "test-config", broken, POLICY_TESTS)
    assert code == 1, out + err
    failed = re.findall(r"^FAIL  (.+?): \d{3} ", out, re.M)
    assert set(failing) <= set(failed), out
    for line in lines:
        assert f"        {line}" in out.splitlines(), out
    total = len(cases.load(POLICY_TESTS).cases)
    assert out.splitlines()[-1] == (
        f"{total} cases: {total - len(failed)} passed, {len(failed)} failed"
    )
    assert "eyJ" not in out + err


def test_a_failing_header_expectation_names_expected_and_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = _write(
        tmp_path / "t.yaml",
        [
            {
                "name": "who",
                "path": "/v1/orders",
                "token": {"provider": "zuplo", "claims": {"sub": "alice"}},
                "expect": {
                    "headers": {"x-user-id": "bob", "x-tenant": True, "x-jwt-payload": None}
                },
            }
        ],
    )
    code, out, _ = _main(capsys, "test-config", POLICY, requests)
    assert code == 1
    assert out.splitlines()[1:4] == [
        "        headers.x-user-id: expected bob, got alice",
        "        headers.x-tenant: expected (set), got (not set)",
        "        headers.x-jwt-payload: expected (not set), got (the claim set)",
    ], out


# --- bad requests files: exit 2, the key path named -------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "cases: [{name: a, path: /, expect: {status: 200}, hedaers: {}}]",
            "cases.0.hedaers: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            "cases: [{name: a, path: /, expect: {status: 200, headers: {x-user-id: [a]}}}]",
            "cases.0.expect.headers.x-user-id: expected the header's value (text), "
            "true (set to any value) or null (not set)",
            id="wrong-type-header",
        ),
        pytest.param(
            "cases: [{name: a, path: /, expect: {status: '200'}}]",
            "cases.0.expect.status: expected one of: 200, 400, 401, 403, 503",
            id="wrong-type-status",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: 7, expect: {status: 200}}]",
            "cases.0.token: expected a token (text) or what to mint (a mapping: provider, claims…)",
            id="wrong-type-token",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: {provider: zuplo, lifetime: soon}, "
            "expect: {status: 200}}]",
            "cases.0.token.lifetime: expected a duration such as '30s', '5m' or a number of "
            "seconds",
            id="wrong-type-lifetime",
        ),
        pytest.param(
            "cases: [{name: a, expect: {status: 200}}]",
            "cases.0.path: required key is missing",
            id="missing-path",
        ),
        pytest.param(
            "cases: [{name: a, path: /, expect: {}}]",
            "cases.0.expect: give at least one of status, reason, rule, headers: a case "
            "that expects nothing cannot fail",
            id="nothing-expected",
        ),
        pytest.param(
            "cases: [{name: a, path: /, expect: {status: 200}}, "
            "{name: a, path: /x, expect: {status: 200}}]",
            "cases.1.name: duplicate case name 'a'",
            id="duplicate-name",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: {provider: zuplu}, expect: {status: 200}}]",
            "cases.0.token.provider: unknown provider 'zuplu' (the configuration has zuplo, "
            "internal)",
            id="unknown-provider",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: {claims: {sub: a}}, expect: {status: 200}}]",
            "cases.0.token.provider: required: several providers verify JWTs (zuplo, internal)",
            id="provider-required",
        ),
        pytest.param(
            "cases: [{name: a, path: /, expect: {headers: {x-userid: alice}}}]",
            "cases.0.expect.headers.x-userid: not a header this configuration sets "
            "(claims_to_headers and payload_header name: x-user-id, x-user-scope, x-tenant, "
            "x-jwt-payload, x-staff-id, x-staff-groups)",
            id="header-never-set",
        ),
        pytest.param(
            "cases: [{name: a, path: /, context_extensions: {extauthz-rule: admin}, "
            "expect: {status: 200}}]",
            "cases.0.context_extensions.extauthz-rule: extauthz reads only extauthz_rule "
            "(the name of a rule)",
            id="context-extension-typo",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: x, headers: {authorization: Bearer y}, "
            "expect: {status: 200}}]",
            "cases.0.headers.authorization: the token goes in this header: set one or the other",
            id="token-and-header",
        ),
        pytest.param(
            "- just a list",
            "(top level): the requests file must be a YAML mapping with 'cases:'",
            id="not-a-mapping",
        ),
        pytest.param("cases: [", "(top level): invalid YAML: ", id="not-yaml"),
        pytest.param(
            "cases: [{name: a, path: /, expect: {headers: {x-jwt-payload: eyJzdWIi}}}]",
            "cases.0.expect.headers.x-jwt-payload: carries the whole claim set (with a "
            "random jti): expect true (set) or null (not set)",
            id="payload-value",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token_in: {cookie: t}, expect: {status: 200}}]",
            "cases.0.token_in: says where the token goes, but the case has no token",
            id="token_in-without-token",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: {provider: zuplo, dpop: true}, "
            "token_in: {cookie: t}, expect: {status: 200}}]",
            "cases.0.token_in: a DPoP token goes in Authorization: DPoP; leave it out",
            id="dpop-elsewhere",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: {provider: zuplo}, "
            "introspection: {active: true}, expect: {status: 200}}]",
            "cases.0.introspection: a minted token is a JWT, which is verified, never "
            "introspected: give a literal (opaque) token",
            id="introspected-jwt",
        ),
        pytest.param(
            "cases: [{name: a, path: /, token: x, introspection: {sub: a}, expect: {status: 200}}]",
            "cases.0.introspection: an introspection answer needs active: true or false",
            id="introspection-without-active",
        ),
    ],
)
def test_a_bad_requests_file_is_exit_2_with_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    requests = tmp_path / "requests.yaml"
    requests.write_text(text)
    code, out, err = _main(capsys, "test-config", POLICY, requests)
    assert (code, out) == (2, "")
    first, *problems = err.splitlines()
    assert first == f"{requests}: invalid requests file"
    assert any(p == f"  {problem}" or p.startswith(f"  {problem}") for p in problems), err
    assert not re.search(r"pydantic|Input should|\bdict\b|\bstr\b|Traceback", err), err


def test_an_invalid_config_is_exit_2_as_check_config_says_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "policy.yaml"
    broken.write_text(
        POLICY.read_text().replace("    allow_anonymous: true", "    anonymous: true")
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["test-config", str(broken), str(POLICY_TESTS)])
    out, err = capsys.readouterr()
    assert (exit_.value.code, out) == (2, "")
    assert err.splitlines() == [
        f"{broken}: invalid configuration",
        "  rules.0.anonymous: unknown key",
    ]


# --- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "tøken", "a b", "x" * 10_000, " "],
)
def test_a_garbage_literal_token_is_a_reported_401(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    requests = _write(
        tmp_path / "t.yaml",
        [{"name": "junk", "path": "/v1/orders", "token": token, "expect": {"status": 200}}],
    )
    code, out, err = _main(capsys, "test-config", POLICY, requests)
    assert code == 1, out + err
    assert "        status: expected 200, got 401" in out.splitlines(), out
    assert out.startswith("FAIL  junk: 401 ")
    if token.strip():
        assert token not in out + err


def test_a_real_issuers_token_is_unknown_here_the_keys_are_test_configs_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token signed by another key for the same issuer and audience is refused: the
    provider's JWKS is never read, only the keys test-config signs with."""
    other = DevIssuer("https://my-api-a32f34.zuplo.api/__zuplo/issuer")
    token = other.mint(sub="alice", aud="https://api.example.com")
    requests = _write(
        tmp_path / "t.yaml",
        [{"name": "foreign key", "path": "/v1/orders", "token": token,
          "expect": {"status": 401, "reason": "unknown_key"}}],
    )  # fmt: skip
    code, out, err = _main(capsys, "test-config", POLICY, requests)
    assert code == 0, out + err
    assert token not in out + err


def test_the_report_never_carries_a_token_sent() -> None:
    table = cases.load(POLICY_TESTS)
    outcomes = runner.run(config.load(POLICY), table, time.time())
    sent = {
        t
        for o in outcomes
        for value in [*o.request.headers.values(), o.request.path]
        for t in JWT.findall(value)
    }
    assert len(sent) >= 20  # the check below looks at real tokens
    printed = report.text(outcomes) + report.as_json(outcomes)
    assert not [t for t in sent if t in printed or t.split(".")[1] in printed]


# --- what the example does not use: DPoP, opaque tokens, JSON -----------------------------


def test_dpop_tokens_and_opaque_tokens_with_inline_introspection_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_config: Path
) -> None:
    requests = _write(
        tmp_path / "t.yaml",
        [
            {"name": "dpop", "method": "POST", "host": "api.example", "path": "/api/x?y=1",
             "token": {"dpop": True, "claims": {"sub": "alice"}},
             "expect": {"status": 200, "rule": "api", "headers": {"x-user-id": "alice"}}},
            {"name": "bearer where DPoP is required", "path": "/api/x",
             "token": {"claims": {"sub": "alice"}},
             "expect": {"status": 401, "reason": "binding_mismatch"}},
            {"name": "opaque, active", "path": "/legacy/a", "token": "opaque-1",
             "introspection": {"active": True, "scope": "read", "client_id": "c1"},
             "expect": {"status": 200, "headers": {"x-client": "c1"}}},
            {"name": "opaque, without the scope", "path": "/legacy/a", "token": "opaque-2",
             "introspection": {"active": True, "scope": "write"},
             "expect": {"status": 403, "reason": "insufficient_scope"}},
            {"name": "opaque, revoked", "path": "/legacy/a", "token": "opaque-3",
             "introspection": {"active": False},
             "expect": {"status": 401, "reason": "inactive_token"}},
        ],
    )  # fmt: skip
    code, out, err = _main(capsys, "test-config", local_config, requests)
    assert code == 0, out + err
    assert out.splitlines()[-1] == "5 cases: 5 passed, 0 failed"
    assert "opaque-" not in out + err


def test_an_opaque_token_without_its_introspection_answer_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_config: Path
) -> None:
    requests = _write(
        tmp_path / "t.yaml",
        [{"name": "opaque", "path": "/legacy/a", "token": "opaque-1", "expect": {"status": 200}}],
    )
    code, out, err = _main(capsys, "test-config", local_config, requests)
    assert (code, out) == (2, "")
    assert err.splitlines()[1].startswith("  cases.0.introspection: required: the token goes")


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = _write(
        tmp_path / "t.yaml",
        [
            {"name": "ok", "path": "/v1/orders", "token": {"provider": "zuplo",
             "claims": {"sub": "alice"}}, "expect": {"status": 200}},
            {"name": "wrong", "path": "/v1/orders", "expect": {"status": 200, "rule": "reports"}},
        ],
    )  # fmt: skip
    code, out, _ = _main(capsys, "test-config", "--format", "json", POLICY, requests)
    assert code == 1
    document = json.loads(out)
    assert (document["passed"], document["failed"]) == (1, 1)
    ok, wrong = document["cases"]
    assert ok["passed"] and ok["headers"]["x-user-id"] == "alice"
    assert ok["headers"]["x-jwt-payload"] == runner.CLAIM_SET
    assert (wrong["status"], wrong["reason"], wrong["rule"]) == (401, "missing_token", "default")
    assert wrong["failures"] == [
        {"key": "status", "expected": 200, "got": 401},
        {"key": "rule", "expected": "reports", "got": "default"},
    ]


def test_the_algorithms_a_case_may_name_are_the_dev_issuers() -> None:
    from extauthz.dev.issuer import ALGORITHMS
    from extauthz.policytest.signing import SIGNING_ALGS

    assert set(SIGNING_ALGS) == set(ALGORITHMS)


def test_tokens_that_cannot_be_minted_for_a_provider_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    jwks = "https://issuer.example/jwks"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "providers": {
                    "pss": {"issuer": "https://pss.example", "audiences": [], "jwks_uri": jwks,
                            "algorithms": ["PS256"]},
                    "big": {"issuer": "https://big.example", "audiences": [], "jwks_uri": jwks,
                            "algorithms": ["RS256"], "min_rsa_bits": 4096},
                    "opaque": {"issuer": "https://as.example", "audiences": [],
                               "introspection": {"endpoint": "https://as.example/i",
                                                 "client_id": "c",
                                                 "client_secret_file": str(secret)}},
                }
            }
        )
    )  # fmt: skip
    requests = _write(
        tmp_path / "t.yaml",
        [
            {"name": "pss", "path": "/", "token": {"provider": "pss"}, "expect": {"status": 200}},
            {"name": "big", "path": "/", "token": {"provider": "big"}, "expect": {"status": 200}},
            {"name": "big RS256", "path": "/", "token": {"provider": "big", "alg": "RS256"},
             "expect": {"status": 200}},
            {"name": "opaque", "path": "/", "token": {"provider": "opaque"},
             "expect": {"status": 200}},
        ],
    )  # fmt: skip
    code, out, err = _main(capsys, "test-config", cfg, requests)
    assert (code, out) == (2, "")
    assert err.splitlines()[1:] == [
        "  cases.0.token.alg: provider 'pss' accepts none of EdDSA, RS256, ES256, which "
        "test-config signs with",
        "  cases.1.token.alg: test-config's RSA keys have 2048 bits, fewer than the "
        "min_rsa_bits of provider 'big'",
        "  cases.2.token.alg: test-config's RSA keys have 2048 bits, fewer than the "
        "min_rsa_bits of provider 'big'",
        "  cases.3.token.provider: provider 'opaque' verifies no JWTs (introspection only): "
        "give a literal token and its introspection answer",
    ]
