"""The benchmark's Envoy: the demo's bootstrap (``extauthz.dev.envoy_config``) with the
benchmark's knobs: Envoy answers every route itself (a zero-cost upstream), no access
log, and ext_authz swapped for nothing or for Envoy's own ``jwt_authn`` filter, or
asking over HTTP (``http_service``, as envoy/http-service.yaml does) instead of gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.client import Response, http_request
from extauthz.dev import envoy_config
from extauthz.dev.envoy import EnvoyProcess as _Envoy

JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
_JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: The header an allowing HTTP answer sets on the upstream request (the floors send it,
#: extauthz from ``claims_to_headers``).
USER_HEADER = "x-user-id"


def _exact(*names: str) -> dict[str, Any]:
    return {"patterns": [{"exact": name, "ignore_case": True} for name in names]}


def use_http_service(config: dict[str, Any], *, port: int, timeout: str) -> None:
    """Make ext_authz ask ``127.0.0.1:port`` over HTTP/1.1 (``http_service``) instead of
    gRPC: the field names of envoy/http-service.yaml (Envoy 1.40), fail closed."""
    typed = envoy_config.ext_authz_settings(config)
    del typed["grpc_service"]
    typed.pop("transport_api_version", None)  # a gRPC-only setting
    typed["http_service"] = {
        "server_uri": {
            "uri": f"http://127.0.0.1:{port}",
            "cluster": envoy_config.EXTAUTHZ_CLUSTER,
            "timeout": timeout,
        },
        "authorization_response": {"allowed_upstream_headers": _exact(USER_HEADER)},
    }
    # The client headers the auth request carries (Envoy adds Host, :method, :path and
    # Content-Length itself); the filter-level field, not the deprecated one.
    typed["allowed_headers"] = _exact("authorization")
    typed["failure_mode_allow"] = False
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == envoy_config.EXTAUTHZ_CLUSTER:  # HTTP/1.1, kept alive
            cluster["typed_extension_protocol_options"] = {
                _HTTP_PROTOCOL_OPTIONS: {
                    "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                    "common_http_protocol_options": {"idle_timeout": "60s"},
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            }


def bench_bootstrap(
    *,
    extauthz_port: int,
    timeout: str,
    ext_authz: bool,
    jwt_authn: Mapping[str, Any] | None,
    http_service: bool = False,
) -> dict[str, Any]:
    config = envoy_config.bootstrap(
        extauthz_port=extauthz_port or 1,  # an unused cluster when ext_authz is off
        upstream_port=1,  # unused: every route is a direct response
        timeout=timeout,
    )
    hcm = envoy_config.connection_manager(config)
    del hcm["access_log"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        # Envoy answers itself (after the HTTP filters ran).
        route.pop("route", None)
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
    filters = hcm["http_filters"]
    if not ext_authz:
        filters[:] = [f for f in filters if f["name"] != envoy_config.EXT_AUTHZ_FILTER]
    elif http_service:
        use_http_service(config, port=extauthz_port, timeout=timeout)
    if jwt_authn is not None:
        filters.insert(
            0, {"name": JWT_AUTHN_FILTER, "typed_config": {"@type": _JWT_AUTHN_TYPE, **jwt_authn}}
        )
    return config


class EnvoyProcess(_Envoy):
    """The dev Envoy launcher, with one request helper for correctness checks."""

    def __init__(self, config: Mapping[str, Any], *, workdir: Path, startup_timeout: float) -> None:
        super().__init__(config, workdir=workdir, startup_timeout=startup_timeout)

    def request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        return http_request("127.0.0.1", self.port, method, path, headers=headers)
