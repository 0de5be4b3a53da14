"""CheckRequest -> AuthRequest and Decision -> CheckResponse: the only protobuf code.

Envoy facts this relies on (Envoy 1.40): a CheckResponse whose status is 0 allows even
with a denied_response, so every deny sets a non-zero code; ``ok_response.headers``
without ``append`` overwrite existing headers; ``http.query`` is empty (the query is
in ``http.path``); with ``encode_raw_headers`` the headers arrive in ``header_map``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from google.protobuf import struct_pb2

from . import errors
from ._proto.envoy.config.core.v3 import base_pb2
from ._proto.envoy.service.auth.v3 import external_auth_pb2 as pb
from ._proto.envoy.type.v3 import http_status_pb2
from ._proto.google.rpc import status_pb2
from .policy import AuthRequest, Decision

CheckRequest = pb.CheckRequest
CheckResponse = pb.CheckResponse


def _headers(http: Any) -> Mapping[str, str]:
    if http.headers:
        # Envoy sends lower-case names (HTTP/2 requires them): read its map in place
        # rather than copying every header on every request.
        return http.headers  # type: ignore[no-any-return]
    out: dict[str, str] = {}
    for h in http.header_map.headers:
        key = h.key.lower()
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        if key in out:
            out[key] += ("; " if key == "cookie" else ",") + value
        else:
            out[key] = value
    return out


def to_auth_request(request: Any) -> AuthRequest:
    attrs = request.attributes
    http = attrs.request.http
    headers = _headers(http)
    path = http.path or headers.get(":path", "/")
    if http.query and "?" not in path:
        path = f"{path}?{http.query}"
    return AuthRequest(
        method=http.method or headers.get(":method", "GET"),
        host=http.host or headers.get(":authority", headers.get("host", "")),
        path=path,
        headers=headers,
        context_extensions=attrs.context_extensions,
    )


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def www_authenticate(realm: str, error: str | None, description: str, scope: str) -> str:
    """RFC 6750 §3: no error attributes when the request carried no credentials."""
    parts = [f'Bearer realm="{_quote(realm)}"']
    if error is not None:
        parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{_quote(description)}"')
        if scope:
            parts.append(f'scope="{_quote(scope)}"')
    return ", ".join(parts)


def _hvo(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


@lru_cache(maxsize=1024)
def _denied(
    realm: str,
    grpc_code: int,
    http_status: int,
    error: str | None,
    description: str,
    scope: str,
    reason: str,
) -> bytes:
    """Deny answers are few and fixed: build each once and reuse the serialized bytes."""
    headers = [_hvo("content-type", "application/json")]
    if http_status in (400, 401, 403):
        headers.append(_hvo("www-authenticate", www_authenticate(realm, error, description, scope)))
    if http_status == 503:
        headers.append(_hvo("retry-after", "1"))
    body = {"error": error or reason}
    if description:
        body["error_description"] = description
    response = CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=description),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status),  # type: ignore[arg-type]
            headers=headers,
            body=json.dumps(body),
        ),
    )
    return bytes(response.SerializeToString())


def _number(text: str) -> float | str:
    """A JSON integer as a Struct number, or as its digits when a double cannot hold it."""
    value = float(text)
    return value if math.isfinite(value) else text


#: Levels of JSON nesting kept as structure in dynamic metadata; a value deeper than
#: this is sent as its compact JSON text instead. Envoy parses a CheckResponse with
#: protobuf's nesting limit of 100 messages, and every JSON object level costs three
#: (Struct, map entry, Value): a claim nested 33 object levels deep made the whole
#: answer unreadable to Envoy 1.40 (its ext_authz_error, a 503 for a valid token).
METADATA_MAX_DEPTH = 16


def _bounded(value: Any, depth: int) -> Any:
    if isinstance(value, dict | list):
        if depth >= METADATA_MAX_DEPTH:
            return json.dumps(value, separators=(",", ":"), default=str)
        if isinstance(value, dict):
            return {k: _bounded(v, depth + 1) for k, v in value.items()}
        return [_bounded(v, depth + 1) for v in value]
    return value


def _struct(data: Mapping[str, Any]) -> Any:
    s = struct_pb2.Struct()
    data = {k: _bounded(v, 1) for k, v in data.items()}
    try:
        s.update(data)
    except (ValueError, TypeError, OverflowError):
        # Claims that Struct cannot hold (e.g. a 400-digit int): fall back to JSON round-trip.
        s.update(json.loads(json.dumps(data, default=str), parse_int=_number))
    return s


def encode(decision: Decision, realm: str) -> bytes:
    """The serialized CheckResponse for a decision (what the servicer sends)."""
    cached = decision.encoded.get(realm)
    if cached is not None:
        return cached
    if not decision.allowed:
        # A deny must never carry status 0: Envoy would allow the request.
        code = decision.grpc_code or errors.UNAVAILABLE
        return _denied(
            realm,
            code,
            decision.http_status,
            decision.oauth_error,
            decision.description,
            decision.scope,
            decision.reason,
        )
    response = CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=pb.OkHttpResponse(
            headers=[_hvo(k, v) for k, v in decision.set_headers],
            headers_to_remove=list(decision.remove_headers),
            query_parameters_to_remove=list(decision.remove_query),
        ),
    )
    if decision.metadata is not None:
        response.dynamic_metadata.CopyFrom(_struct(decision.metadata))
    data = bytes(response.SerializeToString())
    decision.encoded[realm] = data
    return data


def to_check_response(decision: Decision, realm: str) -> Any:
    return CheckResponse.FromString(encode(decision, realm))
