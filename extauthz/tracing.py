"""Optional OpenTelemetry traces (``server.tracing``, from the ``tracing`` extra).

One span per answered request, ``extauthz.check`` (kind SERVER), made once the answer
is known from the times the front door measured, as a child of the W3C trace context
in the request's headers (``traceparent``, ``tracestate``). One span per JWKS fetch and
per introspection call (kind CLIENT). Spans carry bounded fields only: never a token, a
cookie, a claim, ``sub`` or the request's path.

Spans leave through the SDK's BatchSpanProcessor: ending one appends it to a bounded
queue that a thread of its own exports, so a slow or absent collector costs dropped
spans, never a slower or different answer. With tracing off (the default) a request
pays one ``if tracing.spans is not None``, and OpenTelemetry is never imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from . import logs

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from .config import TracingSettings
    from .core.decision import Decision
    from .core.request import AuthRequest

#: The distributions ``server.tracing`` needs (the ``tracing`` extra), each with a module
#: it must provide.
PACKAGES = {
    "opentelemetry-sdk": "opentelemetry.sdk.trace",
    "opentelemetry-exporter-otlp-proto-http": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    ),
}
#: Seconds one export may take, retries included (the SDK's default is 10).
EXPORT_TIMEOUT = 5.0
#: Longest a stopping server waits for its last spans to leave.
SHUTDOWN_WAIT = 5.0

_log = logs.get("extauthz.tracing")


def missing_packages() -> list[str]:
    """The distributions of :data:`PACKAGES` that cannot be imported (none imported)."""
    absent = []
    for distribution, module in PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package is missing (or blocked) altogether
            found = False
        if not found:
            absent.append(distribution)
    return absent


class Call:
    """What a traced call found: attributes to add to its span, and a failure."""

    __slots__ = ("attributes", "error")

    def __init__(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes: dict[str, AttributeValue] = dict(attributes)
        self.error: str | None = None

    def set(self, attributes: Mapping[str, AttributeValue | None]) -> None:
        """Add attributes; a None value leaves its name out."""
        for name, value in attributes.items():
            if value is not None:
                self.attributes[name] = value

    def fail(self, description: str) -> None:
        """The span's status becomes ERROR with this (operator's, token-free) text."""
        self.error = description


class Spans:
    """A tracer provider exporting over OTLP/HTTP, and the spans extauthz makes."""

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from . import __version__

        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self.provider: TracerProvider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,  # shutdown() bounds the wait; an exit hook would not
        )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("extauthz", __version__)
        self._extract = TraceContextTextMapPropagator().extract
        self._root = Context()
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._status, self._error = Status, StatusCode.ERROR

    def _parent(self, headers: Mapping[str, str] | None) -> Context:
        if not headers:
            return self._root
        return self._extract(headers, self._root)

    def decision(
        self, req: AuthRequest, decision: Decision, status: int, started: float, front_door: str
    ) -> None:
        """The span of one answered request; ``started`` is its ``perf_counter()``
        reading, ``status`` the HTTP status the answer stands for."""
        try:
            end = time.time_ns()
            start = end - int((time.perf_counter() - started) * 1e9)
            attributes: dict[str, AttributeValue] = {
                "extauthz.decision": "allow" if decision.allowed else "deny",
                "extauthz.reason": decision.reason,
                "extauthz.front_door": front_door,
                "http.response.status_code": status,
            }
            if decision.rule:
                attributes["extauthz.rule"] = decision.rule
            if decision.provider:
                attributes["extauthz.provider"] = decision.provider
            span = self.tracer.start_span(
                "extauthz.check",
                self._parent(req.headers),
                self._server,
                attributes,
                start_time=start,
            )
            if status >= 500:  # a refusal is the service working; a 503 is not
                span.set_status(self._status(self._error, decision.reason))
            span.end(end)
        except Exception:  # a span must never fail a request that was answered
            _log.exception("trace_span_failed")

    @contextlib.contextmanager
    def call(
        self, name: str, parent: Mapping[str, str] | None, attributes: Mapping[str, AttributeValue]
    ) -> Iterator[Call]:
        span: Span = self.tracer.start_span(name, self._parent(parent), self._client)
        call = Call(attributes)
        try:
            yield call
        finally:
            span.set_attributes(call.attributes)
            if call.error is not None:
                span.set_status(self._status(self._error, call.error))
            span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


#: The running tracer, or None: tracing is off (the request path's only test).
spans: Spans | None = None


class _SdkLog(logging.Handler):
    """The SDK's own log records (export failures) as extauthz log events: a failed
    export is a warning, its retries are debug."""

    def emit(self, record: logging.LogRecord) -> None:
        log = _log.warning if record.levelno >= logging.ERROR else _log.debug
        log("tracing_sdk", detail=record.getMessage(), sdk_logger=record.name)


def _route_sdk_logs() -> None:
    sdk = logging.getLogger("opentelemetry")
    if not any(isinstance(h, _SdkLog) for h in sdk.handlers):
        sdk.addHandler(_SdkLog())
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False  # not also on stderr as plain text beside the JSON lines


def setup(settings: TracingSettings | None) -> None:
    """Start tracing with ``settings`` (None: off). Once per serving process, at start;
    a tracer already running is shut down first."""
    global spans
    shutdown()
    if settings is None:
        return
    _route_sdk_logs()
    spans = Spans(settings)
    _log.info(
        "tracing_started",
        otlp_endpoint=settings.otlp_endpoint,
        sample_ratio=settings.sample_ratio,
        service_name=settings.service_name,
    )


def shutdown(wait: float = SHUTDOWN_WAIT) -> None:
    """Stop tracing: export what is queued, waiting at most ``wait`` seconds (a collector
    that is down would otherwise hold the exit for the exporter's retries)."""
    global spans
    current, spans = spans, None
    if current is None:
        return
    worker = threading.Thread(target=current.shutdown, name="extauthz-trace-flush", daemon=True)
    worker.start()
    worker.join(wait)
    if worker.is_alive():
        _log.warning("tracing_flush_incomplete", waited_seconds=wait)


@contextlib.contextmanager
def call(
    name: str, attributes: Mapping[str, AttributeValue], parent: Mapping[str, str] | None = None
) -> Iterator[Call]:
    """A CLIENT span around one outgoing call: a root span, or a child of the trace
    context in ``parent`` (a request's headers). With tracing off, the :class:`Call` it
    gives is recorded nowhere."""
    current = spans
    if current is None:
        yield Call(attributes)
        return
    with current.call(name, parent, attributes) as traced:
        yield traced
