"""Smoke tests for the real-Envoy test support and the example bootstrap."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from extauthz.dev import envoy_config
from tests.support.envoy import EnvoyProcess, add_context_extensions, envoy_binary
from tests.support.upstream import EchoUpstream

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_envoy_yaml_validates() -> None:
    result = validate(REPO / "envoy" / "envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_rendered_bootstrap_validates(tmp_path: Path, suffix: str) -> None:
    config = envoy_config.bootstrap(
        listen_port=0,
        extauthz_port=9191,
        upstream_port=8080,
        timeout="0.5s",
        unprotected_prefixes=["/healthz", "/public/"],
        access_log_path=str(tmp_path / "access.log"),
    )
    # What the tests add on top: a per-route rule name, raw header encoding.
    add_context_extensions(config, [("/admin", {"extauthz_rule": "admin"})])
    envoy_config.ext_authz_settings(config)["encode_raw_headers"] = True
    path = envoy_config.write(config, tmp_path / f"bootstrap{suffix}")
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        envoy_config.bootstrap(
            listen_port=0, extauthz_port=1, upstream_port=2, unprotected_prefixes=["healthz"]
        )
    with pytest.raises(ValueError):
        envoy_config.bootstrap(
            listen_port=0, extauthz_port=1, upstream_port=2, unprotected_prefixes=["/a", "/a"]
        )
    with pytest.raises(TypeError):
        envoy_config.bootstrap(
            listen_port=0, extauthz_port=1, upstream_port=2, unprotected_prefixes="/a"
        )


def test_fails_closed_when_extauthz_is_down() -> None:
    with (
        EchoUpstream() as upstream,
        EnvoyProcess(
            extauthz_port=free_port(),
            upstream_port=upstream.port,
            unprotected_prefixes=["/healthz"],
        ) as envoy,
    ):
        assert envoy.port > 0
        assert envoy.admin_port > 0
        assert envoy.url == f"http://127.0.0.1:{envoy.port}"

        # Protected route: authz unreachable -> status_on_error 503, never proxied.
        denied = envoy.request("GET", "/anything", headers={"x-probe": "1"})
        assert denied.status == 503, denied
        assert upstream.requests == []

        # Prefix is segment-bounded: /healthzX is still protected.
        assert envoy.request("GET", "/healthzX").status == 503
        # Normalisation happens before routing: no bypass via dot segments.
        assert envoy.request("GET", "/healthz/../anything").status == 503
        # Escaped slashes are rejected outright.
        assert envoy.request("GET", "/healthz%2F..%2Fanything").status == 400
        assert upstream.requests == []

        # Unprotected route: ext_authz disabled -> reaches the upstream.
        ok = envoy.request("GET", "/healthz", headers={"x-probe": "2"})
        assert ok.status == 200, ok
        echoed = ok.json()
        assert echoed["method"] == "GET"
        assert echoed["path"] == "/healthz"
        assert echoed["headers"]["x-probe"] == "2"
        assert [r.path for r in upstream.requests] == ["/healthz"]

        lines = envoy.wait_access_log(5)
        by_path = {line["path"]: line for line in lines}
        assert by_path["/anything"]["response_code"] == 503
        assert by_path["/healthz"]["response_code"] == 200

    # Envoy is stopped and its temp dir gone, but the log stays readable.
    assert not envoy.running
    assert len(envoy.access_log_lines()) >= 5
