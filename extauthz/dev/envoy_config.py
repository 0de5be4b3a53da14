"""Render an Envoy v3 bootstrap that puts extauthz in front of an upstream.

Pure module: :func:`bootstrap` returns a plain ``dict`` (JSON-serialisable, and
therefore also valid YAML, which is what Envoy reads). :func:`to_json` /
:func:`to_yaml` serialise it and :func:`write` is the only function doing I/O.

Used by ``extauthz demo``; the tests and the benchmark start from it and adjust
the dict (:func:`connection_manager`, :func:`route`). ``envoy/envoy.yaml`` is the
hand-written, commented equivalent for users.

Security posture (fail closed):

* ``failure_mode_allow: false`` - if the authorization service is unreachable,
  times out or answers garbage, the request is denied...
* ...with ``status_on_error`` 503 (``ServiceUnavailable``) rather than Envoy's
  default 403, so "auth is down" is distinguishable from "you are forbidden".
* Path normalisation (``normalize_path``, ``merge_slashes``) happens *before*
  route matching and before the Check call, so ``/healthz/../admin`` or
  ``//admin`` cannot ride an unprotected route.
* ``path_with_escaped_slashes_action: REJECT_REQUEST`` - see the comment in
  :func:`_http_connection_manager`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXTAUTHZ_CLUSTER = "extauthz"
UPSTREAM_CLUSTER = "upstream"
LISTENER_NAME = "ingress"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"

_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
_HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STDOUT_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"

#: JSON access-log fields. The path is logged without its query string (a token may
#: ride in ``?access_token=``) and of extauthz's dynamic metadata only provider, rule
#: and sub: the whole Struct (``%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%``)
#: would write every verified claim set to the log.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ_WITHOUT_QUERY(:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authz_provider": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:provider)%",
    "authz_rule": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:rule)%",
    "authz_sub": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:sub)%",
}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _static_cluster(name: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address("127.0.0.1", port)}}]}
            ],
        },
    }
    if http2:
        # gRPC needs HTTP/2 to the cluster.
        cluster["typed_extension_protocol_options"] = {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


#: The extension behind ``%REQ_WITHOUT_QUERY(...)%`` (not a built-in command).
REQ_WITHOUT_QUERY_FORMATTER: dict[str, Any] = {
    "name": "envoy.formatter.req_without_query",
    "typed_config": {
        "@type": "type.googleapis.com/"
        "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
    },
}


def _access_log(path: str | None) -> dict[str, Any]:
    log_format = {
        "json_format": dict(ACCESS_LOG_FORMAT),
        "formatters": [REQ_WITHOUT_QUERY_FORMATTER],
    }
    if path is None:
        return {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {"@type": _STDOUT_LOG_TYPE, "log_format": log_format},
        }
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": _FILE_LOG_TYPE, "path": path, "log_format": log_format},
    }


def _prefix_match(prefix: str) -> dict[str, Any]:
    """Route match for a path prefix.

    A bare prefix such as ``/healthz`` would also match ``/healthzXYZ``; for
    exemptions from authorization that is too loose, so prefixes not ending in
    ``/`` use ``path_separated_prefix`` (matches ``/healthz``, ``/healthz/...``,
    ``/healthz?...`` only). Prefixes ending in ``/`` already stop at a segment
    boundary and use a plain ``prefix``.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"route prefix must start with '/': {prefix!r}")
    if any(c in prefix for c in "?#"):
        raise ValueError(f"route prefix must not contain '?' or '#': {prefix!r}")
    if prefix.endswith("/"):
        return {"prefix": prefix}
    return {"path_separated_prefix": prefix}


