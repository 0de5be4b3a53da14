"""The gRPC front door: Envoy's ext_authz v3 ``Authorization/Check``.

CheckRequest -> AuthRequest in, Decision -> CheckResponse out: the only protobuf code,
and one table (:data:`ANSWERS`) from a deny kind to the gRPC code, HTTP status and
challenge. Envoy facts this relies on (Envoy 1.40): a CheckResponse whose status is 0
allows even with a denied_response, so every deny sets a non-zero code;
``ok_response.headers`` without ``append`` overwrite existing headers; ``http.query``
is empty (the query is in ``http.path``); with ``encode_raw_headers`` the headers
arrive in ``header_map``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc

from .. import errors, logs
from .._proto.envoy.config.core.v3 import base_pb2
from .._proto.envoy.service.auth.v3 import external_auth_pb2 as pb
from .._proto.envoy.type.v3 import http_status_pb2
from .._proto.google.rpc import status_pb2
from ..core.decision import Decision, refuse
from ..core.memo import Memo
from ..core.request import AuthRequest, ClientCert
from ..errors import DenyKind
from . import challenge

if TYPE_CHECKING:
    from ..authorizer import Authorizer, Pending

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
CheckRequest = pb.CheckRequest
CheckResponse = pb.CheckResponse
_log = logs.get("extauthz.grpc")


@dataclass(frozen=True)
class Answer:
    grpc_code: int  # google.rpc.Code in CheckResponse.status: never 0 for a deny
    http_status: int
    oauth_error: str | None  # RFC 6750 error attribute; None: a bare challenge (§3.1)
    challenge: bool = True  # send WWW-Authenticate


#: The one table from what was decided to what Envoy is told.
ANSWERS: Mapping[DenyKind, Answer] = {
    DenyKind.MISSING_TOKEN: Answer(16, 401, None),  # UNAUTHENTICATED
    DenyKind.NO_RULE: Answer(16, 401, None),
    DenyKind.INVALID_TOKEN: Answer(16, 401, "invalid_token"),
    DenyKind.INVALID_DPOP_PROOF: Answer(16, 401, "invalid_dpop_proof"),
    DenyKind.INVALID_REQUEST: Answer(3, 400, "invalid_request"),  # INVALID_ARGUMENT
    DenyKind.INSUFFICIENT_SCOPE: Answer(7, 403, "insufficient_scope"),  # PERMISSION_DENIED
    DenyKind.UNAVAILABLE: Answer(14, 503, None, challenge=False),  # UNAVAILABLE
}

#: Encoded allow answers kept for the hottest tokens (FIFO).
MEMO_SIZE = 256


# -- in ----------------------------------------------------------------------------------
def _headers(http: Any) -> Mapping[str, str]:
    if http.headers:
        # Envoy sends lower-case names (HTTP/2 requires them): read its map in place
        # rather than copying every header on every request. (protobuf messages are
        # untyped to mypy here: the map is a str -> str mapping.)
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


def to_auth_request(request: CheckRequest) -> AuthRequest:
    attrs = request.attributes
    http = attrs.request.http
    headers = _headers(http)
    path = http.path or headers.get(":path", "/")
    if http.query and "?" not in path:
        path = f"{path}?{http.query}"
    pem = attrs.source.certificate
    return AuthRequest(
        client_cert=ClientCert(pem=unquote(pem)) if pem else None,
        method=http.method or headers.get(":method", "GET"),
        scheme=http.scheme or headers.get(":scheme", ""),
        host=http.host or headers.get(":authority", headers.get("host", "")),
        path=path,
        headers=headers,
        context_extensions=attrs.context_extensions,
    )


# -- out ---------------------------------------------------------------------------------
def _hvo(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def http_status(decision: Decision) -> int:
    return ANSWERS[decision.deny].http_status if decision.deny is not None else 200


@lru_cache(maxsize=1024)
def _denied(
    realm: str,
    kind: DenyKind,
    description: str,
    scope: str,
    reason: str,
    resource_metadata: str,
    bearer: bool = True,
    dpop_algs: tuple[str, ...] = (),
    dpop: bool = False,
) -> bytes:
    """Deny answers are few and fixed: build each once and reuse the serialized bytes."""
    answer = ANSWERS[kind]
    headers, text = challenge.refusal(
        realm, kind, answer.oauth_error, answer.challenge, description, scope, reason,
        resource_metadata, bearer, dpop_algs, dpop,
    )  # fmt: skip
    response = CheckResponse(
        status=status_pb2.Status(code=answer.grpc_code, message=description),
        denied_response=pb.DeniedHttpResponse(
            # The stub types `code` as the StatusCode enum; protobuf takes its int value.
            status=http_status_pb2.HttpStatus(code=answer.http_status),  # type: ignore[arg-type]
            headers=[_hvo(k, v) for k, v in headers],
            body=text,
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


def _put(target: Any, value: Any, depth: int) -> None:
    """``value`` (``depth`` levels below the top) into a ``google.protobuf.Value``, as
    ``Struct.update`` would put it, but a dict or list at ``depth`` >= METADATA_MAX_DEPTH
    as its JSON text. Written out because ``Struct.update`` is pure Python with an
    isinstance chain per value, and this runs for every allow: JSON's own types first."""
    kind = type(value)
    if kind is str:
        target.string_value = value
    elif kind is bool:
        target.bool_value = value
    elif kind is int or kind is float:
        target.number_value = value
    elif value is None:
        target.null_value = 0
    elif isinstance(value, dict | list | tuple):
        if depth >= METADATA_MAX_DEPTH:
            target.string_value = json.dumps(value, separators=(",", ":"), default=str)
        elif isinstance(value, dict):
            _put_fields(target.struct_value, value, depth)
        else:
            values = target.list_value
            values.SetInParent()  # an empty list is still a list
            for item in value:
                _put(values.values.add(), item, depth + 1)
    elif isinstance(value, str):  # subclasses, as Struct.update takes them
        target.string_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    else:
        raise TypeError(f"no Struct value for {kind.__name__}")


