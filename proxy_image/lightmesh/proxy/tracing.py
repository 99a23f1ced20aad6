"""W3C Trace Context for the HTTP proxy and, when configured, one OpenTelemetry span per request.

Owns :func:`make_tracer` (an OTLP/HTTP exporting :class:`RequestTracer` from an endpoint string),
:class:`RequestTracer` (what :class:`~lightmesh.proxy.http.HTTPOptions` ``tracer`` holds) and the
``traceparent`` codec (:func:`parse_traceparent`, :func:`format_traceparent`).

Tracing off (``HTTPOptions.tracer is None``): the proxy never calls into this module and
``traceparent``/``tracestate`` pass through untouched like any other end-to-end header.

Tracing on: per proxied request :meth:`RequestTracer.start` continues the incoming
``traceparent`` (a malformed one is ignored: a new trace starts), opens a span (kind SERVER, named
after the router) and returns a :class:`RequestSpan` whose ``traceparent`` replaces the incoming one
on the upstream request (same trace id, the proxy span as parent). Attributes: ``service``,
``route``, ``upstream`` (server URL) and ``retries``; OpenTelemetry's stable HTTP names
``http.request.method`` (``_OTHER`` plus ``http.request.method_original`` for a method outside
:data:`~lightmesh.proxy.metrics.KNOWN_METHODS`), ``http.response.status_code``, ``server.address``,
``url.path``, and ``error.type`` on a 5xx, which also marks the span as an error. The names before
OpenTelemetry's HTTP conventions were stable (``http.method``, ``http.status_code``, ``http.host``,
``http.target``) are set too, for dashboards built on them.
Sampling is parent-based with ``sample_ratio`` for new traces; a span sampled out still propagates
a fresh span id with the sampled flag cleared.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lightmesh.proxy.metrics import method_label

log = logging.getLogger("lightmesh.proxy.tracing")

__all__ = ["make_tracer", "RequestTracer", "RequestSpan", "parse_traceparent", "format_traceparent"]

_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parse_traceparent(value: bytes | str | None) -> tuple[int, int, int] | None:
    """``traceparent`` → (trace id, parent span id, flags), or None when absent or invalid
    (version ff, all-zero ids, bad or upper-case hex, wrong lengths; a version-00 header must have
    4 fields). The caller passes None's stand-in ``b""`` for a request with several headers."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    m = _TRACEPARENT.match(value.strip())  # lower-case hex only: W3C makes anything else invalid
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if not tid or not sid:
        return None
    return tid, sid, int(flags, 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags & 0xFF)


class RequestSpan:
    """One request's span. ``traceparent``: the header value to send upstream. ``continued``: the
    request's own traceparent was valid and is the parent; when not, its ``tracestate`` belongs to
    no trace that goes on and is not forwarded (W3C Trace Context, §3.3.1 and §4.3)."""

    __slots__ = ("span", "traceparent", "attrs", "continued")

    def __init__(self, span: Any, traceparent: bytes, attrs: dict, continued: bool = False) -> None:
        self.span = span
        self.traceparent = traceparent
        self.attrs = attrs
        self.continued = continued

    def end(self, status: int, retries: int, upstream: str) -> None:
        span = self.span
        if span.is_recording():
            from opentelemetry.trace import Status, StatusCode

            attrs = self.attrs
            attrs["http.response.status_code"] = attrs["http.status_code"] = status
            attrs["retries"] = retries
            attrs["upstream"] = upstream
            if status >= 500:
                attrs["error.type"] = str(status)
            span.set_attributes(attrs)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()


class RequestTracer:
    """Starts :class:`RequestSpan`s on an OpenTelemetry ``Tracer``. ``provider`` (optional) is shut
    down (flushing its exporter) by :meth:`shutdown`."""

    def __init__(self, tracer: Any, provider: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        self.tracer = tracer
        self.provider = provider
        self._trace = trace
        self._span_context = SpanContext
        self._non_recording = NonRecordingSpan
        self._flags = TraceFlags
        self._kind = SpanKind.SERVER

    def start(self, traceparent: bytes | None, route: str, service: str, method: str, host: str,
              path: bytes) -> RequestSpan:
        parent = parse_traceparent(traceparent)
        context = None
        if parent is not None:
            remote = self._span_context(trace_id=parent[0], span_id=parent[1], is_remote=True,
                                        trace_flags=self._flags(parent[2] & 0x01))
            context = self._trace.set_span_in_context(self._non_recording(remote))
        # a request no router took is named for that (a span needs a name; the route is empty)
        span = self.tracer.start_span(route or "unrouted", context=context, kind=self._kind)
        ctx = span.get_span_context()
        label = method_label(method)
        target = path.decode("latin-1")
        attrs = {"service": service, "route": route, "http.request.method": label, "server.address": host,
                 "url.path": target, "http.method": label, "http.host": host, "http.target": target}
        if label != method and method:
            attrs["http.request.method_original"] = method
        return RequestSpan(span, format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags)), attrs,
                           parent is not None)

    def refused(self, traceparent: bytes | None, route: str, service: str, method: str, host: str,
                path: bytes, status: int) -> None:
        """A span for a request the proxy answered itself (no route 404, ACL 403, rate limit 429,
        open breaker or no server 503): a sampled trace that ends here shows where and why."""
        try:
            q = path.find(b"?")
            self.start(traceparent, route, service, method, host, path if q < 0 else path[:q]).end(status, 0, "")
        except Exception:  # tracing is an add-on: never the reason a request fails
            log.exception("a trace span for a refused request failed")

    def shutdown(self) -> None:
        """Flush the queued spans, for a bounded time (:func:`lightmesh.otel.shutdown_within`)."""
        if self.provider is not None:
            from lightmesh.otel import shutdown_within
            shutdown_within(self.provider)


def make_tracer(endpoint: str, service_name: str = "lightmesh-proxy", sample_ratio: float = 1.0, *,
                exporter: Any = None, batch: bool = True) -> RequestTracer:
    """A tracer exporting with OTLP/HTTP to ``endpoint`` (``http://collector:4318``; ``/v1/traces``
    is appended unless the endpoint already ends with it). ``exporter`` replaces the OTLP exporter
    (tests: an in-memory one); ``batch=False`` exports each span as it ends."""
    from lightmesh.otel import tracer_provider

    provider = tracer_provider(endpoint, service_name, sample_ratio, exporter=exporter, batch=batch)
    return RequestTracer(provider.get_tracer("lightmesh.proxy"), provider)
