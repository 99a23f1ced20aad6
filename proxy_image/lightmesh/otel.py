"""OpenTelemetry set-up shared by the proxy and the controller: one TracerProvider exporting with
OTLP/HTTP, parent-based ratio sampling, ``service.name`` on the resource.

Imported only when ``--otlp-endpoint`` is given, so a process without tracing never loads the SDK.
"""

from __future__ import annotations

import os
from typing import Any, Mapping


def otlp_traces_url(endpoint: str) -> str:
    """The base endpoint gets ``/v1/traces``, as OTEL_EXPORTER_OTLP_ENDPOINT does in the OpenTelemetry
    spec, a path included (``https://otlp.vendor.example/otlp`` → ``.../otlp/v1/traces``); a URL
    that already ends in ``/v1/traces`` is kept."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/v1/traces") else url + "/v1/traces"


def resource_attributes(service_name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``service.name``, and the pod and node the process runs on when the downward API gives them
    (MeshInstall sets ``POD_NAME``/``NODE_NAME``): which proxy a span came from."""
    from lightmesh import wire

    env = os.environ if environ is None else environ
    attrs = {"service.name": service_name}
    for key, variable in (("k8s.pod.name", wire.ENV_POD_NAME), ("k8s.node.name", wire.ENV_NODE_NAME)):
        if env.get(variable):
            attrs[key] = env[variable]
    return attrs


def tracer_provider(endpoint: str, service_name: str, sample_ratio: float = 1.0, *, exporter: Any = None,
                    batch: bool = True):
    """A TracerProvider sending to ``endpoint``; ``exporter`` replaces the OTLP one (tests: in memory);
    ``batch=False`` exports each span as it ends."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be between 0 and 1, got {sample_ratio!r}")
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))
    # A collector that is down would otherwise log a warning per export attempt and worker (~1/s
    # each, whatever the traffic): tracing is an add-on, its outage must not flood the logs.
    import logging

    for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk.trace.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    provider = TracerProvider(resource=Resource.create(resource_attributes(service_name)),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider


#: How long a stopping process waits for the last spans to reach the collector. With the collector
#: down each export waits out the exporter's own timeout (10 s) and a full queue is several exports:
#: a proxy stopping for a rollout would be killed by its supervisor (or the kubelet) first.
SHUTDOWN_SECONDS = 2.0


def shutdown_within(provider: Any, seconds: float = SHUTDOWN_SECONDS) -> bool:
    """``provider.shutdown()`` (flush the queued spans), waiting at most ``seconds``; True when it
    finished. Otherwise the spans still queued are dropped: the flush goes on in a daemon thread,
    which ends with the process."""
    import logging
    import threading

    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(max(0.0, seconds))
    if worker.is_alive():
        logging.getLogger("lightmesh.otel").warning(
            "the trace collector did not take the last spans within %.0f s: they are dropped", seconds)
        return False
    return True