def route(prefix: str, per_route: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A route to the upstream for ``prefix``; ``per_route`` is an ``ExtAuthzPerRoute``
    body (``{"disabled": True}``, ``{"check_settings": {...}}``)."""
    out: dict[str, Any] = {"match": _prefix_match(prefix), "route": {"cluster": UPSTREAM_CLUSTER}}
    if per_route is not None:
        out["typed_per_filter_config"] = {
            EXT_AUTHZ_FILTER: {"@type": _EXT_AUTHZ_PER_ROUTE_TYPE, **per_route}
        }
    return out


def _routes(unprotected_prefixes: Sequence[str]) -> list[dict[str, Any]]:
    if len(set(unprotected_prefixes)) != len(unprotected_prefixes):
        raise ValueError(f"duplicate route prefix in {list(unprotected_prefixes)!r}")
    # Envoy takes the first matching route: the exemptions first, then the catch-all
    # (protected by the connection-wide ext_authz filter).
    routes = [route(prefix, {"disabled": True}) for prefix in unprotected_prefixes]
    return [*routes, {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER}}]


def _ext_authz_filter(timeout: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": _EXT_AUTHZ_TYPE,
        "transport_api_version": "V3",
        "grpc_service": {
            "envoy_grpc": {"cluster_name": EXTAUTHZ_CLUSTER},
            # Envoy's default is 200ms; extauthz never waits on network I/O
            # (JWKS are refreshed in the background), so this is a ceiling.
            "timeout": timeout,
        },
        # Fail closed: a broken/unreachable authz service denies requests...
        "failure_mode_allow": False,
        # ...with 503 instead of the default 403 (envoy.type.v3.StatusCode).
        "status_on_error": {"code": "ServiceUnavailable"},
        "include_peer_certificate": False,
    }
    return {"name": EXT_AUTHZ_FILTER, "typed_config": config}


def _http_connection_manager(
    *, routes: list[dict[str, Any]], timeout: str, access_log_path: str | None
) -> dict[str, Any]:
    filters = [
        _ext_authz_filter(timeout),
        {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}},
    ]
    hcm: dict[str, Any] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM_TYPE,
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            # Edge proxy: trust the peer address, not a client-supplied XFF.
            "use_remote_address": True,
            # RFC 3986 normalisation and "//" -> "/" before routing and before
            # the Check call, so the path extauthz authorizes is the path the
            # router matches and the upstream receives.
            "normalize_path": True,
            "merge_slashes": True,
            # %2F / %5C in a path are ambiguous: Envoy would route on the
            # encoded form while an upstream may decode it to "/" (e.g.
            # "/healthz%2F..%2Fadmin"). KEEP_UNCHANGED (Envoy's default) leaves
            # that gap open; UNESCAPE_AND_FORWARD / UNESCAPE_AND_REDIRECT
            # change what the client sent. Legitimate clients have no reason
            # to send escaped slashes here, so reject them (400).
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "access_log": [_access_log(access_log_path)],
            "route_config": {
                "name": "local_route",
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
            },
            "http_filters": filters,
        },
    }
    return hcm


def bootstrap(
    *,
    extauthz_port: int,
    upstream_port: int,
    listen_port: int = 0,
    listen_host: str = "127.0.0.1",
    timeout: str = "1s",
    unprotected_prefixes: Sequence[str] = (),
    access_log_path: str | None = None,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (a dict): a listener that asks extauthz about every request
    except those under ``unprotected_prefixes``, then proxies to the upstream.

    Ports may be 0 (the OS picks; read the bound ports from the admin API). The admin
    listener is on 127.0.0.1, port 0. ``access_log_path``: a JSON access-log file;
    ``None`` logs to stdout.
    """
    if isinstance(unprotected_prefixes, str):
        raise TypeError("unprotected_prefixes must be a sequence of strings, not a string")
    for name, port in (
        ("listen_port", listen_port),
        ("extauthz_port", extauthz_port),
        ("upstream_port", upstream_port),
    ):
        if not 0 <= port <= 65535:
            raise ValueError(f"{name} out of range: {port}")
    if extauthz_port == 0 or upstream_port == 0:
        raise ValueError("extauthz_port and upstream_port must be real ports, not 0")
    hcm = _http_connection_manager(
        routes=_routes(unprotected_prefixes), timeout=timeout, access_log_path=access_log_path
    )
    return {
        "admin": {"address": _socket_address("127.0.0.1", 0)},
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": _socket_address(listen_host, listen_port),
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [
                _static_cluster(EXTAUTHZ_CLUSTER, extauthz_port, http2=True),
                _static_cluster(UPSTREAM_CLUSTER, upstream_port),
            ],
        },
    }


def connection_manager(config: Mapping[str, Any]) -> dict[str, Any]:
    """The HttpConnectionManager's ``typed_config`` of a :func:`bootstrap` (to adjust
    its ``http_filters``, ``route_config`` or ``access_log``)."""
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def ext_authz_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ext_authz filter's ``typed_config`` of a :func:`bootstrap`."""
    filters = connection_manager(config)["http_filters"]
    typed: dict[str, Any] = next(f for f in filters if f["name"] == EXT_AUTHZ_FILTER)[
        "typed_config"
    ]
    return typed


def to_json(config: Mapping[str, Any]) -> str:
    """Serialise a bootstrap as JSON (which Envoy also accepts as YAML)."""
    return json.dumps(config, indent=2) + "\n"


def to_yaml(config: Mapping[str, Any]) -> str:
    """Serialise a bootstrap as YAML (needs PyYAML)."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


def write(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``config`` to ``path``; YAML for ``.yaml``/``.yml``, else JSON."""
    target = Path(path)
    text = to_yaml(config) if target.suffix in (".yaml", ".yml") else to_json(config)
    target.write_text(text, encoding="utf-8")
    return target
