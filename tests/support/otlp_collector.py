"""A real OTLP/HTTP trace receiver on 127.0.0.1:0: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` (protobuf, gzip or not), decoded and kept."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def plain(value: AnyValue) -> Any:
    """An OTLP attribute value as Python (str, bool, int, float, bytes or a list)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind is not None else None


@dataclass(frozen=True)
class Span:
    """One received span, with its resource's attributes beside its own."""

    name: str
    kind: int
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    trace_state: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status_code: int
    status_message: str
    resource: Mapping[str, Any]


class OtlpCollector:
    """Keeps every span it is sent (``spans()``) and every raw request body (``bodies``,
    decompressed), so a test can search what left extauthz byte for byte."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                if self.path != "/v1/traces":
                    self._answer(404, b"")
                    return
                request = ExportTraceServiceRequest.FromString(raw)
                owner._keep(raw, request)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _keep(self, raw: bytes, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        Span(
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            trace_state=s.trace_state,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: plain(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            status_message=s.status.message,
                            resource=resource,
                        )
                    )
        with self._lock:
            self.bodies.append(raw)
            self._spans += received

    def spans(self, name: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if name is None or s.name == name]

    def __enter__(self) -> OtlpCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