def _put_fields(struct: Any, data: Mapping[str, Any], depth: int) -> None:
    struct.SetInParent()  # an empty object is still an object
    fields = struct.fields
    deeper = depth + 1
    for key, value in data.items():
        _put(fields[key], value, deeper)


def _fill(struct: Any, data: Mapping[str, Any]) -> None:
    """``data`` into a Struct (google.protobuf.Struct, or a message's Struct field)."""
    try:
        _put_fields(struct, data, 0)
    except (ValueError, TypeError, OverflowError):
        # Claims that Struct cannot hold (e.g. a 400-digit int): fall back to JSON round-trip.
        struct.Clear()
        _put_fields(struct, json.loads(json.dumps(data, default=str), parse_int=_number), 0)


def encode(decision: Decision, realm: str) -> bytes:
    """The serialized CheckResponse for a decision."""
    if decision.deny is not None:
        return _denied(realm, decision.deny, decision.description, decision.scope,
                       decision.reason, decision.resource_metadata, decision.bearer,
                       decision.dpop_algs, decision.dpop)  # fmt: skip
    if not decision.allowed:  # a deny without a kind: never let it pass as status 0
        return _denied(realm, DenyKind.UNAVAILABLE, "", "", "internal_error", "")
    # Built in place: no intermediate messages to copy in.
    response = CheckResponse()
    response.status.SetInParent()  # code 0: OK
    ok = response.ok_response
    ok.SetInParent()
    ok.headers.extend(_hvo(key, value) for key, value in decision.set_headers)
    ok.headers_to_remove.extend(decision.remove_headers)
    ok.query_parameters_to_remove.extend(decision.remove_query)
    if decision.metadata is not None:
        _fill(response.dynamic_metadata, decision.metadata)
    return bytes(response.SerializeToString())


# -- the service -------------------------------------------------------------------------
#: Seconds a pool thread waits beyond a decision's own budget for the event loop to hand
#: it back (the loop may be busy with other work when the wait ends).
HANDBACK_SLACK = 1.0


class AuthorizationServicer:
    """``envoy.service.auth.v3.Authorization/Check`` for grpcio's synchronous server.

    Each call is decided on a pool thread: a decision that needs no wait (a cache hit,
    a signature check) never touches the event loop. One that must wait — an unknown
    kid's refetch, an introspection call, a shared replay store — is resolved on
    ``loop``, where the key sources and HTTP clients live, and the thread waits for it.
    Returns serialized bytes: deny answers and the allows of hot tokens are encoded once.
    """

    def __init__(self, authorizer: Authorizer, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.use(authorizer)

    def use(self, authorizer: Authorizer) -> None:
        """Answer with ``authorizer`` from now on (a reload); remembered answers go."""
        self._memo: Memo[tuple[Hashable, str], bytes] = Memo(MEMO_SIZE)
        self.authorizer = authorizer

    def _encode(self, decision: Decision, realm: str) -> bytes:
        key = decision.reuse_key
        if key is None:
            return encode(decision, realm)
        memo = self._memo
        found = memo.get((key, realm))
        if found is None:
            found = encode(decision, realm)
            memo.put((key, realm), found)
        return found

    def _resolve(
        self, authorizer: Authorizer, req: AuthRequest, pending: Pending, remaining: float | None
    ) -> Decision:
        budget = authorizer.budget(pending, remaining)
        resolving = authorizer.resolve(req, pending, budget)
        try:
            waiting = asyncio.run_coroutine_threadsafe(resolving, self._loop)
        except RuntimeError:  # the loop has closed: the process is stopping
            resolving.close()  # never started: nothing to warn about at exit
            return refuse(errors.InternalError())
        try:
            return waiting.result(budget + HANDBACK_SLACK)
        except Exception:  # resolve never raises: the loop did not hand it back in time
            waiting.cancel()
            _log.warning("check_wait_abandoned", request_id=req.request_id)
            return refuse(errors.InternalError())

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> bytes:
        started = time.perf_counter()
        authorizer = self.authorizer  # read once: a reload may swap it mid-call
        realm = authorizer.policy.realm
        try:
            req = to_auth_request(request)
        except Exception:  # an input the adapter cannot read: refuse it, never crash
            _log.exception("check_request_unreadable")
            req = AuthRequest()
            decision = refuse(errors.InternalError())
        else:
            result = authorizer.first(req)
            if isinstance(result, Decision):
                decision = result
            else:
                decision = self._resolve(authorizer, req, result, context.time_remaining())
        try:
            answer = self._encode(decision, realm)
        except Exception:
            # A decision the wire cannot carry is a deny, logged and counted as one: an
            # RPC error here would be Envoy's status_on_error and a metric of an allow.
            _log.exception("check_answer_unencodable", reason=decision.reason)
            decision = refuse(errors.InternalError(), rule=decision.rule)
            answer = encode(decision, realm)
        authorizer.record(req, decision, http_status(decision), started, front_door="grpc")
        return answer

    def serve_on(self, server: grpc.Server) -> None:
        """Add ``Check`` to ``server`` as a registered method (grpc core then names the
        method itself: no per-call lookup through the generic handlers), and as a
        generic one, as protoc's generated code does."""
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check,
                request_deserializer=CheckRequest.FromString,
                response_serializer=bytes,  # already serialized
            )
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
