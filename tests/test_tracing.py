"""OpenTelemetry traces (server.tracing), end to end: a real `extauthz serve` exports
over OTLP/HTTP to a real receiver started here, which decodes every span.

A decision's span joins the caller's trace (traceparent), says what was decided and
carries no token, claim or ``sub``; JWKS fetches and introspection calls have spans of
their own; sampling follows the parent; a collector that is down or never answers
changes no answer. Without the packages, a config that asks for tracing is an exit 2.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from extauthz import tracing
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2 as pb
from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.config import from_mapping
from extauthz.server import reload
from tests.support.cli import REPO
from tests.support.introspection_server import IntrospectionServer
from tests.support.jwks_server import JwksServer
from tests.support.otlp_collector import OtlpCollector, Span
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
from tests.support.signing import Signer, claims, jwks
from tests.test_http_door import request as http_request

ISS = "https://issuer.example"
OPAQUE_ISS = "https://opaque.example"
SIGNER = Signer("ES256")
SUB = "subject-7f3e9a-must-never-be-exported"
OPAQUE = "opaque-token-5d1c0b8e4a2f-must-never-be-exported"
SERVICE = "authz-under-test"
# Spans leave every 100 ms rather than the SDK's 5 s: the tests wait less.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
GRPC_OK, GRPC_UNAUTHENTICATED = 0, 16


def token(**extra: Any) -> str:
    return SIGNER.sign(claims(ISS, "api", sub=SUB, ttl=3600, **extra))


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(trace id, parent span id, the traceparent header naming them)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def config(endpoint: str, jwks_url: str, **tracing_settings: Any) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "http": {"listen": "127.0.0.1:0"},
            "tracing": {"otlp_endpoint": endpoint, "service_name": SERVICE, **tracing_settings},
        },
        "providers": {"main": {"issuer": ISS, "audiences": ["api"], "jwks_uri": jwks_url}},
        "rules": [
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }


def check(port: int, headers: dict[str, str], timeout: float = 10.0) -> int:
    """A gRPC Check of ``GET /x`` as Envoy sends it; the answer's gRPC status code."""
    req = pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.host, http.path = "GET", "api.example", "/x"
    http.headers.update(headers)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(req, timeout=timeout)
    return int(answer.status.code)


def http_port(server: ServeProcess) -> int:
    started = server.event("started")
    assert started is not None and started["http"], "the HTTP door is not listening"
    return int(started["http"].rpartition(":")[2])


def arrived(collector: OtlpCollector, what: str, match: Callable[[Span], bool]) -> Span:
    """The first span ``match`` accepts, once the collector has it (60 s at most)."""
    found: list[Span] = []

    def seen() -> bool:
        found[:] = [s for s in collector.spans() if match(s)]
        return bool(found)

    wait_for(seen, 60, what)
    return found[0]


def named(name: str) -> Callable[[Span], bool]:
    return lambda s: s.name == name


def decision_in(trace_id: str) -> Callable[[Span], bool]:
    return lambda s: s.name == "extauthz.check" and s.trace_id == trace_id


