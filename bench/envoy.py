"""The benchmark's Envoy: the demo's bootstrap (``extauthz.dev.envoy_config``) with the
benchmark's knobs: Envoy answers every route itself (a zero-cost upstream), no access
log, and ext_authz swapped for nothing or for Envoy's own ``jwt_authn`` filter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.client import Response, http_request
from extauthz.dev import envoy_config
from extauthz.dev.envoy import EnvoyProcess as _Envoy

JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
_JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


def bench_bootstrap(
    *, extauthz_port: int, timeout: str, ext_authz: bool, jwt_authn: Mapping[str, Any] | None
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