# -- what reaches the collector ----------------------------------------------------------
def test_spans_join_the_callers_trace_and_carry_no_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "introspection-secret"
    secret_file.write_text("client-secret")
    allowed, weak = token(), token(scope="read")
    answer = {"active": True, "iss": OPAQUE_ISS, "aud": "api", "sub": SUB,
              "exp": int(time.time()) + 3600}  # fmt: skip
    with (
        JwksServer(jwks(SIGNER)) as keys,
        OtlpCollector() as collector,
        IntrospectionServer({OPAQUE: answer}) as idp,
    ):
        cfg = config(collector.url, keys.url)
        cfg["providers"]["opaque"] = {
            "issuer": OPAQUE_ISS,
            "audiences": ["api"],
            "introspection": {
                "endpoint": idp.url,
                "client_id": "extauthz",
                "client_secret_file": str(secret_file),
            },
        }
        server = ServeProcess(tmp_path, "traced", cfg, env=FAST_EXPORT)
        try:
            server.wait_ready()
            grpc_trace, grpc_parent, header = traceparent()
            before = time.time_ns()
            assert check(server.grpc_port, {"authorization": f"Bearer {allowed}",
                                            "traceparent": header,
                                            "tracestate": "vendor=x1"}) == GRPC_OK  # fmt: skip
            after = time.time_ns()
            http_trace, http_parent, header = traceparent()
            refused = http_request(
                http_port(server),
                "/admin/users?access_token=query-value-not-exported",
                headers={"authorization": f"Bearer {weak}", "traceparent": header},
            )
            assert refused.status == 403
            intro_trace, intro_parent, header = traceparent()
            opaque = {"authorization": f"Bearer {OPAQUE}", "traceparent": header}
            assert check(server.grpc_port, opaque) == GRPC_OK
            assert idp.calls == 1

            on_grpc = arrived(collector, "the gRPC decision's span", decision_in(grpc_trace))
            on_http = arrived(collector, "the HTTP decision's span", decision_in(http_trace))
            on_opaque = arrived(collector, "the opaque token's span", decision_in(intro_trace))
            fetch = arrived(collector, "a JWKS fetch's span", named("extauthz.jwks_fetch"))
            call = arrived(collector, "the introspection's span", named("extauthz.introspection"))
        finally:
            server.stop()

    # The gRPC door: a child of the caller's span, the allow's facts, the right times.
    assert on_grpc.parent_span_id == grpc_parent
    assert on_grpc.trace_state == "vendor=x1"  # tracestate goes on with the trace
    assert on_grpc.kind == SpanProto.SPAN_KIND_SERVER
    assert on_grpc.attributes == {
        "extauthz.decision": "allow",
        "extauthz.reason": "ok",
        "extauthz.rule": "default",
        "extauthz.provider": "main",
        "extauthz.front_door": "grpc",
        "http.response.status_code": 200,
    }
    assert before <= on_grpc.start_ns <= on_grpc.end_ns <= after
    assert on_grpc.status_code == Status.STATUS_CODE_UNSET  # a decision is not an error
    assert on_grpc.resource["service.name"] == SERVICE

    # The HTTP door: the refusal, named as the metrics name it.
    assert on_http.parent_span_id == http_parent
    assert on_http.attributes == {
        "extauthz.decision": "deny",
        "extauthz.reason": "insufficient_scope",
        "extauthz.rule": "admin",
        "extauthz.provider": "main",
        "extauthz.front_door": "http",
        "http.response.status_code": 403,
    }

    # Introspection: the call made while the request waited is in the request's trace.
    assert on_opaque.attributes["extauthz.provider"] == "opaque"
    assert (call.trace_id, call.parent_span_id) == (intro_trace, intro_parent)
    assert call.kind == SpanProto.SPAN_KIND_CLIENT
    assert call.attributes == {
        "extauthz.provider": "opaque",
        "extauthz.result": "active",
        "http.response.status_code": 200,
    }

    # The startup JWKS fetch: a root span of its own.
    assert fetch.parent_span_id == ""
    assert fetch.kind == SpanProto.SPAN_KIND_CLIENT
    assert fetch.attributes == {
        "extauthz.provider": "main",
        "extauthz.trigger": "startup",
        "extauthz.result": "success",
        "http.response.status_code": 200,
        "extauthz.keys": 1,
    }

    # Byte for byte, nothing secret left: no token (nor a piece of one), no sub, no
    # query, no client secret.
    sent = b"".join(collector.bodies)
    for name, secret in (("allowed", allowed), ("weak", weak)):
        for i, part in enumerate(secret.split(".")):
            assert part.encode() not in sent, f"segment {i} of the {name} token was exported"
    for secret in (OPAQUE, SUB, "query-value-not-exported", "client-secret"):
        assert secret.encode() not in sent, f"{secret!r} was exported"


def test_sampling_follows_the_parent_and_the_ratio_for_the_rest(tmp_path: Path) -> None:
    with JwksServer(jwks(SIGNER)) as keys, OtlpCollector() as collector:
        server = ServeProcess(
            tmp_path, "sampled", config(collector.url, keys.url, sample_ratio=0), env=FAST_EXPORT
        )
        try:
            server.wait_ready()
            bearer = {"authorization": f"Bearer {token()}"}
            unsampled_trace, _, unsampled = traceparent(sampled=False)
            sampled_trace, sampled_parent, sampled = traceparent(sampled=True)
            assert check(server.grpc_port, bearer) == GRPC_OK  # no parent: ratio 0
            assert check(server.grpc_port, {**bearer, "traceparent": unsampled}) == GRPC_OK
            assert check(server.grpc_port, {**bearer, "traceparent": sampled}) == GRPC_OK
            # Spans leave in the order they end: once the last one is here, any earlier
            # sampled span (the startup fetch's, the first two requests') would be too.
            last = arrived(collector, "the sampled parent's span", decision_in(sampled_trace))
        finally:
            server.stop()
    assert last.parent_span_id == sampled_parent
    assert collector.spans() == [last]
    assert unsampled_trace not in {s.trace_id for s in collector.spans()}


# -- a collector that is down ------------------------------------------------------------
@pytest.fixture(params=["refused", "silent"])
def dead_collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """An OTLP endpoint that refuses connections (bound, not listening), or one that
    accepts them and never answers (listening, never accepting)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if request.param == "silent":
            sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"


def test_a_collector_that_is_down_changes_no_answer(tmp_path: Path, dead_collector: str) -> None:
    with JwksServer(jwks(SIGNER)) as keys:
        server = ServeProcess(tmp_path, "dead", config(dead_collector, keys.url), env=FAST_EXPORT)
        try:
            server.wait_ready()
            good = {"authorization": f"Bearer {token()}"}

            def answers() -> list[int]:
                codes = []
                for _ in range(10):
                    header = {"traceparent": traceparent()[2]}
                    started = time.monotonic()
                    codes.append(check(server.grpc_port, {**good, **header}))
                    codes.append(check(server.grpc_port, header))
                    # An export waits up to its timeout; an answer never waits for one.
                    assert time.monotonic() - started < tracing.EXPORT_TIMEOUT
                return codes

            expected = [GRPC_OK, GRPC_UNAUTHENTICATED] * 10
            assert answers() == expected  # while the first exports are failing
            wait_for(lambda: server.count("tracing_sdk") > 0, 60, "an export failure logged")
            assert answers() == expected  # and after
            failure = server.event("tracing_sdk")
            assert failure is not None and failure["level"] == "warning"
        finally:
            server.stop()
    # Stopping waits for the last spans a bounded time, then exits cleanly.
    assert server.proc.returncode == 0


# -- configuration -----------------------------------------------------------------------
def test_a_reload_keeps_the_running_tracing_and_names_it() -> None:
    endpoint, keys = "http://127.0.0.1:4318/v1/traces", "https://issuer.example/jwks"
    running = from_mapping(config(endpoint, keys))
    edited = from_mapping(config(endpoint, keys, sample_ratio=0.25))
    change = reload.plan(running, edited, {})
    assert change.needs_restart == ("server.tracing",)
    assert change.config.server.tracing == running.server.tracing
    assert reload.plan(running, running, {}).needs_restart == ()


# -- without the packages ----------------------------------------------------------------
# The OpenTelemetry packages made unimportable, as in an install without the extra.
WITHOUT_OPENTELEMETRY = (
    "import runpy, sys; sys.modules['opentelemetry'] = None; "
    "sys.argv = ['extauthz', *sys.argv[1:]]; runpy.run_module('extauthz', run_name='__main__')"
)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_tracing_without_its_packages_is_a_config_error(tmp_path: Path, command: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config("http://127.0.0.1:4318/v1/traces", "https://x.example")))
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY, command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    problems = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
    assert problems == [
        "server.tracing: the OpenTelemetry packages are not installed (opentelemetry-sdk, "
        "opentelemetry-exporter-otlp-proto-http): pip install 'extauthz[tracing]'"
    ]
